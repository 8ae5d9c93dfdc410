"""End-to-end fixtures: a real Kubernetes (KUBECONFIG) with real nodes, the operator installed by
its own Helm chart and running as a pod under the chart's RBAC, and model repositories that the
pods really read.

In CI the cluster is the project's own (e2e/env/cluster up): the control plane from
../shared/k8s, kube-scheduler, a kubelet with containerd and runc, GPUs advertised on the node, and
locally built images (Triton from nvidia-pytriton, the operator). `e2e/env/cluster env` prints the
variables read here. Against another cluster, set KUBECONFIG and MODELDEPLOY_E2E_OPERATOR_IMAGE
(an operator image its nodes can run); tests that need the project's node (hostPath model stores,
the host's HTTP server) skip there with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "modeldeploy"
WAIT_SECONDS = 90
RELEASE = "modeldeploy"
RELEASE_NAMESPACE = "modeldeploy-system"
OPERATOR_ACCOUNT = f"system:serviceaccount:{RELEASE_NAMESPACE}:{RELEASE}"
# Set by e2e/env/cluster env: where the project's own environment keeps its state, and the address
# at which pods reach this machine (the pods' bridge gateway).
E2E_STATE = os.environ.get("MODELDEPLOY_E2E_STATE")
NODE_GATEWAY = os.environ.get("MODELDEPLOY_E2E_NODE_GATEWAY")
OPERATOR_IMAGE = os.environ.get("MODELDEPLOY_E2E_OPERATOR_IMAGE")


def _cluster_unreachable() -> str | None:
    if not os.environ.get("KUBECONFIG") and not (Path.home() / ".kube" / "config").exists():
        return "no KUBECONFIG: the e2e suite needs a real API server (e2e/env/cluster up starts one)"
    if shutil.which("kubectl") is None:
        return "kubectl is not installed"
    probe = subprocess.run(["kubectl", "version", "--request-timeout=5s", "-o", "json"], capture_output=True,
                           text=True)
    if probe.returncode != 0 or "serverVersion" not in probe.stdout:
        return f"the cluster in KUBECONFIG does not answer: {probe.stderr.strip()[:200]}"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    e2e_items = [i for i in items if Path(str(i.fspath)).is_relative_to(Path(__file__).parent)]
    # Tests marked `last` (helm uninstall) run after every other e2e test.
    items.sort(key=lambda i: i in e2e_items and i.get_closest_marker("last") is not None)
    reason = _cluster_unreachable()
    if reason is None:
        return
    if os.environ.get("CI"):
        raise pytest.UsageError(f"CI runs the e2e suite on a real cluster, but {reason}")
    for item in e2e_items:
        item.add_marker(pytest.mark.skip(reason=reason))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "last: runs after every other e2e test")


def kubectl(*args: str, stdin: str | None = None, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    result = subprocess.run(["kubectl", "--request-timeout=20s", *args], input=stdin, capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def get_json(*args: str) -> dict[str, Any] | None:
    result = kubectl("get", *args, "-o", "json", check=False)
    if result.returncode != 0:
        if "NotFound" in result.stderr or "not found" in result.stderr:
            return None
        raise AssertionError(result.stderr)
    return json.loads(result.stdout)


def wait_for(what: str, check: Callable[[], Any], timeout: float = WAIT_SECONDS, interval: float = 0.5) -> Any:
    """Poll until check() returns something truthy; fail with `what` and the last value after timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last seen: {last!r}")


def condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    for cond in (obj or {}).get("status", {}).get("conditions") or []:
        if cond.get("type") == kind:
            return cond
    return {}


def wait_for_condition(namespace: str, name: str, kind: str, *, reason: str | None = None,
                       status: str | None = None, timeout: float = WAIT_SECONDS) -> dict[str, Any]:
    """Wait until md/name has condition `kind` with the given reason and/or status; return the object."""
    def check() -> dict[str, Any] | None:
        obj = get_json("md", name, "-n", namespace)
        cond = condition(obj, kind)
        if cond and (reason is None or cond.get("reason") == reason) and (status is None or cond.get("status") == status):
            return obj
        return None

    wanted = ", ".join(f"{k}={v}" for k, v in (("reason", reason), ("status", status)) if v is not None)
    return wait_for(f"md/{name} condition {kind} with {wanted}", check, timeout=timeout)


def kubectl_wait_ready(namespace: str, name: str, timeout: int = WAIT_SECONDS) -> None:
    wait = kubectl("wait", "--for=condition=Ready", f"md/{name}", "-n", namespace, f"--timeout={timeout}s",
                   check=False, timeout=timeout + 30)
    assert wait.returncode == 0, f"kubectl wait md/{name}: {wait.stderr}\n{describe(namespace)}"


def describe(namespace: str) -> str:
    """What a person would look at when a test fails: the objects' status and the pods."""
    out = [kubectl("get", "md,deploy,rs,pods,pvc", "-n", namespace, "-o", "wide", check=False).stdout]
    for md in (get_json("md", "-n", namespace) or {}).get("items", []):
        out.append(yaml.safe_dump({"name": md["metadata"]["name"], "status": md.get("status")}))
    out.append(kubectl("get", "events", "-n", namespace, "--sort-by=.lastTimestamp", check=False).stdout[-3000:])
    return "\n".join(out)


