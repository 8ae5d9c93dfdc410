"""The Canary and BlueGreen step machine (canary.py): every transition, on data, and its properties over
random step lists, replica counts and verdicts, against an idealised cluster that applies each decision."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modeldeploy import canary
from modeldeploy.analysis import Outcome, SideStats, verdict
from modeldeploy.api import RolloutSpec, RolloutStatus
from modeldeploy.canary import (
    ABORTED,
    IDLE,
    PAUSED,
    PROGRESSING,
    Observed,
    Revision,
    RouteWeights,
    Scrape,
    Side,
    State,
    replica_split,
)
from modeldeploy.crd import crd
from modeldeploy.pods import Problem

STABLE = Revision("aaaaaaaaaaaaaaaa", "3")
TARGET = Revision("bbbbbbbbbbbbbbbb", "4")
IMAGE_ONLY = Revision("cccccccccccccccc", "3")  # a change that keeps version 3 (an image change)
EPOCH = datetime(2026, 11, 25, 10, 0, 0, tzinfo=timezone.utc)
T0 = "2026-11-25T10:00:00Z"


def at(seconds: float) -> str:
    return (EPOCH + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def weight(w: int) -> dict:
    return {"setWeight": w}


def pause(seconds: int | None = None) -> dict:
    return {"pause": {} if seconds is None else {"durationSeconds": seconds}}


def analysis(interval: int | None = None) -> dict:
    return {"analysis": {} if interval is None else {"intervalSeconds": interval}}


def canary_spec(*steps: dict, gateway: bool = False, **rollout) -> RolloutSpec:
    doc = {"strategy": "Canary", "canary": {"steps": list(steps)}, **rollout}
    if gateway:
        doc["canary"]["trafficRouting"] = {"gatewayAPI": {"httpRoute": "resnet50"}}
    return RolloutSpec.model_validate(doc)


def blue_green_spec(**settings_) -> RolloutSpec:
    rollout = {key: settings_.pop(key) for key in ("promote", "abort", "auto_rollback") if key in settings_}
    if "auto_rollback" in rollout:
        rollout["autoRollback"] = rollout.pop("auto_rollback")
    return RolloutSpec.model_validate({"strategy": "BlueGreen", "blueGreen": settings_, **rollout})


STATS = SideStats(pods=3, successes=300, request_duration_us=300_000)


def judged(outcome: str):
    """A real verdict of analysis.verdict: the canary's numbers make it pass, fail or stay inconclusive."""
    canary_side = {"pass": SideStats(pods=1, successes=100, request_duration_us=100_000),
                   "fail": SideStats(pods=1, successes=80, failures=20, request_duration_us=80_000),
                   "inconclusive": SideStats(pods=1, successes=5, request_duration_us=5_000)}[outcome]
    return verdict(canary_side, STATS)


def observe(total=4, stable=(4, 4), canary_=(0, 0), **kw) -> Observed:
    return Observed(total, Side(*stable), Side(*canary_), **kw)


def decide(spec, previous=None, observed=None, now=T0, target=TARGET, stable=STABLE):
    return canary.decide(spec, target, stable, previous or {}, observed or observe(), now)


def previous_of(decision) -> dict:
    """status.rollout as the shell writes it from a decision (the step machine's fields only)."""
    return decision.state.to_status() if decision.state is not None else {}


# --- replica split -------------------------------------------------------------------------------

@pytest.mark.parametrize(("w", "total", "routed", "split"), [
    (10, 10, False, (9, 1)), (50, 4, False, (2, 2)), (25, 4, False, (3, 1)), (33, 3, False, (2, 1)),
    (15, 10, False, (8, 2)), (70, 4, False, (1, 3)), (5, 10, False, (9, 1)),  # rounded half up, to the nearest pod
    (1, 3, False, (2, 1)),  # at least one canary pod while the weight is above 0
    (99, 3, False, (1, 2)),  # at least one stable pod while it is below 100
    (10, 1, False, (1, 1)),  # one replica: one extra pod for the canary
    (100, 4, False, (0, 4)), (0, 4, False, (4, 0)), (50, 0, False, (0, 0)),
    (10, 10, True, (10, 1)), (25, 10, True, (10, 3)), (1, 3, True, (3, 1)), (100, 3, True, (3, 3)),
])
def test_replica_split(w, total, routed, split):
    assert replica_split(w, total, routed) == split


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 99), st.integers(1, 200))
def test_the_split_is_within_one_pod_of_the_weight(w, total):
    stable, canary_pods = replica_split(w, total)
    assert canary_pods >= 1 and stable >= 1
    pods = stable + canary_pods
    assert pods == total or (total == 1 and pods == 2)
    assert abs(canary_pods - w * pods / 100) <= 1
    if 1 <= w * total / 100 <= total - 1:
        assert abs(canary_pods - w * total / 100) <= 0.5  # the nearest pod count, unless clamped to 1 or total - 1
    assert stable >= (100 - w) * pods / 100 - 1  # stable never drops below its share (by more than the pod)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 100), st.integers(1, 200))
def test_with_a_route_stable_stays_full_and_the_canary_has_room_for_its_share(w, total):
    stable, canary_pods = replica_split(w, total, routed=True)
    assert stable == total and canary_pods >= 1 and canary_pods >= w * total / 100 and canary_pods - 1 < max(
        w * total / 100, 1)


# --- Canary by replica ratio -----------------------------------------------------------------------

