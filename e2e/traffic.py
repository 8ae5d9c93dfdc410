"""Inference traffic through a Service, as clients send it, and Triton's own per-version counts.

`Load` sends `simple` inference requests to a Service's ClusterIP from this machine, each on a new TCP
connection (as many independent clients would), so the cluster's service proxy spreads them over the
Service's ready endpoints (e2e/env/service_proxy.py; kube-proxy elsewhere). Every answer is recorded with the
model version Triton says served it. `triton_counts` reads each pod's :8002/metrics, the numbers the
operator's analysis reads too.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from modeldeploy.analysis import parse_metrics

INFER_BODY = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32",
                                     "data": [1, 2, 3, 4]}]}).encode()


@dataclass(frozen=True)
class Answer:
    at: float  # time.monotonic() when it came back
    version: str | None  # the model version that answered; None when the request failed
    error: str = ""  # Triton's error, an HTTP status, or the connection's failure


def infer_once(host: str, port: int = 8000, model: str = "simple", timeout: float = 5.0) -> Answer:
    request = urllib.request.Request(f"http://{host}:{port}/v2/models/{model}/infer", data=INFER_BODY,
                                     headers={"Content-Type": "application/json", "Connection": "close"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Answer(time.monotonic(), str(json.load(response)["model_version"]))
    except urllib.error.HTTPError as error:
        detail = error.read().decode("utf-8", "replace")[:200]
        return Answer(time.monotonic(), None, f"HTTP {error.code}: {detail}")
    except (OSError, ValueError, KeyError) as error:
        return Answer(time.monotonic(), None, f"{type(error).__name__}: {error}")


class Load:
    """Requests to host:port from `clients` threads, each pausing `pause` seconds between requests, until the
    `with` block ends (and at most `max_seconds`)."""

    def __init__(self, host: str, *, port: int = 8000, clients: int = 2, pause: float = 0.05,
                 max_seconds: float = 900) -> None:
        self.host, self.port, self.clients, self.pause, self.max_seconds = host, port, clients, pause, max_seconds
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            answer = infer_once(self.host, self.port)
            with self._lock:
                self.answers.append(answer)
            self._stop.wait(self.pause)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def since(self, start: float, end: float | None = None) -> list[Answer]:
        with self._lock:
            return [a for a in self.answers if a.at >= start and (end is None or a.at <= end)]

    def now(self) -> float:
        return time.monotonic()


def versions(answers: Iterable[Answer]) -> Counter[str]:
    """Answers by the version that served them ("failed" for those that failed)."""
    return Counter(a.version or "failed" for a in answers)


def failures(answers: Iterable[Answer]) -> list[Answer]:
    return [a for a in answers if a.version is None]


def _scrape(pod_ip: str) -> str:
    with urllib.request.urlopen(f"http://{pod_ip}:8002/metrics", timeout=5) as response:
        return response.read().decode()


def _pod_counts(text: str, model: str) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for (name, version), numbers in parse_metrics(text).items():
        if name == model:
            out[version] = {"success": numbers.success or 0.0,
                            "failure": sum(n for reason, n in numbers.failures.items() if reason != "CANCELED")}
    return out


def _add(total: dict[str, dict[str, float]], counts: dict[str, dict[str, float]]) -> None:
    for version, numbers in counts.items():
        entry = total.setdefault(version, {"success": 0.0, "failure": 0.0})
        for key, value in numbers.items():
            entry[key] += value


def triton_counts(pods: Iterable[dict[str, Any]], model: str = "simple") -> dict[str, dict[str, float]]:
    """Per model version, summed over the pods' Triton metrics: successes and failures (CANCELED left out)."""
    out: dict[str, dict[str, float]] = {}
    for pod in pods:
        ip = pod.get("status", {}).get("podIP")
        if ip:
            _add(out, _pod_counts(_scrape(ip), model))
    return out


class TritonCounts:
    """Every pod's Triton counters, scraped each `interval` seconds while the `with` block runs, keeping each
    pod's last answer: the totals per version then include the pods that went away (a scaled-down stable pod,
    an aborted canary), up to their last scrape."""

    def __init__(self, list_pods: Callable[[], list[dict[str, Any]]], model: str = "simple",
                 interval: float = 1.0) -> None:
        self.list_pods, self.model, self.interval = list_pods, model, interval
        self.last: dict[str, dict[str, dict[str, float]]] = {}  # pod uid -> version -> counters
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def scrape(self) -> None:
        for pod in self.list_pods():
            ip = pod.get("status", {}).get("podIP")
            if not ip:
                continue
            try:
                self.last[pod["metadata"]["uid"]] = _pod_counts(_scrape(ip), self.model)
            except OSError:
                pass  # not serving yet, or gone: its last answer stands

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.scrape()

    def __enter__(self) -> TritonCounts:
        self.scrape()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.scrape()

    def totals(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for counts in list(self.last.values()):
            _add(out, counts)
        return out
