"""Leader election decisions, on data (modeldeploy.leader), and the Elector against the fake API server.

Times are local monotonic seconds (any origin); wall times are opaque MicroTime strings that the
decisions write but never read.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from modeldeploy import leader
from modeldeploy.kube import LEASE, ApiError
from modeldeploy.leader import (
    LEASE_DURATION_SECONDS,
    RENEW_DEADLINE_SECONDS,
    RETRY_PERIOD_SECONDS,
    LeaseRecord,
    Memory,
    decide,
    observe,
    renewed,
    still_leading,
)
from modeldeploy.operator import Elector
from tests.support.fake_cluster import FakeCluster

ME, OTHER = "operator-a_1234", "operator-b_5678"
WALL = "2026-11-25T15:00:00.000000Z"
NS, NAME = "modeldeploy-system", "modeldeploy"


def held(holder=OTHER, renew="2026-11-25T14:59:58.000000Z", duration=LEASE_DURATION_SECONDS, transitions=3):
    return LeaseRecord(holder, duration, "2026-11-25T14:00:00.000000Z", renew, transitions)


def step(memory, record, now, identity=ME):
    memory = observe(memory, record, now)
    return memory, decide(memory, identity, now, WALL)


# --- the Lease's spec <-> LeaseRecord ----------------------------------------------------------------

def test_a_lease_object_reads_into_a_record_and_back():
    spec = {"holderIdentity": OTHER, "leaseDurationSeconds": 15, "acquireTime": "a", "renewTime": "r",
            "leaseTransitions": 4}
    record = LeaseRecord.from_lease({"metadata": {"name": NAME}, "spec": spec})
    assert record == LeaseRecord(OTHER, 15, "a", "r", 4)
    assert record.spec() == spec
    assert LeaseRecord.from_lease(None) is None
    # A Lease someone created empty (kubectl create): nobody holds it, default duration.
    assert LeaseRecord.from_lease({"metadata": {}}) == LeaseRecord("", LEASE_DURATION_SECONDS, None, None, 0)


def test_controller_runtime_timings():
    assert (LEASE_DURATION_SECONDS, RENEW_DEADLINE_SECONDS, RETRY_PERIOD_SECONDS) == (15, 10.0, 2.0)
    # The leader stops reconciling well before anyone else may start.
    assert RETRY_PERIOD_SECONDS < RENEW_DEADLINE_SECONDS < LEASE_DURATION_SECONDS


# --- acquiring ----------------------------------------------------------------------------------

def test_no_lease_yet_creates_it_holding_it():
    _, decision = step(Memory(), None, 100.0)
    assert decision.action == "create"
    assert decision.record == LeaseRecord(ME, LEASE_DURATION_SECONDS, WALL, WALL, 0)


def test_a_released_lease_is_taken_at_once_and_counts_a_transition():
    released = leader.released(held(transitions=3), "2026-11-25T14:59:59.000000Z")
    assert (released.holder, released.duration_seconds, released.transitions) == ("", 1, 3)
    _, decision = step(Memory(), released, 100.0)
    assert decision.action == "acquire"
    assert decision.record == LeaseRecord(ME, LEASE_DURATION_SECONDS, WALL, WALL, 4)


def test_someone_elses_lease_is_waited_on_for_a_whole_duration_from_when_we_saw_it():
    memory, decision = step(Memory(), held(), 100.0)
    assert decision.action == "standby" and decision.wait_seconds == RETRY_PERIOD_SECONDS
    # Unchanged records: the clock keeps running from the first sighting.
    for now in (102.0, 108.0, 113.0):
        memory, decision = step(memory, held(), now)
        assert decision.action == "standby"
    memory, decision = step(memory, held(), 114.5)
    assert decision.action == "standby" and decision.wait_seconds == pytest.approx(0.5)  # wakes at expiry
    memory, decision = step(memory, held(), 115.0)
    assert decision.action == "acquire" and decision.record.transitions == 4
    assert decision.record.holder == ME and decision.record.acquire_time == WALL


def test_a_change_is_dated_from_the_previous_look_when_two_looks_bracket_it_narrowly():
    """Our read at 100 saw r1, the one sent at 102 saw r2: the renewal was committed after 100."""
    memory, _ = step(Memory(), held(renew="r1"), 100.0)
    memory = observe(memory, held(renew="r2"), 102.05, sent_at=102.0)
    assert memory.observed_at == 100.0 and memory.looked_at == 102.0
    _, decision = step(memory, held(renew="r2"), 114.9)
    assert decision.action == "standby" and decision.wait_seconds == pytest.approx(0.1)
    _, decision = step(memory, held(renew="r2"), 115.0)
    assert decision.action == "acquire"


@pytest.mark.parametrize("gap", [leader.MAX_BRACKET_SECONDS + 0.01, 30.0])
def test_a_wide_bracket_dates_the_change_from_when_we_saw_it(gap):
    """A slow or missed read leaves a wide bracket: counting from its early end could take over while the
    holder still reconciles (it stops RENEW_DEADLINE after sending), so the late end counts."""
    assert leader.MAX_BRACKET_SECONDS < LEASE_DURATION_SECONDS - RENEW_DEADLINE_SECONDS
    memory, _ = step(Memory(), held(renew="r1"), 100.0)
    memory = observe(memory, held(renew="r2"), 100.0 + gap, sent_at=100.0 + gap - 0.01)
    assert memory.observed_at == 100.0 + gap


def test_the_first_look_dates_a_record_from_its_answer():
    memory = observe(Memory(), held(), 100.5, sent_at=100.0)
    assert memory.observed_at == 100.5


def test_every_renewal_seen_restarts_the_wait():
    memory, _ = step(Memory(), held(renew="r1"), 100.0)
    memory, decision = step(memory, held(renew="r2"), 112.0)  # the holder renewed
    assert decision.action == "standby"
    memory, decision = step(memory, held(renew="r2"), 126.9)
    assert decision.action == "standby"
    memory, decision = step(memory, held(renew="r2"), 127.0)
    assert decision.action == "acquire"


def test_the_holders_own_duration_is_honoured():
    memory, _ = step(Memory(), held(duration=60), 100.0)
    memory, decision = step(memory, held(duration=60), 130.0)
    assert decision.action == "standby"
    memory, decision = step(memory, held(duration=60), 160.0)
    assert decision.action == "acquire"


@pytest.mark.parametrize("renew_time", ["1970-01-01T00:00:00.000000Z", "2999-01-01T00:00:00.000000Z", None],
                         ids=["holder-clock-far-behind", "holder-clock-far-ahead", "no-renew-time"])
def test_no_clock_skew_the_lease_times_are_never_compared_with_ours(renew_time):
    """A renewTime from a clock hours off ours changes nothing: only our monotonic clock since we saw the
    record counts, so a live leader with a skewed clock is not taken over, and a dead one is after 15 s."""
    memory, decision = step(Memory(), held(renew=renew_time), 5000.0)
    assert decision.action == "standby"
    memory, decision = step(memory, held(renew=renew_time), 5014.9)
    assert decision.action == "standby"
    memory, decision = step(memory, held(renew=renew_time), 5015.0)
    assert decision.action == "acquire"


def test_the_wall_time_only_goes_into_what_we_write():
    memory = observe(Memory(), held(), 100.0)
    assert decide(memory, ME, 101.0, "1970-01-01T00:00:00.000000Z") == decide(memory, ME, 101.0, "garbage")
    assert decide(Memory(), ME, 0.0, "whatever").record.renew_time == "whatever"


# --- holding --------------------------------------------------------------------------------------

def test_the_leader_renews_keeping_acquire_time_and_transitions():
    mine = held(holder=ME, transitions=7)
    memory = renewed(Memory(), mine, 100.0)
    memory, decision = step(memory, mine, 102.0)
    assert decision.action == "renew"
    assert decision.record == LeaseRecord(ME, LEASE_DURATION_SECONDS, mine.acquire_time, WALL, 7)


def test_still_leading_counts_from_when_the_renewal_was_sent_on_the_local_clock():
    memory = renewed(Memory(), held(holder=ME), 100.0)
    assert still_leading(memory, 100.0) and still_leading(memory, 109.99)
    assert not still_leading(memory, 110.0)
    assert not still_leading(Memory(), 0.0)
    assert leader.renew_budget(memory, 104.0) == pytest.approx(6.0)
    assert leader.renew_budget(memory, 111.0) == RETRY_PERIOD_SECONDS * 2  # not leading: the standby's bound


def test_a_leader_that_cannot_renew_within_the_deadline_has_lost_before_the_lease_expires():
    mine = held(holder=ME)
    memory = renewed(Memory(), mine, 100.0)
    # Renewals fail (the API server is unreachable): the Lease we last read still names us...
    memory, decision = step(memory, mine, 109.0)
    assert decision.action == "renew"
    memory, decision = step(memory, mine, 110.0)
    # ...but at the renew deadline we stop, 5 s before anyone else may take it.
    assert decision.action == "lost" and "renew deadline" in decision.reason
    assert 110.0 < 100.0 + LEASE_DURATION_SECONDS


def test_a_leader_whose_lease_names_another_holder_has_lost():
    memory = renewed(Memory(), held(holder=ME), 100.0)
    memory, decision = step(memory, held(holder=OTHER, renew="new"), 102.0)
    assert decision.action == "lost" and OTHER in decision.reason
    memory = leader.stepped_down(memory)
    memory, decision = step(memory, held(holder=OTHER, renew="new"), 104.0)
    assert decision.action == "standby"


def test_after_losing_an_unchanged_lease_that_still_names_us_may_be_renewed_again():
    """The resourceVersion precondition makes it safe: if nobody wrote the Lease, nobody else leads."""
    mine = held(holder=ME)
    memory = leader.stepped_down(renewed(Memory(), mine, 100.0))
    memory, decision = step(memory, mine, 111.0)
    assert decision.action == "renew"


def test_a_lease_deleted_under_the_leader_is_created_again():
    memory = renewed(Memory(), held(holder=ME), 100.0)
    memory, decision = step(memory, None, 102.0)
    assert decision.action == "create"


def test_an_empty_identity_is_refused():
    with pytest.raises(ValueError):
        decide(Memory(), "", 0.0, WALL)


# --- two electors, one fake API server --------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def electors(fake, clock, *names):
    """Electors on one fake API server and one clock; their wall clock (MicroTime) follows it, as
    renewTime always moves on a real one (an identical record would be a no-op write, invisible)."""
    log: list[tuple[str, str]] = []
    made = []
    for name in names:
        made.append(Elector(fake, NS, NAME, name, clock=clock, wall=lambda: f"2026-11-25T15:00:00.{clock():013.6f}Z",
                            on_lead=lambda n=name: log.append((n, "lead")),
                            on_stop=lambda reason, n=name: log.append((n, "stop"))))
    return made, log


def holder(fake):
    return (fake.get_now(LEASE, NS, NAME) or {}).get("spec", {}).get("holderIdentity")


async def test_exactly_one_of_two_leads_and_the_other_takes_over_when_it_dies():
    fake, clock = FakeCluster(), Clock()
    (a, b), log = electors(fake, clock, "a_1", "b_2")
    assert await a.step() == RETRY_PERIOD_SECONDS and a.leading
    await b.step()
    assert not b.leading and holder(fake) == "a_1" and log == [("a_1", "lead")]
    # a renews every retry period; b never takes over.
    for _ in range(10):
        clock.now += RETRY_PERIOD_SECONDS
        await a.step()
        await b.step()
        assert a.leading and not b.leading
    # a dies (no more steps). a's last renewal came after b's previous look (one retry period earlier),
    # so b counts the lease duration from that look: a crashed leader is replaced within 15 s of its
    # last renewal.
    renewed_last = clock.now
    while True:
        wait = await b.step()
        if b.leading:
            break
        clock.now += wait
    assert clock.now - renewed_last == pytest.approx(LEASE_DURATION_SECONDS - RETRY_PERIOD_SECONDS, abs=0.01)
    lease = fake.get_now(LEASE, NS, NAME)
    assert lease["spec"]["holderIdentity"] == "b_2" and lease["spec"]["leaseTransitions"] == 1
    assert log == [("a_1", "lead"), ("b_2", "lead")]


async def test_a_race_for_a_free_lease_has_one_winner_by_resource_version():
    fake, clock = FakeCluster(), Clock()
    (a, b), log = electors(fake, clock, "a_1", "b_2")
    await a.step()
    await a.release()  # a steps down: the Lease is free
    assert holder(fake) == "" and log == [("a_1", "lead"), ("a_1", "stop")]
    # Both read the free Lease, then both write: the second replace carries a stale resourceVersion.
    await asyncio.gather(a.step(), b.step())
    (winner,) = [e for e in (a, b) if e.leading]
    assert holder(fake) == winner.identity
    # The release, then both racers' replaces: the loser's was refused with 409, changing nothing.
    assert [w[0] for w in fake.writes] == ["create_lease", "replace_lease", "replace_lease", "replace_lease"]
    assert fake.get_now(LEASE, NS, NAME)["spec"]["leaseTransitions"] == 1


async def test_a_create_race_has_one_winner():
    fake, clock = FakeCluster(), Clock()
    (a, b), _ = electors(fake, clock, "a_1", "b_2")
    await asyncio.gather(a.step(), b.step())
    assert [a.leading, b.leading].count(True) == 1


async def test_a_graceful_stop_hands_over_at_the_standbys_next_look():
    fake, clock = FakeCluster(), Clock()
    (a, b), log = electors(fake, clock, "a_1", "b_2")
    await a.step()
    await b.step()
    await a.release()
    spec = fake.get_now(LEASE, NS, NAME)["spec"]
    assert spec["holderIdentity"] == "" and spec["leaseDurationSeconds"] == 1
    clock.now += RETRY_PERIOD_SECONDS
    await b.step()
    assert b.leading and holder(fake) == "b_2"


async def test_a_leader_cut_off_from_the_api_server_stops_at_the_renew_deadline():
    fake, clock = FakeCluster(), Clock()
    (a,), log = electors(fake, clock, "a_1")
    await a.step()
    for verb in ("get", "replace_lease"):
        fake.fail_next(verb, LEASE, ApiError(503, "ServiceUnavailable", "connection refused"), times=100)
    while True:
        wait = await a.step()
        if not a.leading:
            break
        clock.now += wait
    assert log == [("a_1", "lead"), ("a_1", "stop")]
    # It tried every retry period, woke exactly at the deadline and stopped there.
    assert clock.now - 1000.0 == pytest.approx(RENEW_DEADLINE_SECONDS)


async def test_a_hung_request_is_cut_at_the_renew_deadline(monkeypatch):
    """The Lease read hangs: the request is given up when the renew deadline comes, not later."""
    fake = FakeCluster()
    (a,), log = electors(fake, __import__("time").monotonic, "a_1")
    await a.step()
    a.memory = dataclasses.replace(a.memory, renewed_at=a.memory.renewed_at - RENEW_DEADLINE_SECONDS + 0.2)
    hang = asyncio.Event()

    async def stuck(*args, **kwargs):
        await hang.wait()

    monkeypatch.setattr(fake, "get", stuck)
    monkeypatch.setattr(fake, "replace_lease", stuck)
    started = asyncio.get_running_loop().time()
    wait = await a.step()
    assert asyncio.get_running_loop().time() - started < 1.0
    await asyncio.sleep(wait)
    await a.step()
    assert not a.leading and log == [("a_1", "lead"), ("a_1", "stop")]


async def test_a_leader_renews_without_reading_the_lease_first():
    fake, clock = FakeCluster(), Clock()
    (a,), log = electors(fake, clock, "a_1")
    await a.step()
    fake.reset_counters()
    for _ in range(5):
        clock.now += RETRY_PERIOD_SECONDS
        await a.step()
    assert [c[0] for c in fake.calls] == ["replace_lease"] * 5 and a.leading


async def test_a_409_on_renewal_sends_the_leader_to_read_the_lease_and_it_stops_if_another_holds_it():
    fake, clock = FakeCluster(), Clock()
    (a,), log = electors(fake, clock, "a_1")
    await a.step()
    taken = fake.get_now(LEASE, NS, NAME)
    fake.update({**taken, "spec": {**taken["spec"], "holderIdentity": "b_2",
                                   "renewTime": "2026-11-25T15:00:01.000000Z"}})
    clock.now += RETRY_PERIOD_SECONDS
    assert await a.step() == 0.0  # 409: look again at once
    assert a.leading
    await a.step()
    assert not a.leading and log == [("a_1", "lead"), ("a_1", "stop")] and holder(fake) == "b_2"


async def test_a_409_from_someone_annotating_the_lease_costs_the_leader_nothing():
    fake, clock = FakeCluster(), Clock()
    (a,), log = electors(fake, clock, "a_1")
    await a.step()
    seen = fake.get_now(LEASE, NS, NAME)
    fake.update({**seen, "metadata": {**seen["metadata"], "annotations": {"note": "hello"}}})
    clock.now += RETRY_PERIOD_SECONDS
    assert await a.step() == 0.0
    await a.step()
    assert a.leading and log == [("a_1", "lead")] and holder(fake) == "a_1"


async def test_the_fake_api_server_keeps_lease_semantics():
    fake = FakeCluster()
    body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": NAME, "namespace": NS},
            "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}}
    stored = await fake.create_lease(body)
    with pytest.raises(ApiError) as exists:
        await fake.create_lease(body)
    assert (exists.value.status, exists.value.reason) == (409, "AlreadyExists")
    first = {**stored, "spec": {**stored["spec"], "holderIdentity": "b"}}
    second = {**stored, "spec": {**stored["spec"], "holderIdentity": "c"}}
    written = await fake.replace_lease(first)
    assert int(written["metadata"]["resourceVersion"]) > int(stored["metadata"]["resourceVersion"])
    with pytest.raises(ApiError) as stale:
        await fake.replace_lease(second)  # read at the same version as `first`: it lost
    assert (stale.value.status, stale.value.reason) == (409, "Conflict")
    assert holder(fake) == "b"
    with pytest.raises(ApiError) as invalid:  # the real schema: a typo is refused
        await fake.replace_lease({**written, "spec": {"holder": "x"}})
    assert invalid.value.status == 422
    gone = {**written, "metadata": {**written["metadata"], "name": "other"}}
    with pytest.raises(ApiError) as missing:
        await fake.replace_lease(gone)
    assert missing.value.status == 404
    assert [w[0] for w in fake.writes] == ["create_lease", "create_lease", "replace_lease", "replace_lease",
                                           "replace_lease", "replace_lease"]


def test_identities_are_unique_per_process_start(monkeypatch):
    from modeldeploy.operator import default_identity

    monkeypatch.setenv("POD_NAME", "modeldeploy-7d9-abcde")
    ids = {default_identity() for _ in range(20)}
    assert len(ids) == 20 and all(i.startswith("modeldeploy-7d9-abcde_") for i in ids)
    monkeypatch.delenv("POD_NAME")
    import socket

    assert default_identity().startswith(socket.gethostname() + "_")



async def test_an_acquire_cut_short_by_shutdown_is_still_released():
    """SIGTERM cancels the elector while its acquiring PUT is in flight: the write lands, the elector never
    hears of it. Release looks again and hands the Lease over all the same."""
    fake, clock = FakeCluster(), Clock()
    (a, b), _ = electors(fake, clock, "a_1", "b_2")
    await a.step()
    await a.release()
    await b.step()  # b takes the released Lease...
    b.lease = fake.get_now(LEASE, NS, NAME)
    b.lease["spec"]["holderIdentity"] = ""  # ...but, as if cancelled, remembers the Lease as it read it
    b.leading = False
    await b.release()
    assert holder(fake) == "" and fake.get_now(LEASE, NS, NAME)["spec"]["leaseDurationSeconds"] == 1


async def test_a_replica_that_never_saw_the_lease_releases_nothing():
    fake, clock = FakeCluster(), Clock()
    (a,), _ = electors(fake, clock, "a_1")
    await a.release()
    assert fake.calls == []
