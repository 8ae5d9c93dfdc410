"""Leader election on a coordination.k8s.io/v1 Lease: the decisions, on data. Pure: no I/O, no clock.

Two operator replicas run; the one that holds the Lease reconciles, the other stands by with its
watches running (caches warm) and takes over when the Lease is released or expires. The timings
are controller-runtime's defaults:

    LEASE_DURATION  15 s   how long the others wait, after they last saw the Lease change, before
                           they may take it
    RENEW_DEADLINE  10 s   how long a leader keeps reconciling without a successful renewal; past
                           it the leader stops at once, 5 s before anyone else may take the Lease
    RETRY_PERIOD     2 s   how often everyone tries: the leader renews, a standby looks

The caller (`operator.Elector`) reads the Lease, passes what it read and its local monotonic clock
to `observe` and `decide`, does what the Decision says (create or replace the Lease, the replace
carrying the resourceVersion it read, so that of two writers exactly one wins and the other gets
409 Conflict), and reports a write that succeeded with `renewed`.

Clocks, and why no two clocks are ever compared:
- "When did I last renew" is the local monotonic clock at the moment the successful write was
  *sent* (`renewed(memory, sent_at)`), never the renewTime the server stored: the write was
  committed after it was sent, so anyone who reads it sees it no earlier than that, and counting
  from the send is on the safe side. `leading` is true only while less than RENEW_DEADLINE has
  passed since then on this machine's monotonic clock (no wall-clock jumps, no NTP steps).
- Another holder's Lease is judged, like client-go does, by when *this* process saw its record
  change (holder, renewTime, acquireTime, duration, transitions), on the local monotonic clock,
  plus the Lease's own leaseDurationSeconds. The Lease's times are only compared with those of the
  previous read (did the holder renew since?), never with our wall clock, so a holder whose clock
  runs minutes ahead or behind ours is neither taken over early nor waited on forever. The price:
  a standby that has just started waits a whole lease duration before taking a Lease someone else
  holds, even if it was last renewed long ago (a released Lease, holder "", is taken at once).
- "When did it change" is bracketed by two of our own reads: the previous read still saw the old
  record, so the change was committed after that read was sent (reads are linearizable); the new
  read saw it, so it was committed before that read's answer arrived. Counting from the earlier end
  makes a standby take over a lease duration after the holder's last renewal at the latest (not up
  to a retry period later, as counting from the later end would), so a crashed leader is replaced
  within 15 s of its last renewal. It is safe while the bracket is narrower than the margin between
  the lease duration and the renew deadline (5 s): the holder stopped reconciling RENEW_DEADLINE
  after it *sent* that renewal, which was no later than its commit. With a wider bracket (a slow or
  missed read) the later end is used.
- The times written into the Lease (acquireTime, renewTime, as MicroTime) are for people and for
  other tools (kubectl, client-go based controllers read them too), not for our decisions.

A leader that misses its renew deadline says "lost" and stops reconciling at once: after
LEASE_DURATION others may take the Lease and start reconciling, and the margin between the two
(5 s) absorbs a reconcile's last in-flight API call. If its Lease is still unchanged (nobody took
it) it may renew it again later and lead again; the resourceVersion precondition makes that safe.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

LEASE_DURATION_SECONDS = 15
RENEW_DEADLINE_SECONDS = 10.0
RETRY_PERIOD_SECONDS = 2.0
# What a leader that steps down writes (client-go's ReleaseOnCancel): no holder, and a duration
# of 1 s for tools that still judge by renewTime + duration.
RELEASED_DURATION_SECONDS = 1
# The widest bracket of two reads whose earlier end may date a change (see above): 1 s inside the
# 5 s margin between LEASE_DURATION_SECONDS and RENEW_DEADLINE_SECONDS.
MAX_BRACKET_SECONDS = LEASE_DURATION_SECONDS - RENEW_DEADLINE_SECONDS - 1.0

Action = Literal["create", "acquire", "renew", "standby", "lost"]


@dataclass(frozen=True)
class LeaseRecord:
    """The Lease's spec, as the fields leader election uses."""

    holder: str = ""
    duration_seconds: int = LEASE_DURATION_SECONDS
    acquire_time: str | None = None
    renew_time: str | None = None
    transitions: int = 0

    @staticmethod
    def from_lease(lease: dict[str, Any] | None) -> LeaseRecord | None:
        if lease is None:
            return None
        spec = lease.get("spec") or {}
        return LeaseRecord(holder=spec.get("holderIdentity") or "",
                           duration_seconds=int(spec.get("leaseDurationSeconds") or LEASE_DURATION_SECONDS),
                           acquire_time=spec.get("acquireTime"), renew_time=spec.get("renewTime"),
                           transitions=int(spec.get("leaseTransitions") or 0))

    def spec(self) -> dict[str, Any]:
        out: dict[str, Any] = {"holderIdentity": self.holder, "leaseDurationSeconds": self.duration_seconds,
                               "leaseTransitions": self.transitions}
        if self.acquire_time is not None:
            out["acquireTime"] = self.acquire_time
        if self.renew_time is not None:
            out["renewTime"] = self.renew_time
        return out


