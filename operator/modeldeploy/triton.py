"""The triton boundary: the only module that imports tritonclient.

Asks Triton on each pod (its IP, Triton's HTTP port) whether a model version is loaded, why
not, and what the model looks like. Every conversation is bounded by one timeout, all probes of
one TritonProbe (so all pods of all ModelDeployments) share one concurrency bound, and no
exception escapes for a server-side problem: a slow, dead, vanishing or garbled Triton becomes a
report that says so. Nothing tritonclient defines leaves this module; the report types are the
pure dataclasses of modeldeploy.model_health, re-exported here.

Clients are created and closed per probe, not pooled per (host, port): a pod IP is reused by
other pods, tritonclient's health calls do not release their connections, and the cache below
makes steady state cost no requests at all, so a pool would buy nothing and risk stale sockets.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
from tritonclient.http.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException

from modeldeploy.model_health import (
    ModelSignature,
    PodModelReport,
    TensorSpec,
    VersionState,
    explain_not_ready,
    first_line,
    should_probe,
    unreachable,
)
from modeldeploy.triton_flags import METRICS_PORT, repository_api_headers

__all__ = [
    "CachedReport",
    "MetricsScrape",
    "ModelSignature",
    "PodModelReport",
    "PodTarget",
    "ReportCache",
    "TensorSpec",
    "TritonProbe",
    "TritonUnavailable",
    "VersionState",
    "scrape_metrics",
    "use_cached",
]

log = logging.getLogger(__name__)


class TritonUnavailable(Exception):
    """repository_index got no usable answer (refused, timed out, went away, garbled)."""


class _Malformed(ValueError):
    """Triton answered 200 with something that is not what the v2 protocol says."""


def server_address(host: str, port: int) -> str:
    """host:port as tritonclient wants it (no scheme); IPv6 pod IPs need brackets."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def _tensors(items: Any) -> tuple[TensorSpec, ...]:
    if not isinstance(items, list):
        raise _Malformed(f"expected a list of tensors, got {type(items).__name__}")
    try:
        return tuple(TensorSpec(str(t["name"]), str(t["datatype"]), tuple(int(d) for d in t.get("shape", [])))
                     for t in items)
    except (KeyError, TypeError, AttributeError) as error:
        raise _Malformed(f"tensor metadata: {error!r}") from None


def parse_signature(metadata: Any, config: Any) -> ModelSignature:
    """The signature from GET /v2/models/{m}/versions/{v} and .../config. Shapes are the metadata's,
    the ones a client sends (a batching model's leading -1 included)."""
    if not isinstance(metadata, Mapping) or not isinstance(config, Mapping):
        raise _Malformed("model metadata and config must be JSON objects")
    try:
        max_batch_size = int(config.get("max_batch_size", 0))
    except (TypeError, ValueError):
        raise _Malformed(f"max_batch_size: {config.get('max_batch_size')!r}") from None
    return ModelSignature(name=str(metadata.get("name", "")),
                          platform=str(metadata.get("platform") or config.get("platform") or ""),
                          backend=str(config.get("backend") or ""), max_batch_size=max_batch_size,
                          inputs=_tensors(metadata.get("inputs", [])), outputs=_tensors(metadata.get("outputs", [])))


def parse_index(rows: Any) -> tuple[VersionState, ...]:
    """POST /v2/repository/index. A model Triton knows of but has not loaded has no version."""
    if not isinstance(rows, list) or not all(isinstance(r, Mapping) for r in rows):
        raise _Malformed("the repository index must be a JSON list of objects")
    return tuple(VersionState(str(r.get("name", "")), str(r.get("version", "")), str(r.get("state", "")),
                              str(r.get("reason", ""))) for r in rows)


