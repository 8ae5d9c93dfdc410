"""A coalescing work queue for reconciles.

- A key is never reconciled by two workers at once; events that arrive during its reconcile
  cause exactly one more run afterwards.
- A bounded number of workers, so one slow object never stalls the others for long.
- Failures back off per key (1 s doubling to 5 min), so a broken object cannot cause a retry storm.
- A gate (leader election): while it is closed keys are still queued, coalesced and timed, but no
  worker starts one; closing it also cancels the reconciles in flight, which stop at their current
  await (an API call already sent completes in its thread, its answer is dropped, no further call
  starts) and are queued again. Opening it lets the queued keys run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

log = logging.getLogger(__name__)

MIN_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 300.0


def backoff_seconds(failures: int) -> float:
    return min(MIN_BACKOFF_SECONDS * 2 ** max(failures - 1, 0), MAX_BACKOFF_SECONDS)


class WorkQueue:
    def __init__(self, work: Callable[[Any], Awaitable[float | None]], *, workers: int = 4,
                 on_error: Callable[[Any, BaseException], None] | None = None, is_open: bool = True) -> None:
        """`work(key)` returns seconds after which to run the key again, or None. `is_open` False starts
        with the gate closed (a standby)."""
        self._work = work
        self._workers = workers
        self._on_error = on_error
        self._ready: asyncio.Queue[Hashable] = asyncio.Queue()
        self._queued: set[Hashable] = set()  # in _ready, not yet taken
        self._running: set[Hashable] = set()
        self._again: set[Hashable] = set()  # enqueued while running
        self._timers: dict[Hashable, asyncio.TimerHandle] = {}
        self._failures: dict[Hashable, int] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._gate_open = is_open
        self._gate: asyncio.Event | None = None  # made in start(), inside the running loop
        self._in_flight: dict[Hashable, asyncio.Task[float | None]] = {}
        self._preempted: set[asyncio.Task[float | None]] = set()
        self.last_progress = time.monotonic()

    def enqueue(self, key: Hashable, delay: float = 0.0) -> None:
        if delay > 0:
            loop = asyncio.get_running_loop()
            timer = self._timers.get(key)
            due = loop.time() + delay
            if timer is not None and timer.when() <= due:
                return  # an earlier run is already scheduled
            if timer is not None:
                timer.cancel()
            self._timers[key] = loop.call_at(due, self._fire, key)
            return
        if key in self._running:
            self._again.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._ready.put_nowait(key)

    def _fire(self, key: Hashable) -> None:
        self._timers.pop(key, None)
        self.enqueue(key)

    def failures(self, key: Hashable) -> int:
        """How many reconciles of key in a row have failed (0 after a success)."""
        return self._failures.get(key, 0)

    def forget(self, key: Hashable) -> None:
        """The object is gone: drop its timers and failure count."""
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        self._failures.pop(key, None)

    @property
    def is_open(self) -> bool:
        return self._gate_open

    def open(self) -> None:
        """Let workers start reconciles (again)."""
        self._gate_open = True
        self.last_progress = time.monotonic()  # the stall clock starts now, not while we stood by
        if self._gate is not None:
            self._gate.set()

    def close(self) -> None:
        """Start no reconcile from now on, and cancel the ones in flight (they are queued again)."""
        self._gate_open = False
        if self._gate is not None:
            self._gate.clear()
        for task in self._in_flight.values():
            if not task.done():
                self._preempted.add(task)
                task.cancel()

    async def _worker(self) -> None:
        assert self._gate is not None
        while True:
            await self._gate.wait()
            key = await self._ready.get()
            if not self._gate_open:  # closed while this worker waited for a key: leave it queued
                self._ready.put_nowait(key)
                continue
            self._queued.discard(key)
            self._running.add(key)
            task = self._in_flight[key] = asyncio.ensure_future(self._work(key))
            try:
                again = await task
            except asyncio.CancelledError:
                if task not in self._preempted:
                    raise  # the worker itself is being stopped
                # Preempted by close(): not a failure; it runs again once the gate opens.
                self._preempted.discard(task)
                self._running.discard(key)
                self._in_flight.pop(key, None)
                self._again.discard(key)
                self.enqueue(key)
                continue
            except Exception as error:  # noqa: BLE001 - one object's failure must not stop the worker
                failures = self._failures[key] = self._failures.get(key, 0) + 1
                if self._on_error is not None:
                    self._on_error(key, error)
                else:
                    log.exception("reconcile of %s failed", key)
                again = backoff_seconds(failures)
            else:
                self._failures.pop(key, None)
            finally:
                if self._in_flight.get(key) is task:
                    del self._in_flight[key]
                self._running.discard(key)
                self.last_progress = time.monotonic()
            if key in self._again:
                self._again.discard(key)
                self.enqueue(key)
            if again is not None:
                self.enqueue(key, again)

    def start(self) -> None:
        self._gate = asyncio.Event()
        if self._gate_open:
            self._gate.set()
        self._tasks = [asyncio.create_task(self._worker(), name=f"reconcile-worker-{i}")
                       for i in range(self._workers)]

    async def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for task in self._tasks:
            task.cancel()
        for work in self._in_flight.values():
            work.cancel()
        await asyncio.gather(*self._tasks, *self._in_flight.values(), return_exceptions=True)
        self._in_flight.clear()
        self._tasks = []

    @property
    def waiting(self) -> bool:
        return bool(self._queued)

    @property
    def alive(self) -> bool:
        return bool(self._tasks) and not any(t.done() for t in self._tasks)

    async def idle(self, timeout: float = 10.0) -> None:
        """Wait until nothing is queued or running (timers not counted) — for tests."""
        deadline = time.monotonic() + timeout
        while self._queued or self._running or self._again:
            if time.monotonic() > deadline:
                raise TimeoutError("work queue did not drain")
            await asyncio.sleep(0.01)