def test_the_first_step_adds_canary_pods_within_max_surge_before_stable_shrinks():
    spec = canary_spec(weight(50), pause(60))  # maxSurge 1, maxUnavailable 0: the defaults
    first = decide(spec)
    assert (first.stable_replicas, first.canary_replicas) == (4, 1)
    assert first.phase == PROGRESSING and first.state.step == 0 and first.state.weight == 0
    assert first.route is None and first.active == "" and not first.promote and first.abort is None
    not_ready = decide(spec, previous_of(first), observe(stable=(4, 4), canary_=(1, 0)))
    assert (not_ready.stable_replicas, not_ready.canary_replicas) == (4, 1)  # no more pods until it is Ready
    one_ready = decide(spec, previous_of(first), observe(stable=(4, 4), canary_=(1, 1)))
    # A Ready canary pod lets one stable pod go, which makes room for the next canary pod.
    assert (one_ready.stable_replicas, one_ready.canary_replicas) == (3, 2)
    starting = decide(spec, previous_of(one_ready), observe(stable=(3, 3), canary_=(2, 1)))
    assert (starting.stable_replicas, starting.canary_replicas) == (3, 2)
    both = decide(spec, previous_of(starting), observe(stable=(3, 3), canary_=(2, 2)))
    assert (both.stable_replicas, both.canary_replicas) == (2, 2) and both.state.step == 0


def test_without_spare_gpus_stable_makes_room_first():
    spec = canary_spec(weight(50), maxSurge=0, maxUnavailable=1)
    first = decide(spec)
    assert (first.stable_replicas, first.canary_replicas) == (3, 1)  # never more than 4 pods, 3 stay Ready
    waiting = decide(spec, previous_of(first), observe(stable=(3, 3), canary_=(1, 0)))
    assert (waiting.stable_replicas, waiting.canary_replicas) == (3, 1)  # not below 3 Ready pods
    ready = decide(spec, previous_of(waiting), observe(stable=(3, 3), canary_=(1, 1)))
    assert (ready.stable_replicas, ready.canary_replicas) == (2, 2)


def test_a_set_weight_step_is_done_once_the_split_is_in_place_and_the_next_step_begins():
    spec = canary_spec(weight(25), pause(60), weight(50))
    started = decide(spec)
    done = decide(spec, previous_of(started), observe(stable=(3, 3), canary_=(1, 1)), now=at(30))
    assert done.state.step == 1 and done.state.weight == 25 and done.state.step_started_at == at(30)
    assert (done.stable_replicas, done.canary_replicas) == (3, 1)
    assert done.requeue_after == 60 and "pause" in done.message


def test_a_timed_pause_holds_the_weight_then_moves_on():
    spec = canary_spec(weight(25), pause(60), weight(50))
    previous = State(TARGET.template, "4", 1, at(0), 25).to_status()
    holding = decide(spec, previous, observe(stable=(3, 3), canary_=(1, 1)), now=at(59))
    assert holding.state.step == 1 and holding.requeue_after == 1 and holding.canary_replicas == 1
    over = decide(spec, previous, observe(stable=(3, 3), canary_=(1, 1)), now=at(60))
    assert over.state.step == 2 and over.state.step_started_at == at(60)
    assert over.canary_replicas == 2 and over.stable_replicas == 3  # the next weight begins, within maxSurge


def test_an_indefinite_pause_waits_until_promote_names_the_rollout():
    previous = State(TARGET.template, "4", 1, at(0), 25).to_status()
    ready = observe(stable=(3, 3), canary_=(1, 1))
    paused = decide(canary_spec(weight(25), pause(), weight(50)), previous, ready, now=at(9999))
    assert paused.phase == PAUSED and paused.state.step == 1 and paused.requeue_after is None
    assert "rollout.promote" in paused.message
    for other in ({"target": "5"}, {"target": "4", "throughStep": 0}):  # another rollout; a step before the pause
        spec = canary_spec(weight(25), pause(), weight(50), promote=other)
        assert decide(spec, previous, ready).phase == PAUSED
    for named in ("4", TARGET.template):
        spec = canary_spec(weight(25), pause(), weight(50), promote={"target": named, "throughStep": 1})
        resumed = decide(spec, previous, ready, now=at(100))
        assert resumed.phase == PROGRESSING and resumed.state.step == 2 and resumed.canary_replicas == 2


def test_promote_without_a_step_skips_every_remaining_step():
    spec = canary_spec(weight(10), pause(), analysis(), weight(50), pause(3600), promote={"target": "4"})
    previous = State(TARGET.template, "4", 1, at(0), 10).to_status()
    promoting = decide(spec, previous, observe(stable=(3, 3), canary_=(1, 1)), now=at(5))
    assert promoting.state.step == 5 and promoting.scrape is None and not promoting.promote
    assert (promoting.stable_replicas, promoting.canary_replicas) == (3, 2)  # the canary grows to the full count
    done = decide(spec, previous_of(promoting), observe(stable=(0, 0), canary_=(4, 4)), now=at(60))
    assert done.promote and done.phase == IDLE and (done.stable_replicas, done.canary_replicas) == (0, 4)


def test_a_version_promote_does_not_name_a_later_change_that_keeps_the_version():
    assert canary.names("4", TARGET, STABLE) and canary.names(TARGET.template, TARGET, STABLE)
    assert not canary.names("3", IMAGE_ONLY, STABLE)  # version 3 was promoted once; an image change is new
    assert canary.names(IMAGE_ONLY.template, IMAGE_ONLY, STABLE)
    assert not canary.names("5", TARGET, STABLE)


