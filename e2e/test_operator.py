"""The operator (the chart's pod, the chart's RBAC) against a real API server and real Triton pods:
children, status, waits, rollouts and rollbacks, drift, HPA, scale, failures, GC."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from e2e.conftest import (OPERATOR_IMAGE, apply, condition, get_json, kubectl, kubectl_wait_ready, model_deployment,
                          model_store, pods_of, wait_for, wait_for_condition)
from tests.support.tritonserver import BROKEN_ERROR, BROKEN_MODEL, write_model

CHILDREN = ("deployment", "service")

# A model version that makes Triton exit soon after every start, as a crashing backend would. The
# model runs in the python backend's stub process; tritonserver is PID 1 of the container, which
# ignores signals it has no handler for, and Triton installs its handlers only after the startup
# load: so the stub keeps signalling until Triton is gone. SIGSEGV is what a crash raises (Triton
# handles it by printing a backtrace and exiting), SIGTERM the fallback.
EXITING_MODEL = """\
import os
import signal
import threading
import time


def _crash_triton():
    while True:
        time.sleep(0.5)
        for signo in (signal.SIGSEGV, signal.SIGTERM):
            try:
                os.kill(1, signo)
            except ProcessLookupError:
                return


class TritonPythonModel:
    def initialize(self, args):
        threading.Thread(target=_crash_triton, daemon=True).start()

    def execute(self, requests):
        return []
"""


def simple_store(namespace: str, versions: tuple[int, ...] = (1, 2)) -> Path:
    """The namespace's `models` claim holding `simple` (x * version, version_policy all) and `broken`."""
    repository = model_store(namespace)
    write_model(repository, "simple", versions)
    write_model(repository, "broken", (1,), all_versions=False, source=BROKEN_MODEL)
    return repository


def infer(pod_ip: str, model: str, version: str) -> list[float]:
    body = {"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    request = urllib.request.Request(f"http://{pod_ip}:8000/v2/models/{model}/versions/{version}/infer",
                                     data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)["outputs"][0]["data"]