class TritonProbe:
    """Per-pod questions to Triton's HTTP endpoint. Safe to share; use one per operator."""

    def __init__(self, timeout_seconds: float = 2.0, max_concurrency: int = 32) -> None:
        if timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be positive")
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.timeout_seconds = timeout_seconds  # bounds a whole probe, not each request
        self.max_concurrency = max_concurrency
        self._slots = asyncio.Semaphore(max_concurrency)
        self._in_flight = 0
        self._peak_in_flight = 0

    @property
    def in_flight(self) -> int:
        """Conversations holding a slot of the semaphore right now."""
        return self._in_flight

    @property
    def peak_in_flight(self) -> int:
        """The most conversations that ever held a slot at once (never above max_concurrency)."""
        return self._peak_in_flight

    @asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        async with self._slots:
            self._in_flight += 1
            self._peak_in_flight = max(self._peak_in_flight, self._in_flight)
            try:
                yield
            finally:
                self._in_flight -= 1

    def _client(self, host: str, port: int) -> InferenceServerClient:
        # aiohttp's own total timeout per request, in case a request outlives the overall deadline's task.
        return InferenceServerClient(server_address(host, port), conn_timeout=self.timeout_seconds, conn_limit=4)

    async def probe(self, host: str, port: int, model: str, version: str, *, pod_uid: str = "") -> PodModelReport:
        """What Triton at host:port says about `version` of `model`. Returns within about
        timeout_seconds once a slot is free; never raises for anything the server does. `pod_uid` opens
        the pod's model-repository API (the index, which explains a version that is not ready):
        without it, a Triton started with the operator's flags refuses the index (403)."""
        async with self._slot():
            try:
                async with asyncio.timeout(self.timeout_seconds):
                    return await self._probe(host, port, model, version, pod_uid)
            except Exception as error:  # noqa: BLE001 - never raise for the server; CancelledError still propagates
                detail = self._describe(error)
                log.debug("Triton at %s:%s: %s", host, port, detail)
                return unreachable(host, port, detail)

    async def _probe(self, host: str, port: int, model: str, version: str, pod_uid: str) -> PodModelReport:
        async with self._client(host, port) as client:
            live = await client.is_server_live()
            server_ready = await client.is_server_ready()
            if await client.is_model_ready(model, version):
                try:
                    metadata = await client.get_model_metadata(model, version)
                    config = await client.get_model_config(model, version)
                except InferenceServerException as error:
                    # Unloaded between the two questions: explain it from the index like any not-ready version.
                    log.debug("%s version %s ready, then not: %s", model, version, error.message())
                else:
                    return PodModelReport(True, live, server_ready, True, "", "", parse_signature(metadata, config))
            index = await client.get_model_repository_index(headers=repository_api_headers(pod_uid))
            reason, message = explain_not_ready(model, version, parse_index(index))
            return PodModelReport(True, live, server_ready, False, reason, message)

    async def repository_index(self, host: str, port: int, *, pod_uid: str = "") -> tuple[VersionState, ...]:
        """Triton's repository index: (name, version, state, reason) per model version it knows of.
        Raises TritonUnavailable (and nothing tritonclient defines) when there is no usable answer
        (a Triton started with the operator's flags answers only with the pod's UID: see probe)."""
        async with self._slot():
            try:
                async with asyncio.timeout(self.timeout_seconds), self._client(host, port) as client:
                    return parse_index(await client.get_model_repository_index(headers=repository_api_headers(pod_uid)))
            except Exception as error:  # noqa: BLE001 - one error type out, nothing tritonclient defines
                raise TritonUnavailable(f"Triton at {host}:{port}: {self._describe(error)}") from None

    def _describe(self, error: BaseException) -> str:
        if isinstance(error, TimeoutError):  # asyncio.timeout, or aiohttp's own (ServerTimeoutError)
            return f"no answer within {self.timeout_seconds:g}s"
        if isinstance(error, aiohttp.ClientConnectorError) and isinstance(error.os_error, ConnectionRefusedError):
            # Explicit mode serves no HTTP until the startup load of the model has finished.
            return "connection refused (Triton not serving HTTP: still loading its model at startup, or not running)"
        if isinstance(error, aiohttp.ServerDisconnectedError):
            return "the connection closed before a response"
        if isinstance(error, InferenceServerException):
            return f"{first_line(error.message())} (HTTP {error.status()})"
        if isinstance(error, (OSError, aiohttp.ClientError)):
            return first_line(str(error)) or type(error).__name__
        if isinstance(error, ValueError):  # invalid JSON, or _Malformed
            return f"malformed answer: {first_line(str(error))}"
        log.warning("unexpected error talking to Triton", exc_info=error)
        return f"{type(error).__name__}: {first_line(str(error))}"

    async def close(self) -> None:
        """Nothing to release: each probe opens and closes its own client. Kept so that callers need
        not know, and so that pooling could come back without changing them."""


@dataclass(frozen=True)
class PodTarget:
    """Everything a cached report depends on. `container_id` is anything that changes when the Triton
    container restarts inside the same pod (its containerID or restartCount); "" when not known."""

    pod_uid: str
    pod_ip: str
    port: int
    model: str
    version: str
    container_id: str = ""
    # The pod's Ready condition, as the kubelet last set it from Triton's per-version readiness
    # probe: it flips when Triton unloads the model, and that pod event must not be answered with
    # the READY it replaces. None: not known.
    kubelet_ready: bool | None = None


@dataclass(frozen=True)
class CachedReport:
    target: PodTarget
    report: PodModelReport
    asked_at: float = 0.0  # monotonic seconds


