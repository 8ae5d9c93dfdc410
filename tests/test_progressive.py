"""Canary and BlueGreen through the reconciler: two Deployments whose roles swap, the Services, the analysis
scrapes, status, events and requeues, against the in-memory cluster and a real tritonserver (model readiness).

The analysis scrapes go through an injected scraper that serves Triton's metrics text from counters the test
advances (every pod answers the same text, holding both versions' series: each side's deltas are then its pod
count times the counters' increase). Parsing and judging real Triton text is tests/test_analysis.py's; the e2e
suite runs the whole of it on real pods with real traffic.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from modeldeploy import progressive
from modeldeploy.api import ModelDeployment
from modeldeploy.kube import DEPLOYMENT, HTTP_ROUTE, MODEL_DEPLOYMENT, SERVICE
from modeldeploy.naming import POD_TEMPLATE_LABEL, SLOT_LABEL
from modeldeploy.reconciler import Reconciler
from modeldeploy.render.deployment import deployment_template_fingerprint
from modeldeploy.triton import ReportCache
from tests.support.deployment_controller import pods_of, settle
from tests.support.fake_cluster import FakeCluster
from tests.support.triton_fixtures import SharedServerProbe
from tests.support.watch import watch_cached
from tests.test_reconciler import NS, Clock, condition, md_object, status_of

CANARY_STEPS = [{"setWeight": 25}, {"analysis": {"intervalSeconds": 10}}, {"setWeight": 50},
                {"pause": {"durationSeconds": 20}}]


@dataclass
class Scraped:
    ok: bool
    text: str | None
    error: str = ""


class Metrics:
    """Triton's metrics text for `simple` versions 1 and 2, from counters a test advances."""

    def __init__(self) -> None:
        self.success = {"1": 0, "2": 0}
        self.failure = {"1": 0, "2": 0}
        self.scrapes = 0

    def serve(self, version: str, ok: int, failed: int = 0) -> None:
        self.success[version] += ok
        self.failure[version] += failed

    def text(self) -> str:
        lines = []
        for version in ("1", "2"):
            labels = f'model="simple",version="{version}"'
            lines += [f"nv_inference_request_success{{{labels}}} {self.success[version]}",
                      f'nv_inference_request_failure{{model="simple",reason="BACKEND",version="{version}"}} '
                      f"{self.failure[version]}",
                      f"nv_inference_count{{{labels}}} {self.success[version]}",
                      f"nv_inference_request_duration_us{{{labels}}} {self.success[version] * 2000}",
                      f"nv_inference_queue_duration_us{{{labels}}} {self.success[version] * 100}"]
        return "\n".join(lines) + "\n"

    async def __call__(self, host: str, port: int) -> Scraped:
        self.scrapes += 1
        return Scraped(True, self.text())


@pytest.fixture()
def fake():
    return FakeCluster()


@pytest.fixture()
def metrics():
    return Metrics()


@pytest.fixture()
def clock():
    return Clock()


@pytest.fixture(params=["api-reads", "watch-cache-reads"])
async def reconciler(fake, tritonserver, metrics, clock, request):
    probe = SharedServerProbe(tritonserver, timeout_seconds=2.0)
    cluster = fake if request.param == "api-reads" else watch_cached(fake)
    yield Reconciler(cluster, ReportCache(probe), triton_port=tritonserver.http_port, clock=clock,
                     scrape_metrics=metrics)
    await probe.close()


def canary_object(replicas=4, steps=CANARY_STEPS, **rollout):
    return md_object(replicas=replicas, rollout={"strategy": "Canary", "canary": {"steps": steps}, **rollout})


def set_version(fake, version):
    fake.update_spec(MODEL_DEPLOYMENT, NS, "simple", {"model": {"name": "simple", "repository": "s3://models/triton",
                                                                "version": version}})


def replicas(fake, name):
    found = fake.get_now(DEPLOYMENT, NS, name)
    return None if found is None else found["spec"]["replicas"]


def version_of(fake, name):
    return fake.get_now(DEPLOYMENT, NS, name)["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/version"]


async def settle_all(fake, reconciler, rounds=1):
    """Let the Deployment controller and the kubelet bring every Deployment to its spec, and reconcile."""
    outcome = None
    for _ in range(rounds):
        for name in ("simple", "simple-b"):
            if fake.get_now(DEPLOYMENT, NS, name) is not None:
                settle(fake, NS, name)
        fake.collect_garbage()
        outcome = await reconciler.reconcile(NS, "simple")
    return outcome


def rollout_status(fake):
    return status_of(fake)["rollout"]