def operator_log(tail: int = 200) -> str:
    """The log of every operator replica (the chart runs two; one leads), each line prefixed by its pod."""
    return kubectl("logs", "-l", f"app.kubernetes.io/name=modeldeploy,app.kubernetes.io/instance={RELEASE}",
                   "-n", RELEASE_NAMESPACE, "--prefix", f"--tail={tail}", check=False).stdout


def helm_binary() -> str:
    from tests.support.tools import helm_path  # noqa: PLC0415

    found = helm_path()
    if found is None:
        raise AssertionError("helm is not installed (make test installs it into .venv/bin)")
    return found


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([helm_binary(), *args], capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, f"helm {' '.join(args)}: {result.stderr}"
    return result


def operator_image_values() -> list[str]:
    """--set flags that point the chart at the operator image under test."""
    if not OPERATOR_IMAGE:
        return []
    repository, _, tag = OPERATOR_IMAGE.rpartition(":")
    # The image was imported into the node's containerd: it must never be pulled.
    return ["--set", f"image.repository={repository}", "--set", f"image.tag={tag}",
            "--set", "image.pullPolicy=Never"]


def install_operator(*extra: str) -> None:
    helm("upgrade", "--install", RELEASE, str(CHART), "-n", RELEASE_NAMESPACE, "--create-namespace",
         *operator_image_values(), "--set", "verbose=true", *extra, "--wait", "--timeout", "180s")
    rollout = kubectl("rollout", "status", f"deployment/{RELEASE}", "-n", RELEASE_NAMESPACE, "--timeout=120s",
                      check=False, timeout=150)
    assert rollout.returncode == 0, f"the operator did not start: {rollout.stderr}\n{operator_log()}"


@pytest.fixture(scope="session")
def operator_release() -> Iterator[str]:
    """The operator as users install it: `helm install` of charts/modeldeploy (which installs the
    CRD), running as a pod with the chart's ServiceAccount and RBAC, never as cluster admin."""
    install_operator()
    yield RELEASE
    if helm("status", RELEASE, "-n", RELEASE_NAMESPACE, check=False).returncode == 0:
        helm("uninstall", RELEASE, "-n", RELEASE_NAMESPACE, "--wait")


@pytest.fixture()
def namespace(operator_release: str, request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"md-e2e-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    yield name
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    if failed:
        sys.stderr.write(f"\n--- {name} ---\n{describe(name)}\n--- operator log (tail) ---\n{operator_log()}\n")
    delete_namespace(name)


def delete_namespace(name: str, wait: bool = False) -> None:
    # Pods go first so that their CPU requests do not hold up the next test's pods on this one node.
    kubectl("delete", "pods", "--all", "-n", name, "--grace-period=1", "--wait=false", check=False)
    kubectl("delete", "namespace", name, f"--wait={'true' if wait else 'false'}", check=False, timeout=180)
    for pv in (get_json("pv", "-l", f"modeldeploy-e2e/namespace={name}") or {}).get("items", []):
        kubectl("delete", "pv", pv["metadata"]["name"], "--wait=false", check=False)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def apply(obj: dict[str, Any], check: bool = True) -> subprocess.CompletedProcess:
    return kubectl("apply", "-f", "-", stdin=yaml.safe_dump(obj), check=check)


def model_deployment(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    """A small CPU ModelDeployment of the `simple` model on the namespace's `models` claim."""
    body: dict[str, Any] = {"model": {"name": "simple", "repository": "pvc://models/triton", "version": "1"},
                            "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "sharedMemory": "64Mi"}}
    body.update(spec)
    return {"apiVersion": "modeldeploy.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": namespace}, "spec": body}


def needs_project_node() -> None:
    if not E2E_STATE:
        pytest.skip("needs the project's e2e node (hostPath model stores): run e2e/env/cluster up")


def model_store(namespace: str, claim: str = "models", *, subdir: str = "triton") -> Path:
    """A PersistentVolumeClaim backed by a hostPath PersistentVolume on the node, statically bound.

    Returns the host directory that pods see at the claim's root; the caller writes the model
    repository under it (at `subdir`, as pvc://<claim>/<subdir> names it)."""
    needs_project_node()
    assert E2E_STATE is not None
    host = Path(E2E_STATE) / "models" / f"{namespace}-{claim}"
    shutil.rmtree(host, ignore_errors=True)
    (host / subdir).mkdir(parents=True)
    pv_name = f"{namespace}-{claim}"
    apply({"apiVersion": "v1", "kind": "PersistentVolume",
           "metadata": {"name": pv_name, "labels": {"modeldeploy-e2e/namespace": namespace}},
           "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce", "ReadOnlyMany"],
                    "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                    "hostPath": {"path": str(host), "type": "Directory"},
                    "claimRef": {"namespace": namespace, "name": claim}}})
    apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim, "namespace": namespace},
           "spec": {"accessModes": ["ReadOnlyMany"], "storageClassName": "", "volumeName": pv_name,
                    "resources": {"requests": {"storage": "1Gi"}}}})
    wait_for(f"pvc/{claim} to bind", lambda: (get_json("pvc", claim, "-n", namespace) or {}).get(
        "status", {}).get("phase") == "Bound", timeout=60)
    return host / subdir


def pods_of(namespace: str, name: str) -> list[dict[str, Any]]:
    return (get_json("pods", "-n", namespace, "-l", f"app.kubernetes.io/instance={name}") or {}).get("items", [])
