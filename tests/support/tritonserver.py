"""Launch a real tritonserver (from the nvidia-pytriton wheel) with the operator's own flags.

Used by tests/ (free ports); e2e/ uses its model repositories on real pods.
The server runs `tritonserver_args(...)` exactly as the Deployment renders it; the only
additions are what a test machine needs instead of a pod: the ports (free ones unless given),
--http-address/--grpc-address (the loopback host, never 0.0.0.0), --backend-directory (a copy
of the wheel's backends with the python backend stub for this interpreter), one --load-model
per extra model, and the caller's extra_args (which come last, so they win). The model-repository
API is restricted as in a pod, with `pod_uid` (a fresh UUID unless given) where the pod has its UID:
requests to load, unload or list models carry `server.repository_api_headers`.
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
import uuid
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from modeldeploy.triton_flags import EXIT_TIMEOUT_SECONDS, LIVENESS_PATH, repository_api_headers, tritonserver_args

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

# `slow` stays LOADING until a file named `release` appears in its version directory (at most
# SLOW_MAX_SECONDS), so a test can look at a model that is loading for as long as it needs.
SLOW_MAX_SECONDS = 30
SLOW_MODEL = f"""\
import os
import time


class TritonPythonModel:
    def initialize(self, args):
        release = os.path.join(args["model_repository"], args["model_version"], "release")
        deadline = time.monotonic() + {SLOW_MAX_SECONDS}
        while not os.path.exists(release) and time.monotonic() < deadline:
            time.sleep(0.05)

    def execute(self, requests):
        return []
"""


def _config(name: str, *, all_versions: bool = False) -> str:
    config = SIMPLE_CONFIG.replace('"simple"', f'"{name}"')
    return config if all_versions else config.replace("version_policy: { all { } }\n", "")


def write_model(repository: Path, name: str, versions: Sequence[int], *, all_versions: bool = True,
                source: str | None = None) -> Path:
    """Model `name` in repository: the `simple` model (x * version) for each version, or `source` as
    each version's model.py; version_policy all unless all_versions is False (Triton's default,
    the latest version only)."""
    for version in versions:
        (repository / name / str(version)).mkdir(parents=True, exist_ok=True)
        (repository / name / str(version) / "model.py").write_text(source or SIMPLE_MODEL.format(version=version))
    (repository / name / "config.pbtxt").write_text(_config(name, all_versions=all_versions))
    return repository / name


def write_model_repository(root: Path) -> Path:
    """A python-backend model repository under root/repository:
    `simple`  versions 1 and 2 (version_policy all), FP32[4] -> FP32[4] (x * version), max batch 8;
    `broken`  version 1, initialize raises RuntimeError(BROKEN_ERROR);
    `slow`    version 1, initialize waits for slow_release_path(repository) (not loaded by default)."""
    repository = Path(root) / "repository"
    write_model(repository, "simple", (1, 2))
    for name, source in (("broken", BROKEN_MODEL), ("slow", SLOW_MODEL)):
        write_model(repository, name, (1,), all_versions=False, source=source)
    return repository


def slow_release_path(repository: Path) -> Path:
    """Create this file to let the `slow` model finish loading; remove it to make the next load slow."""
    return Path(repository) / "slow" / "1" / "release"


def _site_packages() -> Path:
    import pytriton

    return Path(pytriton.__file__).resolve().parent.parent


def tritonserver_binary() -> Path:
    return _site_packages() / "pytriton" / "tritonserver" / "bin" / "tritonserver"


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct ports free right now (all held open together while choosing)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


def _backends_with_stub(into: Path) -> Path:
    """A copy of the wheel's backends with the python backend stub for this interpreter."""
    wheel = _site_packages() / "pytriton" / "tritonserver"
    backends = into / "backends"
    shutil.copytree(wheel / "backends", backends)
    stub = wheel / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}" / \
        "triton_python_backend_stub"
    if not stub.exists():
        raise RuntimeError(f"nvidia-pytriton has no python backend stub for Python "
                           f"{sys.version_info.major}.{sys.version_info.minor} ({stub})")
    shutil.copy2(stub, backends / "python" / stub.name)
    return backends


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    # The stub runs the models with the first python on PATH: this venv's, which has numpy.
    # (sys.executable, not resolved: a venv's python is a symlink to the base interpreter.)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    libs = str(_site_packages() / "nvidia_pytriton.libs")
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libs, env.get("LD_LIBRARY_PATH", "")) if p)
    return env


