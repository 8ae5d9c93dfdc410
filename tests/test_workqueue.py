"""The reconcile work queue: coalescing, one run per key at a time, backoff, isolation."""

from __future__ import annotations

import asyncio

import pytest

from modeldeploy.workqueue import MAX_BACKOFF_SECONDS, WorkQueue, backoff_seconds


async def test_events_during_a_run_cause_exactly_one_more_run():
    runs: list[str] = []
    gate = asyncio.Event()

    async def work(key):
        runs.append(key)
        if len(runs) == 1:
            await gate.wait()
        return None

    queue = WorkQueue(work, workers=4)
    queue.start()
    queue.enqueue("a")
    await asyncio.sleep(0.02)
    for _ in range(5):
        queue.enqueue("a")  # arrives while "a" runs
    gate.set()
    await queue.idle()
    await queue.stop()
    assert runs == ["a", "a"]


async def test_a_key_never_runs_twice_at_once_but_keys_run_in_parallel():
    running: set[str] = set()
    overlap: list[str] = []
    peak = 0

    async def work(key):
        nonlocal peak
        if key in running:
            overlap.append(key)
        running.add(key)
        peak = max(peak, len(running))
        await asyncio.sleep(0.02)
        running.discard(key)

    queue = WorkQueue(work, workers=3)
    queue.start()
    for _ in range(3):
        for key in ("a", "b", "c"):
            queue.enqueue(key)
        await asyncio.sleep(0.005)
    await queue.idle()
    await queue.stop()
    assert overlap == [] and peak == 3


async def test_a_failing_key_backs_off_and_others_go_on():
    calls: dict[str, int] = {"bad": 0, "good": 0}
    errors: list[str] = []

    async def work(key):
        calls[key] += 1
        if key == "bad":
            raise RuntimeError("broken object")

    queue = WorkQueue(work, workers=1, on_error=lambda key, error: errors.append(f"{key}: {error}"))
    queue.start()
    queue.enqueue("bad")
    queue.enqueue("good")
    await queue.idle()
    await asyncio.sleep(0.3)  # first retry is due after 1 s: not yet
    assert calls == {"bad": 1, "good": 1}
    assert errors == ["bad: broken object"]
    assert queue.alive
    await queue.stop()


async def test_requested_requeue_runs_again_later():
    runs = 0

    async def work(key):
        nonlocal runs
        runs += 1
        return 0.05 if runs < 3 else None

    queue = WorkQueue(work)
    queue.start()
    queue.enqueue("a")
    await asyncio.sleep(0.4)
    await queue.stop()
    assert runs == 3


async def test_forget_cancels_a_scheduled_retry():
    runs = 0

    async def work(key):
        nonlocal runs
        runs += 1
        return 0.05

    queue = WorkQueue(work)
    queue.start()
    queue.enqueue("a")
    await queue.idle()
    queue.forget("a")
    await asyncio.sleep(0.15)
    await queue.stop()
    assert runs == 1


@pytest.mark.parametrize(("failures", "seconds"), [(1, 1.0), (2, 2.0), (5, 16.0), (30, MAX_BACKOFF_SECONDS)])
def test_backoff_doubles_up_to_a_cap(failures, seconds):
    assert backoff_seconds(failures) == seconds
