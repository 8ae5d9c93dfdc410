"""The Triton Deployment: pure function of a ModelDeployment."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from modeldeploy import naming, pin_loaded, pin_version
from modeldeploy.api import ModelDeployment
from modeldeploy.triton_flags import (
    EXIT_TIMEOUT_SECONDS,
    GRPC_PORT,
    HTTP_PORT,
    LIVENESS_PATH,
    METRICS_PORT,
    POD_UID_ENV,
    STARTUP_PATH,
    readiness_path,
    tritonserver_args,
)

TRITON_CONTAINER = "triton"
FETCH_CONTAINER = "fetch-model"
PIN_CONTAINER = "pin-version"
# Where the pin step builds the pod's own view of the repository: one version of the model.
PINNED_MOUNT = "/pinned-models"
# The pin step's program, run with the Triton image's python3 (see pin_version.py).
PIN_SCRIPT = Path(pin_version.__file__).read_text(encoding="utf-8")
# Where Triton reads the repository itself (s3, gs, as), a sidecar keeps exactly the version loaded (pin_loaded.py).
PIN_LOADED_CONTAINER = "pin-loaded"
PIN_LOADED_SCRIPT = Path(pin_loaded.__file__).read_text(encoding="utf-8")
TRITON_UID = 1000  # the triton-server user of NVIDIA's images
# A pod being deleted keeps serving this long before Triton gets SIGTERM: its endpoint is taken out of every
# Service (EndpointSlices, kube-proxy or a mesh) meanwhile, so no new connection reaches a server that has
# stopped accepting them (a scale-down, a rollout, a canary step or an abort would otherwise reset some).
DRAIN_SECONDS = 5
MODELS_MOUNT = "/models"
ARCHIVE_REPOSITORY = f"{MODELS_MOUNT}/repository"
GCS_CREDENTIALS_DIR = "/var/run/secrets/modeldeploy/gcs"
GCS_CREDENTIALS_KEY = "credentials.json"
STARTUP_PERIOD_SECONDS = 10

# Runs in the Triton image (which has python3) so no second image is pulled. It downloads the
# archive, refuses it unless the sha256 matches, and unpacks it without letting paths escape.
FETCH_SCRIPT = """\
import hashlib, os, sys, tarfile, urllib.request
url, want, dest = sys.argv[1], sys.argv[2].lower(), sys.argv[3]
archive = dest + ".download"
digest = hashlib.sha256()
with urllib.request.urlopen(url, timeout=60) as response, open(archive, "wb") as out:
    for chunk in iter(lambda: response.read(1 << 20), b""):
        digest.update(chunk)
        out.write(chunk)
got = digest.hexdigest()
if got != want:
    sys.exit(f"modeldeploy: sha256 mismatch for {url}: expected {want}, got {got}; refusing to serve it")
if not tarfile.is_tarfile(archive):
    sys.exit(f"modeldeploy: {url} is not a tar archive (.tar, .tar.gz, .tgz)")
os.makedirs(dest, exist_ok=True)
with tarfile.open(archive) as tar:
    root = os.path.realpath(dest)
    for member in tar.getmembers():
        target = os.path.realpath(os.path.join(dest, member.name))
        if not (target == root or target.startswith(root + os.sep)) or member.issym() or member.islnk():
            sys.exit(f"modeldeploy: unsafe path in archive: {member.name}")
    tar.extractall(dest)