async def serving_version_1(fake, reconciler, obj):
    fake.create(obj)
    await reconciler.reconcile(NS, "simple")
    await settle_all(fake, reconciler, rounds=2)
    assert condition(fake, "Ready")["status"] == "True", status_of(fake)["conditions"]
    assert rollout_status(fake)["stableVersion"] == "1"
    assert replicas(fake, "simple-b") is None


# --- pure: slots and children ---------------------------------------------------------------

def test_the_stable_slot_is_the_deployment_running_the_stable_template():
    a = {"spec": {"replicas": 0, "template": {"metadata": {"annotations": {"modeldeploy.dev/pod-template": "aaa"}}}}}
    b = {"spec": {"replicas": 4, "template": {"metadata": {"annotations": {"modeldeploy.dev/pod-template": "bbb"}}}}}
    assert progressive.assign_slots({"Deployment": a, "Deployment-b": b}, "aaa") == progressive.Slots(
        "Deployment", "Deployment-b")
    assert progressive.assign_slots({"Deployment": a, "Deployment-b": b}, "bbb").stable == "Deployment-b"
    # No stable template recorded (or none running): the larger one; nothing at all: the first.
    assert progressive.assign_slots({"Deployment": a, "Deployment-b": b}, "").stable == "Deployment-b"
    assert progressive.assign_slots({"Deployment": None, "Deployment-b": None}, "aaa").stable == "Deployment"


def test_the_second_deployment_selects_only_its_own_pods_and_keeps_the_fingerprint():
    md = ModelDeployment.model_validate(canary_object())
    first = progressive.render_deployment(md, replicas=1, template_label=True)
    second = progressive.render_deployment(md, replicas=1, slot="-b", template_label=True)
    assert second["metadata"]["name"] == "simple-b"
    assert second["spec"]["selector"]["matchLabels"][SLOT_LABEL] == "b"
    assert second["spec"]["template"]["metadata"]["labels"][SLOT_LABEL] == "b"
    assert SLOT_LABEL not in first["spec"]["selector"]["matchLabels"]
    fingerprint = deployment_template_fingerprint(first)
    assert deployment_template_fingerprint(second) == fingerprint
    assert first["spec"]["template"]["metadata"]["labels"][POD_TEMPLATE_LABEL] == fingerprint


# --- Canary ------------------------------------------------------------------------------------

async def test_a_good_canary_moves_through_its_steps_and_is_promoted_without_restarting_its_pods(
        fake, reconciler, metrics, clock):
    await serving_version_1(fake, reconciler, canary_object())
    fake.reset_counters()
    set_version(fake, "2")
    await reconciler.reconcile(NS, "simple")
    # steps[0] setWeight 25 of 4: one canary pod, beside the 4 stable ones (maxSurge 1).
    assert (replicas(fake, "simple"), replicas(fake, "simple-b")) == (4, 1)
    assert version_of(fake, "simple-b") == "2" and version_of(fake, "simple") == "1"
    status = rollout_status(fake)
    assert (status["phase"], status["step"], status["canaryVersion"]) == ("Progressing", 0, "2")
    assert condition(fake, "Ready")["reason"] == "RolloutInProgress"
    assert condition(fake, "Progressing")["reason"] == "Canary"
    assert status_of(fake)["currentVersion"] == "1"
    # The one Service selects both Deployments' pods: the weight is the pod ratio.
    selector = fake.get_now(SERVICE, NS, "simple")["spec"]["selector"]
    assert selector == {"app.kubernetes.io/name": "triton", "app.kubernetes.io/instance": "simple"}

    await settle_all(fake, reconciler)  # the canary pod is Ready: a stable pod goes
    assert (replicas(fake, "simple"), replicas(fake, "simple-b")) == (3, 1)
    outcome = await settle_all(fake, reconciler)  # the split is in place: steps[1] analysis takes its baseline
    status = rollout_status(fake)
    assert (status["step"], status["weight"]) == (1, 25)
    assert status_of(fake)["replicaSummary"] == "4/4"  # both Deployments' pods
    assert status["analysis"]["startedAt"] and "verdict" not in status["analysis"]
    assert metrics.scrapes == 4  # every pod, once
    fake.reset_counters()
    await reconciler.reconcile(NS, "simple")  # a second later: still analysing, nothing to write
    assert fake.writes == [] and metrics.scrapes == 4
    assert outcome.requeue_after <= 10  # the interval, or sooner (a rollout under way is polled)

    metrics.serve("1", ok=300)
    metrics.serve("2", ok=100)
    clock.advance(10)
    await reconciler.reconcile(NS, "simple")  # the verdict: Pass; steps[2] setWeight 50
    status = rollout_status(fake)
    assert status["analysis"]["verdict"] == "Pass", status["analysis"]
    assert (status["step"], replicas(fake, "simple-b")) == (2, 2)
    assert [e["reason"] for e in fake.events].count("AnalysisPassed") == 1
    await settle_all(fake, reconciler, rounds=2)
    status = rollout_status(fake)
    assert (status["step"], status["weight"], status["phase"]) == (3, 50, "Progressing")
    assert (replicas(fake, "simple"), replicas(fake, "simple-b")) == (2, 2)
    fake.reset_counters()
    await reconciler.reconcile(NS, "simple")  # the pause goes on: nothing to write
    assert fake.writes == []
    canary_pods = {p["metadata"]["uid"] for p in pods_of(fake, NS, "simple-b")}

    clock.advance(20)  # the pause is over: promotion, within the surge budget
    await settle_all(fake, reconciler, rounds=4)
    status = status_of(fake)
    assert status["rollout"]["stableVersion"] == "2" and status["currentVersion"] == "2"
    assert (status["rollout"]["phase"], status["rollout"]["weight"]) == ("Idle", 100)
    assert condition(fake, "Ready")["status"] == "True"
    assert replicas(fake, "simple-b") == 4 and replicas(fake, "simple") is None  # the old slot is gone
    assert canary_pods <= {p["metadata"]["uid"] for p in pods_of(fake, NS, "simple-b")}  # not restarted
    assert status["rollout"]["analysis"]["verdict"] == "Pass"  # the promoted rollout's record stays
    reasons = [e["reason"] for e in fake.events]
    assert "RolloutStep" in reasons and "Promoted" in reasons

    # Settled: a steady state sends nothing; the next rollout goes to the other slot.
    fake.reset_counters()
    await reconciler.reconcile(NS, "simple")
    assert fake.writes == []
    set_version(fake, "1")
    await reconciler.reconcile(NS, "simple")
    assert (replicas(fake, "simple-b"), replicas(fake, "simple")) == (4, 1)
    assert version_of(fake, "simple") == "1"


