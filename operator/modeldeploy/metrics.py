"""Operator metrics (Prometheus) and the /healthz endpoint, on one small HTTP server."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)

RECONCILES = Counter("modeldeploy_reconcile_total", "Reconciles by result (ok, invalid, deleted, error).",
                     ["result"], registry=REGISTRY)
RECONCILE_SECONDS = Histogram("modeldeploy_reconcile_duration_seconds", "Time one reconcile took.",
                              buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
                              registry=REGISTRY)
RECONCILE_ERRORS = Counter("modeldeploy_reconcile_errors_total", "Failed reconciles (retried with backoff) by reason.",
                           ["reason"], registry=REGISTRY)
OBJECTS = Gauge("modeldeploy_objects", "ModelDeployments by condition type and status.", ["condition", "status"],
                registry=REGISTRY)
TRITON_PROBES = Counter("modeldeploy_triton_probes_total",
                        "Questions to Triton about a pod's model version, by answer (ready, not_ready, unreachable).",
                        ["result"], registry=REGISTRY)

_objects_lock = threading.Lock()
_object_labels: set[tuple[str, str]] = set()


def observe_reconcile(seconds: float, result: str, error_reason: str = "") -> None:
    RECONCILES.labels(result=result).inc()
    if result == "error":
        RECONCILE_ERRORS.labels(reason=error_reason or "Unknown").inc()
    else:
        RECONCILE_SECONDS.observe(seconds)


def set_object_conditions(counts: Mapping[tuple[str, str], int]) -> None:
    """Replace the whole gauge with this snapshot, so label sets that no longer occur read 0."""
    with _objects_lock:
        for labels in _object_labels - set(counts):
            OBJECTS.labels(condition=labels[0], status=labels[1]).set(0)
        for (condition, status), count in counts.items():
            OBJECTS.labels(condition=condition, status=status).set(count)
        _object_labels.update(counts)


def record_triton_probe(result: str) -> None:
    TRITON_PROBES.labels(result=result).inc()


def render_latest() -> bytes:
    return generate_latest(REGISTRY)


@dataclass
class MetricsServer:
    server: ThreadingHTTPServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def start_metrics_server(port: int, host: str = "0.0.0.0", *,
                         health: Callable[[], bool] = lambda: True) -> MetricsServer:
    """/metrics (Prometheus text) and /healthz (200 ok, or 503 when `health` says no)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path == "/metrics":
                self._reply(200, render_latest(), CONTENT_TYPE_LATEST)
            elif self.path == "/healthz":
                ok = health()
                self._reply(200 if ok else 503, b"ok\n" if ok else b"unhealthy: reconcile workers stalled\n")
            else:
                self._reply(404, b"not found\n")

        def _reply(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass  # probes every few seconds would flood the log

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="modeldeploy-metrics", daemon=True)
    thread.start()
    return MetricsServer(server, thread)
