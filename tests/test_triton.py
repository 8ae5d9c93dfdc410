"""The triton boundary against a real tritonserver (nvidia-pytriton), launched with the operator's flags.

Most tests share the session's server (simple v1+v2 loaded, broken failed); the few that have to
kill a server or start it differently get their own and kill it (SIGKILL: fast, like a lost node).
"""

from __future__ import annotations

import asyncio
import gc
import http.server
import logging
import socket
import threading
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator

import pytest

from modeldeploy.model_health import PodModelReport, VersionState, explain_not_ready
from modeldeploy.triton import (
    CachedReport,
    PodTarget,
    ReportCache,
    TritonProbe,
    READY_TTL_SECONDS,
    TritonUnavailable,
    parse_index,
    parse_signature,
    server_address,
    use_cached,
)
from modeldeploy.triton_flags import LIVENESS_PATH, SERVER_READY_PATH, STARTUP_PATH, readiness_path, tritonserver_args
from tests.support.tritonserver import (
    BROKEN_ERROR,
    TritonServer,
    free_port,
    slow_release_path,
    start_tritonserver,
    write_model_repository,
)

pytestmark = pytest.mark.triton
HOST = "127.0.0.1"


def http_status(url: str, data: bytes | None = None, timeout: float = 5, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET",
                                     headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


async def eventually(condition, timeout: float = 20.0, interval: float = 0.05):
    """Poll an async condition until it returns something truthy (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await condition()
        if value or loop.time() > deadline:
            return value
        await asyncio.sleep(interval)


@pytest.fixture()
async def probe():
    probe = TritonProbe(timeout_seconds=2.0)
    yield probe
    await probe.close()


@pytest.fixture()
def silent_port() -> Iterator[int]:
    """A port whose listener completes TCP handshakes (the kernel's backlog) but never reads or answers."""
    with socket.socket() as silent:
        silent.bind((HOST, 0))
        silent.listen(64)
        yield silent.getsockname()[1]


@pytest.fixture()
def own_server(tritonserver: TritonServer) -> Iterator[list[TritonServer]]:
    """Servers a test starts for itself; whatever it leaves running is killed."""
    servers: list[TritonServer] = []
    yield servers
    for server in servers:
        server.kill()


# --- what Triton says about model versions ------------------------------------------------------

@pytest.mark.parametrize("version", ["1", "2"])
async def test_each_version_is_ready(probe, tritonserver, version):
    report = await probe.probe(HOST, tritonserver.http_port, "simple", version)
    assert report.reachable and report.live and report.version_ready
    assert report.reason == "" and report.message == ""
    assert report.signature is not None


async def test_signature_as_triton_reports_it(probe, tritonserver):
    signature = (await probe.probe(HOST, tritonserver.http_port, "simple", "2")).signature
    assert (signature.name, signature.platform, signature.backend, signature.max_batch_size) == \
        ("simple", "python", "python", 8)
    # The metadata's shapes, as a client sends them: the batch dimension first.
    assert [(t.name, t.datatype, t.shape) for t in signature.inputs] == [("INPUT0", "FP32", (-1, 4))]
    assert [(t.name, t.datatype, t.shape) for t in signature.outputs] == [("OUTPUT0", "FP32", (-1, 4))]


async def test_a_version_that_is_not_there(probe, tritonserver):
    report = await probe.probe(HOST, tritonserver.http_port, "simple", "3", pod_uid=tritonserver.pod_uid)
    assert report.reachable and report.live and not report.version_ready and report.signature is None
    assert report.reason == "VersionNotLoaded"
    assert report.message == "simple version 3 is not loaded (loaded: 1, 2)"


async def test_a_failed_load_carries_tritons_own_error(probe, tritonserver):
    report = await probe.probe(HOST, tritonserver.http_port, "broken", "1", pod_uid=tritonserver.pod_uid)
    assert report.reachable and report.live and not report.version_ready
    assert not report.server_ready  # --strict-readiness: a failed model makes the server not ready
    assert report.reason == "ModelLoadFailed"
    assert report.message == f"broken version 1: Internal: RuntimeError: {BROKEN_ERROR}"  # no traceback


async def test_a_model_not_in_the_repository(probe, tritonserver):
    report = await probe.probe(HOST, tritonserver.http_port, "resnet50", "1", pod_uid=tritonserver.pod_uid)
    assert report.reachable and not report.version_ready
    assert report.reason == "ModelNotFound" and "resnet50" in report.message


async def test_a_model_in_the_repository_but_not_loaded(probe, tritonserver):
    report = await probe.probe(HOST, tritonserver.http_port, "slow", "1", pod_uid=tritonserver.pod_uid)
    assert report.reason == "VersionNotLoaded" and report.message == "slow version 1 is not loaded"


async def test_repository_index(probe, tritonserver):
    index = {(row.name, row.version): row
             for row in await probe.repository_index(HOST, tritonserver.http_port, pod_uid=tritonserver.pod_uid)}
    assert {key: row.state for key, row in index.items()} == {
        ("simple", "1"): "READY", ("simple", "2"): "READY", ("broken", "1"): "UNAVAILABLE",
        ("slow", ""): "",  # in the repository, never loaded: a row with a name only
    }
    assert BROKEN_ERROR in index["broken", "1"].reason


async def test_repository_index_of_a_dead_server_raises_its_own_error(silent_port):
    probe = TritonProbe(timeout_seconds=0.2)
    with pytest.raises(TritonUnavailable, match="no answer within 0.2s"):
        await probe.repository_index(HOST, silent_port)
    assert probe.in_flight == 0


# --- the flags, over plain HTTP -------------------------------------------------------------------

def test_the_server_runs_the_operators_own_flags(tritonserver):
    rendered = tritonserver_args(model_repository=str(tritonserver.model_repository), model_name="simple",
                                 http_port=tritonserver.http_port, grpc_port=tritonserver.grpc_port,
                                 metrics_port=tritonserver.metrics_port, repository_api_key=tritonserver.pod_uid)
    assert tritonserver.args[:len(rendered)] == rendered
    assert [a for a in tritonserver.args[len(rendered):] if not a.startswith(("--http-address", "--grpc-address",
                                                                           "--backend-directory"))] == \
        ["--load-model=broken"]


def test_chosen_flags_after_a_failed_load(tritonserver):
    """--exit-on-error=false keeps the server up and live after `broken` failed; the per-version endpoint
    the readiness probe asks is exact; with --strict-readiness=true the server-wide one says 400."""
    base = tritonserver.url
    assert tritonserver.running
    assert http_status(base + LIVENESS_PATH) == 200 and STARTUP_PATH == LIVENESS_PATH
    assert http_status(base + readiness_path("simple", "1")) == 200
    assert http_status(base + readiness_path("simple", "2")) == 200
    assert http_status(base + readiness_path("simple", "3")) == 400
    assert http_status(base + readiness_path("broken", "1")) == 400
    assert http_status(base + SERVER_READY_PATH) == 400
    assert BROKEN_ERROR in tritonserver.log()


async def test_without_strict_readiness_a_failed_load_looks_ready(own_server, tritonserver):
    """Why --strict-readiness=true: without it /v2/health/ready is 200 although the pod's only model failed."""
    server = start_tritonserver(tritonserver.model_repository, load_models=("broken",),
                                extra_args=("--strict-readiness=false",))
    own_server.append(server)
    assert http_status(server.url + LIVENESS_PATH) == 200
    assert http_status(server.url + SERVER_READY_PATH) == 200
    assert http_status(server.url + readiness_path("broken", "1")) == 400
    report = await TritonProbe().probe(HOST, server.http_port, "broken", "1", pod_uid=server.pod_uid)
    assert report.server_ready and report.reason == "ModelLoadFailed"


async def test_a_load_model_missing_from_the_repository(own_server, tritonserver):
    """Even with --strict-readiness=true, /v2/health/ready is 200 when nothing is loaded at all: only the
    per-version endpoint is a safe readiness probe. The operator reads ModelNotFound."""
    server = start_tritonserver(tritonserver.model_repository, load_models=("resnet50",))
    own_server.append(server)
    assert http_status(server.url + LIVENESS_PATH) == 200
    assert http_status(server.url + SERVER_READY_PATH) == 200
    assert http_status(server.url + readiness_path("resnet50", "1")) == 400
    report = await TritonProbe().probe(HOST, server.http_port, "resnet50", "1", pod_uid=server.pod_uid)
    assert report.live and report.server_ready and report.reason == "ModelNotFound"


def test_exit_on_error_true_would_kill_the_server(tritonserver):
    """Why --exit-on-error=false: with Triton's default a failed startup load ends the process."""
    with pytest.raises(RuntimeError, match="load failed for model 'broken'"):
        start_tritonserver(tritonserver.model_repository, load_models=("broken",),
                           extra_args=("--exit-on-error=true",))


async def test_no_http_until_the_startup_load_is_over(tmp_path, own_server):
    """Why the startup probe asks /v2/health/live: explicit mode serves no HTTP while the startup load
    runs, and serves it as soon as the load is over, successful or not. (Meanwhile the probe can only
    say TritonUnreachable: connection refused.)"""
    repository = write_model_repository(tmp_path)
    port = free_port()
    starting = asyncio.create_task(asyncio.to_thread(start_tritonserver, repository, http_port=port,
                                                     load_models=("slow",)))
    try:
        probe = TritonProbe(timeout_seconds=1.0)
        # The process runs and loads `slow` (it waits for its release file), but nothing listens yet.
        await asyncio.sleep(1.0)
        assert not starting.done()
        report = await probe.probe(HOST, port, "slow", "1")
        assert not report.reachable and "connection refused" in report.message
        slow_release_path(repository).touch()
        own_server.append(await asyncio.wait_for(starting, timeout=30))
    finally:
        slow_release_path(repository).touch()
        if not starting.done():
            own_server.append(await starting)
    assert (await probe.probe(HOST, port, "slow", "1")).version_ready


async def test_a_model_that_is_loading(tmp_path, own_server):
    repository = write_model_repository(tmp_path)
    server = start_tritonserver(repository, load_models=("simple",))
    own_server.append(server)
    probe = TritonProbe(timeout_seconds=1.0)
    load_url = f"{server.url}/v2/repository/models/slow/load"
    loading = asyncio.create_task(asyncio.to_thread(http_status, load_url, b"{}", 40, server.repository_api_headers))
    try:
        async def is_loading():
            # The probe asks server readiness before the index: the load may start between the two
            # calls, so one answer can say "ready" and "loading" at once. Wait for one that was
            # loading throughout (the slow model stays loading until it is released).
            report = await probe.probe(HOST, server.http_port, "slow", "1", pod_uid=server.pod_uid)
            return report if report.reason == "ModelLoading" and not report.server_ready else None

        report = await eventually(is_loading)
        assert report and report.live and not report.server_ready and report.message == "slow version 1 is loading"
    finally:
        slow_release_path(repository).touch()
        assert await loading == 200
    assert (await probe.probe(HOST, server.http_port, "slow", "1")).version_ready


# --- a slow, dead, vanishing or garbled Triton ----------------------------------------------------

async def test_a_server_that_never_answers_times_out(silent_port):
    probe = TritonProbe(timeout_seconds=0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    report = await probe.probe(HOST, silent_port, "simple", "1")
    assert loop.time() - started < 3  # about the timeout; the bound is generous so it never flakes
    assert not report.reachable and report.reason == "TritonUnreachable"
    assert report.message == f"Triton at {HOST}:{silent_port} did not answer: no answer within 0.3s"


async def test_a_refused_connection_is_unreachable(probe):
    with socket.socket() as sock:
        sock.bind((HOST, 0))  # bound, not listening: connections are refused
        report = await probe.probe(HOST, sock.getsockname()[1], "simple", "1")
    assert not report.reachable and report.reason == "TritonUnreachable"
    assert "connection refused" in report.message


async def test_a_server_that_hangs_up_mid_request(probe):
    """Accepts, reads the request, closes without a response (aiohttp's ServerDisconnectedError)."""
    listener = socket.socket()
    listener.bind((HOST, 0))
    listener.listen(8)
    listener.settimeout(0.1)
    stop = threading.Event()

    def hang_up() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            conn.recv(65536)
            conn.close()

    thread = threading.Thread(target=hang_up, daemon=True)
    thread.start()
    try:
        report = await probe.probe(HOST, listener.getsockname()[1], "simple", "1")
    finally:
        stop.set()
        thread.join(timeout=2)
        listener.close()
    assert not report.reachable and report.reason == "TritonUnreachable"
    assert "closed before a response" in report.message


@pytest.fixture()
def garbling_server() -> Iterator[int]:
    """An HTTP server that answers 200 and a body that is not JSON to every request."""

    class Garble(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = b"<html>not triton</html>"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer((HOST, 0), Garble)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


async def test_a_server_that_answers_garbage(probe, garbling_server):
    report = await probe.probe(HOST, garbling_server, "simple", "1")
    assert not report.reachable and report.reason == "TritonUnreachable"
    assert "malformed answer" in report.message


async def test_a_server_that_goes_away_while_probes_are_in_flight(own_server, tritonserver):
    server = start_tritonserver(tritonserver.model_repository, load_models=("simple",))
    own_server.append(server)
    probe = TritonProbe(timeout_seconds=1.0)
    loop = asyncio.get_running_loop()

    async def keep_probing() -> list[PodModelReport]:
        reports: list[PodModelReport] = []
        deadline = loop.time() + 20
        while loop.time() < deadline and (not reports or reports[-1].reachable):
            reports.append(await probe.probe(HOST, server.http_port, "simple", "1"))
        return reports

    assert (await probe.probe(HOST, server.http_port, "simple", "1")).version_ready
    probing = [asyncio.create_task(keep_probing()) for _ in range(4)]
    await asyncio.sleep(0.3)
    await asyncio.to_thread(server.kill)
    histories = await asyncio.gather(*probing)  # never raises, whatever point each conversation had reached
    for history in histories:
        assert history[0].version_ready
        assert not history[-1].reachable and history[-1].reason == "TritonUnreachable"
    after = await probe.probe(HOST, server.http_port, "simple", "1")
    assert not after.reachable and probe.in_flight == 0


async def test_a_slow_triton_does_not_stall_the_others(tritonserver, silent_port):
    probe = TritonProbe(timeout_seconds=3.0, max_concurrency=4)
    stuck = asyncio.create_task(probe.probe(HOST, silent_port, "simple", "1"))
    await asyncio.sleep(0)
    healthy = await probe.probe(HOST, tritonserver.http_port, "simple", "1")
    try:
        assert healthy.version_ready and not stuck.done()  # answered while the silent one still waits
    finally:
        stuck.cancel()


async def test_concurrency_is_bounded(silent_port):
    probe = TritonProbe(timeout_seconds=0.2, max_concurrency=2)
    reports = await asyncio.gather(*(probe.probe(HOST, silent_port, "simple", "1") for _ in range(6)))
    assert probe.peak_in_flight == 2 and probe.in_flight == 0
    assert all(r.reason == "TritonUnreachable" for r in reports)


async def test_different_pods_are_probed_in_parallel(silent_port):
    probe = TritonProbe(timeout_seconds=0.2, max_concurrency=32)
    await asyncio.gather(*(probe.probe(HOST, silent_port, "simple", "1") for _ in range(6)))
    assert probe.peak_in_flight == 6


async def test_every_client_session_is_closed(tritonserver, silent_port, garbling_server, caplog):
    """No "Unclosed client session" / "Unclosed connector", whichever way a conversation ended."""
    caplog.set_level(logging.ERROR, logger="asyncio")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        probe = TritonProbe(timeout_seconds=0.3)
        with socket.socket() as refused:
            refused.bind((HOST, 0))
            await asyncio.gather(
                probe.probe(HOST, tritonserver.http_port, "simple", "1"),
                probe.probe(HOST, tritonserver.http_port, "broken", "1"),
                probe.probe(HOST, silent_port, "simple", "1"),
                probe.probe(HOST, refused.getsockname()[1], "simple", "1"),
                probe.probe(HOST, garbling_server, "simple", "1"),
                probe.repository_index(HOST, tritonserver.http_port, pod_uid=tritonserver.pod_uid),
            )
        cancelled = asyncio.create_task(probe.probe(HOST, silent_port, "simple", "1"))
        await asyncio.sleep(0.05)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):  # cancellation is not swallowed
            await cancelled
        await probe.close()
        gc.collect()
    unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert unclosed == [] and "Unclosed" not in caplog.text


# --- pure parts ------------------------------------------------------------------------------------

def test_addresses():
    assert server_address("10.1.2.3", 8000) == "10.1.2.3:8000"
    assert server_address("fd00::1", 8000) == "[fd00::1]:8000"


def test_malformed_answers_are_value_errors():
    with pytest.raises(ValueError):
        parse_index({"not": "a list"})
    with pytest.raises(ValueError):
        parse_signature({"name": "m", "inputs": [{"shape": [1]}]}, {})
    assert parse_index([{"name": "m"}]) == (VersionState("m", "", "", ""),)


def test_explain_not_ready_reads_the_index():
    index = (VersionState("m", "1", "READY", ""), VersionState("m", "2", "LOADING", ""),
             VersionState("m", "3", "UNAVAILABLE", "Internal: bad\n\nAt:\n  model.py(3)"),
             VersionState("m", "4", "UNAVAILABLE", "unloaded"))
    assert explain_not_ready("m", "2", index) == ("ModelLoading", "m version 2 is loading")
    assert explain_not_ready("m", "3", index) == ("ModelLoadFailed", "m version 3: Internal: bad")
    assert explain_not_ready("m", "4", index)[0] == "VersionNotLoaded"
    assert explain_not_ready("m", "9", index) == ("VersionNotLoaded", "m version 9 is not loaded (loaded: 1)")
    assert explain_not_ready("x", "1", index)[0] == "ModelNotFound"


READY = PodModelReport(True, True, True, True, "", "")
LOADING = PodModelReport(True, True, False, False, "ModelLoading", "m version 1 is loading")
FAILED = PodModelReport(True, True, False, False, "ModelLoadFailed", "m version 1: boom")
GONE = PodModelReport(False, False, False, False, "TritonUnreachable", "refused")
POD = PodTarget("uid-a", "10.0.0.7", 8000, "m", "1", "containerd://abc")


@pytest.mark.parametrize(("cached", "asked", "expected"), [
    (None, POD, False),
    (CachedReport(POD, READY), POD, True),
    (CachedReport(POD, READY), PodTarget("uid-a", "10.0.0.8", 8000, "m", "1", "containerd://abc"), False),  # new IP
    (CachedReport(POD, READY), PodTarget("uid-b", "10.0.0.7", 8000, "m", "1", "containerd://abc"), False),  # new pod
    (CachedReport(POD, READY), PodTarget("uid-a", "10.0.0.7", 8000, "m", "2", "containerd://abc"), False),  # version
    (CachedReport(POD, READY), PodTarget("uid-a", "10.0.0.7", 8000, "n", "1", "containerd://abc"), False),  # model
    (CachedReport(POD, READY), PodTarget("uid-a", "10.0.0.7", 8000, "m", "1", "containerd://def"), False),  # restart
    (CachedReport(POD, READY), PodTarget("uid-a", "10.0.0.7", 8000, "m", "1", "containerd://abc", False),
     False),  # the kubelet's readiness probe says the version went away
    (CachedReport(POD, LOADING), POD, False),
    (CachedReport(POD, FAILED), POD, False),
    (CachedReport(POD, GONE), POD, False),
])
def test_the_cache_decision(cached, asked, expected):
    assert use_cached(cached, asked, now=1.0) is expected


def test_a_ready_answer_expires():
    cached = CachedReport(POD, READY, asked_at=100.0)
    assert use_cached(cached, POD, now=100.0 + READY_TTL_SECONDS - 1)
    assert not use_cached(cached, POD, now=100.0 + READY_TTL_SECONDS)


class CountingProbe(TritonProbe):
    """The real probe, counting how often it is asked (nothing about Triton is faked)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls = 0

    async def probe(self, host: str, port: int, model: str, version: str, **kwargs) -> PodModelReport:
        self.calls += 1
        return await super().probe(host, port, model, version, **kwargs)


async def test_the_cache_serves_ready_answers_until_the_pod_changes(own_server, tritonserver):
    server = start_tritonserver(tritonserver.model_repository, load_models=("simple",))
    own_server.append(server)
    probe = CountingProbe(timeout_seconds=0.5)
    cache = ReportCache(probe)
    first = await cache.report("pod-a", HOST, server.http_port, "simple", "1")
    not_loaded = await cache.report("pod-b", HOST, server.http_port, "simple", "3")
    assert first.version_ready and not not_loaded.version_ready and probe.calls == 2

    server.kill()
    # Same pod, same IP, same version: the ready answer stands without asking (the server is gone now).
    assert await cache.report("pod-a", HOST, server.http_port, "simple", "1") is first
    assert probe.calls == 2
    # A not-ready answer is always asked again.
    assert (await cache.report("pod-b", HOST, server.http_port, "simple", "3")).reason == "TritonUnreachable"
    assert probe.calls == 3
    # A new IP for the pod (or a restarted container) is a new question.
    moved = await cache.report("pod-a", "127.0.0.3", server.http_port, "simple", "1")
    assert moved.reason == "TritonUnreachable" and probe.calls == 4
    restarted = await cache.report("pod-a", "127.0.0.3", server.http_port, "simple", "1", container_id="c2")
    assert not restarted.reachable and probe.calls == 5

    cache.retain({"pod-a"})
    assert len(cache) == 1 and cache.cached("pod-b") is None
    cache.forget("pod-a")
    assert len(cache) == 0
    await cache.close()


def triton_repository_call(server, model: str, action: str) -> None:
    request = urllib.request.Request(f"{server.url}/v2/repository/models/{model}/{action}", data=b"{}", method="POST",
                                     headers=server.repository_api_headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200


async def test_an_unloaded_model_is_seen_when_the_pod_readiness_flips_or_the_answer_expires(own_server, tritonserver):
    server = start_tritonserver(tritonserver.model_repository, load_models=("simple",), pod_uid="pod-a")
    own_server.append(server)
    now = [0.0]
    cache = ReportCache(TritonProbe(timeout_seconds=2.0), clock=lambda: now[0])

    async def ask(kubelet_ready: bool) -> PodModelReport:
        return await cache.report("pod-a", HOST, server.http_port, "simple", "1", kubelet_ready=kubelet_ready)

    assert (await ask(True)).version_ready
    triton_repository_call(server, "simple", "unload")
    assert (await ask(True)).version_ready  # nothing about the pod changed yet: the answer stands
    # The kubelet's readiness probe fails, the pod's Ready condition flips: Triton is asked again.
    gone = await ask(False)
    assert not gone.version_ready and gone.reason == "VersionNotLoaded", gone
    # Loaded again: READY, and cached. Unloaded behind a pod that still looks Ready (a probe that is
    # misconfigured, or not run yet): the answer expires, and Triton is asked again.
    triton_repository_call(server, "simple", "load")
    assert (await ask(True)).version_ready
    triton_repository_call(server, "simple", "unload")
    now[0] += READY_TTL_SECONDS
    assert not (await ask(True)).version_ready