def test_promotion_grows_the_canary_within_the_budget_and_promotes_once_it_serves_everything():
    spec = canary_spec(weight(50))
    previous = State(TARGET.template, "4", 1, at(0), 50).to_status()
    growing = decide(spec, previous, observe(stable=(2, 2), canary_=(2, 2)), now=at(1))
    assert (growing.stable_replicas, growing.canary_replicas) == (2, 3) and not growing.promote
    shrinking = decide(spec, previous, observe(stable=(2, 2), canary_=(3, 3)), now=at(2))
    assert (shrinking.stable_replicas, shrinking.canary_replicas) == (1, 4)
    done = decide(spec, previous, observe(stable=(0, 0), canary_=(4, 4)), now=at(3))
    assert done.promote and done.phase == IDLE and done.state.weight == 100
    assert (done.stable_replicas, done.canary_replicas) == (0, 4)


def test_a_promotion_not_done_within_the_deadline_is_aborted():
    spec = canary_spec(weight(50), progressDeadlineSeconds=120)
    previous = State(TARGET.template, "4", 1, at(0), 50).to_status()
    seen = observe(stable=(2, 2), canary_=(3, 2))
    assert decide(spec, previous, seen, now=at(60)).requeue_after == 60
    late = decide(spec, previous, seen, now=at(120))
    assert late.phase == ABORTED and late.abort.reason == canary.DEADLINE_EXCEEDED and "promoting" in late.abort.message
    assert (late.stable_replicas, late.canary_replicas) == (4, 0)


@pytest.mark.parametrize(("surge", "unavailable", "total", "budget"), [
    (1, 0, 4, (1, 0)), ("25%", 0, 10, (3, 0)), (0, "25%", 10, (0, 2)), ("10%", "10%", 4, (1, 0)),
    (0, 0, 4, (0, 1)),  # the Deployment controller's rule: never both 0
    ("5%", "5%", 4, (1, 0)),
])
def test_max_surge_and_max_unavailable_resolve_like_the_deployment_controller(surge, unavailable, total, budget):
    spec = canary_spec(weight(10), maxSurge=surge, maxUnavailable=unavailable) if (surge, unavailable) != (0, 0) \
        else canary_spec(weight(10)).model_copy(update={"max_surge": 0, "max_unavailable": 0})
    assert canary._budget(spec, total) == budget


# --- analysis --------------------------------------------------------------------------------------

def at_analysis(**rollout) -> tuple[RolloutSpec, dict, Observed]:
    spec = canary_spec(weight(25), analysis(), weight(50), **rollout)
    previous = State(TARGET.template, "4", 1, at(0), 25).to_status()
    return spec, previous, observe(stable=(3, 3), canary_=(1, 1))


def test_an_analysis_takes_a_baseline_then_a_verdict_after_the_interval():
    spec, previous, seen = at_analysis()
    baseline = decide(spec, previous, seen, now=at(0))
    assert baseline.scrape is Scrape.BASELINE and baseline.requeue_after == 60
    assert baseline.state.analysis.started_at == at(0) and baseline.state.analysis.step == 1
    held = replace(seen, baseline_at=at(0))
    early = decide(spec, previous_of(baseline), held, now=at(30))
    assert early.scrape is None and early.requeue_after == 30 and early.state == baseline.state
    ignored = decide(spec, previous_of(baseline), replace(held, verdict=judged("pass")), now=at(30))
    assert ignored.state == baseline.state  # a verdict before the interval is over decides nothing
    due = decide(spec, previous_of(baseline), held, now=at(60))
    assert due.scrape is Scrape.VERDICT and due.state == baseline.state
    passed = decide(spec, previous_of(baseline), replace(held, verdict=judged("pass")), now=at(60))
    assert passed.state.step == 2 and passed.state.analysis.verdict == "Pass"
    assert passed.state.analysis.canary.requests == 100 and passed.state.analysis.stable.error_ratio == 0
    assert passed.canary_replicas == 2  # setWeight 50 begins


def test_the_step_interval_overrides_the_analysis_default():
    spec = canary_spec(weight(25), analysis(interval=15), analysis={"intervalSeconds": 120})
    previous = State(TARGET.template, "4", 1, at(0), 25).to_status()
    assert decide(spec, previous, observe(stable=(3, 3), canary_=(1, 1))).requeue_after == 15
    spec = canary_spec(weight(25), analysis(), analysis={"intervalSeconds": 120})
    assert decide(spec, previous, observe(stable=(3, 3), canary_=(1, 1))).requeue_after == 120


def test_a_failed_analysis_aborts_the_canary_and_stable_serves_everything():
    spec, previous, seen = at_analysis()
    baseline = decide(spec, previous, seen, now=at(0))
    failed = decide(spec, previous_of(baseline), replace(seen, baseline_at=at(0), verdict=judged("fail")), now=at(60))
    assert failed.phase == ABORTED and not failed.promote
    assert (failed.stable_replicas, failed.canary_replicas) == (4, 0)
    assert failed.abort.reason == canary.ANALYSIS_FAILED and "20.00%" in failed.abort.message
    status = failed.state.to_status()
    assert status["abortReason"] == "AnalysisFailed" and status["failedTemplate"] == TARGET.template
    assert status["analysis"]["verdict"] == "Fail" and status["weight"] == 0


def test_an_inconclusive_analysis_measures_on_then_aborts_after_its_timeout():
    spec, previous, seen = at_analysis(analysis={"inconclusiveTimeoutSeconds": 150})
    baseline = decide(spec, previous, seen, now=at(0))
    held = replace(seen, baseline_at=at(0))
    first = decide(spec, previous_of(baseline), replace(held, verdict=judged("inconclusive")), now=at(60))
    assert first.phase == PROGRESSING and first.state.step == 1 and first.requeue_after == 60
    assert first.state.analysis.verdict == "Inconclusive" and first.state.analysis.started_at == at(0)
    assert decide(spec, previous_of(first), held, now=at(90)).scrape is None  # the window grows from the baseline
    second = decide(spec, previous_of(first), replace(held, verdict=judged("inconclusive")), now=at(120))
    assert second.phase == PROGRESSING and second.requeue_after == 30  # the timeout comes before the interval
    timed_out = decide(spec, previous_of(second), held, now=at(150))
    assert timed_out.phase == ABORTED and timed_out.abort.reason == canary.ANALYSIS_INCONCLUSIVE


