"""Benchmarks: what one reconcile's pure work costs, and what the operator holds in memory.

Run with `make bench`; the figures go in bench/README.md by hand, with the machine they came from.
Timed here, never asserted in tests (timing assertions flake on shared CI machines).
"""

from __future__ import annotations

import asyncio
import gc
import platform
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from modeldeploy.errors import parse_model_deployment  # noqa: E402
from modeldeploy.intent import plan  # noqa: E402
from modeldeploy.render import render_children, render_manifests  # noqa: E402
from tests.support.specs import load_examples  # noqa: E402


def timed(label: str, fn: Callable[[], object], repeat: int = 2000) -> None:
    for _ in range(50):
        fn()
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeat):
            fn()
        samples.append((time.perf_counter() - start) / repeat * 1e6)
    print(f"{label:<58} {statistics.median(samples):9.1f} µs  (min {min(samples):.1f})")


def memory_of(label: str, build: Callable[[], object]) -> None:
    gc.collect()
    tracemalloc.start()
    kept = build()
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"{label:<58} {current / 1024 / 1024:9.2f} MiB")
    del kept


def main() -> None:
    print(f"python {platform.python_version()} on {platform.machine()}, {platform.processor() or 'cpu'}")
    docs = load_examples()
    autoscaled = next(d for d in docs if d["spec"].get("autoscaling"))
    parsed = parse_model_deployment(autoscaled)
    timed("parse + validate one ModelDeployment", lambda: parse_model_deployment(autoscaled))
    timed("render all children of one ModelDeployment", lambda: render_manifests(parsed))

    with_uid = dict(autoscaled, metadata={**autoscaled["metadata"], "uid": "u"})
    md = parse_model_deployment(with_uid)
    desired = render_children(md, replicas=2, owner_uid="u")
    applied = plan(desired, {k: None for k in desired}, "u").apply
    observed = {c["kind"]: {**c, "metadata": {**c["metadata"], "uid": "c", "resourceVersion": "1"}} for c in applied}
    observed.update({k: None for k in desired if k not in observed})
    timed("steady-state plan (render + compare, nothing to apply)",
          lambda: plan(render_children(md, replicas=2, owner_uid="u"), observed, "u"))

    try:
        from tests.support.fake_cluster import FakeCluster  # noqa: F401
    except ImportError:
        FakeCluster = None  # noqa: N806
    if FakeCluster is not None:
        asyncio.run(_reconcile_bench())

    memory_of("1000 parsed ModelDeployments held in memory",
              lambda: [parse_model_deployment(dict(autoscaled, metadata={"name": f"m{i}", "namespace": "ns"}))
                       for i in range(1000)])


async def _reconcile_bench() -> None:
    from bench.reconcile import steady_state_reconcile

    await steady_state_reconcile(watch_cache=False)
    await steady_state_reconcile(watch_cache=True)


if __name__ == "__main__":
    main()
