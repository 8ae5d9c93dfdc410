"""The operator against a real API server: children, status, waits, drift, HPA, scale, failures, GC."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from e2e.conftest import apply, condition, get_json, kubectl, model_deployment, wait_for, wait_for_condition

CHILDREN = ("deployment", "service")


def test_creates_children_and_becomes_ready_with_kubectl_wait(namespace, triton_on_8000):
    apply(model_deployment("simple", namespace, replicas=2, disruptionBudget={"maxUnavailable": 1}))
    wait = kubectl("wait", "--for=condition=Ready", "md/simple", "-n", namespace, "--timeout=90s", check=False,
                   timeout=120)
    assert wait.returncode == 0, wait.stderr
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


def test_a_version_triton_does_not_have_is_not_ready_with_tritons_reason(namespace, triton_on_8000):
    apply(model_deployment("simple", namespace, model={"name": "simple", "repository": "s3://e2e/triton",
                                                       "version": "9"}))
    md = wait_for_condition(namespace, "simple", "ModelReady", reason="VersionNotLoaded")
    assert condition(md, "Ready")["status"] == "False"
    assert "version 9 is not loaded" in condition(md, "ModelReady")["message"]


def test_a_model_that_fails_to_load_reports_tritons_error(namespace, triton_on_8000):
    apply(model_deployment("broken", namespace, model={"name": "broken", "repository": "s3://e2e/triton",
                                                       "version": "1"}))
    md = wait_for_condition(namespace, "broken", "ModelReady", reason="ModelLoadFailed")
    assert "weights file missing" in condition(md, "ModelReady")["message"]
    assert condition(md, "Ready")["status"] == "False"


def test_drift_is_repaired(namespace, triton_on_8000):
    apply(model_deployment("drift", namespace))
    wait_for("the Service", lambda: get_json("service", "drift", "-n", namespace))
    kubectl("delete", "service", "drift", "-n", namespace)
    wait_for("the Service to come back", lambda: get_json("service", "drift", "-n", namespace), timeout=30)
    kubectl("patch", "deployment", "drift", "-n", namespace, "--type=json", "-p",
            json.dumps([{"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": "evil:latest"}]))
    wait_for("the image to be restored", lambda: (get_json("deployment", "drift", "-n", namespace) or {}).get(
        "spec", {}).get("template", {}).get("spec", {}).get("containers", [{}])[0].get("image") != "evil:latest",
        timeout=30)


def test_scale_subresource(namespace, triton_on_8000):
    apply(model_deployment("scaled", namespace))
    wait_for("the Deployment", lambda: get_json("deployment", "scaled", "-n", namespace))
    kubectl("scale", "md/scaled", "-n", namespace, "--replicas=3")
    wait_for("3 replicas", lambda: (get_json("deployment", "scaled", "-n", namespace) or {}).get(
        "spec", {}).get("replicas") == 3)
    wait_for("status.replicas for the scale subresource", lambda: (get_json("md", "scaled", "-n", namespace) or {}).get(
        "status", {}).get("replicas") == 3)
    scale = json.loads(kubectl("get", "--raw",
                               f"/apis/modeldeploy.dev/v1alpha1/namespaces/{namespace}/modeldeployments/scaled/scale"
                               ).stdout)
    assert scale["spec"]["replicas"] == 3
    assert "app.kubernetes.io/instance=scaled" in scale["status"]["selector"]


def test_the_hpa_keeps_its_replicas(namespace, triton_on_8000):
    apply(model_deployment("auto", namespace, autoscaling={"minReplicas": 2, "maxReplicas": 6,
                                                           "targetQueueTimeMicroseconds": 50000}))
    wait_for("the HPA", lambda: get_json("hpa", "auto", "-n", namespace))
    wait_for("2 replicas", lambda: (get_json("deployment", "auto", "-n", namespace) or {}).get(
        "spec", {}).get("replicas") == 2)
    # What the HPA controller does: write replicas through the Deployment's scale subresource.
    kubectl("scale", "deployment/auto", "-n", namespace, "--replicas=5")
    # Poke the operator (an annotation change is a watch event; the Deployment change was one too)
    # and watch for long enough that a fight would show.
    kubectl("annotate", "md/auto", "-n", namespace, "e2e/poke=1", "--overwrite")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert get_json("deployment", "auto", "-n", namespace)["spec"]["replicas"] == 5
        time.sleep(1)
    # Switch autoscaling off: spec.replicas decides again and the HPA goes away.
    apply(model_deployment("auto", namespace, replicas=1))
    wait_for("the HPA to be deleted", lambda: get_json("hpa", "auto", "-n", namespace) is None)
    wait_for("replicas back to 1", lambda: get_json("deployment", "auto", "-n", namespace)["spec"]["replicas"] == 1)


def test_gpus_that_do_not_fit_are_unschedulable(namespace):
    apply(model_deployment("huge", namespace, resources={"gpu": 8}))
    md = wait_for_condition(namespace, "huge", "Degraded", reason="Unschedulable")
    assert "Insufficient nvidia.com/gpu" in condition(md, "Degraded")["message"]
    assert condition(md, "Ready")["status"] == "False"
    deployment = get_json("deployment", "huge", "-n", namespace)
    limits = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "8"


def test_mig_slices_schedule(namespace, triton_on_8000):
    apply(model_deployment("slice", namespace, resources={"mig": "1g.10gb"},
                           placement={"gpuProduct": "NVIDIA-H100-80GB-HBM3"}))
    wait_for_condition(namespace, "slice", "Ready", status="True", timeout=90)


def test_a_crash_looping_version_is_degraded(namespace):
    apply(model_deployment("crashy", namespace, triton={"image": "nvcr.io/nvidia/tritonserver:crash-on-start"}))
    md = wait_for_condition(namespace, "crashy", "Degraded", reason="CrashLoopBackOff")
    assert condition(md, "Ready")["status"] == "False"


def test_the_api_server_refuses_specs_that_break_a_rule(namespace):
    result = apply(model_deployment("both", namespace, resources={"gpu": 1, "mig": "1g.10gb"}), check=False)
    assert result.returncode != 0
    assert "resources.gpu and resources.mig are mutually exclusive" in result.stderr


def test_a_missing_secret_is_degraded_with_one_warning_event(namespace):
    apply(model_deployment("nosecret", namespace, model={"name": "simple", "repository": "s3://b/p", "version": "1",
                                                         "credentialsSecret": "absent"}))
    md = wait_for_condition(namespace, "nosecret", "Degraded", reason="SecretNotFound")
    assert "absent" in condition(md, "Degraded")["message"]
    assert get_json("deployment", "nosecret", "-n", namespace) is None  # nothing half-applied
    events = wait_for("the Warning event", lambda: [
        e for e in get_json("events", "-n", namespace, "--field-selector", "involvedObject.name=nosecret")["items"]
        if e["type"] == "Warning" and e["reason"] == "SecretNotFound"])
    assert len(events) == 1 and events[0].get("count", 1) == 1


def test_a_foreign_object_with_our_name_is_never_overwritten(namespace):
    kubectl("create", "service", "clusterip", "taken", "-n", namespace, "--tcp=80:80")
    apply(model_deployment("taken", namespace))
    md = wait_for_condition(namespace, "taken", "Degraded", reason="ChildConflict")
    assert "Service" in condition(md, "Degraded")["message"]
    service = get_json("service", "taken", "-n", namespace)
    assert not service["metadata"].get("ownerReferences")


def test_deleting_the_model_deployment_collects_its_children(namespace, triton_on_8000):
    apply(model_deployment("gone", namespace, disruptionBudget={"minAvailable": 1}))
    for kind in (*CHILDREN, "poddisruptionbudget"):
        wait_for(kind, lambda kind=kind: get_json(kind, "gone", "-n", namespace))
    kubectl("delete", "md", "gone", "-n", namespace)
    for kind in (*CHILDREN, "poddisruptionbudget"):
        wait_for(f"{kind} to be garbage-collected", lambda kind=kind: get_json(kind, "gone", "-n", namespace) is None,
                 timeout=90)


EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_rendered_examples_pass_a_server_side_dry_run(example, namespace):
    rendered = subprocess.run([sys.executable, "-m", "modeldeploy", "render", "-f", str(example), "-o", "json"],
                              capture_output=True, text=True, check=True).stdout
    listed = json.loads(rendered)
    for item in listed["items"]:
        item["metadata"]["namespace"] = namespace
    result = kubectl("apply", "--dry-run=server", "-f", "-", stdin=json.dumps(listed), check=False)
    assert result.returncode == 0, result.stderr
