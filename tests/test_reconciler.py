"""The reconciler against the in-memory cluster (tier 2) and a real tritonserver (tier 3).

Pods get IP 127.0.0.1 and the reconciler asks Triton on the test server's port, so every
model-readiness answer comes from a real Triton serving `simple` (versions 1 and 2) and
`broken` (whose initialisation raises).
"""

from __future__ import annotations

import pytest

from modeldeploy.api import CONDITION_TYPES
from modeldeploy.kube import DEPLOYMENT, HPA, MODEL_DEPLOYMENT, PDB, SERVICE, SERVICE_MONITOR, ApiError
from modeldeploy.reconciler import POLL_FIRST_SECONDS, Reconciler
from modeldeploy.render.capabilities import ServerCapabilities
from modeldeploy.triton import ReportCache
from tests.support.deployment_controller import rolling, settle
from tests.support.fake_cluster import FakeCluster
from tests.support.triton_fixtures import SharedServerProbe
from tests.support.watch import watch_cached

NS = "vision"
pytestmark = pytest.mark.triton


class Clock:
    """A second passes at each look; advance() lets more pass."""

    def __init__(self) -> None:
        self._seconds = 0

    def __call__(self) -> str:
        self._seconds += 1
        return f"2026-11-23T{10 + self._seconds // 3600:02d}:{self._seconds // 60 % 60:02d}:{self._seconds % 60:02d}Z"

    def advance(self, seconds: int) -> None:
        self._seconds += seconds


def spec(**extra):
    body = {"model": {"name": "simple", "repository": "s3://models/triton", "version": "1"},
            "resources": {"requests": {"cpu": "1"}}}
    body.update(extra)
    return body


def md_object(name="simple", **extra):
    return {"apiVersion": "modeldeploy.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": NS}, "spec": spec(**extra)}


@pytest.fixture()
def fake():
    return FakeCluster()


@pytest.fixture(params=["api-reads", "watch-cache-reads"])
async def reconciler(fake, tritonserver, request):
    """Every reconciler test runs twice: reading from the API server, and from watch caches."""
    probe = SharedServerProbe(tritonserver, timeout_seconds=2.0)
    cluster = fake if request.param == "api-reads" else watch_cached(fake)
    yield Reconciler(cluster, ReportCache(probe), triton_port=tritonserver.http_port, clock=Clock())
    await probe.close()


def status_of(fake, name="simple"):
    return fake.get_now(MODEL_DEPLOYMENT, NS, name)["status"]


def condition(fake, kind, name="simple"):
    return next(c for c in status_of(fake, name)["conditions"] if c["type"] == kind)


async def converge(fake, reconciler, name="simple", **pods):
    """Reconcile, let the simulated controllers act, reconcile again (what watch events would cause)."""
    await reconciler.reconcile(NS, name)
    settle(fake, NS, name, **pods)
    return await reconciler.reconcile(NS, name)


# --- create, status, steady state ---------------------------------------------------------

async def test_creates_children_with_owner_references(fake, reconciler):
    fake.create(md_object(disruptionBudget={"maxUnavailable": 1}))
    outcome = await reconciler.reconcile(NS, "simple")
    assert outcome.applied == ["Deployment", "Service", "PodDisruptionBudget"]
    uid = fake.get_now(MODEL_DEPLOYMENT, NS, "simple")["metadata"]["uid"]
    for kind in (DEPLOYMENT, SERVICE, PDB):
        (ref,) = fake.get_now(kind, NS, "simple")["metadata"]["ownerReferences"]
        assert ref["uid"] == uid and ref["controller"] and ref["blockOwnerDeletion"]
    assert fake.get_now(HPA, NS, "simple") is None
    assert condition(fake, "Ready")["status"] == "False"
    assert [e["reason"] for e in fake.events] == ["Created"]


