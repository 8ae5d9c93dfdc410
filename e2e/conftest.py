"""End-to-end fixtures: a real API server (KUBECONFIG), the CRD, the operator as a subprocess.

The environment (architecture.md): kube-apiserver and kube-controller-manager, stand-ins for the
scheduler and kubelet that bind pods whose nvidia.com/* limits fit (2 nodes x 4 GPUs, 7 MIG
1g.10gb slices each) and mark them Running/Ready with pod IP 127.0.0.1. No container runs, so a
test that needs Triton starts one on 127.0.0.1:8000 itself. Every test gets its own namespace.
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
CRD = ROOT / "crds" / "modeldeployments.yaml"
WAIT_SECONDS = 60


def _cluster_reachable() -> str | None:
    if not os.environ.get("KUBECONFIG") and not (Path.home() / ".kube" / "config").exists():
        return "no KUBECONFIG: the e2e suite needs a real API server"
    if shutil.which("kubectl") is None:
        return "kubectl is not installed"
    probe = subprocess.run(["kubectl", "version", "--request-timeout=5s", "-o", "json"], capture_output=True,
                           text=True)
    if probe.returncode != 0 or "serverVersion" not in probe.stdout:
        return f"the cluster in KUBECONFIG does not answer: {probe.stderr.strip()[:200]}"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = _cluster_reachable()
    if reason is None:
        return
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.skip(reason=reason))


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


@pytest.fixture(scope="session")
def crd_installed() -> None:
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    kubectl("wait", "--for=condition=Established", "crd/modeldeployments.modeldeploy.dev", "--timeout=60s")


@pytest.fixture(scope="session")
def operator_process(crd_installed: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    log_path = tmp_path_factory.mktemp("operator") / "operator.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "modeldeploy", "run", "--health-port", "0", "--verbose"],
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        time.sleep(2)
        if process.poll() is not None:
            raise AssertionError(f"the operator exited at start:\n{log_path.read_text()[-4000:]}")
        yield log_path
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            raise AssertionError("the operator did not stop within 20 s of SIGTERM") from None


@pytest.fixture()
def namespace(operator_process: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"md-e2e-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    yield name
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        sys.stderr.write(f"\n--- operator log (tail) ---\n{operator_process.read_text()[-6000:]}\n")
    kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def model_deployment(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": {"name": "simple", "repository": "s3://e2e-models/triton", "version": "1"},
                            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}
    body.update(spec)
    return {"apiVersion": "modeldeploy.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": namespace}, "spec": body}


def apply(obj: dict[str, Any], check: bool = True) -> subprocess.CompletedProcess:
    return kubectl("apply", "-f", "-", stdin=yaml.safe_dump(obj), check=check)


@pytest.fixture(scope="session")
def triton_on_8000(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real tritonserver on 127.0.0.1:8000, where the stand-in pods' IP points."""
    from tests.support.tritonserver import start_tritonserver, write_model_repository

    repository = write_model_repository(tmp_path_factory.mktemp("models"))
    try:
        server = start_tritonserver(repository, http_port=8000, load_models=("simple", "broken"))
    except OSError as error:
        pytest.skip(f"cannot start Triton on 127.0.0.1:8000: {error}")
    try:
        yield server
    finally:
        server.stop()