# A READY answer is asked again after this long, even when nothing else about the pod changed.
READY_TTL_SECONDS = 300.0


def use_cached(cached: CachedReport | None, asked: PodTarget, now: float, ttl: float = READY_TTL_SECONDS) -> bool:
    """The cache's whole decision. A READY answer stands for as long as the same pod, at the same IP
    (and container, with the same readiness), is asked about the same model version, for at most
    `ttl` seconds; any other answer is asked again, since a loading model, a restarting server or an
    unreachable pod will change."""
    return (cached is not None and cached.target == asked and not should_probe(cached.report)
            and now - cached.asked_at < ttl)


class ReportCache:
    """Per-pod reports, so steady state asks Triton nothing. One entry per pod uid: the last answer."""

    def __init__(self, probe: TritonProbe, clock: Callable[[], float] = time.monotonic) -> None:
        self.probe = probe
        self.clock = clock
        self._entries: dict[str, CachedReport] = {}

    async def report(self, pod_uid: str, pod_ip: str, port: int, model: str, version: str, *,
                     container_id: str = "", kubelet_ready: bool | None = None) -> PodModelReport:
        asked = PodTarget(pod_uid, pod_ip, port, model, version, container_id, kubelet_ready)
        cached = self._entries.get(pod_uid)
        now = self.clock()
        if cached is not None and use_cached(cached, asked, now):
            return cached.report
        report = await self.probe.probe(pod_ip, port, model, version, pod_uid=pod_uid)
        self._entries[pod_uid] = CachedReport(asked, report, now)
        return report

    def cached(self, pod_uid: str) -> CachedReport | None:
        return self._entries.get(pod_uid)

    def forget(self, pod_uid: str) -> None:
        self._entries.pop(pod_uid, None)

    def retain(self, live_pod_uids: set[str]) -> None:
        """Drop every pod not in live_pod_uids (deleted pods, or all pods of a deleted ModelDeployment)."""
        self._entries = {uid: entry for uid, entry in self._entries.items() if uid in live_pod_uids}

    def __len__(self) -> int:
        return len(self._entries)

    async def close(self) -> None:
        await self.probe.close()


# --- metrics ----------------------------------------------------------------------------------------

METRICS_PATH = "/metrics"
MAX_METRICS_BYTES = 8 * 1024 * 1024  # Triton's text is a few kB per model; more is not Triton


@dataclass(frozen=True)
class MetricsScrape:
    """One GET of Triton's metrics endpoint: the text (Prometheus exposition) or why there is none.
    Parse it with modeldeploy.analysis (Sample.from_text)."""

    host: str
    port: int
    text: str | None
    error: str = ""  # "" when text is there

    @property
    def ok(self) -> bool:
        return self.text is not None


async def scrape_metrics(host: str, port: int = METRICS_PORT, timeout: float = 2.0) -> MetricsScrape:
    """GET http://host:port/metrics within `timeout` seconds (the whole conversation). Never raises for
    anything the server does (refused, silent, closed, non-200, too large, not text): the result says
    why there is no text. CancelledError still propagates."""
    if timeout <= 0:
        raise ValueError("timeout must be positive")
    url = f"http://{server_address(host, port)}{METRICS_PATH}"
    try:
        async with asyncio.timeout(timeout), aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=timeout)) as session, session.get(url) as response:
            body = await response.content.read(MAX_METRICS_BYTES + 1)
            if response.status != 200:
                return MetricsScrape(host, port, None, f"HTTP {response.status}: "
                                     f"{first_line(body.decode('utf-8', 'replace')) or response.reason or ''}")
            if len(body) > MAX_METRICS_BYTES:
                return MetricsScrape(host, port, None, f"more than {MAX_METRICS_BYTES} bytes: not Triton's metrics")
            return MetricsScrape(host, port, body.decode("utf-8", "replace"))
    except Exception as error:  # noqa: BLE001 - never raise for the server; CancelledError still propagates
        if isinstance(error, TimeoutError):
            detail = f"no answer within {timeout:g}s"
        elif isinstance(error, aiohttp.ClientConnectorError) and isinstance(error.os_error, ConnectionRefusedError):
            detail = "connection refused"
        elif isinstance(error, aiohttp.ServerDisconnectedError):
            detail = "the connection closed before a response"
        elif isinstance(error, (OSError, aiohttp.ClientError)):
            detail = first_line(str(error)) or type(error).__name__
        else:
            log.warning("unexpected error scraping Triton's metrics", exc_info=error)
            detail = f"{type(error).__name__}: {first_line(str(error))}"
        log.debug("Triton metrics at %s:%s: %s", host, port, detail)
        return MetricsScrape(host, port, None, f"Triton metrics at {host}:{port}: {detail}")