async def test_ready_only_when_triton_reports_the_version(fake, reconciler):
    fake.create(md_object(replicas=2))
    await converge(fake, reconciler)
    status = status_of(fake)
    assert condition(fake, "Ready")["status"] == "True", status["conditions"]
    assert condition(fake, "ModelReady")["reason"] == "ModelLoaded"
    assert status["currentVersion"] == "1" and status["observedGeneration"] == 1
    assert status["versions"] == [{"version": "1", "replicas": 2, "readyReplicas": 2, "modelReady": 2}]
    assert status["model"]["backend"] == "python" and status["model"]["maxBatchSize"] == 8
    assert status["model"]["inputs"][0]["datatype"] == "FP32"


async def test_steady_state_sends_no_write(fake, reconciler):
    fake.create(md_object(autoscaling={"maxReplicas": 3, "targetQueueTimeMicroseconds": 100},
                          disruptionBudget={"minAvailable": 1}))
    await converge(fake, reconciler)
    await reconciler.reconcile(NS, "simple")
    fake.reset_counters()
    for _ in range(3):
        outcome = await reconciler.reconcile(NS, "simple")
        assert outcome.requeue_after is None
    assert fake.writes == []
    assert fake.events == []


async def test_a_status_write_happens_only_when_status_changes(fake, reconciler):
    fake.create(md_object())
    await converge(fake, reconciler)
    fake.reset_counters()
    settle(fake, NS, "simple", ready=False)
    await reconciler.reconcile(NS, "simple")
    assert [w[0] for w in fake.writes].count("patch_status") == 1
    fake.reset_counters()
    await reconciler.reconcile(NS, "simple")
    assert fake.writes == []


# --- drift, scale, HPA --------------------------------------------------------------------

async def test_deleted_child_is_put_back(fake, reconciler):
    fake.create(md_object())
    await converge(fake, reconciler)
    fake.delete_as_user(SERVICE, NS, "simple")
    outcome = await reconciler.reconcile(NS, "simple")
    assert outcome.applied == ["Service"]
    assert fake.get_now(SERVICE, NS, "simple") is not None


async def test_hand_edit_is_reverted(fake, reconciler):
    fake.create(md_object())
    await converge(fake, reconciler)
    deployment = fake.get_now(DEPLOYMENT, NS, "simple")
    deployment["spec"]["template"]["spec"]["containers"][0]["image"] = "evil:latest"
    fake.update(deployment, manager="kubectl-edit")
    await reconciler.reconcile(NS, "simple")
    restored = fake.get_now(DEPLOYMENT, NS, "simple")
    assert restored["spec"]["template"]["spec"]["containers"][0]["image"].startswith("nvcr.io/nvidia/tritonserver")


async def test_scale_changes_the_deployment(fake, reconciler):
    fake.create(md_object())
    await converge(fake, reconciler)
    fake.update_spec(MODEL_DEPLOYMENT, NS, "simple", {"replicas": 3})
    await reconciler.reconcile(NS, "simple")
    assert fake.get_now(DEPLOYMENT, NS, "simple")["spec"]["replicas"] == 3


async def test_the_hpa_keeps_its_replicas_and_hands_them_back(fake, reconciler):
    fake.create(md_object(autoscaling={"minReplicas": 2, "maxReplicas": 6, "targetQueueTimeMicroseconds": 100}))
    await converge(fake, reconciler)
    assert fake.get_now(DEPLOYMENT, NS, "simple")["spec"]["replicas"] == 2
    # The HPA controller scales through the Deployment's scale subresource (an Update, another manager).
    fake.update({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "simple", "namespace": NS},
                 "spec": {"replicas": 5}}, manager="kube-controller-manager")
    for _ in range(3):
        await reconciler.reconcile(NS, "simple")
        settle(fake, NS, "simple")
        assert fake.get_now(DEPLOYMENT, NS, "simple")["spec"]["replicas"] == 5
    # We no longer send replicas at all, so a scale between our read and our apply cannot be undone.
    assert ("spec", "replicas") not in fake.managed_fields(DEPLOYMENT, NS, "simple")["modeldeploy"]
    fake.reset_counters()
    await reconciler.reconcile(NS, "simple")
    assert fake.writes == []
    # Autoscaling off: the HPA goes, spec.replicas decides again.
    fake.update_spec(MODEL_DEPLOYMENT, NS, "simple", {"autoscaling": None, "replicas": 1})
    outcome = await reconciler.reconcile(NS, "simple")
    assert outcome.deleted == ["HorizontalPodAutoscaler"]
    assert fake.get_now(HPA, NS, "simple") is None
    assert fake.get_now(DEPLOYMENT, NS, "simple")["spec"]["replicas"] == 1