@dataclass
class TritonServer:
    """A running tritonserver. A context manager: leaving it stops the server."""

    process: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    metrics_port: int
    log_path: Path
    workdir: Path
    model_repository: Path
    host: str = "127.0.0.1"
    args: list[str] = field(default_factory=list)
    pod_uid: str = ""  # the key of its model-repository API, as a pod's UID is in a pod
    _final_log: str | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def repository_api_headers(self) -> dict[str, str]:
        """What a request to load, unload or list models must carry (the operator's, and the sidecar's)."""
        return repository_api_headers(self.pod_uid)

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        """The server's output so far (kept after stop(), which removes the working directory)."""
        if self._final_log is not None:
            return self._final_log
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _kill_group(self) -> None:
        # start_new_session=True made tritonserver a process group leader; its python stubs are in the group.
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def kill(self) -> None:
        """Abrupt death (SIGKILL to tritonserver and its stubs), like a node that went away."""
        self._kill_group()
        self.process.wait(timeout=10)
        self._cleanup()

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM as the kubelet sends it; SIGKILL after `timeout` seconds. Idempotent."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._kill_group()
                self.process.wait(timeout=10)
        self._kill_group()  # any stub left behind
        self._cleanup()

    def _cleanup(self) -> None:
        if self._final_log is None:
            self._final_log = self.log()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, port)) == 0


def _is_live(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + LIVENESS_PATH, timeout=1) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start_tritonserver(model_repository: Path, *, http_port: int | None = None, grpc_port: int | None = None,
                       metrics_port: int | None = None, load_models: Sequence[str] = ("simple", "broken"),
                       extra_args: Sequence[str] = (), host: str = "127.0.0.1",
                       exit_timeout_seconds: int = EXIT_TIMEOUT_SECONDS,
                       startup_timeout: float = 60.0, pod_uid: str | None = None) -> TritonServer:
    """Start tritonserver with the operator's flags and wait (at most startup_timeout) until it is live.

    In explicit mode Triton serves HTTP only once the startup loads are over, so live means every
    model in load_models was loaded or failed to. Ports left None are chosen free; a collision on
    one of those (another process took it meanwhile) is retried with new ports. A port given and
    already taken raises OSError. A server that exits or is not live in time raises RuntimeError
    or TimeoutError with its log. `pod_uid` is the key of the model-repository API (a fresh UUID if None)."""
    if not load_models:
        raise ValueError("load_models: name at least one model (the operator always loads one)")
    for port in (http_port, grpc_port, metrics_port):
        if port is not None and _port_in_use(host, port):
            raise OSError(f"port {host}:{port} is already in use")
    auto = None in (http_port, grpc_port, metrics_port)
    attempts = 3 if auto else 1
    for attempt in range(1, attempts + 1):
        chosen = iter(free_ports(3, host))
        ports = [port if port is not None else next(chosen) for port in (http_port, grpc_port, metrics_port)]
        try:
            return _start(Path(model_repository), *ports, load_models=tuple(load_models), extra_args=tuple(extra_args),
                          host=host, exit_timeout_seconds=exit_timeout_seconds, startup_timeout=startup_timeout,
                          pod_uid=pod_uid or str(uuid.uuid4()))
        except _AddressInUse:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


class _AddressInUse(OSError):
    """tritonserver could not bind one of its ports."""


