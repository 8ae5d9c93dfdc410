"""Steady-state reconcile cost: time and API requests per object, against the in-memory cluster.

Triton is real (started from the nvidia-pytriton wheel); once a pod's version is ready the
report is cached, so a steady-state reconcile asks Triton nothing.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from modeldeploy.reconciler import Reconciler
from modeldeploy.triton import ReportCache, TritonProbe
from tests.support.deployment_controller import settle
from tests.support.fake_cluster import FakeCluster
from tests.support.tritonserver import start_tritonserver, write_model_repository
from tests.support.watch import watch_cached

OBJECTS = 50
ROUNDS = 5


async def steady_state_reconcile(*, watch_cache: bool) -> None:
    """With watch_cache, reads come from a watch cache that the in-memory cluster's watch feeds."""
    with tempfile.TemporaryDirectory() as tmp, \
            start_tritonserver(write_model_repository(Path(tmp)), load_models=("simple",)) as server:
        fake = FakeCluster()
        probe = TritonProbe()
        reconciler = Reconciler(watch_cached(fake) if watch_cache else fake, ReportCache(probe),
                                triton_port=server.http_port)
        names = [f"m{i}" for i in range(OBJECTS)]
        for name in names:
            fake.create({"apiVersion": "modeldeploy.dev/v1alpha1", "kind": "ModelDeployment",
                         "metadata": {"name": name, "namespace": "bench"},
                         "spec": {"model": {"name": "simple", "repository": "s3://m/t", "version": "1"},
                                  "replicas": 2, "disruptionBudget": {"maxUnavailable": 1}}})
            await reconciler.reconcile("bench", name)
            settle(fake, "bench", name)
            await reconciler.reconcile("bench", name)
        fake.reset_counters()
        samples = []
        for _ in range(ROUNDS):
            start = time.perf_counter()
            for name in names:
                await reconciler.reconcile("bench", name)
            samples.append((time.perf_counter() - start) / OBJECTS * 1e3)
        reads = fake.requests / (OBJECTS * ROUNDS)
        reads_from = "watch cache" if watch_cache else "API server"
        print(f"{f'steady-state reconcile, per object (reads from the {reads_from})':<58} "
              f"{statistics.median(samples):9.2f} ms  ({reads:.0f} API requests, {len(fake.writes)} writes in "
              f"{OBJECTS * ROUNDS} reconciles)")
        await probe.close()
