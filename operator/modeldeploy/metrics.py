"""Operator metrics (Prometheus) and the /healthz endpoint, on one small HTTP server.

Every metric lives in a CollectorRegistry of its own, never prometheus_client's global one: the
operator's /metrics shows exactly these, and tests can build a fresh `OperatorMetrics()` to start
from zero. The module-level functions act on the operator's instance, `DEFAULT`.

    modeldeploy_reconcile_total{result}            counter    result: ok | invalid | deleted | error
    modeldeploy_reconcile_duration_seconds         histogram  reconciles that finished (errors are not timed)
    modeldeploy_reconcile_errors_total{reason}     counter    failed reconciles (retried with backoff)
    modeldeploy_objects{condition,status}          gauge      ModelDeployments by condition type and status
    modeldeploy_triton_probes_total{result}        counter    result: ready | not_ready | unreachable
    modeldeploy_leader                             gauge      1 while this replica holds the Lease (reconciles), else 0

/healthz answers 200 for a healthy leader and a healthy standby alike (its body says which), so
liveness never restarts a standby for standing by; 503 only when the operator is broken.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

log = logging.getLogger(__name__)

RECONCILE_RESULTS = ("ok", "invalid", "deleted", "error")
PROBE_RESULTS = ("ready", "not_ready", "unreachable")
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
MAX_REASON_LENGTH = 64  # reasons are CamelCase words; cap them so a bad one cannot bloat the label set


class OperatorMetrics:
    """The operator's metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.reconciles = Counter("modeldeploy_reconcile_total", "Reconciles by result (ok, invalid, deleted, error).",
                                  ["result"], registry=self.registry)
        self.reconcile_seconds = Histogram("modeldeploy_reconcile_duration_seconds",
                                           "Time a finished reconcile took (failed ones are counted, not timed).",
                                           buckets=DURATION_BUCKETS, registry=self.registry)
        self.reconcile_errors = Counter("modeldeploy_reconcile_errors_total",
                                        "Failed reconciles (retried with backoff), by reason.",
                                        ["reason"], registry=self.registry)
        self.objects = Gauge("modeldeploy_objects", "ModelDeployments by condition type and status.",
                             ["condition", "status"], registry=self.registry)
        self.triton_probes = Counter("modeldeploy_triton_probes_total",
                                     "Questions to Triton about a pod's model version, by answer.",
                                     ["result"], registry=self.registry)
        self.leader = Gauge("modeldeploy_leader",
                            "1 while this operator replica holds the leader Lease and reconciles, else 0 (standby).",
                            registry=self.registry)
        # Known label values exist from the start at 0, so rate() and absent() behave from the first scrape.
        for result in RECONCILE_RESULTS:
            self.reconciles.labels(result=result)
        for result in PROBE_RESULTS:
            self.triton_probes.labels(result=result)
        self._objects_lock = threading.Lock()
        self._object_labels: set[tuple[str, str]] = set()

    def observe_reconcile(self, seconds: float, result: str, error_reason: str = "") -> None:
        if result not in RECONCILE_RESULTS:
            raise ValueError(f"reconcile result {result!r} is not one of {', '.join(RECONCILE_RESULTS)}")
        self.reconciles.labels(result=result).inc()
        if result == "error":
            reason = (error_reason or "Unknown")[:MAX_REASON_LENGTH]
            self.reconcile_errors.labels(reason=reason).inc()
        else:
            self.reconcile_seconds.observe(max(seconds, 0.0))

    def set_object_conditions(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Replace the gauge with this full snapshot: a (condition, status) pair absent from it now reads 0."""
        with self._objects_lock:
            for condition, status in self._object_labels - set(counts):
                self.objects.labels(condition=condition, status=status).set(0)
            for (condition, status), count in counts.items():
                self.objects.labels(condition=condition, status=status).set(count)
            self._object_labels.update(counts)

    def record_triton_probe(self, result: str) -> None:
        if result not in PROBE_RESULTS:
            raise ValueError(f"probe result {result!r} is not one of {', '.join(PROBE_RESULTS)}")
        self.triton_probes.labels(result=result).inc()

    def set_leader(self, leading: bool) -> None:
        self.leader.set(1 if leading else 0)

    def render_latest(self) -> bytes:
        return generate_latest(self.registry)


DEFAULT = OperatorMetrics()
REGISTRY = DEFAULT.registry


def observe_reconcile(seconds: float, result: str, error_reason: str = "") -> None:
    """Count one reconcile; time it unless it failed; count a failure under its reason."""
    DEFAULT.observe_reconcile(seconds, result, error_reason)


def set_object_conditions(counts: Mapping[tuple[str, str], int]) -> None:
    """{(condition type, status): number of ModelDeployments} for all of them; pairs left out read 0."""
    DEFAULT.set_object_conditions(counts)


def record_triton_probe(result: str) -> None:
    DEFAULT.record_triton_probe(result)


def set_leader(leading: bool) -> None:
    """Whether this replica leads (holds the Lease and reconciles)."""
    DEFAULT.set_leader(leading)


def render_latest() -> bytes:
    """The Prometheus text exposition of the operator's metrics."""
    return DEFAULT.render_latest()


class MetricsServer:
    """A running /metrics + /healthz server: `.port` (the bound one, useful with port 0) and `.stop()`."""

    def __init__(self, server: ThreadingHTTPServer, thread: threading.Thread) -> None:
        self.server = server
        self.thread = thread

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def start_metrics_server(port: int, host: str = "0.0.0.0", *, health: Callable[[], bool] = lambda: True,
                         metrics: OperatorMetrics | None = None,
                         role: Callable[[], str] | None = None) -> MetricsServer:
    """Serve GET /metrics (Prometheus text) and GET /healthz (200 "ok" while `health()` is true, else 503)
    on a daemon thread. Port 0 picks a free port. With `role` (leader election: "leader" or "standby"),
    the body says it: "ok: leader", "ok: standby", "unhealthy (standby): ..."."""
    source = metrics or DEFAULT

    class Handler(BaseHTTPRequestHandler):
        server_version = "modeldeploy"

        def do_GET(self) -> None:  # http.server's naming
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._reply(200, source.render_latest(), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                try:
                    ok = bool(health())
                except Exception:  # a broken health check is an unhealthy operator, not a crashed server
                    log.exception("health check raised")
                    ok = False
                try:
                    said = role() if role is not None else ""
                except Exception:  # noqa: BLE001 - never let the role break the probe
                    said = "unknown"
                if ok:
                    body = f"ok: {said}\n" if said else "ok\n"
                else:
                    body = f"unhealthy ({said}): reconcile workers stalled or leader election stopped\n" if said \
                        else "unhealthy: reconcile workers stalled\n"
                self._reply(200 if ok else 503, body.encode())
            else:
                self._reply(404, b"not found: try /metrics or /healthz\n")

        def _reply(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # http.server's signature
            pass  # kubelet probes every few seconds would flood the log

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="modeldeploy-metrics", daemon=True)
    thread.start()
    return MetricsServer(server, thread)