def test_an_inconclusive_verdict_taken_after_the_timeout_aborts_at_once():
    spec, previous, seen = at_analysis(analysis={"inconclusiveTimeoutSeconds": 60, "intervalSeconds": 90})
    previous = {**previous, "analysis": {"step": 1, "startedAt": at(0)}}
    late = decide(spec, previous, replace(seen, baseline_at=at(0), verdict=judged("inconclusive")), now=at(90))
    assert late.phase == ABORTED and late.abort.reason == canary.ANALYSIS_INCONCLUSIVE
    assert late.state.analysis.verdict == "Inconclusive" and "after 90 s" in late.abort.message


def test_an_inconclusive_policy_of_pass_or_fail_decides_at_once():
    for policy, expected in (("pass", 2), ("fail", None)):
        spec, previous, seen = at_analysis(analysis={"inconclusive": policy})
        thresholds = spec.analysis_or_default.thresholds()
        result = verdict(SideStats(pods=1, successes=5), STATS, thresholds)
        decision = decide(spec, {**previous, "analysis": {"step": 1, "startedAt": at(0)}},
                          replace(seen, baseline_at=at(0), verdict=result), now=at(60))
        assert (decision.state.step if expected else decision.phase) == (expected or ABORTED)


def test_an_analysis_starts_again_when_its_baseline_is_lost():
    spec, previous, seen = at_analysis()
    baseline = decide(spec, previous, seen, now=at(0))
    restarted = decide(spec, previous_of(baseline), seen, now=at(45))  # the operator restarted: no baseline held
    assert restarted.scrape is Scrape.BASELINE and restarted.state.analysis.started_at == at(45)
    assert restarted.state.step_started_at == at(0)  # the step (and its inconclusive timeout) still began at 0


def test_a_failed_verdict_never_promotes_even_when_promote_names_the_rollout_later():
    spec, previous, seen = at_analysis()
    baseline = decide(spec, previous, seen, now=at(0))
    failed = decide(spec, previous_of(baseline), replace(seen, baseline_at=at(0), verdict=judged("fail")), now=at(60))
    promoted = canary_spec(weight(25), analysis(), weight(50), promote={"target": "4"})
    again = decide(promoted, previous_of(failed), observe(stable=(4, 4)), now=at(61))
    assert again.phase == ABORTED and not again.promote and again.canary_replicas == 0


# --- aborts ------------------------------------------------------------------------------------------

def test_failing_canary_pods_abort_at_once():
    spec = canary_spec(weight(25), pause(600))
    previous = State(TARGET.template, "4", 1, at(0), 25).to_status()
    crash = "pod resnet50-canary-x: container triton restarted 3 times; last exit code 1 (Error)"
    aborted = decide(spec, previous, observe(stable=(3, 3), canary_=(1, 0), canary_failure=crash), now=at(10))
    assert aborted.phase == ABORTED and aborted.abort.reason == canary.CANARY_FAILED and crash in aborted.abort.message
    assert (aborted.stable_replicas, aborted.canary_replicas) == (4, 0)
    assert "version 3 serves everything" in aborted.message


def test_an_automatic_abort_is_held_until_the_spec_asks_for_another_template():
    spec = canary_spec(weight(25), pause(600))
    previous = State(TARGET.template, "4", 1, at(0), 25).to_status()
    aborted = decide(spec, previous, observe(stable=(3, 3), canary_=(1, 0), canary_failure="crash"), now=at(10))
    recovered = decide(spec, previous_of(aborted), observe(stable=(4, 4), canary_=(0, 0)), now=at(999))
    assert recovered.phase == ABORTED and recovered.state == aborted.state and recovered.canary_replicas == 0
    newer = Revision("dddddddddddddddd", "5")
    fresh = decide(spec, previous_of(aborted), observe(), now=at(1000), target=newer)
    assert fresh.phase == PROGRESSING and fresh.state.step == 0 and fresh.canary_replicas == 1


def test_a_step_not_reached_within_the_deadline_aborts_and_says_why():
    spec = canary_spec(weight(25), progressDeadlineSeconds=300)
    unschedulable = Problem("Unschedulable", "pod resnet50-canary-x: 0/2 nodes are available: 2 Insufficient "
                                             "nvidia.com/gpu.", False)
    seen = observe(stable=(4, 4), canary_=(1, 0), canary_problems=(unschedulable,))
    first = decide(spec, {}, seen, now=at(0))
    waiting = decide(spec, previous_of(first), seen, now=at(100))
    assert waiting.phase == PROGRESSING and waiting.requeue_after == 200
    assert waiting.problem == unschedulable and "Insufficient nvidia.com/gpu" in waiting.message  # surfaces at once
    late = decide(spec, previous_of(first), seen, now=at(300))
    assert late.phase == ABORTED and late.abort.reason == canary.DEADLINE_EXCEEDED
    assert "not reached within 300 s" in late.abort.message and "Insufficient nvidia.com/gpu" in late.abort.message


