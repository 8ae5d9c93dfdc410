"""Canary and BlueGreen on real pods, with real traffic through the Service (issue 9).

The test sends inference requests to the Service's ClusterIP, each on a new connection, so the service proxy
spreads them over the ready pods; the split is counted per version from Triton's own metrics on every pod (and
from the versions the answers name). The operator's analysis reads the same metrics.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from e2e.conftest import (E2E_STATE, apply, condition, get_json, kubectl, kubectl_wait_ready, model_deployment,
                          model_store, pods_of, wait_for)
from e2e.traffic import Load, TritonCounts, failures, infer_once, triton_counts, versions
from tests.support.tritonserver import write_model

# Version 3 of `simple`: every fifth call of execute raises (an execute that fails, as a model with a bad kernel or
# a missing weight would), and Triton counts the request as a failure of that version (reason BACKEND). The other
# calls answer like a good version. (An error *response* from execute, InferenceResponse(error=...), reaches the
# client as HTTP 500 but Triton 2.51's python backend counts it as a success: no metric shows it.)
FLAKY_MODEL = """\
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.calls = 0

    def execute(self, requests):
        self.calls += 1
        if self.calls % 5 == 0:
            raise pb_utils.TritonModelException("flaky version: every fifth call of execute fails")
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", (x * 3).astype(np.float32))]))
        return responses
"""

STEP_TIMEOUT = 180
ANALYSIS = {"intervalSeconds": 10}


def progressive_store(namespace: str) -> None:
    """`simple` versions 1 and 2 (good) and 3 (fails 20% of requests) on the namespace's `models` claim."""
    repository = model_store(namespace)
    write_model(repository, "simple", (1, 2))
    write_model(repository, "simple", (3,), source=FLAKY_MODEL)


def rollout_status(namespace: str, name: str = "simple") -> dict:
    return ((get_json("md", name, "-n", namespace) or {}).get("status") or {}).get("rollout") or {}


def set_version(namespace: str, version: str, name: str = "simple") -> None:
    kubectl("patch", "md", name, "-n", namespace, "--type=merge", "-p",
            json.dumps({"spec": {"model": {"version": version}}}))


def cluster_ip(namespace: str, service: str) -> str:
    return get_json("svc", service, "-n", namespace)["spec"]["clusterIP"]


def ready_pods_by_version(namespace: str, name: str = "simple") -> dict[str, int]:
    counts: dict[str, int] = {}
    for pod in pods_of(namespace, name):
        if pod["metadata"].get("deletionTimestamp"):
            continue
        if any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or []):
            version = pod["metadata"]["labels"]["app.kubernetes.io/version"]
            counts[version] = counts.get(version, 0) + 1
    return counts


def served(namespace: str, name: str = "simple") -> dict[str, float]:
    """Requests each version has answered (successes and failures), summed over the live pods' Triton metrics."""
    live = [p for p in pods_of(namespace, name) if not p["metadata"].get("deletionTimestamp")]
    return {version: n["success"] + n["failure"] for version, n in triton_counts(live).items()}


def wait_for_step(namespace: str, step: int, timeout: float = STEP_TIMEOUT) -> dict:
    def check() -> dict | None:
        status = rollout_status(namespace)
        assert status.get("phase") != "Aborted", f"the canary was aborted: {status}"
        return status if status.get("step", -1) >= step and status.get("canaryVersion") else None

    return wait_for(f"status.rollout.step ≥ {step}", check, timeout=timeout)


def serving_traffic(load: Load, version: str = "1") -> None:
    """Wait until the Service answers (the service proxy has its endpoints) before counting anything."""
    wait_for(f"the Service to answer with version {version}", lambda: versions(load.answers)[version] >= 5, timeout=30)


def canary_md(namespace: str, replicas: int, steps: list[dict], rollout: dict | None = None, **spec) -> dict:
    return model_deployment("simple", namespace, replicas=replicas,
                            rollout={"strategy": "Canary", "canary": {"steps": steps}, **(rollout or {})}, **spec)


