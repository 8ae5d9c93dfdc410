"""Launch a real tritonserver (from the nvidia-pytriton wheel) with the operator's own flags.

Used by tests/ (free ports) and by e2e/ (127.0.0.1:8000, where the stand-in pods' IP points).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from modeldeploy.triton_flags import tritonserver_args

SIMPLE_CONFIG = """\
name: "simple"
backend: "python"
max_batch_size: 8
version_policy: { all { } }
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
"""

SIMPLE_MODEL = """\
import numpy as np
import triton_python_backend_utils as pb_utils

VERSION = {version}


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            out = pb_utils.Tensor("OUTPUT0", (x * VERSION).astype(np.float32))
            responses.append(pb_utils.InferenceResponse([out]))
        return responses
"""

BROKEN_ERROR = "weights file missing: /models/broken/1/model.bin"
BROKEN_MODEL = f"""\
class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError("{BROKEN_ERROR}")

    def execute(self, requests):
        return []
"""


def write_model_repository(root: Path) -> Path:
    """`simple` (versions 1 and 2, FP32[4] → FP32[4], max batch 8) and `broken` (initialize raises)."""
    repository = Path(root) / "repository"
    for version in (1, 2):
        (repository / "simple" / str(version)).mkdir(parents=True, exist_ok=True)
        (repository / "simple" / str(version) / "model.py").write_text(SIMPLE_MODEL.format(version=version))
    (repository / "simple" / "config.pbtxt").write_text(SIMPLE_CONFIG)
    (repository / "broken" / "1").mkdir(parents=True, exist_ok=True)
    (repository / "broken" / "1" / "model.py").write_text(BROKEN_MODEL)
    (repository / "broken" / "config.pbtxt").write_text(
        SIMPLE_CONFIG.replace('"simple"', '"broken"').replace("version_policy: { all { } }\n", ""))
    return repository


def _site_packages() -> Path:
    import pytriton

    return Path(pytriton.__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _backends_with_stub(into: Path) -> Path:
    """A copy of the wheel's backends with the python backend stub for this interpreter."""
    wheel = _site_packages() / "pytriton" / "tritonserver"
    backends = into / "backends"
    shutil.copytree(wheel / "backends", backends)
    stub = wheel / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}" / \
        "triton_python_backend_stub"
    shutil.copy2(stub, backends / "python" / stub.name)
    return backends


@dataclass
class TritonServer:
    process: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    metrics_port: int
    log_path: Path
    workdir: Path
    host: str = "127.0.0.1"
    args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 15.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> TritonServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_tritonserver(model_repository: Path, *, http_port: int | None = None, grpc_port: int | None = None,
                       metrics_port: int | None = None, load_models: tuple[str, ...] = ("simple", "broken"),
                       extra_args: tuple[str, ...] = (), host: str = "127.0.0.1",
                       startup_timeout: float = 60.0) -> TritonServer:
    """Start tritonserver with the operator's flags and wait until it is live (bounded)."""
    http_port = http_port or free_port()
    grpc_port = grpc_port or free_port()
    metrics_port = metrics_port or free_port()
    for port in (http_port, grpc_port, metrics_port):
        with socket.socket() as sock:
            if sock.connect_ex((host, port)) == 0:
                raise OSError(f"port {host}:{port} is already in use")
    workdir = Path(tempfile.mkdtemp(prefix="tritonserver-"))
    backends = _backends_with_stub(workdir)
    site = _site_packages()
    args = tritonserver_args(model_repository=str(model_repository), model_name=load_models[0], http_port=http_port,
                             grpc_port=grpc_port, metrics_port=metrics_port, exit_timeout_seconds=5)
    args += [f"--load-model={name}" for name in load_models[1:]]
    args += [f"--backend-directory={backends}", f"--http-address={host}", f"--grpc-address={host}", *extra_args]
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["LD_LIBRARY_PATH"] = f"{site / 'nvidia_pytriton.libs'}{os.pathsep}{env.get('LD_LIBRARY_PATH', '')}"
    log_path = workdir / "tritonserver.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([str(site / "pytriton" / "tritonserver" / "bin" / "tritonserver"), *args],
                                   stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = TritonServer(process, http_port, grpc_port, metrics_port, log_path, workdir, host, args)
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            text = server.log()
            shutil.rmtree(workdir, ignore_errors=True)
            raise RuntimeError(f"tritonserver exited with {process.returncode}:\n{text[-4000:]}")
        try:
            with urllib.request.urlopen(f"{server.url}/v2/health/live", timeout=1) as response:
                if response.status == 200:
                    return server
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    text = server.log()
    server.stop()
    raise TimeoutError(f"tritonserver was not live after {startup_timeout:.0f}s:\n{text[-4000:]}")