async def test_removing_the_budget_deletes_the_pdb(fake, reconciler):
    fake.create(md_object(disruptionBudget={"maxUnavailable": 1}))
    await converge(fake, reconciler)
    fake.update_spec(MODEL_DEPLOYMENT, NS, "simple", {"disruptionBudget": None})
    await reconciler.reconcile(NS, "simple")
    assert fake.get_now(PDB, NS, "simple") is None
    assert any(e["reason"] == "Deleted" for e in fake.events)


# --- an API server without PodDisruptionBudget.spec.unhealthyPodEvictionPolicy ----------------

OLD_SERVER = ServerCapabilities(pdb_unhealthy_pod_eviction_policy=False)


class OldApiServer(FakeCluster):
    """The fake as a Kubernetes 1.24/1.25 API server: server-side apply of a PDB that sets
    unhealthyPodEvictionPolicy fails the way kube-apiserver fails it (a 500 Status, no reason)."""

    async def apply(self, obj, *, dry_run=False):
        if obj["kind"] == "PodDisruptionBudget" and "unhealthyPodEvictionPolicy" in obj.get("spec", {}):
            meta = obj["metadata"]
            raise ApiError(500, "InternalError", f"failed to create typed patch object ({meta['namespace']}/"
                                                 f"{meta['name']}; policy/v1, Kind=PodDisruptionBudget): "
                                                 f".spec.unhealthyPodEvictionPolicy: field not declared in schema")
        return await super().apply(obj, dry_run=dry_run)


@pytest.fixture()
async def make_reconciler(tritonserver):
    """Reconcilers against a given cluster, as the operator builds them after discovery."""
    probe = SharedServerProbe(tritonserver, timeout_seconds=2.0)

    def make(cluster, capabilities=ServerCapabilities()):
        return Reconciler(cluster, ReportCache(probe), triton_port=tritonserver.http_port, clock=Clock(),
                          capabilities=capabilities)

    yield make
    await probe.close()


async def test_an_old_api_server_gets_pdbs_without_the_field_and_no_steady_state_writes(make_reconciler):
    fake = OldApiServer()
    reconciler = make_reconciler(fake, OLD_SERVER)
    fake.create(md_object(autoscaling={"maxReplicas": 3, "targetQueueTimeMicroseconds": 100},
                          disruptionBudget={"maxUnavailable": 1}))
    outcome = await reconciler.reconcile(NS, "simple")
    assert outcome.applied == ["Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"]
    pdb = fake.get_now(PDB, NS, "simple")
    assert "unhealthyPodEvictionPolicy" not in pdb["spec"] and pdb["spec"]["maxUnavailable"] == 1
    settle(fake, NS, "simple")
    await reconciler.reconcile(NS, "simple")
    assert condition(fake, "Ready")["status"] == "True"
    fake.reset_counters()
    for _ in range(3):
        await reconciler.reconcile(NS, "simple")
    assert fake.writes == [] and fake.events == []


async def test_without_the_capability_the_old_server_fails_the_whole_reconcile(make_reconciler):
    """What the capability prevents: the PDB's dry run fails the reconcile, nothing is applied."""
    fake = OldApiServer()
    fake.create(md_object(disruptionBudget={"maxUnavailable": 1}))
    with pytest.raises(ApiError, match="field not declared in schema"):
        await make_reconciler(fake).reconcile(NS, "simple")
    assert fake.get_now(DEPLOYMENT, NS, "simple") is None and fake.writes == []