@contextmanager
def canary_under_load(namespace: str, version: str, analysis: dict = ANALYSIS) -> Iterator[tuple[TritonCounts, Load]]:
    """`simple` version 1 on 4 pods with a Canary of setWeight 25, analysis, setWeight 50, analysis; traffic
    through the Service (and every pod's Triton counters watched); then the spec asks for `version`."""
    progressive_store(namespace)
    steps = [{"setWeight": 25}, {"analysis": analysis}, {"setWeight": 50}, {"analysis": analysis}]
    apply(canary_md(namespace, 4, steps))
    kubectl_wait_ready(namespace, "simple", timeout=180)
    with TritonCounts(lambda: pods_of(namespace, "simple")) as counts, \
            Load(cluster_ip(namespace, "simple")) as load:
        serving_traffic(load)
        set_version(namespace, version)
        yield counts, load


def test_a_good_canary_is_promoted_through_its_steps_with_the_split_by_pods(namespace):
    with canary_under_load(namespace, "2") as (counts, load):
        for analysis_step, weight in ((1, 25), (3, 50)):
            # The setWeight step before this analysis is done: the pods are at the split. Measure the traffic
            # over part of the analysis interval from Triton's counters on every pod.
            wait_for_step(namespace, analysis_step)
            pods = ready_pods_by_version(namespace)
            assert pods == {"1": 4 - weight * 4 // 100, "2": weight * 4 // 100}, pods
            before, started = served(namespace), load.now()
            time.sleep(6)
            after = served(namespace)
            delta = {v: after.get(v, 0) - before.get(v, 0) for v in after}
            total = sum(delta.values())
            share = delta.get("2", 0) / total
            # Within one pod of the weight: the canary's pods are weight% of 4, give or take one.
            assert (weight * 4 // 100 - 1) / 4 <= share <= (weight * 4 // 100 + 1) / 4, (weight, delta)
            answered = versions(load.since(started))
            assert set(answered) <= {"1", "2"} and answered["2"] > 0, answered
        md = wait_for("the promotion", lambda: (lambda o: o if condition(o, "Ready").get("status") == "True"
                                                and o["status"].get("currentVersion") == "2" else None)(
            get_json("md", "simple", "-n", namespace)), timeout=STEP_TIMEOUT)
        promoted = load.now()
        time.sleep(3)
    status = md["status"]["rollout"]
    assert status["stableVersion"] == "2" and status["phase"] == "Idle", status
    assert status["analysis"]["verdict"] == "Pass" and status["analysis"]["step"] == 3, status["analysis"]
    assert versions(load.since(promoted + 1)) .keys() == {"2"}
    assert ready_pods_by_version(namespace) == {"2": 4}
    # The promotion restarted no pod: the canary's Deployment is the stable one now, the other one is gone.
    assert get_json("deployment", "simple-b", "-n", namespace)["spec"]["replicas"] == 4
    wait_for("the old Deployment to go", lambda: get_json("deployment", "simple", "-n", namespace) is None)
    # No request failed inside Triton on either version.
    assert all(n["failure"] == 0 for n in counts.totals().values()), counts.totals()


def test_a_version_failing_a_fifth_of_its_requests_is_aborted_at_the_first_analysis(namespace):
    with canary_under_load(namespace, "3") as (counts, load):
        live = wait_for("the bad canary to go live", lambda: ready_pods_by_version(namespace).get("3"),
                        timeout=STEP_TIMEOUT)
        went_live = load.now()
        assert live == 1
        status = wait_for("the abort", lambda: (lambda s: s if s.get("phase") == "Aborted" else None)(
            rollout_status(namespace)), timeout=STEP_TIMEOUT)
        aborted = load.now()
        wait_for("the canary's pods to go", lambda: "3" not in ready_pods_by_version(namespace), timeout=60)
        time.sleep(4)
        settled = load.now()
        time.sleep(6)
    assert status["abortReason"] == "AnalysisFailed", status
    assert status["analysis"]["step"] == 1 and status["analysis"]["verdict"] == "Fail", status["analysis"]
    assert status["analysis"]["canary"]["failures"] > 0 and "error ratio" in status["failureMessage"]
    md = get_json("md", "simple", "-n", namespace)
    assert condition(md, "Degraded")["reason"] == "AnalysisFailed"
    assert condition(md, "ModelReady")["status"] == "True" and md["status"]["currentVersion"] == "1"
    # Stable serves everything, and none of stable's requests failed: not in Triton, not at the client.
    after = load.since(settled)
    assert versions(after).keys() == {"1"} and len(after) > 20, versions(after)
    totals = counts.totals()
    assert totals["1"]["failure"] == 0 and totals["1"]["success"] > 0, totals
    assert totals["3"]["failure"] > 0, totals
    # Every request that failed at the client failed inside version 3, none elsewhere.
    assert all("flaky version" in a.error for a in failures(load.answers)), failures(load.answers)[:3]
    record_time_to_abort(went_live, aborted, status)


def record_time_to_abort(went_live: float, aborted: float, status: dict) -> None:
    """bench/README.md reports it: from the bad canary's pod Ready to status saying Aborted."""
    seconds = round(aborted - went_live, 1)
    print(f"time from the bad canary going live to the abort: {seconds} s (analysis interval "
          f"{ANALYSIS['intervalSeconds']} s)")
    out = os.environ.get("MODELDEPLOY_BENCH_OUT") or (str(Path(E2E_STATE) / "canary-abort.json") if E2E_STATE else "")
    if out:
        Path(out).write_text(json.dumps({"seconds_live_to_abort": seconds,
                                         "interval_seconds": ANALYSIS["intervalSeconds"],
                                         "analysis": status.get("analysis")}, indent=2))


def test_a_blue_green_switch_fails_no_request(namespace):
    progressive_store(namespace)
    apply(model_deployment("simple", namespace, replicas=2, rollout={
        "strategy": "BlueGreen", "blueGreen": {"autoPromote": False, "scaleDownDelaySeconds": 15}}))
    kubectl_wait_ready(namespace, "simple", timeout=180)
    with Load(cluster_ip(namespace, "simple")) as load:
        serving_traffic(load)
        set_version(namespace, "2")
        wait_for("the preview to be up", lambda: rollout_status(namespace).get("phase") == "Paused",
                 timeout=STEP_TIMEOUT)
        preview = [infer_once(cluster_ip(namespace, "simple-preview")) for _ in range(10)]
        assert {a.version for a in preview} == {"2"}, preview
        assert versions(load.answers).keys() == {"1"}  # the preview took no production traffic
        kubectl("patch", "md", "simple", "-n", namespace, "--type=merge", "-p",
                json.dumps({"spec": {"rollout": {"promote": {"target": "2"}}}}))
        wait_for("the switch", lambda: rollout_status(namespace).get("weight") == 100, timeout=60)
        switched = load.now()
        wait_for("the old version to scale down", lambda: get_json("deployment", "simple", "-n", namespace) is None,
                 timeout=120)
        time.sleep(3)
    assert not failures(load.answers), failures(load.answers)[:5]
    assert versions(load.since(switched + 2)).keys() == {"2"}
    assert get_json("svc", "simple-preview", "-n", namespace) is None
    md = get_json("md", "simple", "-n", namespace)
    assert md["status"]["currentVersion"] == "2" and condition(md, "Ready")["status"] == "True"


def test_an_unschedulable_canary_shows_at_once_and_aborts_at_the_deadline(namespace):
    """The stable version takes every GPU of the node: the canary's pod cannot schedule."""
    progressive_store(namespace)
    apply(canary_md(namespace, 2, [{"setWeight": 50}], {"progressDeadlineSeconds": 30},
                    resources={"gpu": 4, "requests": {"cpu": "50m", "memory": "128Mi"}, "sharedMemory": "64Mi"}))
    kubectl_wait_ready(namespace, "simple", timeout=180)
    set_version(namespace, "2")
    md = wait_for("the canary's pod to be Unschedulable", lambda: (lambda o: o if condition(o, "Degraded").get(
        "reason") == "Unschedulable" else None)(get_json("md", "simple", "-n", namespace)), timeout=60)
    assert "nvidia.com/gpu" in md["status"]["rollout"]["message"], md["status"]["rollout"]
    status = wait_for("the abort", lambda: (lambda s: s if s.get("phase") == "Aborted" else None)(
        rollout_status(namespace)), timeout=90)
    assert status["abortReason"] == "ProgressDeadlineExceeded" and "nvidia.com/gpu" in status["failureMessage"]
    wait_for("the canary Deployment to go", lambda: get_json("deployment", "simple-b", "-n", namespace) is None)
    assert ready_pods_by_version(namespace) == {"1": 2}


# A stand-in for the Gateway API's HTTPRoute CRD: no Gateway implementation runs here, so nothing routes by it,
# but the kind is real to the API server, and the operator reads and writes routes through it under the chart's
# RBAC. Its spec is kept as written.
HTTP_ROUTE_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    # *.k8s.io groups need this annotation (the Gateway API's own CRDs carry one like it).
    "metadata": {"name": "httproutes.gateway.networking.k8s.io",
                 "annotations": {"api-approved.kubernetes.io": "https://github.com/kubernetes-sigs/gateway-api/pull/2466"}},
    "spec": {"group": "gateway.networking.k8s.io", "scope": "Namespaced",
             "names": {"kind": "HTTPRoute", "listKind": "HTTPRouteList", "plural": "httproutes",
                       "singular": "httproute"},
             "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                 "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]}}