class ConditionWatch:
    """Samples conditions of md/name in the background, to show that one never turned False."""

    def __init__(self, namespace: str, name: str, kinds: tuple[str, ...]) -> None:
        self.namespace, self.name, self.kinds = namespace, name, kinds
        self.seen: list[tuple[str, str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            md = get_json("md", self.name, "-n", self.namespace)
            for kind in self.kinds:
                cond = condition(md, kind)
                self.seen.append((kind, cond.get("status", ""), cond.get("reason", "")))
            time.sleep(0.3)

    def __enter__(self) -> ConditionWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def falses(self) -> list[tuple[str, str, str]]:
        return [s for s in self.seen if s[1] != "True"]


def test_becomes_ready_on_real_pods_running_the_rendered_spec(namespace):
    simple_store(namespace)
    apply(model_deployment("simple", namespace, replicas=2, disruptionBudget={"maxUnavailable": 1}))
    kubectl_wait_ready(namespace, "simple")
    md = get_json("md", "simple", "-n", namespace)
    status = md["status"]
    assert status["observedGeneration"] == md["metadata"]["generation"]
    assert status["currentVersion"] == status["targetVersion"] == "1"
    assert status["readyReplicas"] == 2 and status["replicaSummary"] == "2/2"
    assert condition(md, "ModelReady")["status"] == "True"
    assert status["model"]["backend"] == "python" and status["model"]["maxBatchSize"] == 8
    assert status["versions"] == [{"version": "1", "replicas": 2, "readyReplicas": 2, "modelReady": 2}]
    for kind in (*CHILDREN, "poddisruptionbudget"):
        child = get_json(kind, "simple", "-n", namespace)
        (owner,) = child["metadata"]["ownerReferences"]
        assert owner["kind"] == "ModelDeployment" and owner["uid"] == md["metadata"]["uid"] and owner["controller"]
    columns = kubectl("get", "md", "simple", "-n", namespace).stdout.split("\n")[0].split()
    assert columns[:6] == ["NAME", "READY", "MODEL", "VERSION", "REPLICAS", "ROLLOUT"]
    # The pods run what the operator rendered, and Triton in them really serves the model.
    pods = pods_of(namespace, "simple")
    assert len(pods) == 2
    for pod in pods:
        container = pod["spec"]["containers"][0]
        assert "--load-model=simple" in container["args"]
        assert any(m["mountPath"] == "/dev/shm" for m in container["volumeMounts"])
        state = pod["status"]["containerStatuses"][0]
        assert state["ready"] and state["restartCount"] == 0
        uid = kubectl("exec", pod["metadata"]["name"], "-n", namespace, "--", "id", "-u").stdout.strip()
        assert uid == "1000"
        assert infer(pod["status"]["podIP"], "simple", "1") == [1, 2, 3, 4]


def test_a_version_triton_does_not_have_is_not_ready_with_tritons_reason(namespace):
    simple_store(namespace)
    apply(model_deployment("simple", namespace, model={"name": "simple", "repository": "pvc://models/triton",
                                                       "version": "9"}))
    md = wait_for_condition(namespace, "simple", "ModelReady", reason="VersionNotLoaded")
    assert condition(md, "Ready")["status"] == "False"
    assert "version 9 is not loaded" in condition(md, "ModelReady")["message"]


def test_a_model_that_fails_to_load_reports_tritons_error(namespace):
    simple_store(namespace)
    apply(model_deployment("broken", namespace, model={"name": "broken", "repository": "pvc://models/triton",
                                                       "version": "1"}))
    md = wait_for_condition(namespace, "broken", "ModelReady", reason="ModelLoadFailed")
    assert BROKEN_ERROR in condition(md, "ModelReady")["message"]
    assert condition(md, "Ready")["status"] == "False"


def set_version(namespace: str, name: str, version: str) -> None:
    kubectl("patch", "md", name, "-n", namespace, "--type=merge", "-p",
            json.dumps({"spec": {"model": {"version": version}}}))


def wait_rolled_back(namespace: str, name: str, failed: str, serving: str) -> dict:
    """Until the rollback has settled: Degraded says RolledBack as soon as the failure is seen, and
    rollout.phase turns RolledBack once the old version serves on every pod again."""
    md = wait_for(f"md/{name} rolled back", lambda: (lambda obj: obj if condition(obj, "Degraded").get(
        "reason") == "RolledBack" and obj["status"]["rollout"]["phase"] == "RolledBack" else None)(
        get_json("md", name, "-n", namespace)), timeout=180)
    status = md["status"]
    assert status["rollout"]["failedVersion"] == failed, status
    assert status["currentVersion"] == serving, status
    deployment = get_json("deployment", name, "-n", namespace)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/version"] == serving
    return md


def test_rollout_to_a_new_version_then_rollback_of_one_triton_does_not_have(namespace):
    simple_store(namespace)
    apply(model_deployment("simple", namespace))
    kubectl_wait_ready(namespace, "simple")
    # Serving never stops: Available and ModelReady (about the version that serves) hold throughout.
    with ConditionWatch(namespace, "simple", ("Available", "ModelReady")) as watch:
        set_version(namespace, "simple", "2")
        wait_for("version 2 to serve", lambda: (get_json("md", "simple", "-n", namespace) or {}).get(
            "status", {}).get("currentVersion") == "2", timeout=120)
        kubectl_wait_ready(namespace, "simple")
        (pod,) = wait_for("one pod of version 2", lambda: [
            p for p in pods_of(namespace, "simple") if p["metadata"].get("deletionTimestamp") is None] or None)
        assert infer(pod["status"]["podIP"], "simple", "2") == [2, 4, 6, 8]
        set_version(namespace, "simple", "9")
        md = wait_rolled_back(namespace, "simple", failed="9", serving="2")
    assert condition(md, "Ready")["status"] == "False"
    assert watch.falses() == [], f"serving was interrupted: {watch.falses()}"


def versions_ready(pod: dict) -> list[int]:
    """Which of versions 1, 2 and 3 of `simple` the pod's Triton says are ready."""
    ip, ready = pod["status"]["podIP"], []
    for version in (1, 2, 3):
        try:
            with urllib.request.urlopen(f"http://{ip}:8000/v2/models/simple/versions/{version}/ready", timeout=5):
                ready.append(version)
        except urllib.error.HTTPError:
            pass
    return ready


def test_each_pod_serves_exactly_its_version_whatever_the_repository_policy(namespace):
    """Versions 1, 2 and 3 and no version_policy (Triton alone would load only 3): version 1 serves,
    a rollout to 2 serves 2, and 9 (absent) is rolled back to 2."""
    repository = model_store(namespace)
    write_model(repository, "simple", (1, 2, 3), all_versions=False)
    apply(model_deployment("pinned", namespace))
    kubectl_wait_ready(namespace, "pinned")

    def serving_pods() -> list[dict]:
        return [p for p in pods_of(namespace, "pinned") if p["metadata"].get("deletionTimestamp") is None
                and all(c.get("ready") for c in p["status"].get("containerStatuses") or [{}])]

    (pod,) = serving_pods()
    assert versions_ready(pod) == [1] and infer(pod["status"]["podIP"], "simple", "1") == [1, 2, 3, 4]
    with ConditionWatch(namespace, "pinned", ("Available", "ModelReady")) as watch:
        set_version(namespace, "pinned", "2")
        wait_for("version 2 to serve", lambda: (get_json("md", "pinned", "-n", namespace) or {}).get(
            "status", {}).get("currentVersion") == "2", timeout=120)
        kubectl_wait_ready(namespace, "pinned")
        (pod,) = wait_for("one serving pod", lambda: serving_pods() if len(serving_pods()) == 1 else None)
        assert versions_ready(pod) == [2] and infer(pod["status"]["podIP"], "simple", "2") == [2, 4, 6, 8]
        set_version(namespace, "pinned", "9")
        wait_rolled_back(namespace, "pinned", failed="9", serving="2")
    assert watch.falses() == [], f"serving was interrupted: {watch.falses()}"
    (pod,) = serving_pods()
    assert versions_ready(pod) == [2]


def roll_out_a_bad_version(namespace: str, model_source: str) -> dict:
    """Version 1 serves; version 2 (model_source as its model.py) is rolled out and must be rolled
    back, with Available and ModelReady True throughout. Returns the settled ModelDeployment."""
    repository = simple_store(namespace, versions=(1,))
    apply(model_deployment("simple", namespace))
    kubectl_wait_ready(namespace, "simple")
    write_model(repository, "simple", (2,), source=model_source)
    with ConditionWatch(namespace, "simple", ("Available", "ModelReady")) as watch:
        set_version(namespace, "simple", "2")
        md = wait_rolled_back(namespace, "simple", failed="2", serving="1")
    assert watch.falses() == [], f"serving was interrupted: {watch.falses()}"
    return md


def scale_to_two_pods_of_version_1(namespace: str, name: str) -> dict:
    """kubectl scale to 2, until 2 pods of version 1 are model-ready and status observed the scale."""
    kubectl("scale", f"md/{name}", "-n", namespace, "--replicas=2")
    wait_for("2 model-ready pods of version 1", lambda: (get_json("md", name, "-n", namespace) or {}).get(
        "status", {}).get("versions") == [{"version": "1", "replicas": 2, "readyReplicas": 2, "modelReady": 2}],
        timeout=120)
    md = get_json("md", name, "-n", namespace)
    assert md["status"]["observedGeneration"] == md["metadata"]["generation"]
    return md


def test_a_version_whose_load_fails_is_rolled_back(namespace):
    md = roll_out_a_bad_version(namespace, BROKEN_MODEL)  # its initialize raises
    events = get_json("events", "-n", namespace, "--field-selector", "involvedObject.name=simple")["items"]
    assert any(BROKEN_ERROR in e.get("message", "") for e in events if e["type"] == "Warning"), \
        [e.get("message") for e in events]
    assert md["status"]["rollout"]["phase"] == "RolledBack"
    assert BROKEN_ERROR in md["status"]["rollout"]["failureMessage"]
    # kubectl scale is a new generation, but not a new pod template: version 2 stays rolled back.
    md = scale_to_two_pods_of_version_1(namespace, "simple")
    assert md["status"]["rollout"]["failedVersion"] == "2" and md["status"]["currentVersion"] == "1"
    labels = get_json("deployment", "simple", "-n", namespace)["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/version"] == "1"
    assert all(p["metadata"]["labels"]["app.kubernetes.io/version"] == "1" for p in pods_of(namespace, "simple"))


def test_a_version_that_makes_triton_exit_crash_loops_and_is_rolled_back(namespace):
    roll_out_a_bad_version(namespace, EXITING_MODEL)
    # The crash-looping pod is gone with the rollback; the kubelet's and the operator's events tell.
    events = get_json("events", "-n", namespace)["items"]
    assert any(e["reason"] == "BackOff" and "restarting failed container" in e["message"] for e in events)
    rolled_back = [e["message"] for e in events if e["reason"] == "RolledBack"]
    # Whichever evidence passed its threshold first: the restarts (3) or the back-off's duration (120 s).
    assert rolled_back and ("container triton restarted" in rolled_back[0] or "CrashLoopBackOff" in rolled_back[0]), \
        rolled_back


def triton_images(namespace: str, name: str) -> tuple[str, set[str]]:
    """The image of the Deployment's pod template, and the images of its live pods."""
    template = get_json("deployment", name, "-n", namespace)["spec"]["template"]["spec"]
    pods = [p for p in pods_of(namespace, name) if p["metadata"].get("deletionTimestamp") is None]
    return template["containers"][0]["image"], {c["image"] for p in pods for c in p["spec"]["containers"]
                                                if c["name"] == "triton"}


def test_a_crash_looping_image_change_is_rolled_back_to_the_previous_image(namespace):
    """The same model version, an image whose tritonserver cannot start (the operator's own image:
    it is on the node and has python3 for the pin step, but no tritonserver): the new pod crash-loops,
    the whole previous template comes back, and kubectl scale afterwards does not retry the image."""
    if not OPERATOR_IMAGE:
        pytest.skip("needs an image on the node without tritonserver: MODELDEPLOY_E2E_OPERATOR_IMAGE")
    simple_store(namespace, versions=(1,))
    apply(model_deployment("imaged", namespace))
    kubectl_wait_ready(namespace, "imaged")
    good_image, _ = triton_images(namespace, "imaged")
    with ConditionWatch(namespace, "imaged", ("Available", "ModelReady")) as watch:
        kubectl("patch", "md", "imaged", "-n", namespace, "--type=merge", "-p",
                json.dumps({"spec": {"triton": {"image": OPERATOR_IMAGE}}}))
        md = wait_rolled_back(namespace, "imaged", failed="1", serving="1")
    assert watch.falses() == [], f"serving was interrupted: {watch.falses()}"
    rollout = md["status"]["rollout"]
    assert f"triton.image ({good_image} → {OPERATOR_IMAGE})" in rollout["message"], rollout
    assert "container triton" in rollout["failureMessage"] or "CrashLoopBackOff" in rollout["failureMessage"]
    assert rollout["stableSpec"]["triton"]["image"] == good_image
    assert triton_images(namespace, "imaged") == (good_image, {good_image})

    # kubectl scale is a new generation, not a new pod template: the failed image stays away.
    md = scale_to_two_pods_of_version_1(namespace, "imaged")
    assert md["status"]["rollout"]["failedTemplate"] == rollout["failedTemplate"] != ""
    assert triton_images(namespace, "imaged") == (good_image, {good_image})


def test_a_crash_looping_server_is_degraded(namespace):
    simple_store(namespace)
    apply(model_deployment("crashy", namespace, triton={"args": ["--no-such-flag=1"]}))
    md = wait_for_condition(namespace, "crashy", "Degraded", reason="CrashLoopBackOff", timeout=150)
    assert condition(md, "Ready")["status"] == "False"
    assert "crashy" in condition(md, "Degraded")["message"]


def test_drift_is_repaired(namespace):
    simple_store(namespace)
    apply(model_deployment("drift", namespace))
    wait_for("the Service", lambda: get_json("service", "drift", "-n", namespace))
    kubectl("delete", "service", "drift", "-n", namespace)
    wait_for("the Service to come back", lambda: get_json("service", "drift", "-n", namespace), timeout=30)
    kubectl("patch", "deployment", "drift", "-n", namespace, "--type=json", "-p",
            json.dumps([{"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": "evil:latest"}]))
    wait_for("the image to be restored", lambda: (get_json("deployment", "drift", "-n", namespace) or {}).get(
        "spec", {}).get("template", {}).get("spec", {}).get("containers", [{}])[0].get("image") != "evil:latest",
        timeout=30)
    kubectl_wait_ready(namespace, "drift")


def test_kubectl_scale(namespace):
    simple_store(namespace)
    apply(model_deployment("scaled", namespace))
    kubectl_wait_ready(namespace, "scaled")
    kubectl("scale", "md/scaled", "-n", namespace, "--replicas=3")
    wait_for("3 replicas", lambda: (get_json("deployment", "scaled", "-n", namespace) or {}).get(
        "spec", {}).get("replicas") == 3)
    wait_for("3 ready replicas in status", lambda: (get_json("md", "scaled", "-n", namespace) or {}).get(
        "status", {}).get("readyReplicas") == 3, timeout=120)
    scale = json.loads(kubectl("get", "--raw",
                               f"/apis/modeldeploy.dev/v1alpha1/namespaces/{namespace}/modeldeployments/scaled/scale"
                               ).stdout)
    assert scale["spec"]["replicas"] == 3 and scale["status"]["replicas"] == 3
    assert "app.kubernetes.io/instance=scaled" in scale["status"]["selector"]
    kubectl_wait_ready(namespace, "scaled")


def test_the_hpa_keeps_its_replicas(namespace):
    simple_store(namespace)
    apply(model_deployment("auto", namespace, autoscaling={"minReplicas": 2, "maxReplicas": 4,
                                                           "targetQueueTimeMicroseconds": 50000}))
    wait_for("the HPA", lambda: get_json("hpa", "auto", "-n", namespace))
    wait_for("2 replicas", lambda: (get_json("deployment", "auto", "-n", namespace) or {}).get(
        "spec", {}).get("replicas") == 2)
    # What the HPA controller does: write replicas through the Deployment's scale subresource.
    kubectl("scale", "deployment/auto", "-n", namespace, "--replicas=3")
    # Poke the operator (an annotation change is a watch event; the Deployment change was one too)
    # and watch for long enough that a fight would show.
    kubectl("annotate", "md/auto", "-n", namespace, "e2e/poke=1", "--overwrite")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert get_json("deployment", "auto", "-n", namespace)["spec"]["replicas"] == 3
        time.sleep(1)
    # Switch autoscaling off: spec.replicas decides again and the HPA goes away.
    apply(model_deployment("auto", namespace, replicas=1))
    wait_for("the HPA to be deleted", lambda: get_json("hpa", "auto", "-n", namespace) is None)
    wait_for("replicas back to 1", lambda: get_json("deployment", "auto", "-n", namespace)["spec"]["replicas"] == 1)


def test_gpus_that_do_not_fit_are_unschedulable(namespace):
    simple_store(namespace)
    apply(model_deployment("huge", namespace, resources={"gpu": 9, "sharedMemory": "64Mi",
                                                         "requests": {"cpu": "50m", "memory": "128Mi"}}))
    md = wait_for_condition(namespace, "huge", "Degraded", reason="Unschedulable")
    assert "Insufficient nvidia.com/gpu" in condition(md, "Degraded")["message"]
    assert condition(md, "Ready")["status"] == "False"
    deployment = get_json("deployment", "huge", "-n", namespace)
    limits = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "9"


def test_whole_gpus_and_mig_slices_schedule_and_serve(namespace):
    simple_store(namespace)
    apply(model_deployment("gpu", namespace, resources={"gpu": 2, "sharedMemory": "64Mi",
                                                        "requests": {"cpu": "50m", "memory": "128Mi"}},
                           placement={"gpuProduct": "NVIDIA-H100-80GB-HBM3", "runtimeClassName": "nvidia"}))
    apply(model_deployment("slice", namespace, replicas=2,
                           resources={"mig": "1g.10gb", "sharedMemory": "64Mi",
                                      "requests": {"cpu": "50m", "memory": "128Mi"}},
                           placement={"gpuProduct": "NVIDIA-H100-80GB-HBM3"}))
    kubectl_wait_ready(namespace, "gpu")
    kubectl_wait_ready(namespace, "slice")
    limits = {p["metadata"]["labels"]["app.kubernetes.io/instance"]: p["spec"]["containers"][0]["resources"]["limits"]
              for p in pods_of(namespace, "gpu") + pods_of(namespace, "slice")}
    assert limits["gpu"]["nvidia.com/gpu"] == "2" and limits["slice"]["nvidia.com/mig-1g.10gb"] == "1"


def test_the_api_server_refuses_specs_that_break_a_rule(namespace):
    result = apply(model_deployment("both", namespace, resources={"gpu": 1, "mig": "1g.10gb"}), check=False)
    assert result.returncode != 0
    assert "resources.gpu and resources.mig are mutually exclusive" in result.stderr
    result = apply(model_deployment("surge", namespace, rollout={"maxSurge": 0, "maxUnavailable": 0}), check=False)
    assert result.returncode != 0 and "must not both be 0" in result.stderr
    assert get_json("md", "both", "-n", namespace) is None


def test_a_missing_secret_is_degraded_with_one_warning_event(namespace):
    apply(model_deployment("nosecret", namespace, model={"name": "simple", "repository": "s3://b/p", "version": "1",
                                                         "credentialsSecret": "absent"}))
    md = wait_for_condition(namespace, "nosecret", "Degraded", reason="SecretNotFound")
    assert "absent" in condition(md, "Degraded")["message"]
    assert get_json("deployment", "nosecret", "-n", namespace) is None  # nothing half-applied
    events = wait_for("the Warning event", lambda: [
        e for e in get_json("events", "-n", namespace, "--field-selector", "involvedObject.name=nosecret")["items"]
        if e["type"] == "Warning" and e["reason"] == "SecretNotFound"])
    time.sleep(3)  # later reconciles must not post it again
    events = [e for e in get_json("events", "-n", namespace, "--field-selector", "involvedObject.name=nosecret")["items"]
              if e["type"] == "Warning" and e["reason"] == "SecretNotFound"]
    assert len(events) == 1 and events[0].get("count", 1) == 1


def test_a_foreign_object_with_our_name_is_never_overwritten(namespace):
    kubectl("create", "service", "clusterip", "taken", "-n", namespace, "--tcp=80:80")
    simple_store(namespace)
    apply(model_deployment("taken", namespace))
    md = wait_for_condition(namespace, "taken", "Degraded", reason="ChildConflict")
    assert "Service" in condition(md, "Degraded")["message"]
    service = get_json("service", "taken", "-n", namespace)
    assert not service["metadata"].get("ownerReferences")


def test_deleting_the_model_deployment_collects_its_children_and_pods(namespace):
    simple_store(namespace)
    apply(model_deployment("gone", namespace, disruptionBudget={"minAvailable": 1}))
    kubectl_wait_ready(namespace, "gone")
    kubectl("delete", "md", "gone", "-n", namespace)
    for kind in (*CHILDREN, "poddisruptionbudget"):
        wait_for(f"{kind} to be garbage-collected", lambda kind=kind: get_json(kind, "gone", "-n", namespace) is None,
                 timeout=90)
    wait_for("the pods to go", lambda: not pods_of(namespace, "gone"), timeout=90)
