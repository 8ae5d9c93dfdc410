"""The renderers: what a production Triton deployment needs, valid against real Kubernetes schemas."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from modeldeploy import naming
from modeldeploy.errors import parse_model_deployment
from modeldeploy.render import render_children, render_manifests
from modeldeploy.render.capabilities import ServerCapabilities
from modeldeploy.render.deployment import FETCH_SCRIPT, PIN_SCRIPT
from modeldeploy.triton_flags import EXIT_TIMEOUT_SECONDS
from tests.support.manifests import by_kind, validate_all
from tests.support.specs import load_examples, minimal

SHA = "0" * 64


def render(doc):
    return by_kind(render_manifests(parse_model_deployment(doc)))


def triton(deployment):
    (container,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "triton"]
    return container


def pod_spec(deployment):
    return deployment["spec"]["template"]["spec"]


@pytest.mark.parametrize("doc", [*load_examples(), minimal()], ids=lambda d: d["metadata"]["name"])
def test_every_example_renders_valid_manifests(doc):
    validate_all(render_manifests(parse_model_deployment(doc)))


def test_minimal_renders_deployment_and_service_only():
    assert sorted(render(minimal())) == ["Deployment", "Service"]


def test_tritonserver_command_ports_and_model_flags():
    container = triton(render(minimal())["Deployment"])
    assert container["command"] == ["tritonserver"]
    args = container["args"]
    assert "--model-repository=s3://models/triton" in args
    assert "--model-control-mode=explicit" in args
    assert "--load-model=resnet50" in args
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": 8000, "grpc": 8001, "metrics": 8002}


def test_user_args_come_last():
    container = triton(render(minimal(triton={"args": ["--log-verbose=1"]}))["Deployment"])
    assert container["args"][-1] == "--log-verbose=1"


def test_probes_ask_for_the_target_version():
    container = triton(render(minimal(model={"name": "rn", "repository": "s3://m/t", "version": "7"},
                                      triton={"startupTimeoutSeconds": 900}))["Deployment"])
    version_ready = {"path": "/v2/models/rn/versions/7/ready", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == version_ready
    # Startup waits for Triton's HTTP (up once its startup load is over, loaded or failed), so a
    # failed load leaves the pod running and unready instead of restarting it.
    assert container["startupProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 900
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}


def test_shared_memory_is_a_memory_emptydir_of_the_requested_size():
    deployment = render(minimal(resources={"sharedMemory": "4Gi"}))["Deployment"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "4Gi"}} in pod_spec(deployment)["volumes"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in triton(deployment)["volumeMounts"]


def test_grace_period_outlasts_tritons_exit_timeout():
    deployment = render(minimal())["Deployment"]
    assert pod_spec(deployment)["terminationGracePeriodSeconds"] > EXIT_TIMEOUT_SECONDS
    assert f"--exit-timeout-secs={EXIT_TIMEOUT_SECONDS}" in triton(deployment)["args"]


def test_whole_gpus_with_toleration_and_product_selector():
    deployment = render(minimal(resources={"gpu": 2, "requests": {"cpu": 4}},
                                placement={"gpuProduct": "NVIDIA-H100-80GB-HBM3"}))["Deployment"]
    resources = triton(deployment)["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == "2" and resources["requests"]["nvidia.com/gpu"] == "2"
    assert resources["requests"]["cpu"] == "4"
    assert not any(k.startswith("nvidia.com/mig") for k in resources["limits"])
    spec = pod_spec(deployment)
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}


def test_mig_slice_never_with_whole_gpus():
    resources = triton(render(minimal(resources={"mig": "1g.10gb"}))["Deployment"])["resources"]
    assert resources["limits"] == {"nvidia.com/mig-1g.10gb": "1"}
    assert "nvidia.com/gpu" not in resources["limits"]


def test_cpu_model_has_no_gpu_resources_or_toleration():
    deployment = render(minimal(resources={"requests": {"cpu": "1"}}))["Deployment"]
    assert not any(k.startswith("nvidia.com/") for k in triton(deployment)["resources"].get("limits", {}))
    assert "tolerations" not in pod_spec(deployment)


def test_user_toleration_for_the_gpu_taint_is_not_duplicated():
    toleration = {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"}
    deployment = render(minimal(resources={"gpu": 1}, placement={"tolerations": [toleration]}))["Deployment"]
    assert pod_spec(deployment)["tolerations"] == [toleration]


def test_placement_is_passed_through():
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}}
    spec = pod_spec(render(minimal(placement={"nodeSelector": {"pool": "inference"}, "affinity": affinity,
                                              "runtimeClassName": "nvidia",
                                              "priorityClassName": "serving"}))["Deployment"])
    assert spec["nodeSelector"] == {"pool": "inference"}
    assert spec["affinity"] == affinity
    assert spec["runtimeClassName"] == "nvidia" and spec["priorityClassName"] == "serving"


def test_restricted_security_context():
    deployment = render(minimal())["Deployment"]
    pod = pod_spec(deployment)["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] == 1000
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    container = triton(deployment)["securityContext"]
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"] == {"drop": ["ALL"]}
    assert pod_spec(deployment)["automountServiceAccountToken"] is False


def test_s3_credentials_become_environment():
    container = triton(render(minimal(model={"repository": "s3://m/t", "version": "1",
                                             "credentialsSecret": "s3-creds"}))["Deployment"])
    assert container["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]


def test_gcs_credentials_are_mounted_as_a_file():
    deployment = render(minimal(model={"repository": "gs://m/t", "version": "1", "credentialsSecret": "gcs"}))[
        "Deployment"]
    container = triton(deployment)
    assert {"name": "GOOGLE_APPLICATION_CREDENTIALS",
            "value": "/var/run/secrets/modeldeploy/gcs/credentials.json"} in container["env"]
    volume = next(v for v in pod_spec(deployment)["volumes"] if v["name"] == "gcs-credentials")
    assert volume["secret"]["secretName"] == "gcs"
    assert "envFrom" not in container


def test_pvc_repository_is_mounted_read_only_and_pinned_to_the_version():
    deployment = render(minimal(model={"repository": "pvc://model-store/triton/v2", "version": "1"}))["Deployment"]
    volume = next(v for v in pod_spec(deployment)["volumes"] if v["name"] == "model-repository")
    assert volume["persistentVolumeClaim"] == {"claimName": "model-store", "readOnly": True}
    container = triton(deployment)
    assert {"name": "model-repository", "mountPath": "/models", "readOnly": True} in container["volumeMounts"]
    assert {"name": "pinned-repository", "mountPath": "/pinned-models", "readOnly": True} in container["volumeMounts"]
    (pin,) = pod_spec(deployment)["initContainers"]
    assert pin["name"] == "pin-version" and pin["image"] == container["image"]
    assert pin["command"] == ["python3", "-c", PIN_SCRIPT]
    assert pin["args"] == ["/models/triton/v2", "resnet50", "1", "/pinned-models"]
    assert pin["securityContext"]["runAsNonRoot"] is True
    assert "--model-repository=/pinned-models" in container["args"]


def test_https_archive_is_fetched_and_checked_then_pinned():
    deployment = render(minimal(model={"repository": "https://h/repo.tar.gz", "version": "1", "sha256": SHA}))[
        "Deployment"]
    fetch, pin = pod_spec(deployment)["initContainers"]
    assert fetch["args"] == ["https://h/repo.tar.gz", SHA, "/models/repository"]
    assert fetch["securityContext"]["allowPrivilegeEscalation"] is False
    assert pin["args"] == ["/models/repository", "resnet50", "1", "/pinned-models"]
    assert "--model-repository=/pinned-models" in triton(deployment)["args"]


def test_cloud_repositories_are_read_by_triton_and_pinned_by_a_sidecar():
    deployment = render(minimal())["Deployment"]
    assert "initContainers" not in pod_spec(deployment)
    assert "--model-repository=s3://models/triton" in triton(deployment)["args"]
    # The version is pinned in Triton itself, by a sidecar (tests/test_pin_loaded.py).
    assert [c["name"] for c in pod_spec(deployment)["containers"]] == ["triton", "pin-loaded"]


def test_labels_and_a_selector_that_never_changes():
    v3 = render(minimal())
    v4 = render(minimal(model={"repository": "s3://models/triton", "version": "4"}, replicas=5))
    for kind in ("Deployment", "Service"):
        labels = v3[kind]["metadata"]["labels"]
        assert labels[naming.NAME] == "triton" and labels[naming.INSTANCE] == "resnet50"
        assert labels[naming.MANAGED_BY] == "modeldeploy" and labels[naming.VERSION_LABEL] == "3"
        assert labels[naming.COMPONENT_LABEL] == "inference-server"
    assert v3["Deployment"]["spec"]["selector"] == v4["Deployment"]["spec"]["selector"]
    assert v3["Service"]["spec"]["selector"] == v4["Service"]["spec"]["selector"]
    assert v4["Deployment"]["spec"]["template"]["metadata"]["labels"][naming.VERSION_LABEL] == "4"


def test_service_ports():
    service = render(minimal(service={"type": "LoadBalancer", "annotations": {"a": "b"}}))["Service"]
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["metadata"]["annotations"] == {"a": "b"}
    assert [(p["name"], p["port"]) for p in service["spec"]["ports"]] == [("http", 8000), ("grpc", 8001),
                                                                          ("metrics", 8002)]


def test_hpa_targets_and_passthrough():
    raw = {"type": "External", "external": {"metric": {"name": "queue_depth"},
                                            "target": {"type": "Value", "value": "10"}}}
    behavior = {"scaleDown": {"stabilizationWindowSeconds": 300}}
    hpa = render(minimal(resources={"requests": {"cpu": 2}}, autoscaling={
        "minReplicas": 2, "maxReplicas": 8, "targetCPUUtilization": 70, "targetQueueTimeMicroseconds": 50000,
        "metrics": [raw], "behavior": behavior}))["HorizontalPodAutoscaler"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "resnet50"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 8)
    cpu, queue, passed = hpa["spec"]["metrics"]
    assert cpu["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}
    assert queue["pods"]["metric"]["name"] == "nv_inference_queue_duration_us"
    assert queue["pods"]["target"] == {"type": "AverageValue", "averageValue": "50000"}
    assert passed == raw
    assert hpa["spec"]["behavior"] == behavior
    validate_all([hpa])


def test_hpa_owns_replicas_when_asked():
    md = parse_model_deployment(minimal(autoscaling={"maxReplicas": 3, "targetQueueTimeMicroseconds": 10}))
    assert "replicas" not in render_children(md, replicas=None)["Deployment"]["spec"]
    assert render(minimal(autoscaling={"minReplicas": 2, "maxReplicas": 3, "targetQueueTimeMicroseconds": 10}))[
        "Deployment"]["spec"]["replicas"] == 2


@pytest.mark.parametrize(("budget", "field"), [({"maxUnavailable": 1}, "maxUnavailable"),
                                              ({"minAvailable": "50%"}, "minAvailable")])
def test_pdb(budget, field):
    pdb = render(minimal(disruptionBudget=budget))["PodDisruptionBudget"]
    assert pdb["spec"][field] == next(iter(budget.values()))
    assert pdb["spec"]["selector"] == {"matchLabels": naming.selector_labels("resnet50")}
    validate_all([pdb])


def test_pdb_lets_unhealthy_pods_be_evicted_where_the_server_supports_it():
    pdb = render(minimal(disruptionBudget={"maxUnavailable": 1}))["PodDisruptionBudget"]
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    validate_all([pdb])
    # Kubernetes 1.25 has no such field: this is the PDB an old API server refuses.
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pdb, "1.25.0", strict=True)


# An API server before Kubernetes 1.27: no usable PodDisruptionBudget.spec.unhealthyPodEvictionPolicy.
OLD_SERVER = ServerCapabilities(pdb_unhealthy_pod_eviction_policy=False)
OLD_SERVER_VERSIONS = ("1.25.0", "1.26.0", kubernetes_validate.latest_version())


@pytest.mark.parametrize(("budget", "field"), [({"maxUnavailable": 1}, "maxUnavailable"),
                                              ({"minAvailable": "50%"}, "minAvailable")])
def test_pdb_without_unhealthy_pod_eviction_policy_on_an_old_server(budget, field):
    md = parse_model_deployment(minimal(disruptionBudget=budget))
    pdb = by_kind(render_manifests(md, capabilities=OLD_SERVER))["PodDisruptionBudget"]
    assert "unhealthyPodEvictionPolicy" not in pdb["spec"]
    assert pdb["spec"] == {"selector": {"matchLabels": naming.selector_labels("resnet50")},
                           field: next(iter(budget.values()))}
    for version in OLD_SERVER_VERSIONS:
        kubernetes_validate.validate(pdb, version, strict=True)


@pytest.mark.parametrize("doc", [*load_examples(), minimal(disruptionBudget={"minAvailable": 1})],
                         ids=lambda d: d["metadata"]["name"])
def test_every_example_renders_valid_manifests_for_an_old_server(doc):
    md = parse_model_deployment(doc)
    old, full = render_manifests(md, capabilities=OLD_SERVER), render_manifests(md)
    for manifest in old:
        if manifest["kind"] != "ServiceMonitor":
            for version in OLD_SERVER_VERSIONS:
                kubernetes_validate.validate(manifest, version, strict=True)
    # Only the PDB differs, and only by the field the old server lacks.
    for before, after in zip(full, old, strict=True):
        if before["kind"] == "PodDisruptionBudget":
            before = {**before, "spec": {k: v for k, v in before["spec"].items() if k != "unhealthyPodEvictionPolicy"}}
        assert before == after


def test_render_without_a_cluster_assumes_every_field_is_supported():
    md = parse_model_deployment(minimal(disruptionBudget={"maxUnavailable": 1}))
    assert render_manifests(md) == render_manifests(md, capabilities=ServerCapabilities())
    assert render_children(md, replicas=1) == render_children(md, replicas=1, capabilities=ServerCapabilities())
    assert render_children(md, replicas=1, capabilities=OLD_SERVER)["PodDisruptionBudget"]["spec"] == {
        "selector": {"matchLabels": naming.selector_labels("resnet50")}, "maxUnavailable": 1}


def test_service_monitor_scrapes_the_metrics_port():
    monitor = render(minimal(monitoring={"serviceMonitor": True, "interval": "15s"}))["ServiceMonitor"]
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s"}]


def test_children_that_must_not_exist_are_none():
    children = render_children(parse_model_deployment(minimal()), replicas=1)
    assert children["HorizontalPodAutoscaler"] is None and children["PodDisruptionBudget"] is None
    assert children["ServiceMonitor"] is None


def test_owner_reference_when_the_object_has_a_uid():
    doc = minimal()
    doc["metadata"]["uid"] = "1234"
    for manifest in render_manifests(parse_model_deployment(doc)):
        (ref,) = manifest["metadata"]["ownerReferences"]
        assert ref == {"apiVersion": "modeldeploy.dev/v1alpha1", "kind": "ModelDeployment", "name": "resnet50",
                       "uid": "1234", "controller": True, "blockOwnerDeletion": True}


def test_rendering_is_deterministic():
    doc = minimal(resources={"requests": {"memory": "8Gi", "cpu": "2"}},
                  placement={"nodeSelector": {"b": "2", "a": "1"}})
    reordered = minimal(placement={"nodeSelector": {"a": "1", "b": "2"}},
                        resources={"requests": {"cpu": "2", "memory": "8Gi"}})
    first = yaml.safe_dump_all(render_manifests(parse_model_deployment(doc)), sort_keys=False)
    assert first == yaml.safe_dump_all(render_manifests(parse_model_deployment(doc)), sort_keys=False)
    assert first == yaml.safe_dump_all(render_manifests(parse_model_deployment(reordered)), sort_keys=False)


# --- the init container's fetch script, run for real against a local HTTP server ----------

def _tarball(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture()
def archive_server():
    served: dict[str, bytes] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            body = served.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def _fetch(url: str, sha: str, dest: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", FETCH_SCRIPT, url, sha, str(dest)],
                          capture_output=True, text=True, timeout=60)


def test_fetch_script_unpacks_a_checked_archive(archive_server, tmp_path):
    served, base = archive_server
    data = _tarball({"simple/config.pbtxt": b'backend: "python"', "simple/1/model.py": b"# model"})
    served["/repo.tar.gz"] = data
    result = _fetch(f"{base}/repo.tar.gz", hashlib.sha256(data).hexdigest(), tmp_path / "repository")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "repository" / "simple" / "1" / "model.py").read_bytes() == b"# model"
    assert not (tmp_path / "repository.download").exists()


def test_fetch_script_refuses_a_checksum_mismatch(archive_server, tmp_path):
    served, base = archive_server
    served["/repo.tar.gz"] = _tarball({"simple/1/model.py": b"tampered"})
    result = _fetch(f"{base}/repo.tar.gz", SHA, tmp_path / "repository")
    assert result.returncode != 0
    assert "sha256 mismatch" in result.stderr and SHA in result.stderr
    assert not (tmp_path / "repository").exists()


def test_fetch_script_refuses_paths_that_escape(archive_server, tmp_path):
    served, base = archive_server
    data = _tarball({"../escape.txt": b"x"})
    served["/evil.tar.gz"] = data
    result = _fetch(f"{base}/evil.tar.gz", hashlib.sha256(data).hexdigest(), tmp_path / "repository")
    assert result.returncode != 0 and "unsafe path" in result.stderr
    assert not (tmp_path / "escape.txt").exists()


def test_fetch_script_refuses_a_non_archive(archive_server, tmp_path):
    served, base = archive_server
    served["/page.html"] = b"<html>not found</html>"
    result = _fetch(f"{base}/page.html", hashlib.sha256(b"<html>not found</html>").hexdigest(),
                    tmp_path / "repository")
    assert result.returncode != 0 and "not a tar archive" in result.stderr


def test_rendered_json_round_trips():
    manifests = render_manifests(parse_model_deployment(load_examples()[0]))
    assert json.loads(json.dumps(manifests)) == manifests