async def test_a_canary_that_fails_its_analysis_is_aborted_and_stable_serves_everything(
        fake, reconciler, metrics, clock):
    await serving_version_1(fake, reconciler, canary_object())
    set_version(fake, "2")
    await reconciler.reconcile(NS, "simple")
    await settle_all(fake, reconciler, rounds=2)
    assert rollout_status(fake)["step"] == 1
    metrics.serve("1", ok=300)
    metrics.serve("2", ok=80, failed=20)
    clock.advance(10)
    await reconciler.reconcile(NS, "simple")
    status = status_of(fake)
    assert status["rollout"]["phase"] == "Aborted" and status["rollout"]["abortReason"] == "AnalysisFailed"
    assert status["rollout"]["failedVersion"] == "2" and "error ratio" in status["rollout"]["failureMessage"]
    assert replicas(fake, "simple") == 4 and replicas(fake, "simple-b") is None
    for kind in ("Ready", "Degraded", "Stalled"):
        assert condition(fake, kind)["reason"] == "AnalysisFailed", kind
    assert condition(fake, "Degraded")["status"] == "True" and condition(fake, "Stalled")["status"] == "True"
    assert condition(fake, "ModelReady")["status"] == "True"  # version 1 serves
    warnings = [e for e in fake.events if e["type"] == "Warning"]
    assert [e["reason"] for e in warnings] == ["AnalysisFailed"]
    # Held: further reconciles change nothing, and a new version starts again.
    await settle_all(fake, reconciler)
    fake.reset_counters()
    await reconciler.reconcile(NS, "simple")
    assert fake.writes == []
    set_version(fake, "1")
    await reconciler.reconcile(NS, "simple")
    assert condition(fake, "Ready")["status"] == "True"
    assert "abortReason" not in rollout_status(fake)


async def test_an_unschedulable_canary_shows_at_once_and_aborts_at_the_deadline(fake, reconciler, clock):
    await serving_version_1(fake, reconciler, canary_object(progressDeadlineSeconds=60))
    set_version(fake, "2")
    await reconciler.reconcile(NS, "simple")
    settle(fake, NS, "simple-b", unschedulable_message="0/1 nodes are available: 1 Insufficient nvidia.com/gpu.")
    outcome = await reconciler.reconcile(NS, "simple")
    assert "Insufficient nvidia.com/gpu" in rollout_status(fake)["message"]
    assert condition(fake, "Degraded")["reason"] == "Unschedulable"
    assert outcome.requeue_after <= 60
    clock.advance(60)
    await reconciler.reconcile(NS, "simple")
    status = rollout_status(fake)
    assert status["abortReason"] == "ProgressDeadlineExceeded" and status["phase"] == "Aborted"
    assert replicas(fake, "simple-b") is None and replicas(fake, "simple") == 4


