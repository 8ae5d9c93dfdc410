"""Canary analysis from Triton's own metrics: the pure core (modeldeploy.analysis) on texts recorded
from the real tritonserver (tests/fixtures/metrics/) and on small handmade ones, and the scraper of
the triton boundary (modeldeploy.triton.scrape_metrics) against the real server.

The recorded texts are made by `record()` below, from a real tritonserver started with the operator's
flags; regenerate them with

    .venv/bin/python -m tests.test_analysis

and review the diff. `test_the_recorded_texts_still_parse_like_a_live_scrape` records the same
scenario again into a temporary directory on every run and compares it with the files.

The scenario (models from tests/support/tritonserver.py):
- `canary` version 1 healthy, version 2 raising in every 5th execute (20% failing), version 3
  healthy but 20 ms slower; REQUESTS requests to each over HTTP, one at a time, between
  `before.txt` and `after.txt`;
- `queued` (a dynamic batcher whose queue holds 2, 1 s per request): three gRPC requests, the
  third cancelled while it waits: `queued.txt` while two wait, `canceled.txt` once all are done;
- the server killed and started again, RESTARTED_REQUESTS requests to `canary` version 1:
  `restarted.txt` (every counter went back to 0: a counter reset against `canceled.txt`).
"""

from __future__ import annotations

import asyncio
import http.server
import json
import math
import socket
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modeldeploy.analysis import (
    CANCELED,
    FAMILIES,
    NO_REASON,
    InconclusivePolicy,
    Outcome,
    PodDelta,
    Sample,
    SideStats,
    Thresholds,
    aggregate,
    delta,
    parse_exposition,
    parse_metrics,
    side_deltas,
    verdict,
)
from modeldeploy.triton import MetricsScrape, scrape_metrics

FIXTURES = Path(__file__).parent / "fixtures" / "metrics"
FILES = ("before.txt", "after.txt", "queued.txt", "canceled.txt", "restarted.txt")
REQUESTS = 100
RESTARTED_REQUESTS = 30
HOST = "127.0.0.1"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


# --- recording the texts from the real tritonserver -----------------------------------------------