os.remove(archive)
print(f"modeldeploy: fetched {url} (sha256 {got}) into {dest}")
"""


def _restricted_container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "runAsUser": TRITON_UID,
        "runAsGroup": TRITON_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def source_repository_path(md: ModelDeployment) -> str:
    """Where the repository is, as the pod reads it: mounted, fetched, or in the cloud."""
    model = md.spec.model
    if model.scheme == "pvc":
        rest = model.repository[len("pvc://"):]
        sub = rest.split("/", 1)[1] if "/" in rest else ""
        return f"{MODELS_MOUNT}/{sub}".rstrip("/") or MODELS_MOUNT
    if model.scheme in ("http", "https"):
        return ARCHIVE_REPOSITORY
    return model.repository  # s3://, gs://, as:// are read by Triton itself


def is_pinned(md: ModelDeployment) -> bool:
    """Whether an init container pins the version in a view of the repository: where the repository is
    a file system the pod can read.

    Triton reads s3://, gs:// and as:// itself; there the pin-loaded sidecar (pins_loaded_version)
    loads the model again with its full config asking for exactly spec.model.version."""
    return md.spec.model.scheme in ("pvc", "http", "https")


def pins_loaded_version(md: ModelDeployment) -> bool:
    """Whether a sidecar pins the version in Triton itself: where Triton reads the repository (s3, gs, as)
    and no init container can give it a view with one version."""
    return not is_pinned(md)


def _pod_uid_env() -> list[dict[str, Any]]:
    """The pod's UID (the downward API): the key of Triton's model-repository API (triton_flags).
    apiVersion is written out because the API server stores it so."""
    return [{"name": POD_UID_ENV, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.uid"}}}]


def _python_step(md: ModelDeployment, name: str, script: str, args: list[str], *,
                 resources: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """A container of the pod's own steps: a standard-library program run with the Triton image's
    python3, so no second image is pulled."""
    return {
        "name": name,
        "image": md.spec.triton.image,
        "imagePullPolicy": md.spec.triton.image_pull_policy,
        "command": ["python3", "-c", script],
        "args": args,
        **fields,
        "securityContext": _restricted_container_security(),
        "resources": resources or {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
    }


def _pin_loaded_container(md: ModelDeployment) -> dict[str, Any]:
    """Keeps exactly spec.model.version loaded in the pod's Triton (pin_loaded.py), over its loopback."""
    return _python_step(
        md, PIN_LOADED_CONTAINER, PIN_LOADED_SCRIPT, [f"127.0.0.1:{HTTP_PORT}", md.model_name, md.spec.model.version],
        env=_pod_uid_env(),
        # Ready once it has done its part for the running Triton (pin_loaded.py): the operator takes
        # "version not loaded" on the pod as the version failing only then.
        readinessProbe={"exec": {"command": ["test", "-e", pin_loaded.SETTLED_FILE]}, "periodSeconds": 2,
                        "failureThreshold": 1})


def _sidecars(md: ModelDeployment) -> list[dict[str, Any]]:
    return [_pin_loaded_container(md)] if pins_loaded_version(md) else []


def model_repository_path(md: ModelDeployment) -> str:
    """The --model-repository Triton is given, after mounts, fetches and the pin step."""
    return PINNED_MOUNT if is_pinned(md) else source_repository_path(md)


def pvc_claim(md: ModelDeployment) -> str | None:
    if md.spec.model.scheme != "pvc":
        return None
    return md.spec.model.repository[len("pvc://"):].split("/", 1)[0]


def _resources(md: ModelDeployment) -> dict[str, Any]:
    spec = md.spec.resources
    requests: dict[str, Any] = {k: str(v) for k, v in spec.requests.items()}
    limits: dict[str, Any] = {k: str(v) for k, v in spec.limits.items()}
    gpu = spec.gpu_resource
    if gpu is not None:
        # Extended resources are requested through limits; requests must equal them if given.
        resource, count = gpu
        requests[resource] = str(count)
        limits[resource] = str(count)
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = dict(sorted(requests.items()))
    if limits:
        out["limits"] = dict(sorted(limits.items()))
    return out


def _probes(md: ModelDeployment) -> dict[str, Any]:
    ready = {"path": readiness_path(md.model_name, md.spec.model.version), "port": "http"}
    budget = md.spec.triton.startup_timeout_seconds
    return {
        # Triton serves no HTTP until its startup load is over (loaded or failed), so this waits for
        # the load within the budget. Asking the version here instead would fail a failed load until
        # the budget ran out, and the kubelet would restart the container forever (CrashLoopBackOff).
        "startupProbe": {"httpGet": {"path": STARTUP_PATH, "port": "http"}, "periodSeconds": STARTUP_PERIOD_SECONDS,
                         "timeoutSeconds": 5,
                         "failureThreshold": max(1, math.ceil(budget / STARTUP_PERIOD_SECONDS))},
        # Ready means the *target version* is loaded: a pod whose load failed gets no traffic.
        "readinessProbe": {"httpGet": ready, "periodSeconds": 5, "timeoutSeconds": 3, "failureThreshold": 3},
        # Liveness asks only whether the server answers, so a failed model load does not crash-loop the pod.
        "livenessProbe": {"httpGet": {"path": LIVENESS_PATH, "port": "http"}, "periodSeconds": 10,
                          "timeoutSeconds": 5, "failureThreshold": 6},
    }