async def test_abort_through_the_spec_and_lifting_it_starts_again(fake, reconciler):
    await serving_version_1(fake, reconciler, canary_object())
    set_version(fake, "2")
    await reconciler.reconcile(NS, "simple")
    fake.update_spec(MODEL_DEPLOYMENT, NS, "simple", {"rollout": {"strategy": "Canary", "canary": {
        "steps": CANARY_STEPS}, "abort": {"target": "2"}}})
    await reconciler.reconcile(NS, "simple")
    assert rollout_status(fake)["abortReason"] == "AbortedBySpec"
    assert replicas(fake, "simple-b") is None
    fake.update_spec(MODEL_DEPLOYMENT, NS, "simple", {"rollout": {"abort": None}})  # a merge patch
    await reconciler.reconcile(NS, "simple")
    status = rollout_status(fake)
    assert status["step"] == 0 and "abortReason" not in status and replicas(fake, "simple-b") == 1


# --- BlueGreen ---------------------------------------------------------------------------------

async def test_blue_green_brings_a_preview_up_switches_the_service_and_scales_the_old_version_down(
        fake, reconciler, clock):
    await serving_version_1(fake, reconciler, md_object(replicas=2, rollout={
        "strategy": "BlueGreen", "blueGreen": {"autoPromote": False, "scaleDownDelaySeconds": 30}}))
    old = deployment_template_fingerprint(fake.get_now(DEPLOYMENT, NS, "simple"))
    assert fake.get_now(SERVICE, NS, "simple")["spec"]["selector"][POD_TEMPLATE_LABEL] == old
    set_version(fake, "2")
    await reconciler.reconcile(NS, "simple")
    new = deployment_template_fingerprint(fake.get_now(DEPLOYMENT, NS, "simple-b"))
    assert (replicas(fake, "simple"), replicas(fake, "simple-b")) == (2, 2)
    assert fake.get_now(SERVICE, NS, "simple-preview")["spec"]["selector"][POD_TEMPLATE_LABEL] == new
    await settle_all(fake, reconciler)
    assert rollout_status(fake)["phase"] == "Paused"
    assert condition(fake, "Progressing")["reason"] == "RolloutPaused"
    assert fake.get_now(SERVICE, NS, "simple")["spec"]["selector"][POD_TEMPLATE_LABEL] == old

    fake.update_spec(MODEL_DEPLOYMENT, NS, "simple", {"rollout": {"strategy": "BlueGreen", "blueGreen": {
        "autoPromote": False, "scaleDownDelaySeconds": 30}, "promote": {"target": "2"}}})
    outcome = await reconciler.reconcile(NS, "simple")
    assert fake.get_now(SERVICE, NS, "simple")["spec"]["selector"][POD_TEMPLATE_LABEL] == new
    assert replicas(fake, "simple") == 2  # kept for scaleDownDelaySeconds
    assert rollout_status(fake)["weight"] == 100 and outcome.requeue_after <= 30
    clock.advance(30)
    await settle_all(fake, reconciler, rounds=2)
    assert replicas(fake, "simple") is None and replicas(fake, "simple-b") == 2
    assert fake.get_now(SERVICE, NS, "simple-preview") is None
    assert status_of(fake)["currentVersion"] == "2" and condition(fake, "Ready")["status"] == "True"


async def test_switching_back_to_rolling_update_keeps_the_stable_deployment(fake, reconciler, clock):
    await serving_version_1(fake, reconciler, md_object(replicas=2, rollout={
        "strategy": "BlueGreen", "blueGreen": {"scaleDownDelaySeconds": 0}}))
    set_version(fake, "2")
    await reconciler.reconcile(NS, "simple")
    await settle_all(fake, reconciler, rounds=3)
    assert replicas(fake, "simple-b") == 2 and replicas(fake, "simple") is None
    fake.update_spec(MODEL_DEPLOYMENT, NS, "simple", {"rollout": {"strategy": "RollingUpdate", "blueGreen": None}})
    await reconciler.reconcile(NS, "simple")
    # The stable version stays where it runs: the second Deployment, now without template labels.
    assert replicas(fake, "simple-b") == 2 and replicas(fake, "simple") is None
    assert fake.get_now(SERVICE, NS, "simple")["spec"]["selector"] == {
        "app.kubernetes.io/name": "triton", "app.kubernetes.io/instance": "simple"}
    await settle_all(fake, reconciler)
    assert condition(fake, "Ready")["status"] == "True"