def test_an_abort_through_the_spec_lasts_while_it_names_the_rollout_then_starts_again():
    previous = State(TARGET.template, "4", 2, at(0), 50).to_status()
    aborting = canary_spec(weight(25), weight(50), pause(), abort={"target": "4"})
    aborted = decide(aborting, previous, observe(stable=(2, 2), canary_=(2, 2)), now=at(10))
    assert aborted.phase == ABORTED and aborted.abort.reason == canary.ABORTED_BY_SPEC
    assert (aborted.stable_replicas, aborted.canary_replicas) == (4, 0)
    assert "failedTemplate" not in aborted.state.to_status()  # not a failure of the template: not held
    lifted = decide(canary_spec(weight(25), weight(50), pause()), previous_of(aborted), observe(), now=at(20))
    assert lifted.phase == PROGRESSING and lifted.state.step == 0 and lifted.state.step_started_at == at(20)
    assert lifted.canary_replicas == 1


def test_an_abort_through_the_spec_does_not_forget_an_automatic_one():
    spec = canary_spec(weight(25), pause(600))
    previous = State(TARGET.template, "4", 1, at(0), 25).to_status()
    aborted = decide(spec, previous, observe(stable=(3, 3), canary_=(1, 0), canary_failure="crash"), now=at(10))
    both = decide(canary_spec(weight(25), pause(600), abort={"target": "4"}), previous_of(aborted), observe())
    assert both.phase == ABORTED and both.abort.reason == canary.CANARY_FAILED
    lifted = decide(spec, previous_of(both), observe(), now=at(30))
    assert lifted.phase == ABORTED  # still held: lifting the abort is no retry of a failed template


def test_without_auto_rollback_a_failure_stops_where_it_is_until_a_person_decides():
    spec = canary_spec(weight(25), pause(600), autoRollback=False)
    previous = State(TARGET.template, "4", 1, at(0), 25).to_status()
    seen = observe(stable=(3, 3), canary_=(1, 1), canary_failure="crash")
    failed = decide(spec, previous, seen, now=at(10))
    assert failed.phase == canary.FAILED and (failed.stable_replicas, failed.canary_replicas) == (3, 1)
    assert failed.abort.reason == canary.CANARY_FAILED and failed.state.weight == 25
    assert decide(spec, previous_of(failed), replace(seen, canary_failure=""), now=at(20)).phase == canary.FAILED
    aborted = decide(canary_spec(weight(25), pause(600), autoRollback=False, abort={"target": "4"}),
                     previous_of(failed), seen, now=at(30))
    assert aborted.phase == ABORTED and aborted.canary_replicas == 0
    promoted = decide(canary_spec(weight(25), pause(600), autoRollback=False, promote={"target": "4"}),
                      previous_of(failed), seen, now=at(30))
    assert promoted.phase == PROGRESSING and promoted.state.step == 2 and promoted.state.abort_reason is None


def test_a_new_target_in_the_middle_of_a_canary_starts_from_the_first_step():
    previous = State(TARGET.template, "4", 2, at(0), 50).to_status()
    newer = Revision("dddddddddddddddd", "5")
    fresh = decide(canary_spec(weight(25), weight(50), pause()), previous, observe(stable=(2, 2), canary_=(2, 0)),
                   now=at(50), target=newer)
    assert fresh.state.template == newer.template and fresh.state.step == 0 and fresh.state.weight == 0
    assert fresh.state.step_started_at == at(50)


# --- no canary ---------------------------------------------------------------------------------------

def test_the_stable_template_itself_is_idle_and_a_left_over_canary_goes_to_zero():
    spec = canary_spec(weight(25))
    idle = decide(spec, {}, observe(stable=(4, 4), canary_=(1, 1)), target=STABLE)
    assert idle.phase == IDLE and idle.state is None and (idle.stable_replicas, idle.canary_replicas) == (4, 0)


def test_the_first_version_is_deployed_whole_with_nothing_to_compare_it_with():
    spec = canary_spec(weight(25), analysis())
    first = decide(spec, {}, observe(stable=(0, 0)), stable=None)
    assert first.phase == PROGRESSING and (first.stable_replicas, first.canary_replicas) == (4, 0)
    assert first.state is None and not first.promote and "first" in first.message
    assert decide(spec, {}, observe(stable=(4, 4)), stable=None).phase == IDLE


def test_zero_replicas_waits_without_moving_the_step():
    spec = canary_spec(weight(25), pause(60))
    previous = State(TARGET.template, "4", 1, at(0), 25).to_status()
    waiting = decide(spec, previous, observe(total=0, stable=(0, 0)), now=at(10))
    assert (waiting.stable_replicas, waiting.canary_replicas) == (0, 0) and waiting.state.step == 1
    assert waiting.requeue_after is None and "replicas is 0" in waiting.message


def test_only_canary_and_blue_green_are_decided_here():
    with pytest.raises(ValueError, match="RollingUpdate"):
        decide(RolloutSpec())


# --- Canary with a Gateway API HTTPRoute ---------------------------------------------------------------

def test_with_a_route_stable_stays_full_and_the_canary_gets_traffic_only_once_ready():
    spec = canary_spec(weight(25), pause(60), gateway=True)
    first = decide(spec, {}, observe(total=8, stable=(8, 8)))
    assert (first.stable_replicas, first.canary_replicas) == (8, 2) and first.route == RouteWeights(100, 0)
    assert first.active == STABLE.template
    half = decide(spec, previous_of(first), observe(total=8, stable=(8, 8), canary_=(2, 1), route_canary_weight=0))
    assert half.route == RouteWeights(100, 0)  # not before every canary pod of the step is Ready
    ready = decide(spec, previous_of(half), observe(total=8, stable=(8, 8), canary_=(2, 2), route_canary_weight=0))
    assert ready.route == RouteWeights(75, 25) and ready.state.step == 0  # done once the route says so
    assert ready.requeue_after == canary.RECHECK_SECONDS
    done = decide(spec, previous_of(ready), observe(total=8, stable=(8, 8), canary_=(2, 2), route_canary_weight=25),
                  now=at(3))
    assert done.state.step == 1 and done.route == RouteWeights(75, 25) and done.stable_replicas == 8


