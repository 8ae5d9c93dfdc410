"""Pure status derivation: conditions that tell the truth, from observed data."""

from __future__ import annotations

from modeldeploy.api import CONDITION_TYPES
from modeldeploy.errors import parse_model_deployment
from modeldeploy.pods import Problem, container_id, is_running, pod_problems, rollout_progress
from modeldeploy.status import Observed, derive_status, invalid_status
from tests.support.specs import minimal
from tests.support.world import Report, deployment, pod

NOW = "2026-11-23T08:00:00Z"
LATER = "2026-11-23T09:00:00Z"


def md(version="3", generation=1, **spec):
    doc = minimal(**spec)
    doc["spec"]["model"]["version"] = version
    doc["metadata"].update(uid="u", generation=generation)
    return parse_model_deployment(doc)


def conditions(status):
    return {c["type"]: c for c in status["conditions"]}


def serving_world(version="3", n=2):
    pods = [pod(f"p{i}", version) for i in range(n)]
    return Observed(deployment=deployment(version, replicas=n), pods=pods,
                    reports={p["metadata"]["uid"]: Report() for p in pods})


def test_ready_when_the_rollout_is_complete_and_triton_agrees():
    status = derive_status(md(), serving_world(), {}, NOW)
    cond = conditions(status)
    assert [c["type"] for c in status["conditions"]] == list(CONDITION_TYPES)
    assert cond["Reconciling"]["status"] == "False" and cond["Stalled"]["status"] == "False"
    assert cond["Ready"]["status"] == "True" and cond["Ready"]["reason"] == "ModelServing"
    assert cond["ModelReady"]["status"] == "True" and cond["Degraded"]["status"] == "False"
    assert cond["Progressing"]["status"] == "False" and cond["Progressing"]["reason"] == "RolloutComplete"
    assert status["currentVersion"] == status["targetVersion"] == "3"
    assert status["observedGeneration"] == 1 and all(c["observedGeneration"] == 1 for c in status["conditions"])
    assert status["versions"] == [{"version": "3", "replicas": 2, "readyReplicas": 2, "modelReady": 2}]
    assert status["replicaSummary"] == "2/2"
    assert status["selector"] == "app.kubernetes.io/name=triton,app.kubernetes.io/instance=resnet50"
    assert status["endpoints"]["grpc"] == "resnet50.vision.svc:8001"


def test_pods_ready_but_triton_says_no_is_not_ready():
    world = serving_world()
    reports = {uid: Report(version_ready=False, reason="ModelLoadFailed", message="weights file missing")
               for uid in world.reports}
    status = derive_status(md(), Observed(deployment=world.deployment, pods=world.pods, reports=reports), {}, NOW)
    cond = conditions(status)
    assert cond["Ready"]["status"] == "False" and cond["Ready"]["reason"] == "ModelLoadFailed"
    assert cond["ModelReady"]["message"] == "pod p0: weights file missing (and 1 more pods)"
    assert cond["Degraded"]["status"] == "True" and cond["Degraded"]["reason"] == "ModelLoadFailed"


def test_not_probed_yet_is_not_ready():
    world = serving_world()
    status = derive_status(md(), Observed(deployment=world.deployment, pods=world.pods), {}, NOW)
    assert conditions(status)["Ready"]["status"] == "False"
    assert conditions(status)["ModelReady"]["reason"] == "ModelStatusUnknown"


def test_rolling_update_is_progressing_and_keeps_the_old_current_version():
    previous = derive_status(md("3"), serving_world("3"), {}, NOW)
    pods = [pod("old", "3"), pod("new", "4", ready=False)]
    observed = Observed(deployment=deployment("4", replicas=2, updated=1, ready=1, total=3), pods=pods,
                        reports={"uid-old": Report(), "uid-new": Report(version_ready=False, reason="ModelLoading",
                                                                          message="loading")})
    status = derive_status(md("4", generation=2), observed, previous, LATER)
    cond = conditions(status)
    assert status["currentVersion"] == "3" and status["targetVersion"] == "4"
    assert cond["Progressing"]["status"] == "True" and cond["Progressing"]["reason"] == "RollingUpdate"
    assert status["rollout"]["phase"] == "Progressing"
    assert "1 of 2 new replicas have been updated" in status["rollout"]["message"]
    assert cond["Ready"]["status"] == "False"
    assert cond["Reconciling"]["status"] == "True" and cond["Stalled"]["status"] == "False"
    assert {v["version"]: v["replicas"] for v in status["versions"]} == {"3": 1, "4": 1}