def _credentials(md: ModelDeployment) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]],
                                                 list[dict[str, Any]]]:
    """(env, envFrom, volumeMounts, volumes) for the cloud storage credentials."""
    secret = md.spec.model.credentials_secret
    if secret is None:
        return [], [], [], []
    if md.spec.model.scheme == "gs":
        # Triton's GCS client wants a path to the JSON key, not its contents.
        return ([{"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": f"{GCS_CREDENTIALS_DIR}/{GCS_CREDENTIALS_KEY}"}],
                [],
                [{"name": "gcs-credentials", "mountPath": GCS_CREDENTIALS_DIR, "readOnly": True}],
                [{"name": "gcs-credentials", "secret": {"secretName": secret,
                                                        "items": [{"key": GCS_CREDENTIALS_KEY,
                                                                   "path": GCS_CREDENTIALS_KEY}]}}])
    return [], [{"secretRef": {"name": secret}}], [], []


def _pin_container(md: ModelDeployment) -> dict[str, Any]:
    """Builds the pinned view (pin_version.py): links into the repository, and one config."""
    return _python_step(
        md, PIN_CONTAINER, PIN_SCRIPT, [source_repository_path(md), md.model_name, md.spec.model.version, PINNED_MOUNT],
        volumeMounts=[{"name": "model-repository", "mountPath": MODELS_MOUNT, "readOnly": True},
                      {"name": "pinned-repository", "mountPath": PINNED_MOUNT}])


def _model_volumes(md: ModelDeployment) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(triton volumeMounts, volumes, initContainers) for where the model repository lives."""
    mounts, volumes, init_containers = _repository_volumes(md)
    if is_pinned(md):
        mounts.append({"name": "pinned-repository", "mountPath": PINNED_MOUNT, "readOnly": True})
        volumes.append({"name": "pinned-repository", "emptyDir": {"sizeLimit": "16Mi"}})
        init_containers.append(_pin_container(md))
    return mounts, volumes, init_containers


def _repository_volumes(md: ModelDeployment) -> tuple[list[dict[str, Any]], list[dict[str, Any]],
                                                       list[dict[str, Any]]]:
    claim = pvc_claim(md)
    if claim is not None:
        return ([{"name": "model-repository", "mountPath": MODELS_MOUNT, "readOnly": True}],
                [{"name": "model-repository", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}],
                [])
    if md.spec.model.scheme in ("http", "https"):
        fetch = _python_step(
            md, FETCH_CONTAINER, FETCH_SCRIPT,
            [md.spec.model.repository, md.spec.model.sha256 or "", ARCHIVE_REPOSITORY],
            resources={"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
            volumeMounts=[{"name": "model-repository", "mountPath": MODELS_MOUNT}])
        return ([{"name": "model-repository", "mountPath": MODELS_MOUNT, "readOnly": True}],
                [{"name": "model-repository", "emptyDir": {}}],
                [fetch])
    return [], [], []


def _tolerations(md: ModelDeployment) -> list[dict[str, Any]]:
    tolerations = [t.wire() for t in md.spec.placement.tolerations]
    if md.spec.resources.gpu_resource is not None and not any(
            t.get("key") == naming.GPU_TAINT_KEY for t in tolerations):
        tolerations.append({"key": naming.GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"})
    return tolerations


def _node_selector(md: ModelDeployment) -> dict[str, str]:
    selector = dict(md.spec.placement.node_selector)
    if md.spec.placement.gpu_product:
        selector[naming.GPU_PRODUCT_LABEL] = md.spec.placement.gpu_product
    return dict(sorted(selector.items()))


def pod_template_fingerprint(md: ModelDeployment) -> str:
    """What the pods run, in 16 hex digits: changes with the image, args, resources, version…, and
    not with replicas, autoscaling, the Service or metadata."""
    return deployment_template_fingerprint(render_deployment(md, replicas=None))


def deployment_template_fingerprint(deployment: Mapping[str, Any] | None) -> str:
    """The fingerprint a Deployment's pod template carries ("" for one rendered before it did)."""
    template = (deployment or {}).get("spec", {}).get("template", {})
    return (template.get("metadata", {}).get("annotations") or {}).get(naming.POD_TEMPLATE_ANNOTATION, "")