def test_with_a_route_an_abort_takes_the_traffic_away_before_the_canary_pods():
    spec = canary_spec(weight(25), pause(600), gateway=True, abort={"target": "4"})
    previous = State(TARGET.template, "4", 1, at(0), 25).to_status()
    routed = decide(spec, previous, observe(total=8, stable=(8, 8), canary_=(2, 2), route_canary_weight=25))
    assert routed.phase == ABORTED and routed.route == RouteWeights(100, 0)
    assert (routed.stable_replicas, routed.canary_replicas) == (8, 2)
    assert routed.requeue_after == canary.RECHECK_SECONDS
    drained = decide(spec, previous_of(routed), observe(total=8, stable=(8, 8), canary_=(2, 2), route_canary_weight=0))
    assert drained.canary_replicas == 0 and drained.route == RouteWeights(100, 0)


def test_with_a_route_promotion_moves_all_traffic_before_the_old_pods_go():
    spec = canary_spec(weight(25), gateway=True)
    previous = State(TARGET.template, "4", 1, at(0), 25).to_status()
    growing = decide(spec, previous, observe(total=8, stable=(8, 8), canary_=(2, 2), route_canary_weight=25))
    assert (growing.stable_replicas, growing.canary_replicas) == (8, 8) and growing.route == RouteWeights(75, 25)
    switching = decide(spec, previous, observe(total=8, stable=(8, 8), canary_=(8, 8), route_canary_weight=25))
    assert switching.route == RouteWeights(0, 100) and not switching.promote and switching.stable_replicas == 8
    done = decide(spec, previous_of(switching), observe(total=8, stable=(8, 8), canary_=(8, 8),
                                                        route_canary_weight=100))
    assert done.promote and (done.stable_replicas, done.canary_replicas) == (0, 8)


def test_with_a_route_the_settled_state_drains_a_left_over_canary_first():
    spec = canary_spec(weight(25), gateway=True)
    draining = decide(spec, {}, observe(stable=(4, 4), canary_=(1, 1), route_canary_weight=25), target=STABLE)
    assert draining.route == RouteWeights(100, 0) and draining.canary_replicas == 1
    assert decide(spec, {}, observe(stable=(4, 4), canary_=(1, 1), route_canary_weight=0),
                  target=STABLE).canary_replicas == 0


# --- BlueGreen -----------------------------------------------------------------------------------------

def test_the_preview_comes_up_in_full_beside_the_active_pods():
    spec = blue_green_spec()
    first = decide(spec, {}, observe(stable=(4, 4)))
    assert (first.stable_replicas, first.canary_replicas) == (4, 4) and first.active == STABLE.template
    assert first.phase == PROGRESSING and first.state.weight == 0 and first.requeue_after == 600


def test_blue_green_switches_when_the_preview_is_ready_and_scales_the_old_side_down_after_the_delay():
    spec = blue_green_spec(scaleDownDelaySeconds=30)
    first = decide(spec, {}, observe(stable=(4, 4)))
    switched = decide(spec, previous_of(first), observe(stable=(4, 4), canary_=(4, 4)), now=at(40))
    assert switched.active == TARGET.template and switched.state.step == 1 and switched.state.weight == 100
    assert (switched.stable_replicas, switched.canary_replicas) == (4, 4) and switched.requeue_after == 30
    assert not switched.promote
    done = decide(spec, previous_of(switched), observe(stable=(4, 4), canary_=(4, 4)), now=at(70))
    assert done.promote and done.phase == IDLE and (done.stable_replicas, done.canary_replicas) == (0, 4)
    assert done.active == TARGET.template


def test_blue_green_without_auto_promote_waits_for_promote():
    ready = observe(stable=(4, 4), canary_=(4, 4))
    paused = decide(blue_green_spec(autoPromote=False), {}, ready)
    assert paused.phase == PAUSED and paused.active == STABLE.template
    switched = decide(blue_green_spec(autoPromote=False, promote={"target": "4"}), previous_of(paused), ready)
    assert switched.active == TARGET.template and switched.state.step == 1


def test_a_promote_does_not_switch_to_a_preview_that_is_not_ready():
    spec = blue_green_spec(promote={"target": "4"})
    assert decide(spec, {}, observe(stable=(4, 4), canary_=(4, 3))).active == STABLE.template


def test_blue_green_analyses_the_preview_before_switching():
    spec = blue_green_spec(analysis={"intervalSeconds": 30})
    ready = observe(stable=(4, 4), canary_=(4, 4))
    baseline = decide(spec, {}, ready)
    assert baseline.scrape is Scrape.BASELINE and baseline.active == STABLE.template
    passed = decide(spec, previous_of(baseline), replace(ready, baseline_at=T0, verdict=judged("pass")), now=at(30))
    assert passed.active == TARGET.template and passed.state.analysis.verdict == "Pass"
    failed = decide(spec, previous_of(baseline), replace(ready, baseline_at=T0, verdict=judged("fail")), now=at(30))
    assert failed.phase == ABORTED and failed.active == STABLE.template and failed.canary_replicas == 0


def test_blue_green_abort_during_the_delay_switches_straight_back():
    spec = blue_green_spec(scaleDownDelaySeconds=300)
    switched = decide(spec, {}, observe(stable=(4, 4), canary_=(4, 4)))
    assert switched.active == TARGET.template
    aborted = decide(blue_green_spec(scaleDownDelaySeconds=300, abort={"target": "4"}), previous_of(switched),
                     observe(stable=(4, 4), canary_=(4, 4)), now=at(10))
    assert aborted.phase == ABORTED and aborted.active == STABLE.template
    assert (aborted.stable_replicas, aborted.canary_replicas) == (4, 0)