@pytest.fixture(scope="module")
def http_route_kind() -> Iterator[None]:
    installed = get_json("crd", HTTP_ROUTE_CRD["metadata"]["name"]) is None  # never replace a real one
    if installed:
        apply(HTTP_ROUTE_CRD)
        kubectl("wait", "--for=condition=Established", f"crd/{HTTP_ROUTE_CRD['metadata']['name']}", "--timeout=30s")
    yield
    if installed:
        kubectl("delete", "crd", HTTP_ROUTE_CRD["metadata"]["name"], "--wait=false", check=False)


def route_refs(namespace: str) -> list[dict]:
    return get_json("httproute", "simple", "-n", namespace)["spec"]["rules"][0]["backendRefs"]


def versions_behind(namespace: str, service: str, n: int = 12) -> set[str | None]:
    return {infer_once(cluster_ip(namespace, service)).version for _ in range(n)}


def test_a_canary_routed_by_a_gateway_api_httproute(namespace, http_route_kind):
    progressive_store(namespace)
    apply({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
           "metadata": {"name": "simple", "namespace": namespace},
           "spec": {"parentRefs": [{"name": "gateway"}],
                    "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                               "backendRefs": [{"name": "simple", "port": 8000}]}]}})
    canary = {"steps": [{"setWeight": 50}, {"pause": {"durationSeconds": 10}}],
              "trafficRouting": {"gatewayAPI": {"httpRoute": "simple"}}}
    apply(canary_md(namespace, 2, [], {"canary": canary}))
    kubectl_wait_ready(namespace, "simple", timeout=180)
    set_version(namespace, "2")
    wait_for("the route to give the canary 50", lambda: route_refs(namespace) == [
        {"name": "simple", "port": 8000, "weight": 50}, {"name": "simple-canary", "port": 8000, "weight": 50}],
        timeout=STEP_TIMEOUT)
    # The stable version stays whole behind its Service; the canary's pod is behind its own.
    assert get_json("deployment", "simple", "-n", namespace)["spec"]["replicas"] == 2
    assert ready_pods_by_version(namespace) == {"1": 2, "2": 1}
    assert versions_behind(namespace, "simple") == {"1"}
    assert versions_behind(namespace, "simple-canary") == {"2"}
    md = wait_for("the promotion", lambda: (lambda o: o if condition(o, "Ready").get("status") == "True"
                                            and o["status"].get("currentVersion") == "2" else None)(
        get_json("md", "simple", "-n", namespace)), timeout=STEP_TIMEOUT)
    assert md["status"]["rollout"]["stableVersion"] == "2"
    wait_for("the route back on the one Service", lambda: route_refs(namespace) == [
        {"name": "simple", "port": 8000, "weight": 100}], timeout=60)
    wait_for("the canary Service to go", lambda: get_json("svc", "simple-canary", "-n", namespace) is None,
             timeout=60)
    assert versions_behind(namespace, "simple") == {"2"}
    route = get_json("httproute", "simple", "-n", namespace)
    assert route["spec"]["rules"][0]["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]