def test_version_becomes_current_only_when_the_rollout_completes():
    previous = derive_status(md("3"), serving_world("3"), {}, NOW)
    status = derive_status(md("4", generation=2), serving_world("4"), previous, LATER)
    assert status["currentVersion"] == "4"
    assert conditions(status)["Ready"]["status"] == "True"


def test_last_transition_time_moves_only_when_status_flips():
    first = derive_status(md(), serving_world(), {}, NOW)
    again = derive_status(md(), serving_world(), first, LATER)
    assert again == first  # nothing changed: nothing to write
    world = serving_world()
    broken = Observed(deployment=world.deployment, pods=world.pods,
                      reports={u: Report(version_ready=False, reason="ModelLoadFailed", message="x")
                               for u in world.reports})
    flipped = derive_status(md(), broken, first, LATER)
    assert conditions(flipped)["Ready"]["lastTransitionTime"] == LATER
    assert conditions(flipped)["Available"]["lastTransitionTime"] == NOW


def test_unschedulable_gpu_request_is_surfaced():
    message = "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."
    observed = Observed(deployment=deployment(replicas=1, updated=1, ready=0),
                        pods=[pod("p0", unschedulable=message)])
    cond = conditions(derive_status(md(), observed, {}, NOW))
    assert cond["Degraded"]["status"] == "True" and cond["Degraded"]["reason"] == "Unschedulable"
    assert cond["Degraded"]["message"] == f"pod p0: {message}"
    # A cluster autoscaler may still add a GPU node: still reconciling, not stalled.
    assert cond["Reconciling"]["status"] == "True" and cond["Stalled"]["status"] == "False"
    assert cond["Ready"]["status"] == "False" and cond["Ready"]["reason"] == "Unschedulable"


def test_crash_loop_is_degraded_with_the_exit_code():
    observed = Observed(deployment=deployment(replicas=1, ready=0),
                        pods=[pod("p0", ready=False, waiting="CrashLoopBackOff", last_exit=139)])
    cond = conditions(derive_status(md(), observed, {}, NOW))
    assert cond["Degraded"]["reason"] == "CrashLoopBackOff"
    assert "last exit code 139 (Error)" in cond["Degraded"]["message"]


def test_image_pull_problems_are_one_reason():
    problems = pod_problems([pod("a", waiting="ErrImagePull"), pod("b", waiting="ImagePullBackOff")])
    assert [p.reason for p in problems] == ["ImagePullBackOff", "ImagePullBackOff"]


def test_progress_deadline_exceeded_is_degraded():
    observed = Observed(deployment=deployment(replicas=2, updated=1, deadline_exceeded=True), pods=[])
    status = derive_status(md(), observed, {}, NOW)
    assert conditions(status)["Degraded"]["reason"] == "ProgressDeadlineExceeded"
    assert status["rollout"]["phase"] == "Failed"


def test_scaled_to_zero_is_not_ready():
    status = derive_status(md(replicas=0), Observed(deployment=deployment(replicas=0), pods=[]), {}, NOW)
    assert conditions(status)["Ready"]["reason"] == "ScaledToZero"
    assert conditions(status)["Degraded"]["status"] == "False"
    # The desired state is reached: kstatus must say Current, not InProgress.
    assert conditions(status)["Reconciling"]["status"] == "False" and conditions(status)["Stalled"]["status"] == "False"


def test_blocking_problem_is_ready_false_and_degraded():
    problem = Problem("SecretNotFound", "spec.model.credentialsSecret: Secret vision/s3 not found")
    status = derive_status(md(), Observed(problem=problem), {}, NOW)
    cond = conditions(status)
    assert cond["Ready"]["reason"] == "SecretNotFound" and cond["Degraded"]["reason"] == "SecretNotFound"
    assert cond["Available"]["reason"] == "DeploymentMissing"