async def test_learning_the_field_after_an_upgrade_applies_only_the_pdb_once(fake, make_reconciler):
    """The operator restarted after the control plane was upgraded: the PDB gains the field in one
    apply (its intent hash changed), and the steady state is write-free again."""
    fake.create(md_object(disruptionBudget={"minAvailable": 1}))
    await converge(fake, make_reconciler(fake, OLD_SERVER))
    assert "unhealthyPodEvictionPolicy" not in fake.get_now(PDB, NS, "simple")["spec"]
    after = make_reconciler(fake, ServerCapabilities())
    fake.reset_counters()
    outcome = await after.reconcile(NS, "simple")
    assert outcome.applied == ["PodDisruptionBudget"]
    assert fake.get_now(PDB, NS, "simple")["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    fake.reset_counters()
    await after.reconcile(NS, "simple")
    assert fake.writes == []


# --- problems from pods and from Triton --------------------------------------------------

async def test_unschedulable_gpus_are_surfaced(fake, reconciler):
    fake.create(md_object(resources={"gpu": 8}))
    message = "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."
    await converge(fake, reconciler, unschedulable_message=message)
    degraded = condition(fake, "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "Unschedulable"
    assert message in degraded["message"]
    assert condition(fake, "Ready")["status"] == "False"
    warnings = [e for e in fake.events if e["type"] == "Warning"]
    assert [w["reason"] for w in warnings] == ["Unschedulable"]


async def test_crash_loop_is_degraded(fake, reconciler):
    fake.create(md_object())
    await converge(fake, reconciler, ready=False, waiting_reason="CrashLoopBackOff")
    assert condition(fake, "Degraded")["reason"] == "CrashLoopBackOff"
    assert condition(fake, "Ready")["status"] == "False"


async def test_a_model_that_fails_to_load_carries_tritons_error(fake, reconciler):
    fake.create(md_object(model={"name": "broken", "repository": "s3://m/t", "version": "1"}))
    await converge(fake, reconciler)
    model_ready = condition(fake, "ModelReady")
    assert model_ready["status"] == "False" and model_ready["reason"] == "ModelLoadFailed"
    assert "weights file missing" in model_ready["message"]
    assert condition(fake, "Ready")["status"] == "False"
    assert condition(fake, "Degraded")["reason"] == "ModelLoadFailed"


async def test_a_version_triton_does_not_have(fake, reconciler):
    fake.create(md_object(model={"name": "simple", "repository": "s3://m/t", "version": "9"}))
    await converge(fake, reconciler)
    assert condition(fake, "ModelReady")["reason"] == "VersionNotLoaded"
    assert condition(fake, "Ready")["status"] == "False"


async def test_unreachable_triton_is_not_ready(fake, reconciler):
    fake.create(md_object())
    await converge(fake, reconciler, pod_ip="127.0.0.2")  # nothing listens there
    assert condition(fake, "ModelReady")["reason"] == "TritonUnreachable"
    assert condition(fake, "Ready")["status"] == "False"


async def test_not_ready_objects_are_polled_with_backoff(fake, reconciler):
    fake.create(md_object(model={"name": "broken", "repository": "s3://m/t", "version": "1"}))
    await converge(fake, reconciler)
    intervals = [(await reconciler.reconcile(NS, "simple")).requeue_after for _ in range(4)]
    assert intervals[0] >= POLL_FIRST_SECONDS and intervals == sorted(intervals) and intervals[-1] > intervals[0]


# --- version rollouts ---------------------------------------------------------------------

async def test_version_rollout_progresses_and_completes(fake, reconciler):
    fake.create(md_object(replicas=2))
    await converge(fake, reconciler)
    fake.update_spec(MODEL_DEPLOYMENT, NS, "simple", {"model": {"name": "simple", "repository": "s3://models/triton",
                                                                "version": "2"}})
    await reconciler.reconcile(NS, "simple")
    template = fake.get_now(DEPLOYMENT, NS, "simple")["spec"]["template"]
    assert template["metadata"]["labels"]["app.kubernetes.io/version"] == "2"
    rolling(fake, NS, "simple", updated=1)
    await reconciler.reconcile(NS, "simple")
    status = status_of(fake)
    assert status["currentVersion"] == "1" and status["targetVersion"] == "2"
    assert status["rollout"]["phase"] == "Progressing"
    assert condition(fake, "Progressing")["status"] == "True"
    assert {v["version"] for v in status["versions"]} == {"1", "2"}
    settle(fake, NS, "simple")
    await reconciler.reconcile(NS, "simple")
    status = status_of(fake)
    assert status["currentVersion"] == "2" and status["rollout"]["phase"] == "Idle"
    assert condition(fake, "Ready")["status"] == "True"
    reasons = [e["reason"] for e in fake.events]
    assert "RolloutStarted" in reasons and "RolloutComplete" in reasons


async def test_a_version_that_cannot_load_is_rolled_back(fake, reconciler):
    fake.create(md_object())
    await converge(fake, reconciler)
    fake.update_spec(MODEL_DEPLOYMENT, NS, "simple", {"model": {"name": "simple", "repository": "s3://models/triton",
                                                                "version": "7"}})
    await reconciler.reconcile(NS, "simple")
    rolling(fake, NS, "simple", updated=1, ready=False)
    await reconciler.reconcile(NS, "simple")  # Triton: version 7 is not there → failed
    assert status_of(fake)["rollout"]["failedVersion"] == "7"
    await reconciler.reconcile(NS, "simple")  # renders version 1 again
    template = fake.get_now(DEPLOYMENT, NS, "simple")["spec"]["template"]
    assert template["metadata"]["labels"]["app.kubernetes.io/version"] == "1"
    settle(fake, NS, "simple")
    await reconciler.reconcile(NS, "simple")
    status = status_of(fake)
    assert status["rollout"]["phase"] == "RolledBack" and status["currentVersion"] == "1"
    assert condition(fake, "Degraded")["reason"] == "RolledBack"
    assert condition(fake, "Ready")["status"] == "False"
    assert any(e["type"] == "Warning" and e["reason"] == "RolledBack" for e in fake.events)


def triton_image(fake):
    return fake.get_now(DEPLOYMENT, NS, "simple")["spec"]["template"]["spec"]["containers"][0]["image"]


async def test_a_crash_looping_image_change_is_rolled_back_in_the_reconcile_that_sees_it(fake, reconciler):
    fake.create(md_object(replicas=2))
    await converge(fake, reconciler)
    good = triton_image(fake)
    fake.update_spec(MODEL_DEPLOYMENT, NS, "simple", {"triton": {"image": "registry.example.com/triton:broken"}})
    await reconciler.reconcile(NS, "simple")
    assert triton_image(fake) == "registry.example.com/triton:broken"
    rolling(fake, NS, "simple", updated=1, waiting_reason="CrashLoopBackOff")  # the kubelet: 5 restarts
    await reconciler.reconcile(NS, "simple")
    assert triton_image(fake) == good  # the same reconcile put the previous image back
    rollout = status_of(fake)["rollout"]
    assert rollout["phase"] == "Progressing" and condition(fake, "Progressing")["reason"] == "RollingBack"
    assert rollout["failedVersion"] == "1" and "restarted 5 times" in rollout["failureMessage"]
    settle(fake, NS, "simple")
    await reconciler.reconcile(NS, "simple")
    assert status_of(fake)["rollout"]["phase"] == "RolledBack"
    assert "the change of triton.image" in condition(fake, "Degraded")["message"]
    # Scaling is not a new template: the broken image stays away, and the failure stays in status.
    fake.scale(MODEL_DEPLOYMENT, NS, "simple", 3)
    await reconciler.reconcile(NS, "simple")
    assert triton_image(fake) == good and fake.get_now(DEPLOYMENT, NS, "simple")["spec"]["replicas"] == 3
    assert status_of(fake)["rollout"]["failedTemplate"] == rollout["failedTemplate"]


async def test_an_image_pull_that_keeps_failing_is_rolled_back_after_the_grace(fake, reconciler):
    fake.create(md_object(rollout={"failAfterUnhealthySeconds": 30}))
    await converge(fake, reconciler)
    good = triton_image(fake)
    fake.update_spec(MODEL_DEPLOYMENT, NS, "simple", {"triton": {"image": "registry.example.com/triton:typo"}})
    await reconciler.reconcile(NS, "simple")
    rolling(fake, NS, "simple", updated=1, waiting_reason="ImagePullBackOff")
    outcome = await reconciler.reconcile(NS, "simple")
    assert triton_image(fake) != good and status_of(fake)["rollout"]["unhealthySince"]
    assert outcome.requeue_after <= 31  # looked at again when the grace ends, not a poll later
    reconciler.clock.advance(31)
    await reconciler.reconcile(NS, "simple")
    assert triton_image(fake) == good
    assert "ImagePullBackOff" in status_of(fake)["rollout"]["failureMessage"]


# --- bad and hostile input ----------------------------------------------------------------

async def test_invalid_spec_is_reported_once_and_nothing_is_applied(fake, reconciler):
    fake.create(md_object(resources={"gpu": 1, "mig": "1g.10gb"}))  # the fake does not run the CRD's CEL
    outcome = await reconciler.reconcile(NS, "simple")
    assert outcome.result == "invalid" and outcome.applied == []
    ready = condition(fake, "Ready")
    assert ready["reason"] == "InvalidSpec" and "mutually exclusive" in ready["message"]
    assert [c["type"] for c in status_of(fake)["conditions"]] == list(CONDITION_TYPES)
    assert condition(fake, "Stalled")["status"] == "True" and condition(fake, "Reconciling")["status"] == "False"
    assert [(e["type"], e["reason"]) for e in fake.events] == [("Warning", "InvalidSpec")]
    fake.reset_counters()
    await reconciler.reconcile(NS, "simple")
    assert fake.writes == []


async def test_missing_secret_blocks_everything_until_it_exists(fake, reconciler):
    fake.create(md_object(model={"name": "simple", "repository": "s3://m/t", "version": "1",
                                 "credentialsSecret": "s3-creds"}))
    outcome = await reconciler.reconcile(NS, "simple")
    assert outcome.applied == [] and fake.get_now(DEPLOYMENT, NS, "simple") is None
    assert condition(fake, "Degraded")["reason"] == "SecretNotFound"
    assert "s3-creds" in condition(fake, "Degraded")["message"]
    assert [e["reason"] for e in fake.events if e["type"] == "Warning"] == ["SecretNotFound"]
    fake.add_secret(NS, "s3-creds")
    outcome = await reconciler.reconcile(NS, "simple")
    assert outcome.applied == ["Deployment", "Service"]


async def test_missing_pvc(fake, reconciler):
    fake.create(md_object(model={"name": "simple", "repository": "pvc://store/triton", "version": "1"}))
    await reconciler.reconcile(NS, "simple")
    assert condition(fake, "Degraded")["reason"] == "PVCNotFound"


async def test_a_foreign_child_is_never_overwritten(fake, reconciler):
    fake.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "simple", "namespace": NS},
                 "spec": {"ports": [{"port": 80}]}})
    fake.create(md_object())
    outcome = await reconciler.reconcile(NS, "simple")
    assert outcome.applied == []
    assert condition(fake, "Degraded")["reason"] == "ChildConflict"
    assert fake.get_now(SERVICE, NS, "simple")["spec"]["ports"][0]["port"] == 80
    assert not fake.get_now(SERVICE, NS, "simple")["metadata"].get("ownerReferences")


