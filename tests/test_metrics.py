"""Operator metrics and /healthz: scraped over real HTTP, parsed with prometheus_client's own parser."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY as GLOBAL_REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from modeldeploy import metrics
from modeldeploy.metrics import OperatorMetrics, start_metrics_server


def scrape(port: int, path: str = "/metrics") -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, tuple(sorted(labels.items()))))


@pytest.fixture()
def fresh() -> OperatorMetrics:
    return OperatorMetrics()


@pytest.fixture()
def served(fresh: OperatorMetrics) -> Iterator[tuple[OperatorMetrics, int, dict[str, bool]]]:
    health = {"ok": True}
    server = start_metrics_server(0, "127.0.0.1", health=lambda: health["ok"], metrics=fresh)
    try:
        yield fresh, server.port, health
    finally:
        server.stop()


def test_reconciles_are_counted_by_result_and_timed(served):
    m, port, _ = served
    m.observe_reconcile(0.03, "ok")
    m.observe_reconcile(0.2, "ok")
    m.observe_reconcile(0.01, "invalid")
    m.observe_reconcile(0.0, "error", error_reason="ServiceUnavailable")
    m.observe_reconcile(0.0, "error")
    status, content_type, text = scrape(port)
    assert status == 200 and content_type.startswith("text/plain")
    assert value(text, "modeldeploy_reconcile_total", result="ok") == 2
    assert value(text, "modeldeploy_reconcile_total", result="invalid") == 1
    assert value(text, "modeldeploy_reconcile_total", result="error") == 2
    assert value(text, "modeldeploy_reconcile_total", result="deleted") == 0  # present from the start
    assert value(text, "modeldeploy_reconcile_errors_total", reason="ServiceUnavailable") == 1
    assert value(text, "modeldeploy_reconcile_errors_total", reason="Unknown") == 1
    # Only finished reconciles are timed: a failure's duration is not known to the caller.
    assert value(text, "modeldeploy_reconcile_duration_seconds_count") == 3
    assert value(text, "modeldeploy_reconcile_duration_seconds_sum") == pytest.approx(0.24)
    assert value(text, "modeldeploy_reconcile_duration_seconds_bucket", le="0.05") == 2
    assert value(text, "modeldeploy_reconcile_duration_seconds_bucket", le="+Inf") == 3


def test_the_objects_gauge_is_a_snapshot(served):
    m, port, _ = served
    m.set_object_conditions({("Ready", "True"): 2, ("Ready", "False"): 1, ("Degraded", "True"): 1})
    m.set_object_conditions({("Ready", "True"): 3, ("Degraded", "False"): 3})
    text = scrape(port)[2]
    assert value(text, "modeldeploy_objects", condition="Ready", status="True") == 3
    assert value(text, "modeldeploy_objects", condition="Degraded", status="False") == 3
    # Pairs from an older snapshot read 0: no stale count survives.
    assert value(text, "modeldeploy_objects", condition="Ready", status="False") == 0
    assert value(text, "modeldeploy_objects", condition="Degraded", status="True") == 0
    m.set_object_conditions({})
    assert {v for (name, _), v in samples(scrape(port)[2]).items() if name == "modeldeploy_objects"} == {0}


def test_triton_probes_by_answer(served):
    m, port, _ = served
    for result in ("ready", "ready", "not_ready", "unreachable"):
        m.record_triton_probe(result)
    text = scrape(port)[2]
    assert value(text, "modeldeploy_triton_probes_total", result="ready") == 2
    assert value(text, "modeldeploy_triton_probes_total", result="not_ready") == 1
    assert value(text, "modeldeploy_triton_probes_total", result="unreachable") == 1


def test_unknown_label_values_are_a_bug_not_a_new_series(fresh):
    with pytest.raises(ValueError, match="reconcile result"):
        fresh.observe_reconcile(0.1, "fine")
    with pytest.raises(ValueError, match="probe result"):
        fresh.record_triton_probe("maybe")
    assert value(fresh.render_latest().decode(), "modeldeploy_reconcile_total", result="fine") is None


def test_healthz_follows_the_health_callable(served):
    _, port, health = served
    assert scrape(port, "/healthz")[::2] == (200, "ok\n")
    health["ok"] = False
    status, _, body = scrape(port, "/healthz")
    assert status == 503 and "unhealthy" in body
    health["ok"] = True
    assert scrape(port, "/healthz")[0] == 200


def test_a_health_callable_that_raises_is_unhealthy(fresh):
    def broken() -> bool:
        raise RuntimeError("boom")

    server = start_metrics_server(0, "127.0.0.1", health=broken, metrics=fresh)
    try:
        assert scrape(server.port, "/healthz")[0] == 503
        assert scrape(server.port, "/metrics")[0] == 200  # metrics still served
    finally:
        server.stop()


def test_other_paths_are_404_and_query_strings_are_ignored(served):
    _, port, _ = served
    assert scrape(port, "/")[0] == 404
    assert scrape(port, "/metrics?name[]=x")[0] == 200


def test_stop_frees_the_port(fresh):
    server = start_metrics_server(0, "127.0.0.1", metrics=fresh)
    port = server.port
    server.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)


def test_module_functions_feed_the_operator_registry_not_the_global_one():
    before = value(metrics.render_latest().decode(), "modeldeploy_triton_probes_total", result="unreachable")
    metrics.observe_reconcile(0.01, "ok")
    metrics.record_triton_probe("unreachable")
    metrics.set_object_conditions({("Ready", "True"): 1})
    text = metrics.render_latest().decode()
    assert value(text, "modeldeploy_triton_probes_total", result="unreachable") == before + 1
    assert value(text, "modeldeploy_objects", condition="Ready", status="True") == 1
    assert all(not name.startswith("modeldeploy_") for name in GLOBAL_REGISTRY._names_to_collectors)
    # Only the operator's own metrics: no process_/python_ collectors from the global registry.
    names = {f.name for f in text_string_to_metric_families(text)}
    assert all(name.startswith("modeldeploy_") for name in names), names
    assert names >= {"modeldeploy_reconcile", "modeldeploy_reconcile_duration_seconds", "modeldeploy_reconcile_errors",
                     "modeldeploy_objects", "modeldeploy_triton_probes"}