def test_a_preview_not_ready_within_the_deadline_is_aborted():
    spec = blue_green_spec(scaleDownDelaySeconds=30)
    first = decide(spec, {}, observe(stable=(4, 4), canary_=(4, 2)))
    late = decide(spec, previous_of(first), observe(stable=(4, 4), canary_=(4, 2)), now=at(600))
    assert late.phase == ABORTED and late.abort.reason == canary.DEADLINE_EXCEEDED and "2/4" in late.abort.message


# --- status --------------------------------------------------------------------------------------------

def _status_schema() -> dict:
    from tests.test_crd import _json_schema

    return _json_schema(crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"])


def test_the_state_round_trips_through_status_and_fits_the_crd():
    spec, previous, seen = at_analysis()
    baseline = decide(spec, previous, seen, now=at(0))
    failed = decide(spec, previous_of(baseline), replace(seen, baseline_at=at(0), verdict=judged("fail")), now=at(60))
    for decision in (baseline, failed):
        written = decision.state.to_status()
        assert RolloutStatus.model_validate(written).wire() == {**RolloutStatus().wire(), **written}
        assert State.from_status(written, TARGET) == decision.state
        jsonschema.validate({"rollout": RolloutStatus.model_validate(written).wire()}, _status_schema())
    assert State.from_status(failed.state.to_status(), Revision("dddddddddddddddd", "5")) is None


# --- properties, against an idealised cluster ------------------------------------------------------------

@dataclass(frozen=True)
class Cluster:
    stable: Side
    canary: Side
    route: int | None = None
    baseline_at: str | None = None

    def apply(self, decision) -> Cluster:
        """The decision applied: replicas set (pods going away at once, new ones not yet Ready), the route set,
        a baseline scrape kept."""
        baseline = self.baseline_at
        if decision.scrape is Scrape.BASELINE:
            baseline = decision.state.analysis.started_at
        return Cluster(Side(decision.stable_replicas, min(self.stable.ready, decision.stable_replicas)),
                       Side(decision.canary_replicas, min(self.canary.ready, decision.canary_replicas)),
                       decision.route.canary if decision.route is not None else self.route, baseline)

    def started(self) -> Cluster:
        return replace(self, stable=Side(self.stable.replicas, self.stable.replicas),
                       canary=Side(self.canary.replicas, self.canary.replicas))


STEP = st.one_of(
    st.builds(lambda d: pause(d), st.integers(0, 300)),
    st.just(pause()),
    st.builds(lambda i: analysis(i), st.sampled_from([None, 10, 30])),
)


@st.composite
def step_lists(draw):
    """Random steps: strictly rising weights, with pauses and analyses between them."""
    weights = sorted(draw(st.sets(st.integers(1, 100), min_size=1, max_size=5)))
    steps = []
    for w in weights:
        steps.append(weight(w))
        steps += draw(st.lists(STEP, max_size=2))
    return steps


def run(spec: RolloutSpec, total: int, verdicts: list[str], pods_start: list[bool], waits: list[int],
        check, max_ticks: int = 400):
    """Drive decide() like the operator would, checking each decision; returns the decisions."""
    cluster = Cluster(Side(total, total), Side(0, 0), 0 if spec.canary and spec.canary.gateway_api else None)
    previous: dict = {}
    seconds = 0.0
    decisions = []
    verdict_source = iter(verdicts)
    for tick in range(max_ticks):
        now = at(seconds)
        seen = Observed(total, cluster.stable, cluster.canary, route_canary_weight=cluster.route,
                        baseline_at=cluster.baseline_at)
        decision = canary.decide(spec, TARGET, STABLE, previous, seen, now)
        if decision.scrape is Scrape.VERDICT:
            outcome = next(verdict_source, "pass")
            decision = canary.decide(spec, TARGET, STABLE, previous, replace(seen, verdict=judged(outcome)), now)
        check(spec, total, previous, seen, decision, now)
        decisions.append(decision)
        if decision.promote or decision.phase in (ABORTED, PAUSED, canary.FAILED):
            break
        previous = decision.state.to_status()
        cluster = cluster.apply(decision)
        if pods_start[tick] if tick < len(pods_start) else True:
            cluster = cluster.started()
        # Woken by its requeue (capped: a pod event may come first), or after a while by an event.
        seconds += min(decision.requeue_after, 600) if decision.requeue_after else (
            waits[tick] if tick < len(waits) else 1)
    return decisions


def _surge_unavailable(spec: RolloutSpec, total: int) -> tuple[int, int]:
    return canary._budget(spec, total)


def check_invariants(spec, total, previous, seen, decision, now):
    steps = spec.canary.steps
    routed = spec.canary.gateway_api is not None
    before = previous.get("step", 0)
    if decision.phase == ABORTED:
        assert decision.canary_replicas == 0 or (routed and (seen.route_canary_weight or 0) > 0)
        assert decision.stable_replicas == total and decision.state.weight == 0
        assert decision.route in (None, RouteWeights(100, 0)) and not decision.promote
        return
    # A step that is done is never gone back on.
    assert decision.state.step >= before
    surge, unavailable = _surge_unavailable(spec, total)
    if decision.state.step < len(steps):
        # Stable never below its share of the weight in effect (or of the step being reached).
        step = steps[decision.state.step]
        w = step.set_weight if step.set_weight is not None else decision.state.weight
        want_stable, want_canary = replica_split(w, total, routed)
        assert decision.stable_replicas >= want_stable
        assert decision.stable_replicas + decision.canary_replicas <= max(total + surge, want_stable + want_canary)
        if decision.stable_replicas < seen.stable.replicas:  # stable shrinks only as canary pods are Ready
            ready_after = decision.stable_replicas + seen.canary.ready
            assert ready_after >= min(total - unavailable, want_stable + want_canary)
    # Each setWeight step is recorded done only when its split is in place, within one pod of its weight.
    for index in range(before, min(decision.state.step, len(steps))):
        w = steps[index].set_weight
        if w is None:
            continue
        if routed:
            assert seen.canary.ready >= replica_split(w, total, True)[1] and seen.route_canary_weight == w
        else:
            pods = seen.stable.replicas + seen.canary.replicas
            assert abs(seen.canary.replicas - w * pods / 100) <= 1 and seen.canary.ready >= seen.canary.replicas
            assert pods == total or (total == 1 and pods == 2)
    if decision.route is not None:
        assert decision.route.stable + decision.route.canary == 100
        assert decision.route.canary == 0 or seen.canary.ready >= 1  # traffic only to Ready canary pods
    # Deciding again from what it wrote, with what the shell did, changes nothing.
    if not decision.promote:
        seen_again = replace(seen, verdict=None, baseline_at=decision.state.analysis.started_at
                             if decision.scrape is Scrape.BASELINE else seen.baseline_at)
        again = canary.decide(spec, TARGET, STABLE, decision.state.to_status(), seen_again, now)
        assert again.state == decision.state
        assert (again.stable_replicas, again.canary_replicas, again.route) == (
            decision.stable_replicas, decision.canary_replicas, decision.route)


BUDGETS = st.sampled_from([(1, 0), (0, 1), (2, 0), ("25%", 0), (0, "25%"), (1, 1), ("50%", "0%")])


@settings(max_examples=200, deadline=None)
@given(step_lists(), st.integers(1, 12), BUDGETS, st.booleans(), st.lists(st.booleans(), max_size=60),
       st.lists(st.integers(1, 120), max_size=60))
def test_good_versions_are_promoted_through_their_steps_within_one_pod_of_each_weight(
        steps, total, budget, routed, pods_start, waits):
    released = [{"target": "4", "throughStep": len(steps) - 1}]  # releases every indefinite pause
    spec = canary_spec(*steps, gateway=routed, maxSurge=budget[0], maxUnavailable=budget[1],
                       promote=released[0], progressDeadlineSeconds=86400)
    decisions = run(spec, total, [], pods_start, waits, check_invariants)
    assert decisions[-1].promote, decisions[-1]
    assert decisions[-1].state.weight == 100


@settings(max_examples=200, deadline=None)
@given(step_lists(), st.integers(1, 12), BUDGETS, st.booleans(), st.lists(st.sampled_from(
    ["pass", "fail", "inconclusive"]), min_size=1, max_size=8), st.lists(st.booleans(), max_size=60))
def test_a_failed_analysis_never_promotes_and_leaves_stable_serving_everything(
        steps, total, budget, routed, verdicts, pods_start):
    if not any("analysis" in s for s in steps):
        steps = [*steps, analysis()]
    spec = canary_spec(*steps, gateway=routed, maxSurge=budget[0], maxUnavailable=budget[1],
                       promote={"target": "4", "throughStep": len(steps) - 1}, progressDeadlineSeconds=86400)
    decisions = run(spec, total, verdicts, pods_start, [], check_invariants)
    judged_outcomes = [d.state.analysis.verdict for d in decisions if d.state and d.state.analysis
                       and d.state.analysis.checked_at]
    if "Fail" in judged_outcomes:
        assert not any(d.promote for d in decisions)
        assert decisions[-1].phase == ABORTED and decisions[-1].abort.reason == canary.ANALYSIS_FAILED
        assert decisions[-1].stable_replicas == total


@settings(max_examples=200, deadline=None)
@given(step_lists(), st.integers(0, 12), st.booleans(), st.integers(0, 6), st.integers(0, 6), st.sampled_from(
    ["spec", "crash", "failed"]), st.booleans(), st.integers(0, 5000))
def test_an_abort_always_takes_the_canary_to_zero_and_stable_to_the_full_count(
        steps, total, routed, stable_ready, canary_ready, why, bluegreen, seconds):
    previous = State(TARGET.template, "4", 0, T0, 10).to_status()
    abort = {"abort": {"target": "4"}} if why == "spec" else {}
    if why == "failed":
        previous.update(failedTemplate=TARGET.template, failureMessage="earlier", abortReason="AnalysisFailed")
    spec = blue_green_spec(**abort) if bluegreen else canary_spec(*steps, gateway=routed, **abort)
    seen = Observed(total, Side(stable_ready, stable_ready), Side(canary_ready, canary_ready),
                    canary_failure="crash" if why == "crash" else "", route_canary_weight=0)
    decision = canary.decide(spec, TARGET, STABLE, previous, seen, at(seconds))
    assert decision.phase == ABORTED and decision.abort is not None and not decision.promote
    assert (decision.stable_replicas, decision.canary_replicas) == (total, 0)
    assert decision.route in (None, RouteWeights(100, 0)) and decision.scrape is None
    assert decision.active in ("", STABLE.template)


def test_the_same_inputs_give_the_same_decision():
    spec, previous, seen = at_analysis()
    assert decide(spec, previous, seen, now=at(7)) == decide(spec, previous, seen, now=at(7))
    assert judged("pass").outcome is Outcome.PASS and judged("fail").outcome is Outcome.FAIL
    assert judged("inconclusive").outcome is Outcome.INCONCLUSIVE