async def test_a_child_the_api_server_refuses_leaves_nothing_half_applied(fake, reconciler):
    fake.create(md_object(disruptionBudget={"maxUnavailable": 1}))
    fake.fail_next_apply(PDB, ApiError(422, "Invalid", 'PodDisruptionBudget "simple" is invalid: spec: bad'))
    outcome = await reconciler.reconcile(NS, "simple")
    assert outcome.applied == [] and fake.get_now(DEPLOYMENT, NS, "simple") is None
    assert condition(fake, "Degraded")["reason"] == "InvalidSpec"
    assert "PodDisruptionBudget vision/simple" in condition(fake, "Degraded")["message"]


async def test_service_monitor_without_its_crd_degrades_but_serves(fake, reconciler):
    fake.uninstall(SERVICE_MONITOR)
    fake.create(md_object(monitoring={"serviceMonitor": True}))
    await converge(fake, reconciler)
    assert fake.get_now(DEPLOYMENT, NS, "simple") is not None
    assert condition(fake, "Degraded")["reason"] == "ServiceMonitorUnavailable"
    assert condition(fake, "ModelReady")["status"] == "True"


async def test_service_monitor_is_applied_when_installed(fake, reconciler):
    fake.create(md_object(monitoring={"serviceMonitor": True}))
    outcome = await reconciler.reconcile(NS, "simple")
    assert "ServiceMonitor" in outcome.applied