def test_invalid_spec_keeps_every_condition_type():
    problem = Problem("InvalidSpec", "spec.replicas: must be >= 0")
    status = invalid_status(4, "resnet50", problem, {}, NOW)
    cond = conditions(status)
    assert list(cond) == list(CONDITION_TYPES)
    assert cond["Stalled"]["status"] == "True" and cond["Reconciling"]["status"] == "False"
    assert cond["Ready"]["status"] == "False" and cond["Degraded"]["message"] == "spec.replicas: must be >= 0"
    assert cond["ModelReady"]["status"] == "Unknown"
    assert status["observedGeneration"] == 4


def test_invalid_spec_keeps_what_is_still_true_of_the_pods():
    serving = derive_status(md(), serving_world(), {}, NOW)
    status = invalid_status(2, "resnet50", Problem("InvalidSpec", "bad"), serving, LATER)
    cond = conditions(status)
    assert cond["ModelReady"]["status"] == "True" and cond["ModelReady"]["lastTransitionTime"] == NOW
    assert status["currentVersion"] == "3"


def test_rollout_progress_follows_kubectl_rollout_status():
    assert rollout_progress(deployment(generation=2, observed_generation=1)).message.startswith("waiting")
    assert not rollout_progress(deployment(replicas=3, updated=2)).complete
    assert rollout_progress(deployment(replicas=2, total=3)).message == "1 old replicas are pending termination"
    assert rollout_progress(deployment(replicas=2, available=1)).message == "1 of 2 updated replicas are available"
    assert rollout_progress(deployment(replicas=2)).complete
    assert rollout_progress(None).message == "the Deployment does not exist yet"


def test_a_crash_looping_container_is_not_asked_about_its_model():
    assert is_running(pod("a"))
    looping = pod("b", ready=False, waiting="CrashLoopBackOff")
    assert looping["status"]["phase"] == "Running" and not is_running(looping)


def test_a_container_still_loading_is_not_asked_and_a_restart_is_a_new_question():
    loading = pod("a")
    loading["status"]["containerStatuses"] = [{"name": "triton", "state": {"running": {}}, "started": False,
                                               "containerID": "containerd://1"}]
    assert not is_running(loading)
    started = pod("a")
    started["status"]["containerStatuses"] = [{"name": "triton", "state": {"running": {}}, "started": True,
                                               "containerID": "containerd://1"}]
    restarted = pod("a")
    restarted["status"]["containerStatuses"] = [{"name": "triton", "state": {"running": {}}, "started": True,
                                                 "containerID": "containerd://2"}]
    assert is_running(started) and container_id(started) != container_id(restarted)


def test_a_blocked_spec_is_not_called_a_rollout():
    status = derive_status(md(), Observed(problem=Problem("SecretNotFound", "Secret vision/s3 not found")), {}, NOW)
    progressing = conditions(status)["Progressing"]
    assert (progressing["status"], progressing["reason"]) == ("False", "SecretNotFound")


def test_the_deadline_message_is_said_once():
    observed = Observed(deployment=deployment(replicas=2, updated=1, deadline_exceeded=True), pods=[])
    message = conditions(derive_status(md(), observed, {}, NOW))["Ready"]["message"]
    assert message.count("has timed out progressing") == 1


def test_a_version_the_sidecar_has_not_pinned_yet_is_loading_not_failed():
    """s3/gs/as: until the pin-loaded sidecar turns Ready, Triton serves what the repository's policy
    loaded; "version not loaded" then means "not yet", never Stalled."""
    waiting = pod("p0", ready=False)
    waiting["status"]["containerStatuses"] = [
        {"name": "triton", "ready": False, "state": {"running": {}}, "started": True},
        {"name": "pin-loaded", "ready": False, "state": {"running": {}}}]
    observed = Observed(deployment=deployment(replicas=1, ready=0), pods=[waiting],
                        reports={"uid-p0": Report(False, "VersionNotLoaded", "version 3 is not loaded (loaded: 5)")})
    cond = conditions(derive_status(md(), observed, {}, NOW))
    assert cond["ModelReady"]["reason"] == "VersionPinning" and "(loaded: 5)" in cond["ModelReady"]["message"]
    assert cond["Stalled"]["status"] == "False" and cond["Degraded"]["status"] == "False"
    waiting["status"]["containerStatuses"][1]["ready"] = True  # pinned, or refused: Triton's word is final
    cond = conditions(derive_status(md(), observed, {}, NOW))
    assert cond["ModelReady"]["reason"] == "VersionNotLoaded" and cond["Stalled"]["status"] == "True"