# --- Canary with a Gateway API HTTPRoute ---------------------------------------------------------

ROUTED_STEPS = [{"setWeight": 25}, {"pause": {"durationSeconds": 10}}]


def http_route(fake, namespace=NS):
    return fake.create({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                        "metadata": {"name": "simple-route", "namespace": namespace},
                        "spec": {"parentRefs": [{"name": "gateway"}], "rules": [
                            {"backendRefs": [{"name": "simple", "namespace": NS, "port": 8000}]}]}})


def route_refs(fake):
    return fake.get_now(HTTP_ROUTE, NS, "simple-route")["spec"]["rules"][0]["backendRefs"]


def routed_object():
    return md_object(replicas=4, rollout={"strategy": "Canary", "canary": {"steps": ROUTED_STEPS, "trafficRouting": {
        "gatewayAPI": {"httpRoute": "simple-route"}}}})


async def test_a_routed_canary_keeps_stable_whole_and_moves_traffic_by_the_route(fake, reconciler, clock):
    http_route(fake)
    await serving_version_1(fake, reconciler, routed_object())
    fake.reset_counters()
    await reconciler.reconcile(NS, "simple")
    assert ("get", "HTTPRoute", NS, "simple-route") not in fake.calls  # settled: the route is not read
    old = deployment_template_fingerprint(fake.get_now(DEPLOYMENT, NS, "simple"))
    set_version(fake, "2")
    await reconciler.reconcile(NS, "simple")
    # The stable side stays whole; the canary gets enough pods for 25% (1 of 4), and its own Service.
    assert (replicas(fake, "simple"), replicas(fake, "simple-b")) == (4, 1)
    new = deployment_template_fingerprint(fake.get_now(DEPLOYMENT, NS, "simple-b"))
    assert fake.get_now(SERVICE, NS, "simple")["spec"]["selector"][POD_TEMPLATE_LABEL] == old
    assert fake.get_now(SERVICE, NS, "simple-canary")["spec"]["selector"][POD_TEMPLATE_LABEL] == new
    assert [r["name"] for r in route_refs(fake)] == ["simple"]  # no canary backend before its pods are Ready

    await settle_all(fake, reconciler)  # Ready: the route gives it 25
    assert route_refs(fake) == [{"name": "simple", "namespace": NS, "port": 8000, "weight": 75},
                                {"name": "simple-canary", "namespace": NS, "port": 8000, "weight": 25}]
    await reconciler.reconcile(NS, "simple")  # the route as read has it: steps[1] pauses
    status = rollout_status(fake)
    assert (status["step"], status["weight"]) == (1, 25)
    assert replicas(fake, "simple") == 4

    clock.advance(10)
    for _ in range(4):  # promotion: the canary to the full count, the route to it, then the target is stable
        await settle_all(fake, reconciler)
    assert rollout_status(fake)["stableVersion"] == "2"
    for _ in range(4):  # the Service follows the new stable pods, then the route leaves the canary Service
        await settle_all(fake, reconciler)
    assert route_refs(fake) == [{"name": "simple", "namespace": NS, "port": 8000, "weight": 100}]
    assert fake.get_now(SERVICE, NS, "simple")["spec"]["selector"][POD_TEMPLATE_LABEL] == new
    assert fake.get_now(SERVICE, NS, "simple-canary") is None
    assert replicas(fake, "simple-b") == 4 and replicas(fake, "simple") is None
    assert condition(fake, "Ready")["status"] == "True"
    fake.reset_counters()
    await reconciler.reconcile(NS, "simple")
    assert fake.writes == [] and ("get", "HTTPRoute", NS, "simple-route") not in fake.calls


async def test_a_routed_canary_without_its_route_says_so_and_waits(fake, reconciler):
    await serving_version_1(fake, reconciler, routed_object())
    set_version(fake, "2")
    await reconciler.reconcile(NS, "simple")
    await settle_all(fake, reconciler)
    degraded = condition(fake, "Degraded")
    assert degraded["reason"] == "HTTPRouteNotFound" and "vision/simple-route" in degraded["message"]
    assert rollout_status(fake)["step"] == 0
    fake.uninstall(HTTP_ROUTE)
    await reconciler.reconcile(NS, "simple")
    assert condition(fake, "Degraded")["reason"] == "GatewayAPIUnavailable"
