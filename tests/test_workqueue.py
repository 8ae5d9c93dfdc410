"""The reconcile work queue: coalescing, one run per key at a time, backoff, isolation."""

from __future__ import annotations

import asyncio

import pytest

from modeldeploy import workqueue
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


async def test_a_failed_reconcile_is_retried_with_doubling_backoff_and_a_success_resets_it(monkeypatch):
    base = 0.05  # the real backoff_seconds, on a shorter base than 1 s so the test takes half a second
    monkeypatch.setattr(workqueue, "MIN_BACKOFF_SECONDS", base)
    loop = asyncio.get_running_loop()
    starts: dict[str, list[float]] = {"bad": [], "good": []}
    errors: list[str] = []
    # "bad" fails three times, then succeeds; after a later event it fails once more, then succeeds.
    outcomes = iter([False, False, False, True, False, True])
    settled = asyncio.Event()

    async def work(key):
        starts[key].append(loop.time())
        if key == "good":
            return None
        ok = next(outcomes)
        if len(starts["bad"]) in (4, 6):
            settled.set()
        if not ok:
            raise RuntimeError(f"broken object, try {len(starts['bad'])}")
        return None

    queue = WorkQueue(work, workers=1, on_error=lambda key, error: errors.append(f"{key}: {error}"))
    queue.start()
    queue.enqueue("bad")
    queue.enqueue("good")
    await asyncio.wait_for(settled.wait(), timeout=5)  # three retries, none of them asked for by an event
    settled.clear()
    bad = starts["bad"]
    # The other key did not wait for the failing one's backoff.
    assert len(starts["good"]) == 1 and starts["good"][0] - bad[0] < base
    # Each retry waited its backoff, doubling: 1x, 2x, 4x the base (timers never fire early).
    gaps = [later - earlier for earlier, later in zip(bad, bad[1:])]
    assert all(g >= b * base - 0.005 for g, b in zip(gaps, (1, 2, 4))), gaps
    assert errors == [f"bad: broken object, try {n}" for n in (1, 2, 3)]
    # The success reset the count: the next failure is retried after the base delay again, not 8x.
    await asyncio.sleep(2 * base)
    assert len(bad) == 4  # and nothing retries a success
    queue.enqueue("bad")
    await asyncio.wait_for(settled.wait(), timeout=5)
    assert base - 0.005 <= bad[5] - bad[4] < 8 * base - 0.005, bad[5] - bad[4]
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


# --- the gate (leader election) ------------------------------------------------------------------

async def test_a_closed_gate_queues_and_coalesces_but_runs_nothing_until_opened():
    runs: list[str] = []

    async def work(key):
        runs.append(key)

    queue = WorkQueue(work, workers=2, is_open=False)
    queue.start()
    for key in ("a", "b", "a", "a"):
        queue.enqueue(key)
    await asyncio.sleep(0.05)
    assert runs == [] and queue.waiting and not queue.is_open and queue.alive
    queue.open()
    await queue.idle()
    assert sorted(runs) == ["a", "b"]  # coalesced: one run each
    await queue.stop()


async def test_closing_the_gate_cancels_reconciles_in_flight_at_their_current_await_and_requeues_them():
    """A replica that loses the Lease: the reconcile in flight finishes the call it is in (here: the
    awaited step) but makes no further call; nothing new starts; it runs again once the gate reopens."""
    calls: list[str] = []
    first_call = asyncio.Event()
    errors: list[BaseException] = []

    async def work(key):
        calls.append(f"{key}: read")
        first_call.set()
        await asyncio.sleep(0.2)  # an API call in flight
        calls.append(f"{key}: write")  # never reached once the gate closed
        return None

    queue = WorkQueue(work, workers=2, on_error=lambda key, error: errors.append(error))
    queue.start()
    queue.enqueue("a")
    await first_call.wait()
    queue.close()
    queue.enqueue("b")
    await asyncio.sleep(0.3)
    assert calls == ["a: read"] and errors == []  # no failure, no backoff
    assert queue.failures("a") == 0 and queue.waiting
    first_call.clear()
    queue.open()
    await queue.idle()
    assert sorted(calls[1:]) == ["a: read", "a: write", "b: read", "b: write"]
    await queue.stop()


async def test_a_key_enqueued_while_its_preempted_run_was_in_flight_runs_once_after_reopening():
    runs: list[str] = []
    started = asyncio.Event()

    async def work(key):
        runs.append(key)
        started.set()
        await asyncio.sleep(0.2)

    queue = WorkQueue(work, workers=1)
    queue.start()
    queue.enqueue("a")
    await started.wait()
    queue.enqueue("a")  # during the run: one more run afterwards
    queue.close()
    await asyncio.sleep(0.05)
    queue.open()
    await queue.idle()
    assert runs == ["a", "a"]
    await queue.stop()


async def test_timers_fire_into_a_closed_gate_and_wait_there():
    runs = 0

    async def work(key):
        nonlocal runs
        runs += 1
        return 0.05 if runs == 1 else None

    queue = WorkQueue(work)
    queue.start()
    queue.enqueue("a")
    await queue.idle()
    queue.close()
    await asyncio.sleep(0.15)
    assert runs == 1 and queue.waiting
    queue.open()
    await queue.idle()
    assert runs == 2
    await queue.stop()


async def test_stop_still_cancels_work_in_flight():
    cancelled = asyncio.Event()

    async def work(key):
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    queue = WorkQueue(work)
    queue.start()
    queue.enqueue("a")
    await asyncio.sleep(0.02)
    await asyncio.wait_for(queue.stop(), timeout=2)
    assert cancelled.is_set() and not queue.alive