@dataclass(frozen=True)
class Memory:
    """What one elector remembers between tries (all times on its local monotonic clock)."""

    observed: LeaseRecord | None = None  # the record last read
    observed_at: float | None = None  # since when that record is known to exist (it has not changed since)
    looked_at: float | None = None  # when our last read was sent
    renewed_at: float | None = None  # when our last successful acquire/renew was sent
    leading: bool = False  # we believed we led after the last step (for "lost")


@dataclass(frozen=True)
class Decision:
    action: Action
    record: LeaseRecord | None = None  # what to write, for create/acquire/renew
    wait_seconds: float = RETRY_PERIOD_SECONDS  # when to try next
    reason: str = ""


def observe(memory: Memory, record: LeaseRecord | None, now: float, sent_at: float | None = None) -> Memory:
    """Remember the record just read (the read was sent at `sent_at` and answered at `now`, both local
    monotonic). Its clock restarts only when it differs from the last one: from our previous read's
    sending if that brackets the change narrowly enough, else from now."""
    sent = now if sent_at is None else sent_at
    if record is not None and record == memory.observed and memory.observed_at is not None:
        return replace(memory, looked_at=sent)
    previous = memory.looked_at
    since = previous if previous is not None and memory.observed_at is not None and \
        now - previous <= MAX_BRACKET_SECONDS else now
    return replace(memory, observed=record, observed_at=since, looked_at=sent)


def still_leading(memory: Memory, now: float) -> bool:
    """Whether we may reconcile now: we led, and our last renewal is less than RENEW_DEADLINE old."""
    return memory.leading and memory.renewed_at is not None and now - memory.renewed_at < RENEW_DEADLINE_SECONDS


def renew_budget(memory: Memory, now: float) -> float:
    """How long the next Lease request may take before the renew deadline passes (leaders only)."""
    if not still_leading(memory, now):
        return RETRY_PERIOD_SECONDS * 2
    assert memory.renewed_at is not None
    return max(RENEW_DEADLINE_SECONDS - (now - memory.renewed_at), 0.0)


def expires_in(memory: Memory, now: float) -> float:
    """Seconds until the observed record may be taken by someone else (0: now)."""
    if memory.observed is None or memory.observed_at is None:
        return 0.0
    return max(memory.observed_at + memory.observed.duration_seconds - now, 0.0)


def decide(memory: Memory, identity: str, now: float, wall_now: str) -> Decision:
    """What to do with the Lease as last observed (call `observe` first). `wall_now` (MicroTime) is
    only written into the Lease, never compared."""
    if not identity:
        raise ValueError("an elector needs a non-empty identity")
    current = memory.observed
    if memory.leading and not still_leading(memory, now):
        return Decision("lost", reason=f"no successful renewal for {RENEW_DEADLINE_SECONDS:.0f}s (renew deadline)")
    if current is None:
        return Decision("create", LeaseRecord(identity, LEASE_DURATION_SECONDS, wall_now, wall_now, 0),
                        reason="no Lease yet")
    if current.holder == identity:
        return Decision("renew", replace(current, duration_seconds=LEASE_DURATION_SECONDS, renew_time=wall_now,
                                         acquire_time=current.acquire_time or wall_now))
    if memory.leading:  # someone else's name is in the Lease we held
        return Decision("lost", reason=f"the Lease is held by {current.holder}")
    remaining = expires_in(memory, now)
    if current.holder and remaining > 0:
        # Look again in a retry period, or exactly when the Lease would expire if that comes first.
        return Decision("standby", wait_seconds=min(RETRY_PERIOD_SECONDS, remaining),
                        reason=f"held by {current.holder}, renewed within the last {current.duration_seconds}s")
    return Decision("acquire", LeaseRecord(identity, LEASE_DURATION_SECONDS, wall_now, wall_now,
                                           current.transitions + 1),
                    reason="released" if not current.holder else f"{current.holder} let it expire")


def renewed(memory: Memory, record: LeaseRecord, sent_at: float) -> Memory:
    """Our create/replace carrying `record` succeeded; it was sent at `sent_at` (local monotonic)."""
    return Memory(observed=record, observed_at=sent_at, looked_at=sent_at, renewed_at=sent_at, leading=True)


def stepped_down(memory: Memory) -> Memory:
    """We stopped leading (lost, or a 409 on our write): forget our renewal."""
    return replace(memory, leading=False, renewed_at=None)


def released(record: LeaseRecord, wall_now: str) -> LeaseRecord:
    """The record a leader writes when it steps down on purpose (SIGTERM): no holder, 1 s duration,
    transitions kept (client-go's ReleaseOnCancel), so a standby takes it at its next look."""
    return LeaseRecord("", RELEASED_DURATION_SECONDS, wall_now, wall_now, record.transitions)
