"""The triton boundary against a real tritonserver (nvidia-pytriton), launched with the operator's flags."""

from __future__ import annotations

import asyncio
import socket
import threading
import urllib.error
import urllib.request

import pytest

from modeldeploy.model_health import CacheKey, PodModelReport, VersionState, explain_not_ready, should_probe
from modeldeploy.triton import ReportCache, TritonProbe
from modeldeploy.triton_flags import LIVENESS_PATH, readiness_path
from tests.support.tritonserver import BROKEN_ERROR, start_tritonserver

pytestmark = pytest.mark.triton
HOST = "127.0.0.1"


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


@pytest.fixture()
async def probe():
    probe = TritonProbe(timeout_seconds=1.0)
    yield probe
    await probe.close()


@pytest.mark.parametrize("version", ["1", "2"])
async def test_each_version_is_ready(probe, tritonserver, version):
    report = await probe.probe(HOST, tritonserver.http_port, "simple", version)
    assert report.reachable and report.live and report.version_ready
    assert report.reason == "" and report.message == ""


async def test_signature_as_triton_reports_it(probe, tritonserver):
    signature = (await probe.probe(HOST, tritonserver.http_port, "simple", "1")).signature
    assert signature.name == "simple" and signature.backend == "python" and signature.max_batch_size == 8
    assert [(t.name, t.datatype, t.shape) for t in signature.inputs] == [("INPUT0", "FP32", (-1, 4))]
    assert [(t.name, t.datatype, t.shape) for t in signature.outputs] == [("OUTPUT0", "FP32", (-1, 4))]


async def test_a_version_that_is_not_there(probe, tritonserver):
    report = await probe.probe(HOST, tritonserver.http_port, "simple", "3")
    assert report.reachable and not report.version_ready
    assert report.reason == "VersionNotLoaded"
    assert report.message == "simple version 3 is not loaded (loaded: 1, 2)"


async def test_a_failed_load_carries_tritons_own_error(probe, tritonserver):
    report = await probe.probe(HOST, tritonserver.http_port, "broken", "1")
    assert report.reachable and report.live and not report.version_ready
    assert report.reason == "ModelLoadFailed"
    assert BROKEN_ERROR in report.message and "Traceback" not in report.message


async def test_a_model_not_in_the_repository(probe, tritonserver):
    report = await probe.probe(HOST, tritonserver.http_port, "resnet50", "1")
    assert report.reason == "ModelNotFound" and "resnet50" in report.message


async def test_repository_index(probe, tritonserver):
    index = await probe.repository_index(HOST, tritonserver.http_port)
    states = {(row.name, row.version): row.state for row in index}
    assert states == {("simple", "1"): "READY", ("simple", "2"): "READY", ("broken", "1"): "UNAVAILABLE"}


def test_chosen_flags_after_a_failed_load(tritonserver):
    """--exit-on-error=false keeps the server up and live; the per-version endpoint the probes use is
    precise; with --strict-readiness the server-wide ready endpoint fails because of any failed model."""
    assert tritonserver.process.poll() is None
    base = tritonserver.url
    assert http_status(base + LIVENESS_PATH) == 200
    assert http_status(base + readiness_path("simple", "1")) == 200
    assert http_status(base + readiness_path("broken", "1")) == 400
    assert http_status(base + "/v2/health/ready") == 400


async def test_a_server_that_never_answers_times_out():
    with socket.socket() as silent:
        silent.bind((HOST, 0))
        silent.listen(16)  # accepts connections into the backlog, never reads
        probe = TritonProbe(timeout_seconds=0.3)
        loop = asyncio.get_running_loop()
        started = loop.time()
        report = await probe.probe(HOST, silent.getsockname()[1], "simple", "1")
        assert loop.time() - started < 5
        assert not report.reachable and report.reason == "TritonUnreachable"
        assert "timed out" in report.message or "Timeout" in report.message


async def test_a_refused_connection_is_unreachable(probe):
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        report = await probe.probe(HOST, port, "simple", "1")
    assert not report.reachable and report.reason == "TritonUnreachable"