def _infer(url: str, model: str, version: str) -> int:
    body = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32",
                                   "data": [1.0, 2.0, 3.0, 4.0]}]}).encode()
    request = urllib.request.Request(f"{url}/v2/models/{model}/versions/{version}/infer", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


async def _scrape_text(port: int) -> str:
    scrape = await _first_scrape(port)
    assert scrape.ok, scrape.error
    return scrape.text


async def _first_scrape(port: int, within: float = 10.0) -> MetricsScrape:
    """Triton starts its metrics endpoint a moment after its HTTP endpoint (which is what "started"
    waits for): until then the scrape says "connection refused"."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        scrape = await scrape_metrics(HOST, port, timeout=5.0)
        if scrape.ok or "connection refused" not in scrape.error or loop.time() > deadline:
            return scrape
        await asyncio.sleep(0.05)


async def _queue_and_cancel(grpc_port: int, metrics_port: int) -> tuple[str, list[str]]:
    """Three gRPC requests to `queued`: one runs, two wait; the last is cancelled while it waits.
    Returns the text scraped while two waited, and what each request ended with."""
    import numpy as np
    from tritonclient.grpc import InferInput
    from tritonclient.grpc.aio import InferenceServerClient

    client = InferenceServerClient(f"{HOST}:{grpc_port}")
    try:
        tensor = InferInput("INPUT0", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
        tasks = []
        for _ in range(3):
            tasks.append(asyncio.create_task(client.infer("queued", [tensor], model_version="1")))
            await asyncio.sleep(0.05)
        # Wait (bounded, well within the first request's execution) until both others are queued.
        for _ in range(20):
            queued = await _scrape_text(metrics_port)
            if parse_metrics(queued)["queued", "1"].pending == 2:
                break
            await asyncio.sleep(0.02)
        tasks[-1].cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        return queued, [type(r).__name__ for r in results]
    finally:
        await client.close()


async def record(directory: Path) -> dict[str, str]:
    """Run the scenario (module docstring) on real tritonservers; write and return the texts."""
    from tests.support.tritonserver import start_tritonserver, write_canary_model, write_queued_model

    texts: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="metrics-models-") as root:
        repository = Path(root) / "repository"
        write_canary_model(repository)
        write_queued_model(repository)
        server = start_tritonserver(repository, load_models=("canary", "queued"))
        try:
            texts["before.txt"] = await _scrape_text(server.metrics_port)
            for version in ("1", "2", "3"):
                statuses = [await asyncio.to_thread(_infer, server.url, "canary", version) for _ in range(REQUESTS)]
                assert statuses.count(200) == (REQUESTS * 4 // 5 if version == "2" else REQUESTS), statuses
            texts["after.txt"] = await _scrape_text(server.metrics_port)
            texts["queued.txt"], outcomes = await _queue_and_cancel(server.grpc_port, server.metrics_port)
            assert outcomes == ["InferResult", "InferResult", "CancelledError"], outcomes
            await asyncio.sleep(0.2)
            texts["canceled.txt"] = await _scrape_text(server.metrics_port)
        finally:
            server.kill()
        server = start_tritonserver(repository, load_models=("canary", "queued"))
        try:
            for _ in range(RESTARTED_REQUESTS):
                assert await asyncio.to_thread(_infer, server.url, "canary", "1") == 200
            texts["restarted.txt"] = await _scrape_text(server.metrics_port)
        finally:
            server.kill()
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        (directory / name).write_text(text)
    return texts


def _shape(text: str) -> dict[str, object]:
    """What must not drift between Triton builds: families, label names, series, failure reasons."""
    series, bad = parse_exposition(text)
    ours = [s for s in series if s.name in FAMILIES]
    return {
        "bad_lines": bad,
        "families": sorted({(s.name, tuple(k for k, _ in s.labels)) for s in ours}),
        "series": sorted({(s.name, s.labels) for s in ours}),
        "versions": sorted(parse_metrics(text)),
        "reasons": sorted({reason for m in parse_metrics(text).values() for reason in m.failures}),
    }


def _counts(before: str, after: str, model: str, version: str) -> tuple[float, dict[str, float], bool]:
    d = delta(Sample.from_text("p", 0, before), Sample.from_text("p", 1, after), model, version)
    return d.success, dict(d.failures), d.reset


@pytest.fixture(scope="module")
def live_recording(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return asyncio.run(record(tmp_path_factory.mktemp("metrics")))


@pytest.mark.triton
def test_the_recorded_texts_still_parse_like_a_live_scrape(live_recording):
    assert sorted(live_recording) == sorted(FILES)
    for name in FILES:
        assert _shape(fixture(name)) == _shape(live_recording[name]), name
    # The numbers the scenario makes deterministic are the same as when the files were recorded.
    for model, version, before, after in (("canary", "1", "before.txt", "after.txt"),
                                          ("canary", "2", "before.txt", "after.txt"),
                                          ("canary", "3", "before.txt", "after.txt"),
                                          ("queued", "1", "after.txt", "canceled.txt"),
                                          ("canary", "1", "canceled.txt", "restarted.txt")):
        assert _counts(fixture(before), fixture(after), model, version) == \
            _counts(live_recording[before], live_recording[after], model, version), (model, version, after)
    assert parse_metrics(live_recording["queued.txt"])["queued", "1"].pending == 2


@pytest.mark.triton
async def test_scrape_metrics_of_the_real_server(tritonserver):
    scrape = await _first_scrape(tritonserver.metrics_port)
    assert scrape.ok and scrape.error == "" and (scrape.host, scrape.port) == (HOST, tritonserver.metrics_port)
    metrics = parse_metrics(scrape.text)
    assert {("simple", "1"), ("simple", "2")} <= set(metrics)
    assert set(metrics["simple", "1"].failures) == {"BACKEND", "CANCELED", "OTHER", "REJECTED"}
    assert metrics["simple", "1"].pending == 0
    # The HTTP port serves no /metrics: an error result, no exception.
    wrong = await scrape_metrics(HOST, tritonserver.http_port, timeout=2.0)
    assert not wrong.ok and wrong.text is None and wrong.error.startswith("HTTP 4")


# --- the scraper when the server misbehaves -------------------------------------------------------

@pytest.fixture()
def silent_port() -> Iterator[int]:
    with socket.socket() as silent:
        silent.bind((HOST, 0))
        silent.listen(8)
        yield silent.getsockname()[1]


@pytest.fixture()
def answering_server() -> Iterator[tuple[int, dict[str, object]]]:
    """An HTTP server answering every GET with the status and body in its dict (change them per test)."""
    answer: dict[str, object] = {"status": 200, "body": b"<html>not triton</html>"}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = answer["body"]
            self.send_response(answer["status"])
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer((HOST, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], answer
    finally:
        server.shutdown()
        server.server_close()


async def test_scrape_a_refused_port():
    with socket.socket() as sock:
        sock.bind((HOST, 0))  # bound, not listening
        scrape = await scrape_metrics(HOST, sock.getsockname()[1], timeout=1.0)
    assert scrape == MetricsScrape(HOST, scrape.port, None, f"Triton metrics at {HOST}:{scrape.port}: connection refused")


async def test_scrape_a_silent_server_times_out(silent_port):
    loop = asyncio.get_running_loop()
    started = loop.time()
    scrape = await scrape_metrics(HOST, silent_port, timeout=0.3)
    assert loop.time() - started < 3
    assert not scrape.ok and scrape.error.endswith("no answer within 0.3s")


async def test_scrape_non_200_garbage_and_oversized(answering_server, monkeypatch):
    port, answer = answering_server
    answer.update(status=503, body=b"overloaded\nmore")
    scrape = await scrape_metrics(HOST, port)
    assert not scrape.ok and scrape.error == "HTTP 503: overloaded"
    answer.update(status=200, body=b"<html>not triton</html>\n\xff\xfe")
    scrape = await scrape_metrics(HOST, port)
    assert scrape.ok and parse_metrics(scrape.text) == {}  # text it is; it just holds no metrics of ours
    monkeypatch.setattr("modeldeploy.triton.MAX_METRICS_BYTES", 10)
    scrape = await scrape_metrics(HOST, port)
    assert not scrape.ok and "more than 10 bytes" in scrape.error


async def test_scrape_cancellation_propagates(silent_port):
    task = asyncio.create_task(scrape_metrics(HOST, silent_port, timeout=5))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_scrape_refuses_a_nonsense_timeout():
    with pytest.raises(ValueError):
        await scrape_metrics(HOST, 1, timeout=0)


# --- parsing ----------------------------------------------------------------------------------------

def test_the_recorded_texts_parse_completely():
    for name in FILES:
        series, bad = parse_exposition(fixture(name))
        assert bad == [] and series, name
    after = parse_metrics(fixture("after.txt"))
    assert sorted(after) == [("canary", "1"), ("canary", "2"), ("canary", "3"), ("queued", "1")]
    v2 = after["canary", "2"]
    assert (v2.success, v2.failures) == (80, {"BACKEND": 20, "CANCELED": 0, "OTHER": 0, "REJECTED": 0})
    assert v2.inference_count == 80 and v2.pending == 0
    assert after["canary", "1"].success == REQUESTS and after["canary", "3"].success == REQUESTS
    # 20 ms of sleep per request on version 3, in microseconds.
    assert after["canary", "3"].request_duration_us >= REQUESTS * 20_000
    assert 0 < after["canary", "1"].queue_duration_us < after["canary", "1"].request_duration_us


def test_the_parser_agrees_with_prometheus_client_on_the_recorded_texts():
    from prometheus_client.parser import text_string_to_metric_families

    for name in FILES:
        text = fixture(name)
        # prometheus_client names a counter's samples <family>_total; Triton's counters have no such suffix.
        theirs = sorted((s.name.removesuffix("_total"), tuple(sorted(s.labels.items())), s.value)
                        for family in text_string_to_metric_families(text) for s in family.samples)
        ours = sorted((s.name, s.labels, s.value) for s in parse_exposition(text)[0])
        assert ours == theirs, name


HANDMADE = r"""
# HELP nv_inference_request_success Number of successful inference requests, all batch sizes
# TYPE nv_inference_request_success counter
nv_inference_request_success{version="1",model="m"} 10
nv_inference_request_success{model="we\"ird\\na\nme",version="2"} 3 1700000000000
nv_inference_request_success{model="m",version="3",} 5
  nv_inference_request_failure{model="m",version="1",reason="BACKEND"} 2
nv_inference_request_failure{ reason = "CANCELED" , model="m",version="1"} 4
nv_inference_request_failure{model="m",version="3"} 1
nv_inference_request_duration_us{model="m",version="1"} 1.5e4
nv_inference_queue_duration_us{model="m",version="1"} +Inf
nv_inference_pending_request_count{model="m",version="1"} NaN
nv_inference_count{model="m"} 99
nv_gpu_utilization{gpu_uuid="GPU-1"} NaN
some_histogram_bucket{le="+Inf",model="m",version="1"} 7
nv_cpu_utilization 0.25
this line is { garbage
nv_inference_count{model="m",version="1"} not-a-number
nv_inference_count{model="m" version="1"} 1
# a comment that is not HELP or TYPE
"""


def test_a_handmade_text():
    series, bad = parse_exposition(HANDMADE)
    assert [line.strip() for line in bad] == ["this line is { garbage",
                                              'nv_inference_count{model="m",version="1"} not-a-number',
                                              'nv_inference_count{model="m" version="1"} 1']
    assert any(s.name == "some_histogram_bucket" and s.label("le") == "+Inf" for s in series)
    assert any(s.name == "nv_gpu_utilization" and math.isnan(s.value) for s in series)
    metrics = parse_metrics(HANDMADE)
    assert sorted(metrics) == [("m", "1"), ("m", "3"), ('we"ird\\na\nme', "2")]  # escapes undone
    m1 = metrics["m", "1"]
    assert m1.success == 10 and m1.failures == {"BACKEND": 2, CANCELED: 4}  # label order does not matter
    assert m1.request_duration_us == 15_000
    assert m1.queue_duration_us is None and m1.pending is None  # +Inf and NaN: ignored, never arithmetic
    assert m1.inference_count is None  # only the unreadable line and a series without a version named it
    assert metrics["m", "3"].failures == {NO_REASON: 1}  # no reason label: counted as a failure
    assert parse_metrics("") == {} and parse_exposition("\n\n# x\n") == ([], [])


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20),
       st.sampled_from(["0", "1", "12345", "1e3", "+Inf", "-Inf", "NaN", "0.5"]))
def test_escaped_label_values_round_trip_like_prometheus_client(value, number):
    from prometheus_client.parser import text_string_to_metric_families

    escaped = value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    text = f'nv_inference_request_success{{model="{escaped}",version="7"}} {number}\n'
    (ours,), bad = parse_exposition(text)
    (theirs,) = [s for family in text_string_to_metric_families(text) for s in family.samples]
    assert bad == [] and ours.label("model") == theirs.labels["model"] == value
    assert (math.isnan(ours.value) and math.isnan(theirs.value)) or ours.value == theirs.value


# --- deltas -----------------------------------------------------------------------------------------

def sample(name: str, pod: str = "pod-a", time: float = 0.0) -> Sample:
    return Sample.from_text(pod, time, fixture(name))


def test_deltas_between_the_recorded_scrapes():
    before, after = sample("before.txt", time=100), sample("after.txt", time=130)
    d1, d2, d3 = (delta(before, after, "canary", v) for v in ("1", "2", "3"))
    assert (d1.success, d1.failed, d1.reset, d1.present, d1.seconds) == (100, 0, False, True, 30)
    assert (d2.success, d2.failed, d2.canceled) == (80, 20, 0) and d2.failures["BACKEND"] == 20
    assert d3.success == 100 and d3.request_duration_us >= 100 * 20_000
    queued = delta(before, after, "queued", "1")
    assert (queued.success, queued.failed, queued.pending) == (0, 0, 0)
    # Nothing happened between two scrapes of the same text.
    same = delta(after, Sample("pod-a", 131, after.metrics), "canary", "2")
    assert (same.success, same.failed, same.request_duration_us, same.reset) == (0, 0, 0, False)


def test_canceled_requests_are_not_failures():
    d = delta(sample("after.txt"), sample("canceled.txt", time=5), "queued", "1")
    assert (d.success, d.canceled, d.failed) == (2, 1, 0)
    side = aggregate([d])
    assert (side.requests, side.failures, side.canceled, side.error_ratio) == (2, 0, 1, 0)
    pending = delta(sample("after.txt"), sample("queued.txt", time=1), "queued", "1")
    assert pending.pending == 2 and aggregate([pending]).max_pending == 2


def test_a_restarted_server_is_a_counter_reset():
    before, restarted = sample("canceled.txt"), sample("restarted.txt", time=60)
    d1 = delta(before, restarted, "canary", "1")
    assert d1.reset and d1.success == RESTARTED_REQUESTS and d1.failed == 0
    assert d1.request_duration_us == restarted.version("canary", "1").request_duration_us
    d2 = delta(before, restarted, "canary", "2")  # 80 successes and 20 failures before, 0 after
    assert d2.reset and (d2.success, d2.failed) == (0, 0)
    assert aggregate([d1, d2]).reset_pods == ("pod-a", "pod-a")


def text(success: float, *, failures: dict[str, float] | None = None, duration_us: float = 0, queue_us: float = 0,
         pending: float = 0, model: str = "m", version: str = "1") -> str:
    labels = f'model="{model}",version="{version}"'
    lines = [f"nv_inference_request_success{{{labels}}} {success}",
             f"nv_inference_request_duration_us{{{labels}}} {duration_us}",
             f"nv_inference_queue_duration_us{{{labels}}} {queue_us}",
             f"nv_inference_count{{{labels}}} {success}",
             f"nv_inference_pending_request_count{{{labels}}} {pending}"]
    lines += [f'nv_inference_request_failure{{{labels},reason="{r}"}} {n}' for r, n in (failures or {}).items()]
    return "\n".join(lines) + "\n"


def test_one_counter_going_down_resets_the_whole_version():
    """Restarted, then served more than before: success alone looks like +20, but the duration went
    down, so every counter restarted and the later values are the increase (as increase() would do
    for the duration alone)."""
    before = Sample.from_text("p", 0, text(100, failures={"BACKEND": 5}, duration_us=500_000))
    after = Sample.from_text("p", 10, text(120, failures={"BACKEND": 1}, duration_us=300_000))
    d = delta(before, after, "m", "1")
    assert d.reset and (d.success, d.failed, d.request_duration_us) == (120, 1, 300_000)


def test_a_series_missing_from_the_later_scrape_is_not_a_reset():
    before = Sample.from_text("p", 0, text(100, failures={"BACKEND": 5}, duration_us=500_000))
    garbled = text(110, failures={"BACKEND": 6}, duration_us=550_000).replace(
        'nv_inference_request_duration_us{model="m",version="1"} 550000', 'nv_inference_request_duration_us{model= 5')
    d = delta(before, Sample.from_text("p", 10, garbled), "m", "1")
    assert not d.reset and (d.success, d.failed, d.request_duration_us) == (10, 1, 0)


def test_a_new_or_vanished_version():
    empty = Sample.from_text("p", 0, "")
    loaded = Sample.from_text("p", 5, text(7, failures={"OTHER": 1}))
    d = delta(empty, loaded, "m", "1")
    assert (d.success, d.failed, d.reset, d.present) == (7, 1, False, True)
    gone = delta(loaded, Sample.from_text("p", 9, text(3, version="2")), "m", "1")
    assert not gone.present and (gone.success, gone.failed) == (0, 0)
    assert aggregate([gone]).absent_pods == ("p",)


def test_delta_refuses_mixed_pods_and_reversed_time():
    with pytest.raises(ValueError, match="different pods"):
        delta(Sample("a", 0, {}), Sample("b", 1, {}), "m", "1")
    with pytest.raises(ValueError, match="older"):
        delta(Sample("a", 2, {}), Sample("a", 1, {}), "m", "1")


def test_aggregate_sums_pods_and_weights_means_by_requests():
    a = PodDelta("a", "m", "1", 10, success=10, failures={"BACKEND": 1, CANCELED: 3}, request_duration_us=10 * 1000,
                 queue_duration_us=10 * 100, pending=4)
    b = PodDelta("b", "m", "1", 10, success=90, failures={"OTHER": 1}, request_duration_us=90 * 3000,
                 queue_duration_us=0, pending=1, reset=True)
    side = aggregate([a, b])
    assert (side.pods, side.successes, side.failures, side.canceled, side.requests) == (2, 100, 2, 3, 102)
    assert side.error_ratio == pytest.approx(2 / 102)
    assert side.mean_latency_ms == pytest.approx((10 * 1 + 90 * 3) / 100)  # not the mean of 1 and 3
    assert side.mean_queue_ms == pytest.approx(0.01)
    assert (side.max_pending, side.reset_pods) == (4, ("b",))
    empty = aggregate([])
    assert (empty.requests, empty.error_ratio, empty.mean_latency_ms, empty.mean_queue_ms) == (0, None, None, None)


def test_side_deltas_pairs_pods_by_name():
    before = [Sample.from_text("a", 0, text(1)), Sample.from_text("b", 0, text(1))]
    after = [Sample.from_text("b", 10, text(6)), Sample.from_text("c", 10, text(9))]  # a gone, c new
    assert [(d.pod, d.success) for d in side_deltas(before, after, "m", "1")] == [("b", 5)]


# --- verdicts ---------------------------------------------------------------------------------------

def recorded_side(version: str, pod: str = "pod-a") -> SideStats:
    """What `canary` `version` did between before.txt and after.txt, as one pod's side."""
    return aggregate([delta(sample("before.txt", pod), sample("after.txt", pod, 30), "canary", version)])


def side(requests: int, failures: int = 0, latency_ms: float = 2.0, queue_ms: float = 0.1, pending: float = 0,
         canceled: int = 0) -> SideStats:
    successes = requests - failures
    return SideStats(pods=1, successes=successes, failures=failures, canceled=canceled,
                     request_duration_us=successes * latency_ms * 1000, queue_duration_us=successes * queue_ms * 1000,
                     max_pending=pending)


def test_a_20_percent_failing_canary_fails_at_the_defaults():
    result = verdict(recorded_side("2"), recorded_side("1"))
    assert result.outcome is Outcome.FAIL and not result.inconclusive and result.policy is None
    assert result.message.startswith("Fail: canary error ratio 20.00% (20/100) > max 1.00%")
    assert "stable: 100 requests on 1 pod(s), 0 failed (0.00%)" in result.message


def test_an_equal_canary_passes():
    result = verdict(recorded_side("1", "canary-pod"), recorded_side("1", "stable-pod"))
    assert result.outcome is Outcome.PASS and result.reasons == ()
    assert result.message.startswith("Pass: canary error ratio 0.00% (0/100) ≤ max 1.00%; canary error ratio 0.00% ≤ "
                                      "stable's 0.00% × 2 + 0.50% = 0.50%; canary mean latency ")
    assert "canary: 100 requests on 1 pod(s), 0 failed (0.00%), mean latency" in result.message


def test_a_latency_regression_fails():
    slow, healthy = recorded_side("3"), recorded_side("1")
    assert slow.mean_latency_ms > healthy.mean_latency_ms * 1.5 + 5  # 20 ms of sleep per request
    result = verdict(slow, healthy)
    assert result.outcome is Outcome.FAIL and len(result.reasons) == 1
    assert result.reasons[0].startswith(f"canary mean latency {slow.mean_latency_ms:.2f} ms > stable's "
                                        f"{healthy.mean_latency_ms:.2f} ms × 1.5 + 5 ms")
    # The other way round, the faster canary passes.
    assert verdict(healthy, slow).outcome is Outcome.PASS


def test_latency_and_queue_bounds_are_factor_plus_margin():
    stable = side(100, latency_ms=10, queue_ms=2)
    assert verdict(side(100, latency_ms=20, queue_ms=2), stable).outcome is Outcome.PASS  # = 10 × 1.5 + 5
    assert verdict(side(100, latency_ms=20.01, queue_ms=2), stable).outcome is Outcome.FAIL
    queued = verdict(side(100, latency_ms=10, queue_ms=8.5), stable)
    assert queued.outcome is Outcome.FAIL and queued.reasons == (
        "canary mean queue time 8.50 ms > stable's 2.00 ms × 1.5 + 5 ms = 8.00 ms",)
    both = verdict(side(100, latency_ms=50, queue_ms=50), stable)
    assert [r.split(" ")[2] for r in both.reasons] == ["latency", "queue"]
    custom = Thresholds(latency_factor=1.0, latency_margin_ms=0)
    assert verdict(side(100, latency_ms=10.5), side(100, latency_ms=10), custom).outcome is Outcome.FAIL


def test_the_relative_error_rule():
    # Under the absolute 1% but far above a stable version with no errors: 0.9% > 0% × 2 + 0.5%.
    result = verdict(side(1000, failures=9), side(1000))
    assert result.outcome is Outcome.FAIL
    assert result.reasons == ("canary error ratio 0.90% > stable's 0.00% × 2 + 0.50% = 0.50%",)
    assert verdict(side(1000, failures=5), side(1000)).outcome is Outcome.PASS  # 0.5%: at the margin
    assert verdict(side(1000, failures=9), side(1000, failures=3)).outcome is Outcome.PASS  # ≤ 0.3% × 2 + 0.5%
    # A stable version that fails more than the absolute limit does not lift it for the canary.
    assert verdict(side(1000, failures=20), side(1000, failures=30)).outcome is Outcome.FAIL


def test_zero_traffic_is_inconclusive():
    result = verdict(aggregate([]), aggregate([]))
    assert result.outcome is Outcome.INCONCLUSIVE and result.inconclusive
    assert result.policy is InconclusivePolicy.WAIT
    assert result.reasons == ("canary served 0 requests, fewer than 20",)
    assert "waiting for more traffic (inconclusive policy: wait)" in result.message
    quiet = delta(sample("after.txt"), Sample("pod-a", 60, sample("after.txt").metrics), "canary", "2")
    assert verdict(aggregate([quiet]), recorded_side("1")).outcome is Outcome.INCONCLUSIVE


def test_canceled_requests_do_not_count_as_traffic_or_errors():
    result = verdict(side(19, canceled=50), side(100))
    assert result.outcome is Outcome.INCONCLUSIVE and "50 canceled (not counted)" in result.message


def test_no_baseline_is_inconclusive():
    result = verdict(side(100), side(5))
    assert result.outcome is Outcome.INCONCLUSIVE
    assert result.reasons == ("no baseline: stable served 5 requests, fewer than 20",)
    # ... but the absolute error rule needs no baseline.
    assert verdict(side(100, failures=2), side(0)).outcome is Outcome.FAIL


@pytest.mark.parametrize(("policy", "outcome", "words"), [
    (InconclusivePolicy.WAIT, Outcome.INCONCLUSIVE, "waiting for more traffic (inconclusive policy: wait)"),
    (InconclusivePolicy.PASS, Outcome.PASS, "passed anyway (inconclusive policy: pass)"),
    (InconclusivePolicy.FAIL, Outcome.FAIL, "failed anyway (inconclusive policy: fail)"),
    ("pass", Outcome.PASS, "inconclusive policy: pass"),  # the string form, as a spec would carry it
])
def test_each_inconclusive_policy(policy, outcome, words):
    thresholds = Thresholds(inconclusive=policy)
    for canary, stable in ((side(3), side(100)), (side(100), side(0))):
        result = verdict(canary, stable, thresholds)
        assert result.outcome is outcome and result.inconclusive
        assert result.policy is InconclusivePolicy(policy) and words in result.message
        assert result.message.startswith(f"{outcome.value}: inconclusive (")
    # A decided verdict is not touched by the policy.
    assert verdict(side(100), side(100), thresholds).policy is None
    assert verdict(side(100, failures=50), side(100), thresholds).outcome is Outcome.FAIL


def test_failures_that_no_later_traffic_can_excuse_fail_early():
    """With 20 requests minimum and 1% allowed, one failure is already 5% of the minimum."""
    result = verdict(side(3, failures=1), side(100))
    assert result.outcome is Outcome.FAIL and not result.inconclusive
    assert "whatever follows" in result.message
    lenient = Thresholds(max_error_ratio=0.1)  # 10% of 20 = 2 failures allowed
    assert verdict(side(3, failures=2), side(100), lenient).outcome is Outcome.INCONCLUSIVE
    assert verdict(side(3, failures=3), side(100), lenient).outcome is Outcome.FAIL


def test_max_pending_is_judged_only_when_set():
    assert verdict(side(100, pending=50), side(100)).outcome is Outcome.PASS
    result = verdict(side(100, pending=50), side(100), Thresholds(max_pending=10))
    assert result.outcome is Outcome.FAIL and result.reasons == ("canary pending requests 50 > max 10",)


def test_thresholds_are_checked():
    for bad in ({"max_error_ratio": -0.1}, {"latency_factor": math.nan}, {"min_requests": math.inf},
                {"max_pending": -1}, {"inconclusive": "maybe"}):
        with pytest.raises(ValueError):
            Thresholds(**bad)
    defaults = Thresholds()
    assert (defaults.max_error_ratio, defaults.error_ratio_factor, defaults.error_ratio_margin) == (0.01, 2.0, 0.005)
    assert (defaults.latency_factor, defaults.latency_margin_ms, defaults.queue_factor, defaults.queue_margin_ms) == \
        (1.5, 5.0, 1.5, 5.0)
    assert (defaults.min_requests, defaults.min_stable_requests, defaults.max_pending) == (20, 20, None)
    assert defaults.inconclusive is InconclusivePolicy.WAIT


counts = st.integers(min_value=0, max_value=10**7)
ratios = st.floats(min_value=0, max_value=1, allow_nan=False)


@st.composite
def sides(draw: st.DrawFn) -> SideStats:
    successes = draw(counts)
    return SideStats(pods=draw(st.integers(0, 50)), successes=successes, failures=draw(counts), canceled=draw(counts),
                     request_duration_us=draw(st.floats(0, 1e12)) if successes else 0.0,
                     queue_duration_us=draw(st.floats(0, 1e12)) if successes else 0.0,
                     max_pending=draw(st.floats(0, 1e6)))


@st.composite
def thresholds(draw: st.DrawFn) -> Thresholds:
    return Thresholds(max_error_ratio=draw(ratios), error_ratio_factor=draw(st.floats(0, 100)),
                      error_ratio_margin=draw(ratios), latency_factor=draw(st.floats(0, 100)),
                      latency_margin_ms=draw(st.floats(0, 1e4)), queue_factor=draw(st.floats(0, 100)),
                      queue_margin_ms=draw(st.floats(0, 1e4)), min_requests=draw(st.integers(0, 10**4)),
                      min_stable_requests=draw(st.integers(0, 10**4)),
                      max_pending=draw(st.none() | st.floats(0, 1e6)),
                      inconclusive=draw(st.sampled_from(InconclusivePolicy)))


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(canary=sides(), stable=sides(), limits=thresholds())
def test_never_pass_a_canary_whose_error_ratio_exceeds_the_absolute_limit(canary, stable, limits):
    result = verdict(canary, stable, limits)
    assert result.message and result.outcome in set(Outcome)
    if canary.requests >= limits.min_requests and canary.requests > 0 and \
            canary.failures / canary.requests > limits.max_error_ratio:
        assert result.outcome is Outcome.FAIL and not result.inconclusive, result.message


@settings(max_examples=300)
@given(canary=sides(), stable=sides(), limits=thresholds())
def test_pass_only_on_enough_evidence_unless_the_policy_says_so(canary, stable, limits):
    result = verdict(canary, stable, limits)
    if result.outcome is Outcome.PASS and not result.inconclusive:
        assert canary.requests >= limits.min_requests and stable.requests >= limits.min_stable_requests
        assert (canary.error_ratio or 0) <= limits.max_error_ratio
    if result.inconclusive:
        assert result.policy is limits.inconclusive and result.outcome.value.lower() in \
            {"inconclusive" if limits.inconclusive is InconclusivePolicy.WAIT else limits.inconclusive.value}


if __name__ == "__main__":
    written = asyncio.run(record(FIXTURES))
    print(f"wrote {', '.join(sorted(written))} to {FIXTURES}", file=sys.stderr)