async def test_one_broken_object_does_not_affect_another(fake, reconciler):
    fake.create(md_object("bad", resources={"gpu": 1, "mig": "1g.10gb"}))
    fake.create(md_object("good"))
    await reconciler.reconcile(NS, "bad")
    await converge(fake, reconciler, "good")
    assert condition(fake, "Ready", "good")["status"] == "True"
    assert condition(fake, "Ready", "bad")["reason"] == "InvalidSpec"


async def test_deleting_the_model_deployment_collects_children(fake, reconciler):
    fake.create(md_object(disruptionBudget={"maxUnavailable": 1}))
    await converge(fake, reconciler)
    fake.delete_as_user(MODEL_DEPLOYMENT, NS, "simple")
    for kind in (DEPLOYMENT, SERVICE, PDB):
        assert fake.get_now(kind, NS, "simple") is None
    outcome = await reconciler.reconcile(NS, "simple")
    assert outcome.result == "deleted"


# --- fencing: status is written only over the object the reconcile read ------------------------------

async def test_a_status_write_over_a_changed_object_is_refused_and_simply_retried(fake, reconciler, monkeypatch):
    """Someone writes the ModelDeployment between our read and our status write (a user's edit, or a
    second operator replica that still thinks it leads): the write carries the resourceVersion we read,
    the API server answers 409, and the reconcile is run again, with no error, backoff or Warning."""
    from modeldeploy.reconciler import CONFLICT_RETRY_SECONDS

    fake.create(md_object())
    write_status = fake.patch_status

    async def edited_meanwhile(namespace, name, status, **kwargs):
        monkeypatch.setattr(fake, "patch_status", write_status)  # once
        fake.update_spec(MODEL_DEPLOYMENT, NS, "simple", {"replicas": 2})
        return await write_status(namespace, name, status, **kwargs)

    monkeypatch.setattr(fake, "patch_status", edited_meanwhile)
    outcome = await reconciler.reconcile(NS, "simple")
    assert outcome.result == "ok" and not outcome.status_written
    assert outcome.requeue_after == CONFLICT_RETRY_SECONDS
    assert "status" not in fake.get_now(MODEL_DEPLOYMENT, NS, "simple")  # nothing written over the edit
    assert [e["reason"] for e in fake.events] == ["Created"]  # the children were created: that is said
    # The retry reads the edited object and writes status for it.
    outcome = await reconciler.reconcile(NS, "simple")
    assert outcome.status_written and status_of(fake)["observedGeneration"] == 2
    assert fake.get_now(DEPLOYMENT, NS, "simple")["spec"]["replicas"] == 2
    assert [e["type"] for e in fake.events] == ["Normal", "Normal"]  # Created, then Updated; no Warning