async def test_a_server_that_hangs_up_mid_request(probe):
    """Accepts, reads the request, closes without a response: aiohttp's ServerDisconnectedError."""
    listener = socket.socket()
    listener.bind((HOST, 0))
    listener.listen(8)
    stop = threading.Event()

    def hang_up() -> None:
        listener.settimeout(0.2)
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


async def test_concurrency_is_bounded():
    with socket.socket() as silent:
        silent.bind((HOST, 0))
        silent.listen(64)
        probe = TritonProbe(timeout_seconds=0.2, max_concurrency=2)
        peak = 0

        async def watch():
            nonlocal peak
            while True:
                peak = max(peak, probe.in_flight)
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch())
        reports = await asyncio.gather(*(probe.probe(HOST, silent.getsockname()[1], "simple", "1")
                                         for _ in range(6)))
        watcher.cancel()
    assert peak == 2
    assert all(r.reason == "TritonUnreachable" for r in reports)


async def test_a_server_that_goes_away(model_repository):
    server = start_tritonserver(model_repository, load_models=("simple",))
    probe = TritonProbe(timeout_seconds=1.0)
    try:
        assert (await probe.probe(HOST, server.http_port, "simple", "1")).version_ready
        in_flight = [asyncio.create_task(probe.probe(HOST, server.http_port, "simple", "1")) for _ in range(5)]
        await asyncio.sleep(0)
        await asyncio.to_thread(server.stop)
        reports = await asyncio.gather(*in_flight)  # never raises, whatever point each probe had reached
        assert all(isinstance(r, PodModelReport) for r in reports)
        after = await probe.probe(HOST, server.http_port, "simple", "1")
        assert not after.reachable and after.reason == "TritonUnreachable"
    finally:
        server.stop()


async def test_cache_serves_ready_answers_until_the_pod_changes(model_repository):
    server = start_tritonserver(model_repository, load_models=("simple",))
    cache = ReportCache(TritonProbe(timeout_seconds=0.5))
    try:
        first = await cache.report("pod-a", HOST, server.http_port, "simple", "1")
        assert first.version_ready
    finally:
        server.stop()
    # Same pod, same IP: the ready answer stands without asking (the server is gone now).
    assert await cache.report("pod-a", HOST, server.http_port, "simple", "1") is first
    # A new IP for the pod is a new question.
    moved = await cache.report("pod-a", "127.0.0.3", server.http_port, "simple", "1")
    assert moved.reason == "TritonUnreachable"
    cache.retain(set())
    assert (await cache.report("pod-a", HOST, server.http_port, "simple", "1")).reason == "TritonUnreachable"


def test_only_ready_answers_are_cached():
    ready = PodModelReport(True, True, True, True, "", "")
    loading = PodModelReport(True, True, False, False, "ModelLoading", "loading")
    assert should_probe(None) and should_probe(loading) and not should_probe(ready)
    assert should_probe(PodModelReport(False, False, False, False, "TritonUnreachable", "x"))
    assert CacheKey("u", "1.2.3.4", "m", "1") != CacheKey("u", "1.2.3.5", "m", "1")


def test_explain_not_ready_reads_the_index():
    index = (VersionState("m", "1", "READY", ""), VersionState("m", "2", "LOADING", ""),
             VersionState("m", "3", "UNAVAILABLE", "Internal: bad\n\nAt:\n  model.py(3)"),
             VersionState("m", "4", "UNAVAILABLE", "unloaded"))
    assert explain_not_ready("m", "2", index) == ("ModelLoading", "m version 2 is loading")
    assert explain_not_ready("m", "3", index) == ("ModelLoadFailed", "m version 3: Internal: bad")
    assert explain_not_ready("m", "4", index)[0] == "VersionNotLoaded"
    assert explain_not_ready("m", "9", index) == ("VersionNotLoaded", "m version 9 is not loaded (loaded: 1)")
    assert explain_not_ready("x", "1", index)[0] == "ModelNotFound"
