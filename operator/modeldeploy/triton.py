"""The triton boundary: the only module that imports tritonclient.

Asks Triton on each pod (its IP, Triton's HTTP port) whether a model version is loaded, why
not, and what the model looks like. Short timeouts, bounded concurrency across all pods of all
ModelDeployments, and no exception escapes for a server-side problem: a slow, dead or vanishing
Triton becomes a report that says so.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
from tritonclient.http.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException

from modeldeploy.model_health import (
    CacheKey,
    ModelSignature,
    PodModelReport,
    TensorSpec,
    VersionState,
    explain_not_ready,
    should_probe,
    unreachable,
)

log = logging.getLogger(__name__)

# What a refused, reset, timed-out or garbled conversation looks like through tritonclient/aiohttp
# (aiohttp.ClientError covers a server that disconnects mid-response).
_NETWORK_ERRORS = (OSError, asyncio.TimeoutError, aiohttp.ClientError, InferenceServerException, ValueError)


def _signature(metadata: dict[str, Any], config: dict[str, Any]) -> ModelSignature:
    def tensors(items: list[dict[str, Any]]) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(t.get("name", ""), t.get("datatype", ""), tuple(int(d) for d in t.get("shape", [])))
                     for t in items)

    return ModelSignature(name=metadata.get("name", ""), platform=metadata.get("platform") or config.get("platform", ""),
                          backend=config.get("backend", ""), max_batch_size=int(config.get("max_batch_size", 0)),
                          inputs=tensors(metadata.get("inputs", [])), outputs=tensors(metadata.get("outputs", [])))


class TritonProbe:
    def __init__(self, timeout_seconds: float = 2.0, max_concurrency: int = 32) -> None:
        self.timeout_seconds = timeout_seconds
        self._slots = asyncio.Semaphore(max_concurrency)
        self.in_flight = 0  # probes holding a slot now (for tests and metrics)

    async def probe(self, host: str, port: int, model: str, version: str) -> PodModelReport:
        async with self._slots:
            self.in_flight += 1
            try:
                # The client's timeout bounds each request; this bounds the whole conversation.
                return await asyncio.wait_for(self._probe(host, port, model, version),
                                              timeout=self.timeout_seconds * 4)
            except _NETWORK_ERRORS as error:
                return unreachable(host, port, _describe(error))
            finally:
                self.in_flight -= 1

    async def _probe(self, host: str, port: int, model: str, version: str) -> PodModelReport:
        async with InferenceServerClient(f"{host}:{port}", conn_timeout=self.timeout_seconds) as client:
            live = await client.is_server_live()
            ready = await client.is_server_ready()
            if await client.is_model_ready(model, version):
                metadata = await client.get_model_metadata(model, version)
                config = await client.get_model_config(model, version)
                return PodModelReport(True, live, ready, True, "", "", _signature(metadata, config))
            reason, message = explain_not_ready(model, version, await self._index(client))
            return PodModelReport(True, live, ready, False, reason, message)

    async def repository_index(self, host: str, port: int) -> tuple[VersionState, ...]:
        async with self._slots, InferenceServerClient(f"{host}:{port}", conn_timeout=self.timeout_seconds) as client:
            return await self._index(client)

    @staticmethod
    async def _index(client: InferenceServerClient) -> tuple[VersionState, ...]:
        rows = await client.get_model_repository_index()
        return tuple(VersionState(r.get("name", ""), str(r.get("version", "")), r.get("state", ""),
                                  r.get("reason", "")) for r in rows)

    async def close(self) -> None:
        """Clients are opened and closed per probe; nothing is held between probes."""


def _describe(error: BaseException) -> str:
    if isinstance(error, asyncio.TimeoutError):
        return "timed out"
    text = str(error) or type(error).__name__
    return text.splitlines()[0][:300]


class ReportCache:
    """Per-pod reports: a READY one is reused until the pod, its IP or the version changes."""

    def __init__(self, probe: TritonProbe) -> None:
        self.probe = probe
        self._reports: dict[CacheKey, PodModelReport] = {}

    async def report(self, pod_uid: str, pod_ip: str, port: int, model: str, version: str) -> PodModelReport:
        key = CacheKey(pod_uid, pod_ip, model, version)
        cached = self._reports.get(key)
        if not should_probe(cached):
            assert cached is not None
            return cached
        report = await self.probe.probe(pod_ip, port, model, version)
        self._reports = {k: v for k, v in self._reports.items() if k.pod_uid != pod_uid}
        self._reports[key] = report
        return report

    def retain(self, live_pod_uids: set[str]) -> None:
        self._reports = {k: v for k, v in self._reports.items() if k.pod_uid in live_pod_uids}

    async def close(self) -> None:
        await self.probe.close()