def _fingerprint(template: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:16]


def render_deployment(md: ModelDeployment, *, replicas: int | None, slot: str = "",
                      template_label: bool = False) -> dict[str, Any]:
    """The Deployment. `replicas` None leaves the count to whoever owns it (the HPA).

    `slot` is the name suffix of Canary's and BlueGreen's second Deployment ("" for the first), and
    `template_label` puts the pod template's fingerprint on the pods as a label, for Services that select one
    template. Neither changes the fingerprint: a template is the same whichever Deployment runs it."""
    spec = md.spec
    version = spec.model.version
    labels = naming.object_labels(md.name, version)
    env, env_from, secret_mounts, secret_volumes = _credentials(md)
    model_mounts, model_volumes, init_containers = _model_volumes(md)

    container: dict[str, Any] = {
        "name": TRITON_CONTAINER,
        "image": spec.triton.image,
        "imagePullPolicy": spec.triton.image_pull_policy,
        "command": ["tritonserver"],
        "args": tritonserver_args(model_repository=model_repository_path(md), model_name=md.model_name,
                                  exit_timeout_seconds=EXIT_TIMEOUT_SECONDS) + list(spec.triton.args),
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        "env": [*_pod_uid_env(), *env],
        **({"envFrom": env_from} if env_from else {}),
        **_probes(md),
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(DRAIN_SECONDS)]}}},
        "resources": _resources(md),
        "securityContext": _restricted_container_security(),
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}, *model_mounts, *secret_mounts],
    }
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,  # Triton never talks to the API server
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": TRITON_UID,
            "runAsGroup": TRITON_UID,
            "fsGroup": TRITON_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        # The drain, then Triton's own exit timeout, so in-flight requests finish before SIGKILL.
        "terminationGracePeriodSeconds": DRAIN_SECONDS + EXIT_TIMEOUT_SECONDS + 15,
        **({"initContainers": init_containers} if init_containers else {}),
        "containers": [container, *_sidecars(md)],
        "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory",
                                                  "sizeLimit": str(spec.resources.shared_memory)}},
                    *model_volumes, *secret_volumes],
    }
    if node_selector := _node_selector(md):
        pod_spec["nodeSelector"] = node_selector
    if tolerations := _tolerations(md):
        pod_spec["tolerations"] = tolerations
    if spec.placement.affinity:
        pod_spec["affinity"] = spec.placement.affinity
    if spec.placement.runtime_class_name:
        pod_spec["runtimeClassName"] = spec.placement.runtime_class_name
    if spec.placement.priority_class_name:
        pod_spec["priorityClassName"] = spec.placement.priority_class_name

    deployment_spec: dict[str, Any] = {}
    if replicas is not None:
        deployment_spec["replicas"] = replicas
    deployment_spec.update({
        "selector": {"matchLabels": naming.selector_labels(md.name)},
        "strategy": {"type": "RollingUpdate",
                     "rollingUpdate": {"maxSurge": spec.rollout.max_surge,
                                       "maxUnavailable": spec.rollout.max_unavailable}},
        "progressDeadlineSeconds": spec.rollout.progress_deadline_seconds,
        "revisionHistoryLimit": 5,
        "template": {"metadata": {"labels": labels}, "spec": pod_spec},
    })
    template = deployment_spec["template"]
    fingerprint = _fingerprint(template)
    template["metadata"]["annotations"] = {naming.POD_TEMPLATE_ANNOTATION: fingerprint}
    if template_label:
        labels[naming.POD_TEMPLATE_LABEL] = fingerprint
    if slot:
        labels.update(naming.slot_labels(slot))
        deployment_spec["selector"] = {"matchLabels": {**naming.selector_labels(md.name), **naming.slot_labels(slot)}}
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": naming.child_metadata(md.name, md.namespace, version, suffix=slot),
            "spec": deployment_spec}