def _start(model_repository: Path, http_port: int, grpc_port: int, metrics_port: int, *, load_models: tuple[str, ...],
           extra_args: tuple[str, ...], host: str, exit_timeout_seconds: int, startup_timeout: float,
           pod_uid: str) -> TritonServer:
    workdir = Path(tempfile.mkdtemp(prefix="tritonserver-"))
    try:
        backends = _backends_with_stub(workdir)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    args = tritonserver_args(model_repository=str(model_repository), model_name=load_models[0], http_port=http_port,
                             grpc_port=grpc_port, metrics_port=metrics_port, exit_timeout_seconds=exit_timeout_seconds,
                             repository_api_key=pod_uid)
    args += [f"--load-model={name}" for name in load_models[1:]]
    args += [f"--http-address={host}", f"--grpc-address={host}", f"--backend-directory={backends}", *extra_args]
    log_path = workdir / "tritonserver.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([str(tritonserver_binary()), *args], stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=_environment(), start_new_session=True)
    server = TritonServer(process, http_port, grpc_port, metrics_port, log_path, workdir, model_repository, host, args,
                          pod_uid)
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            server.stop()
            text = server.log()
            error = _AddressInUse if "Address already in use" in text else RuntimeError
            raise error(f"tritonserver exited with {process.returncode}:\n{text[-4000:]}")
        if _is_live(server.url):
            return server
        time.sleep(0.1)
    server.stop()
    raise TimeoutError(f"tritonserver was not live after {startup_timeout:g}s:\n{server.log()[-4000:]}")


# `canary`: versions with known behaviour for the metrics analysis (tests/test_analysis.py). Requests
# are executed one per execute() call (no dynamic batching), so "every Nth call" is every Nth request.
# A failure is an exception raised from execute(): Triton 2.51 counts it in
# nv_inference_request_failure{reason="BACKEND"}. An error *response*
# (pb_utils.InferenceResponse(error=...)) reaches the client as an HTTP error but Triton counts it as a
# success, so it would be invisible to the analysis (see docs/triton-flags.md).
CANARY_FAIL_EVERY = 5
CANARY_SLOW_SECONDS = 0.02
CANARY_MODEL = """\
import time

import numpy as np
import triton_python_backend_utils as pb_utils

FAIL_EVERY = {fail_every}  # 0: never
SLEEP_SECONDS = {sleep_seconds}


class TritonPythonModel:
    def initialize(self, args):
        self.calls = 0

    def execute(self, requests):
        self.calls += 1
        if FAIL_EVERY and self.calls % FAIL_EVERY == 0:
            raise RuntimeError("injected failure")
        if SLEEP_SECONDS:
            time.sleep(SLEEP_SECONDS)
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "OUTPUT0", pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy().astype(np.float32))])
            for r in requests]
"""


def write_canary_model(repository: Path, name: str = "canary") -> Path:
    """Model `name` (version_policy all, the `simple` signature FP32[4] -> FP32[4], identity):
    version 1 healthy; version 2 raises in every CANARY_FAIL_EVERY-th execute (20% failing);
    version 3 healthy but CANARY_SLOW_SECONDS slower per request."""
    for version, fail_every, sleep_seconds in ((1, 0, 0.0), (2, CANARY_FAIL_EVERY, 0.0), (3, 0, CANARY_SLOW_SECONDS)):
        write_model(repository, name, (version,), source=CANARY_MODEL.format(fail_every=fail_every,
                                                                           sleep_seconds=sleep_seconds))
    return repository / name


# `queued`: one request at a time takes QUEUED_EXECUTE_SECONDS; the dynamic batcher's queue holds at
# most 2 more (a third is refused: "Exceeds maximum queue size", which Triton 2.51 counts nowhere).
# A gRPC client that cancels a request while it waits in that queue makes Triton count it in
# nv_inference_request_failure{reason="CANCELED"}; while requests wait,
# nv_inference_pending_request_count is their number.
QUEUED_EXECUTE_SECONDS = 1.0
QUEUED_MODEL = f"""\
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        time.sleep({QUEUED_EXECUTE_SECONDS})
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "OUTPUT0", pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy())]) for r in requests]
"""


def write_queued_model(repository: Path, name: str = "queued") -> Path:
    """Model `name`, version 1 (see QUEUED_MODEL): dynamic batching with a queue of at most 2 requests."""
    path = write_model(repository, name, (1,), all_versions=False, source=QUEUED_MODEL)
    config = path / "config.pbtxt"
    config.write_text(config.read_text() + "dynamic_batching { max_queue_delay_microseconds: 0 "
                      "default_queue_policy { max_queue_size: 2 } }\n")
    return path