async def test_the_status_write_names_the_resource_version_it_read(fake, reconciler, monkeypatch):
    fake.create(md_object())
    read = fake.get_now(MODEL_DEPLOYMENT, NS, "simple")["metadata"]["resourceVersion"]
    seen = []
    write_status = fake.patch_status

    async def spy(namespace, name, status, **kwargs):
        seen.append(kwargs.get("resource_version"))
        return await write_status(namespace, name, status, **kwargs)

    monkeypatch.setattr(fake, "patch_status", spy)
    await reconciler.reconcile(NS, "simple")
    assert seen == [read]


async def test_the_fake_refuses_a_stale_status_write_like_the_api_server(fake):
    fake.create(md_object())
    stored = fake.get_now(MODEL_DEPLOYMENT, NS, "simple")
    fake.update_spec(MODEL_DEPLOYMENT, NS, "simple", {"replicas": 2})
    with pytest.raises(ApiError) as refused:
        await fake.patch_status(NS, "simple", {"observedGeneration": 1},
                                resource_version=stored["metadata"]["resourceVersion"])
    assert (refused.value.status, refused.value.reason) == (409, "Conflict")
    current = fake.get_now(MODEL_DEPLOYMENT, NS, "simple")["metadata"]["resourceVersion"]
    written = await fake.patch_status(NS, "simple", {"observedGeneration": 2}, resource_version=current)
    assert written["status"] == {"observedGeneration": 2}


