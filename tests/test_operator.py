"""The operator shell: kopf handlers route keys to the work queue; metrics and /healthz."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import urllib.error
import urllib.request

import kopf
import pytest
import yaml

from modeldeploy import metrics
from modeldeploy import operator as op
from modeldeploy.kube import DEPLOYMENT, MODEL_DEPLOYMENT, POD, SERVICE_MONITOR, ApiError
from modeldeploy.reconciler import Reconciler
from modeldeploy.render.capabilities import OpenAPIUnreadable, ServerCapabilities
from modeldeploy.triton import ReportCache
from tests.support.deployment_controller import settle
from tests.support.fake_cluster import FakeCluster
from tests.support.triton_fixtures import SharedServerProbe
from tests.test_reconciler import NS, md_object

pytestmark = pytest.mark.triton


@pytest.fixture()
async def state(tritonserver):
    fake = FakeCluster()
    cache = ReportCache(SharedServerProbe(tritonserver, timeout_seconds=2.0))
    op.STATE = op.OperatorState(Reconciler(fake, cache, triton_port=tritonserver.http_port), cache)
    op.STATE.queue.start()
    yield op.STATE, fake
    await op.STATE.queue.stop()
    op.STATE = None


def ready(fake, name):
    status = fake.get_now(MODEL_DEPLOYMENT, NS, name).get("status") or {}
    return any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", []))


async def test_events_drive_reconciles_end_to_end(state):
    operator_state, fake = state
    fake.create(md_object("simple"))
    await op.on_model_deployment(event={"type": "ADDED"}, name="simple", namespace=NS)
    await operator_state.queue.idle()
    assert fake.get_now(DEPLOYMENT, NS, "simple") is not None
    # The pods turn ready: their watch event reaches the owner through its labels.
    settle(fake, NS, "simple")
    pod = fake.list_now(POD, NS)[0]
    op._route_child(labels=pod["metadata"]["labels"], namespace=NS)
    await operator_state.queue.idle()
    assert ready(fake, "simple")
    assert operator_state.conditions[(NS, "simple")]["Ready"] == "True"
    assert b'modeldeploy_objects{condition="Ready",status="True"} 1.0' in metrics.render_latest()


def conditions_of(fake, name):
    status = fake.get_now(MODEL_DEPLOYMENT, NS, name).get("status") or {}
    return {c["type"]: c for c in status.get("conditions", [])}


async def test_a_failure_that_persists_shows_in_status_within_one_retry(state, caplog):
    operator_state, fake = state
    fake.create(md_object("simple"))
    # The API server fails the pod list twice (etcd trouble); the third attempt gets through.
    fake.fail_next("list", POD, ApiError(500, "InternalError", "etcdserver: request timed out"), times=2)
    caplog.set_level(logging.WARNING, logger="modeldeploy")
    await op.on_model_deployment(event={"type": "ADDED"}, name="simple", namespace=NS)
    await operator_state.queue.idle()
    assert conditions_of(fake, "simple") == {}  # one failure may be a blip: status waits for the retry
    for _ in range(100):  # the retry comes after the first backoff (1 s)
        if conditions_of(fake, "simple"):
            break
        await asyncio.sleep(0.05)
    cond = conditions_of(fake, "simple")
    assert cond["Ready"]["status"] == "False" and cond["Ready"]["reason"] == "InternalError"
    assert "etcdserver: request timed out" in cond["Degraded"]["message"]
    assert cond["Reconciling"]["status"] == "True" and cond["Stalled"]["status"] == "False"
    warnings = [e for e in fake.events if e["type"] == "Warning"]
    assert [e["reason"] for e in warnings] == ["InternalError"]
    # API refusals are logged with their text, without a traceback.
    failures = [r for r in caplog.records if "failed, will retry" in r.getMessage()]
    assert len(failures) == 2 and all(r.exc_info is None for r in failures)
    for _ in range(100):  # the next retry (2 s) succeeds, and status tells the truth again
        if conditions_of(fake, "simple")["Ready"]["reason"] != "InternalError":
            break
        await asyncio.sleep(0.05)
    assert conditions_of(fake, "simple")["Degraded"]["status"] == "False"


async def test_an_unexpected_exception_is_logged_with_its_traceback(state, caplog, monkeypatch):
    operator_state, fake = state
    fake.create(md_object("simple"))

    async def broken(namespace, name):
        raise KeyError("a bug")

    monkeypatch.setattr(operator_state.reconciler, "reconcile", broken)
    caplog.set_level(logging.WARNING, logger="modeldeploy")
    await op.on_model_deployment(event={"type": "ADDED"}, name="simple", namespace=NS)
    await operator_state.queue.idle()
    (record,) = [r for r in caplog.records if "failed, will retry" in r.getMessage()]
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert "KeyError: 'a bug'" in caplog.text


async def test_children_of_others_are_ignored_and_deletes_are_forgotten(state):
    operator_state, fake = state
    op._route_child(labels={"app.kubernetes.io/instance": "x"}, namespace=NS)  # not managed by us
    assert not operator_state.queue.waiting
    fake.create(md_object("simple"))
    await op.on_model_deployment(event={"type": "ADDED"}, name="simple", namespace=NS)
    await operator_state.queue.idle()
    assert (NS, "simple") in operator_state.known
    await op.on_model_deployment(event={"type": "DELETED"}, name="simple", namespace=NS)
    assert (NS, "simple") not in operator_state.known and (NS, "simple") not in operator_state.conditions


async def test_kopf_bookkeeping_lives_under_our_prefix(state):
    settings = kopf.OperatorSettings()
    await op.configure(settings=settings)
    assert settings.persistence.finalizer == "modeldeploy.dev/finalizer"
    assert settings.persistence.progress_storage.prefix == "modeldeploy.dev"
    assert settings.persistence.diffbase_storage.prefix == "modeldeploy.dev"
    assert settings.posting.enabled is False
    from kopf._cogs.structs.references import Resource

    pods = Resource("", "v1", "pods", namespaced=True)
    models = Resource("modeldeploy.dev", "v1alpha1", "modeldeployments", namespaced=True)
    assert settings.watching.label_selectors.collect(pods) == ["app.kubernetes.io/managed-by=modeldeploy"]
    assert settings.watching.label_selectors.collect(models) == []


async def test_the_watch_cache_is_filled_at_startup_and_fed_by_every_watch_event(tritonserver):
    from modeldeploy.cache import CachedCluster, WatchCache

    fake = FakeCluster()
    fake.uninstall(SERVICE_MONITOR)
    fake.create(md_object("before"))
    watch_cache = WatchCache()
    health = ReportCache(SharedServerProbe(tritonserver, timeout_seconds=2.0))
    reconciler = Reconciler(CachedCluster(fake, watch_cache), health, triton_port=tritonserver.http_port)
    op.STATE = op.OperatorState(reconciler, health, watch_cache=watch_cache, namespaces=(NS,))
    try:
        await op.configure(settings=kopf.OperatorSettings())  # the startup handler lists every cached kind
        assert {c[:2] for c in fake.calls} == {("list", kind.kind) for kind in op.CACHED_KINDS}
        assert watch_cache.get(MODEL_DEPLOYMENT, NS, "before") is not None
        assert watch_cache.is_missing(SERVICE_MONITOR)  # listed as 404: served as "no such kind"
        # kopf's events carry the object: the cache has it before the reconcile they cause reads it.
        fake.create(md_object("after"))
        added = fake.get_now(MODEL_DEPLOYMENT, NS, "after")
        await op.on_model_deployment(event={"type": "ADDED", "object": added}, name="after", namespace=NS)
        assert watch_cache.get(MODEL_DEPLOYMENT, NS, "after")["metadata"]["uid"] == added["metadata"]["uid"]
        await op.STATE.queue.idle()
        deployment = fake.get_now(DEPLOYMENT, NS, "after")
        deployment["metadata"]["resourceVersion"] = str(int(deployment["metadata"]["resourceVersion"]) + 100)
        deployment["spec"]["paused"] = True
        op._child_events(DEPLOYMENT)(event={"type": "MODIFIED", "object": deployment},
                                     labels=deployment["metadata"]["labels"], namespace=NS)
        assert watch_cache.get(DEPLOYMENT, NS, "after")["spec"]["paused"] is True
        assert ("after" in {k[1] for k in op.STATE.queue._queued} or op.STATE.queue.waiting
                or op.STATE.queue._running)
    finally:
        if op.STATE.resync is not None:
            op.STATE.resync.cancel()
        await op.STATE.queue.stop()
        op.STATE = None


async def test_when_kopf_relists_a_kind_what_vanished_meanwhile_is_dropped_and_its_owner_reconciled(state,
                                                                                                      monkeypatch):
    """After a 410 Gone (an API server restart) kopf lists again, and a Service deleted while no watch
    ran gets no event: the operator lists Services itself and its owner repairs it."""
    from modeldeploy.cache import CachedCluster, WatchCache
    from modeldeploy.kube import SERVICE

    operator_state, fake = state
    monkeypatch.setattr(op, "RELIST_DELAY_SECONDS", 0.01)
    watch_cache = WatchCache()
    operator_state.watch_cache = watch_cache
    operator_state.reconciler.cluster = CachedCluster(fake, watch_cache)
    fake.create(md_object("simple"))
    await operator_state.fill_cache()
    await op.on_model_deployment(event={"type": "ADDED", "object": fake.get_now(MODEL_DEPLOYMENT, NS, "simple")},
                                 name="simple", namespace=NS)
    await operator_state.queue.idle()
    service = fake.get_now(SERVICE, NS, "simple")
    watch_cache.observe(SERVICE, "ADDED", service)
    fake.delete_as_user(SERVICE, NS, "simple")  # while the watch was down: no DELETED event
    deployment = fake.get_now(DEPLOYMENT, NS, "simple")
    op._child_events(DEPLOYMENT)(event={"type": None, "object": deployment},  # kopf's relisting shows
                                 labels=deployment["metadata"]["labels"], namespace=NS)
    for _ in range(100):
        await asyncio.sleep(0.02)
        if fake.get_now(SERVICE, NS, "simple") is not None and operator_state._relisting is None:
            break
    await operator_state.queue.idle()
    assert fake.get_now(SERVICE, NS, "simple") is not None  # listed, found gone, put back


def test_handlers_have_explicit_ids_and_are_event_handlers_only():
    watching = op.registry._watching.get_all_handlers()
    ids = sorted(h.id for h in watching)
    assert ids == sorted(["modeldeployment", "child-deployments", "child-services", "child-horizontalpodautoscalers",
                          "child-poddisruptionbudgets", "child-pods"])
    # No change-detecting (create/update/delete) handlers: kopf then writes no annotations or finalizers.
    assert op.registry._changing.get_all_handlers() == []
    assert op.registry._spawning.get_all_handlers() == []  # no daemons or timers either


def test_kopf_can_log_in_with_our_registry():
    ids = [h.id for h in op.registry._activities.get_all_handlers()]
    assert "login-via-kubernetes-client" in ids


def test_child_watches_select_the_kinds_we_create():
    from kopf._cogs.structs.references import Resource

    watched = {h.id: h.selector for h in op.registry._watching.get_all_handlers()}
    cases = {
        "child-pods": Resource("", "v1", "pods", namespaced=True),
        "child-deployments": Resource("apps", "v1", "deployments", namespaced=True),
        "child-services": Resource("", "v1", "services", namespaced=True),
        "child-horizontalpodautoscalers": Resource("autoscaling", "v2", "horizontalpodautoscalers", namespaced=True),
        "child-poddisruptionbudgets": Resource("policy", "v1", "poddisruptionbudgets", namespaced=True),
        "modeldeployment": Resource("modeldeploy.dev", "v1alpha1", "modeldeployments", namespaced=True),
    }
    for handler_id, resource in cases.items():
        assert watched[handler_id].check(resource), handler_id
    assert not watched["child-pods"].check(Resource("apps", "v1", "deployments", namespaced=True))


class Discovers:
    """A cluster boundary whose discovery answers `answer` (or raises it)."""

    def __init__(self, answer):
        self.answer = answer
        self.asked = 0

    async def server_capabilities(self):
        self.asked += 1
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


async def test_startup_says_once_which_fields_the_server_lacks(caplog):
    old = ServerCapabilities(pdb_unhealthy_pod_eviction_policy=False)
    cluster = Discovers(old)
    with caplog.at_level(logging.INFO, logger="modeldeploy"):
        assert await op.discover_capabilities(cluster) == old
    assert cluster.asked == 1
    (record,) = caplog.records
    assert record.levelno == logging.INFO
    assert record.getMessage().startswith("this API server has no usable "
                                          "PodDisruptionBudget.spec.unhealthyPodEvictionPolicy: "
                                          "PDBs are applied without it")


async def test_startup_on_a_current_server_says_everything_is_supported(caplog):
    with caplog.at_level(logging.INFO, logger="modeldeploy"):
        assert await op.discover_capabilities(Discovers(ServerCapabilities())) == ServerCapabilities()
    (record,) = caplog.records
    assert "supports every optional field" in record.getMessage()


@pytest.mark.parametrize("failure", [
    ApiError(503, "ServiceUnavailable", "connection refused"),
    ApiError(403, "Forbidden", 'cannot get path "/openapi/v2"'),
    OpenAPIUnreadable("the OpenAPI document does not describe io.k8s.api.policy.v1.PodDisruptionBudgetSpec"),
], ids=["unreachable", "forbidden", "unreadable"])
async def test_when_discovery_fails_everything_is_assumed_supported(caplog, failure):
    with caplog.at_level(logging.INFO, logger="modeldeploy"):
        assert await op.discover_capabilities(Discovers(failure)) == ServerCapabilities()
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert "assuming it supports all of them" in record.getMessage() and str(failure) in record.getMessage()


def test_metrics_and_healthz():
    healthy = True
    server = metrics.start_metrics_server(0, "127.0.0.1", health=lambda: healthy)
    try:
        metrics.observe_reconcile(0.02, "ok")
        metrics.observe_reconcile(0.0, "error", error_reason="ServiceUnavailable")
        metrics.record_triton_probe("unreachable")
        metrics.set_object_conditions({("Degraded", "True"): 2})
        metrics.set_object_conditions({("Degraded", "False"): 2})
        text = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5).read().decode()
        assert 'modeldeploy_reconcile_total{result="ok"}' in text
        assert 'modeldeploy_reconcile_errors_total{reason="ServiceUnavailable"} 1.0' in text
        assert 'modeldeploy_triton_probes_total{result="unreachable"}' in text
        assert 'modeldeploy_objects{condition="Degraded",status="True"} 0.0' in text  # stale snapshot cleared
        assert 'modeldeploy_objects{condition="Degraded",status="False"} 2.0' in text
        assert urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=5).status == 200
        healthy = False
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=5)
        assert refused.value.code == 503
    finally:
        server.stop()


def test_run_without_a_cluster_is_a_clear_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "modeldeploy", "run", "--health-port", "0"], capture_output=True,
                            text=True, timeout=60, cwd=tmp_path,
                            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                                 "KUBECONFIG": str(tmp_path / "missing")})
    assert result.returncode == 1
    assert "no Kubernetes cluster configured" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("pod_namespace", [None, "modeldeploy-system"], ids=["laptop", "in-a-pod"])
def test_run_serves_healthz_and_stops_cleanly_on_sigterm(tmp_path, pod_namespace):
    """The real process, with a kube-config whose API server refuses connections: kopf logs in,
    starts our workers and keeps retrying its watches; /healthz answers; SIGTERM ends it with 0.
    In a pod (POD_NAMESPACE) leader election is on: it cannot reach the Lease, so it stands by,
    healthy."""
    import signal
    import time

    from tests.support.tritonserver import free_port

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "x",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{free_port()}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}]}))
    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "KUBECONFIG": str(kubeconfig)}
    if pod_namespace:
        env.update(POD_NAMESPACE=pod_namespace, POD_NAME="modeldeploy-abc")
    process = subprocess.Popen([sys.executable, "-m", "modeldeploy", "run", "--health-port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + 30
        status = body = None
        while time.monotonic() < deadline and status != 200:
            try:
                answer = urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
                status, body = answer.status, answer.read()
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        assert status == 200, "no /healthz within 30 s"
        assert body == (b"ok: standby\n" if pod_namespace else b"ok: leader\n")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        output = process.stdout.read()
        assert "Signal SIGTERM is received" in output
        # Discovery could not reach the server either: said once, and the operator ran on.
        assert output.count("could not read the API server's OpenAPI") == 1
        if pod_namespace:  # a standby that cannot read the Lease says so once, not every 2 s
            assert output.count("leader election: reading the Lease modeldeploy-system/modeldeploy-operator") == 1
        else:
            assert "leader election is off" in output
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# --- leader election: two replicas, one reconciles ---------------------------------------------------

@pytest.fixture()
async def standby(tritonserver):
    """An operator replica with leader election, its elector not yet stepping (tests step it)."""
    fake = FakeCluster()
    cache = ReportCache(SharedServerProbe(tritonserver, timeout_seconds=2.0))
    op.STATE = op.OperatorState(Reconciler(fake, cache, triton_port=tritonserver.http_port), cache,
                                lease=op.LeaseConfig("modeldeploy-system", "md-lease", "replica-a_0001"))
    op.STATE.queue.start()
    yield op.STATE, fake
    await op.STATE.queue.stop()
    op.STATE = None
    metrics.set_leader(False)


def lease_holder(fake):
    from modeldeploy.kube import LEASE

    return (fake.get_now(LEASE, "modeldeploy-system", "md-lease") or {}).get("spec", {}).get("holderIdentity")


def leader_gauge():
    return next(line for line in metrics.render_latest().decode().splitlines()
                if line.startswith("modeldeploy_leader "))


async def test_a_standby_watches_and_tracks_keys_but_reconciles_nothing_until_it_leads(standby):
    state, fake = standby
    assert state.role == "standby" and not state.queue.is_open and leader_gauge() == "modeldeploy_leader 0.0"
    fake.create(md_object("simple"))
    await op.on_model_deployment(event={"type": "ADDED"}, name="simple", namespace=NS)
    await asyncio.sleep(0.1)
    assert (NS, "simple") in state.known and fake.get_now(DEPLOYMENT, NS, "simple") is None
    assert fake.writes == [] and state.healthy()  # standing by is healthy
    # It takes the Lease (nobody holds it) and reconciles every known ModelDeployment at once.
    assert await state.elector.step() == 2.0
    assert state.role == "leader" and lease_holder(fake) == "replica-a_0001"
    assert leader_gauge() == "modeldeploy_leader 1.0"
    await state.queue.idle()
    assert fake.get_now(DEPLOYMENT, NS, "simple") is not None


async def test_a_leader_that_loses_the_lease_stops_reconciling_at_once(standby):
    from modeldeploy.kube import LEASE

    state, fake = standby
    await state.elector.step()
    fake.create(md_object("simple"))
    lease = fake.get_now(LEASE, "modeldeploy-system", "md-lease")
    # Another replica took the Lease (say this one was paused for longer than the lease duration).
    fake.update({**lease, "spec": {**lease["spec"], "holderIdentity": "replica-b_0002"}})
    assert await state.elector.step() == 0.0  # its renewal is refused (409): it looks at the Lease at once
    await state.elector.step()
    assert state.role == "standby" and not state.queue.is_open and leader_gauge() == "modeldeploy_leader 0.0"
    await op.on_model_deployment(event={"type": "ADDED"}, name="simple", namespace=NS)
    await asyncio.sleep(0.1)
    assert fake.get_now(DEPLOYMENT, NS, "simple") is None
    assert state.healthy()


async def test_cleanup_releases_the_lease_so_a_standby_takes_it_at_once(standby):
    from modeldeploy.kube import LEASE

    state, fake = standby
    await state.elector.step()
    await op.shutdown()
    spec = fake.get_now(LEASE, "modeldeploy-system", "md-lease")["spec"]
    assert spec["holderIdentity"] == "" and spec["leaseDurationSeconds"] == 1
    assert state.role == "standby" and not state.queue.alive
    state.queue.start()  # for the fixture's teardown


async def test_the_elector_runs_from_startup_and_a_dead_elector_is_unhealthy(standby):
    state, fake = standby
    await op.configure(settings=kopf.OperatorSettings())
    try:
        for _ in range(100):
            if state.role == "leader":
                break
            await asyncio.sleep(0.02)
        assert state.role == "leader" and state.healthy()
        state.election.cancel()
        await asyncio.gather(state.election, return_exceptions=True)
        assert not state.healthy()
    finally:
        state.resync.cancel()


def test_healthz_says_leader_or_standby_and_both_are_healthy():
    role = "standby"
    healthy = True
    server = metrics.start_metrics_server(0, "127.0.0.1", health=lambda: healthy, role=lambda: role)
    url = f"http://127.0.0.1:{server.port}/healthz"
    try:
        answer = urllib.request.urlopen(url, timeout=5)
        assert answer.status == 200 and answer.read() == b"ok: standby\n"
        role = "leader"
        assert urllib.request.urlopen(url, timeout=5).read() == b"ok: leader\n"
        healthy = False
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=5)
        assert refused.value.code == 503 and refused.value.read().startswith(b"unhealthy (leader)")
    finally:
        server.stop()


@pytest.mark.parametrize(("argv", "environ", "expected"), [
    ([], {}, None),  # a laptop: no Lease, reconciles at once
    ([], {"POD_NAMESPACE": "modeldeploy-system"}, ("modeldeploy-system", "modeldeploy-operator")),
    (["--leader-election", "--lease-name", "md"], {"POD_NAMESPACE": "ops"}, ("ops", "md")),
    (["--leader-election", "--lease-namespace", "dev"], {}, ("dev", "modeldeploy-operator")),
    (["--no-leader-election"], {"POD_NAMESPACE": "modeldeploy-system"}, None),
], ids=["laptop", "in-a-pod", "chart", "laptop-opt-in", "opt-out"])
def test_leader_election_flags(argv, environ, expected):
    from modeldeploy.cli import lease_config, parser

    lease = lease_config(parser().parse_args(["run", *argv]), environ)
    assert (lease.namespace, lease.name) == expected if expected else lease is None


def test_leader_election_without_a_namespace_is_a_clear_error():
    from modeldeploy.cli import InputError, lease_config, parser

    with pytest.raises(InputError, match="--lease-namespace, or POD_NAMESPACE"):
        lease_config(parser().parse_args(["run", "--leader-election"]), {})