# --- reads from watch caches ------------------------------------------------------------------

@pytest.fixture()
async def lagging(fake, tritonserver):
    """A reconciler reading from a watch cache whose events wait until the test delivers them."""
    probe = SharedServerProbe(tritonserver, timeout_seconds=2.0)
    held: list = []
    cluster = watch_cached(fake, lagging=held)

    def deliver():
        for event in held:
            cluster.cache.observe(*event)
        held.clear()

    yield Reconciler(cluster, ReportCache(probe), triton_port=tritonserver.http_port, clock=Clock()), deliver
    await probe.close()


async def test_a_steady_state_reconcile_from_watch_caches_sends_no_request_at_all(fake, tritonserver):
    probe = SharedServerProbe(tritonserver, timeout_seconds=2.0)
    reconciler = Reconciler(watch_cached(fake), ReportCache(probe), triton_port=tritonserver.http_port,
                            clock=Clock())
    fake.create(md_object(replicas=2, disruptionBudget={"minAvailable": 1}))
    await converge(fake, reconciler)
    assert condition(fake, "Ready")["status"] == "True"
    fake.reset_counters()
    for _ in range(3):
        await reconciler.reconcile(NS, "simple")
    assert fake.calls == []  # no read, no write: the object, its children and its pods come from the cache
    await probe.close()


async def test_a_lagging_cache_sees_its_own_writes_and_does_not_repeat_them(fake, lagging):
    reconciler, deliver = lagging
    deliver()  # the ModelDeployment's ADDED
    fake.create(md_object())
    deliver()
    first = await reconciler.reconcile(NS, "simple")
    assert first.applied == ["Deployment", "Service"]
    fake.reset_counters()
    again = await reconciler.reconcile(NS, "simple")  # the watch has delivered none of that yet
    assert again.applied == [] and fake.calls == []  # not even a look to check that they exist


async def test_a_stale_object_in_the_cache_causes_no_wrong_write(fake, lagging):
    reconciler, deliver = lagging
    fake.create(md_object())
    deliver()
    settle_and_converge = await reconciler.reconcile(NS, "simple")
    assert settle_and_converge.applied == ["Deployment", "Service"]
    settle(fake, NS, "simple")
    deliver()
    await reconciler.reconcile(NS, "simple")
    assert condition(fake, "Ready")["status"] == "True"
    # The user scales to 3; the cache has not seen it: the reconcile acts on what it read, which
    # changes no child, and its status write is refused as stale (409), so it is simply retried.
    fake.update_spec(MODEL_DEPLOYMENT, NS, "simple", {"replicas": 3})
    fake.reset_counters()
    outcome = await reconciler.reconcile(NS, "simple")
    assert outcome.applied == [] and [w[0] for w in fake.writes] in ([], ["patch_status"])
    assert fake.get_now(DEPLOYMENT, NS, "simple")["spec"]["replicas"] == 1
    deliver()  # the edit's event arrives (and triggers the reconcile that acts on it)
    outcome = await reconciler.reconcile(NS, "simple")
    assert outcome.applied == ["Deployment"]
    assert fake.get_now(DEPLOYMENT, NS, "simple")["spec"]["replicas"] == 3


async def test_a_foreign_object_the_watch_cannot_see_is_still_a_conflict(fake, lagging):
    reconciler, deliver = lagging
    fake.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "simple", "namespace": NS},
                 "spec": {"ports": [{"port": 80}]}})
    fake.create(md_object())
    deliver()  # the Service has no managed-by label: to our label-selected watch it does not exist
    assert reconciler.cluster.cache.get(SERVICE, NS, "simple") is None
    await reconciler.reconcile(NS, "simple")
    assert condition(fake, "Degraded")["reason"] == "ChildConflict"
    assert fake.get_now(SERVICE, NS, "simple")["spec"]["ports"] == [{"port": 80, "protocol": "TCP",
                                                                    "targetPort": 80}]
