"""The Canary and BlueGreen step machine, pure: how many pods each version runs, where traffic goes, when
to analyse, promote or abort. No I/O, no clock: the caller hands in what it saw and `now`.

Two pod templates take part: the *stable* one (rollout.py's: the last that served on every pod) and the
*target* one (what the spec asks for), run by two Deployments. The decision speaks of them as sides:
`stable_replicas` for the Deployment that runs the stable template, `canary_replicas` for the one that
runs the target (the preview, for BlueGreen); any other Deployment of the object runs 0 pods.

Canary (rollout.canary.steps, in order; a step that is done is never gone back on):
- setWeight w: the canary takes w percent of the traffic. By replica ratio (no trafficRouting) the total
  stays the desired count and the canary gets round(w × total / 100) pods, at least 1 while w > 0 and at
  most total − 1 while w < 100 (a single replica gets one extra pod), so the split is within one pod of w.
  Pods move within rollout.maxSurge / maxUnavailable: the stable side shrinks only as canary pods become
  Ready. With trafficRouting.gatewayAPI the stable side stays at full size, the canary gets
  ceil(w × total / 100) pods, and the HTTPRoute gives it weight w only once those pods are Ready. The
  step is done once the split is in place (by replicas, or as the route observed).
- pause: hold the weight for durationSeconds, or until rollout.promote releases it (Paused).
- analysis: scrape the canary's and the stable pods now (the baseline), again after the interval, and
  let analysis.verdict judge the difference. Pass: next step. Fail: abort. Inconclusive: measure again
  over the growing window until inconclusiveTimeoutSeconds after the step began, then abort.
- after the last step, promotion: the canary side grows to the full count (the stable side shrinks as it
  does), the route sends it everything, and then `promote`: the target becomes the stable template.

BlueGreen: step 0 brings the preview (the target) up at full size beside the active (stable) pods, with
an optional analysis; it switches the active Service to the target once the preview is Ready on every
pod (and passed), automatically or when rollout.promote says so. Step 1 keeps the old version's pods for
scaleDownDelaySeconds, during which an abort switches straight back; then `promote`.

Abort, automatic (a failed or too long inconclusive analysis, canary pods failing by rollout.py's
evidence, a step not reached within progressDeadlineSeconds) or through the spec (rollout.abort): the
canary goes to 0 and the stable side serves everything (with a route: only once the route sends the
canary nothing). An automatic abort is held, like a failed template in rollout.py, until the spec asks
for another pod template; one through the spec lasts while rollout.abort names the rollout, and the
rollout starts again from its first step once it no longer does. With autoRollback false a failure
stops the rollout where it is instead (Failed), until a person promotes or aborts it.

Between reconciles the machine remembers its step in status.rollout (`State`). Deciding again from the
state it wrote, with the same observation, gives the same state (no status write that changes nothing).

Analysis: the decision asks for a scrape (`scrape`). BASELINE: scrape the canary's and the stable pods
and keep the samples as this analysis' start, at `state.analysis.started_at`; pass that time back as
`Observed.baseline_at` while they are held (an operator that restarted holds none, and the analysis
starts again). VERDICT: scrape again, take `analysis.verdict` over the samples' deltas, and decide again
with it (same `now`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from enum import Enum
from typing import Any

from modeldeploy.analysis import Outcome, SideStats, Verdict
from modeldeploy.api import AnalysisStep, PromoteSpec, RolloutSpec
from modeldeploy.pods import Problem, summarize

# status.rollout.phase
IDLE = "Idle"
PROGRESSING = "Progressing"
PAUSED = "Paused"
FAILED = "Failed"
ABORTED = "Aborted"

# Why a canary (or a preview) was aborted: status.rollout.abortReason, and the Event's reason.
ANALYSIS_FAILED = "AnalysisFailed"
ANALYSIS_INCONCLUSIVE = "AnalysisInconclusive"
CANARY_FAILED = "CanaryFailed"
DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
ABORTED_BY_SPEC = "AbortedBySpec"

# Nothing announces an HTTPRoute's change, or a scrape that could not be taken: look again this soon.
RECHECK_SECONDS = 5.0


class Scrape(str, Enum):
    BASELINE = "Baseline"  # scrape canary and stable pods now: the analysis' start
    VERDICT = "Verdict"  # scrape them now, take the verdict against the baseline, and decide again with it


@dataclass(frozen=True)
class Revision:
    """A pod template: its fingerprint and its model version."""

    template: str
    version: str


@dataclass(frozen=True)
class Side:
    """One Deployment as observed."""

    replicas: int = 0  # spec.replicas as stored (0 when it does not exist)
    ready: int = 0  # its Ready pods that run its side's template (not an older template's, still going)


@dataclass(frozen=True)
class Observed:
    """What the reconcile saw before acting."""

    desired_replicas: int  # the total the spec (or the HPA) asks for
    stable: Side = Side()
    canary: Side = Side()  # the target's Deployment: the canary, or the BlueGreen preview
    canary_failure: str = ""  # rollout.failure_evidence against the target: its pods fail (crash, load failure, ...)
    canary_problems: tuple[Problem, ...] = ()  # pods.pod_problems of the target's pods (Unschedulable, ...)
    route_canary_weight: int | None = None  # the HTTPRoute's weight for the canary backend now (None: none)
    baseline_at: str | None = None  # when the analysis baseline held for the current step was scraped
    verdict: Verdict | None = None  # the verdict over baseline_at..now, when one was taken for this decision


@dataclass(frozen=True)
class RouteWeights:
    """The HTTPRoute's backendRefs weights, stable and canary Service."""

    stable: int
    canary: int


@dataclass(frozen=True)
class SideSummary:
    """One side of an analysis, as status shows it."""

    pods: int = 0
    requests: float = 0.0
    failures: float = 0.0
    error_ratio: float | None = None
    mean_latency_ms: float | None = None
    mean_queue_ms: float | None = None

    @classmethod
    def of(cls, side: SideStats) -> SideSummary:
        def rounded(value: float | None, digits: int) -> float | None:
            return None if value is None else round(value, digits)

        return cls(side.pods, side.requests, side.failures, rounded(side.error_ratio, 6),
                   rounded(side.mean_latency_ms, 3), rounded(side.mean_queue_ms, 3))

    def to_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"pods": self.pods, "requests": self.requests, "failures": self.failures,
                               "errorRatio": self.error_ratio, "meanLatencyMs": self.mean_latency_ms,
                               "meanQueueMs": self.mean_queue_ms}
        return {key: value for key, value in out.items() if value is not None}

    @classmethod
    def from_status(cls, value: Any) -> SideSummary | None:
        if not isinstance(value, Mapping):
            return None
        return cls(int(value.get("pods", 0)), float(value.get("requests", 0)), float(value.get("failures", 0)),
                   value.get("errorRatio"), value.get("meanLatencyMs"), value.get("meanQueueMs"))


@dataclass(frozen=True)
class AnalysisRecord:
    """The analysis of one step: when its baseline was taken, and its last verdict."""

    step: int
    started_at: str | None
    checked_at: str | None = None
    verdict: str | None = None  # Pass | Fail | Inconclusive
    message: str | None = None
    canary: SideSummary | None = None
    stable: SideSummary | None = None

    def with_verdict(self, verdict: Verdict, now: str) -> AnalysisRecord:
        return replace(self, checked_at=now, verdict=verdict.outcome.value, message=verdict.message,
                       canary=SideSummary.of(verdict.canary), stable=SideSummary.of(verdict.stable))

    def to_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"step": self.step, "startedAt": self.started_at, "checkedAt": self.checked_at,
                               "verdict": self.verdict, "message": self.message,
                               "canary": self.canary.to_status() if self.canary else None,
                               "stable": self.stable.to_status() if self.stable else None}
        return {key: value for key, value in out.items() if value is not None}

    @classmethod
    def from_status(cls, value: Any) -> AnalysisRecord | None:
        if not isinstance(value, Mapping):
            return None
        return cls(int(value.get("step", 0)), value.get("startedAt"), value.get("checkedAt"), value.get("verdict"),
                   value.get("message"), SideSummary.from_status(value.get("canary")),
                   SideSummary.from_status(value.get("stable")))


@dataclass(frozen=True)
class State:
    """What the step machine remembers between reconciles (status.rollout), for one target template."""

    template: str  # the target's fingerprint: the state belongs to it
    version: str
    step: int  # Canary: index into rollout.canary.steps, their number while promoting. BlueGreen: 0, then 1
    step_started_at: str
    weight: int = 0  # percent of traffic the canary has
    analysis: AnalysisRecord | None = None
    abort_reason: str | None = None
    failure_message: str = ""  # an automatic abort's (or failure's) message: held by the template

    def to_status(self) -> dict[str, Any]:
        """The status.rollout fields (camelCase) this state is written as."""
        out: dict[str, Any] = {"canaryTemplate": self.template, "canaryVersion": self.version, "step": self.step,
                               "stepStartedAt": self.step_started_at, "weight": self.weight}
        if self.analysis is not None:
            out["analysis"] = self.analysis.to_status()
        if self.abort_reason is not None:
            out["abortReason"] = self.abort_reason
        if self.failure_message:
            out.update(failedTemplate=self.template, failedVersion=self.version, failureMessage=self.failure_message)
        return out

    @classmethod
    def from_status(cls, rollout: Mapping[str, Any], target: Revision) -> State | None:
        """The state status.rollout holds for `target`; None if it holds none (or one of another target)."""
        if rollout.get("canaryTemplate") != target.template or not isinstance(rollout.get("step"), int):
            return None
        return cls(target.template, target.version, rollout["step"], str(rollout.get("stepStartedAt") or ""),
                   int(rollout.get("weight") or 0), AnalysisRecord.from_status(rollout.get("analysis")),
                   rollout.get("abortReason"),
                   str(rollout.get("failureMessage") or "") if rollout.get("failedTemplate") == target.template
                   else "")


@dataclass(frozen=True)
class Abort:
    reason: str  # AnalysisFailed, AnalysisInconclusive, CanaryFailed, ProgressDeadlineExceeded, AbortedBySpec
    message: str


@dataclass(frozen=True)
class Decision:
    phase: str  # Idle | Progressing | Paused | Failed | Aborted
    message: str
    stable_replicas: int  # for the Deployment that runs the stable template (the target's, if it is stable)
    canary_replicas: int  # for the Deployment that runs the target, when it is not the stable template
    state: State | None  # to record in status.rollout (None: no canary or preview under way)
    route: RouteWeights | None = None  # Canary with gatewayAPI: the HTTPRoute's weights
    active: str = ""  # the template the active Service selects; "": every pod (Canary by replica ratio)
    promote: bool = False  # the target is now the stable template: record it; the old side goes to 0
    abort: Abort | None = None  # the canary is aborted (or, with phase Failed, stopped): why
    scrape: Scrape | None = None  # take an analysis scrape now
    requeue_after: float | None = None  # seconds until something is due that no watch event announces
    problem: Problem | None = None  # the worst problem of the target's pods (Unschedulable, ...), for status

    @property
    def step(self) -> int | None:
        return self.state.step if self.state is not None else None

    @property
    def weight(self) -> int:
        return self.state.weight if self.state is not None else 0


# --- time ------------------------------------------------------------------------------------------

def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _seconds(start: str, end: str) -> float:
    return (_time(end) - _time(start)).total_seconds()


def _later(time: str, seconds: float) -> str:
    return (_time(time) + timedelta(seconds=seconds)).astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _soonest(*delays: float | None) -> float | None:
    due = [max(0.0, d) for d in delays if d is not None]
    return min(due) if due else None


# --- replicas --------------------------------------------------------------------------------------

def replica_split(weight: int, total: int, routed: bool = False) -> tuple[int, int]:
    """(stable, canary) pods for a weight. By replica ratio the canary gets round(weight × total / 100), at least
    1 while weight > 0 and at most total − 1 while weight < 100, so it is within one pod of the weight and
    stable keeps at least one pod (a single replica gets one extra). With a route, stable stays at full size
    and the canary gets enough pods for its share: ceil(weight × total / 100), at least 1."""
    if total <= 0 or weight <= 0:
        return max(total, 0), 0
    if routed:
        return total, max(1, -(-weight * total // 100))
    if weight >= 100:
        return 0, total
    canary = min(max((weight * total + 50) // 100, 1), max(total - 1, 1))  # rounded half up
    return max(total - canary, 1), canary


def _resolve(value: int | str, total: int, round_up: bool) -> int:
    """maxSurge / maxUnavailable as pods: a percentage of total, rounded as the Deployment controller does."""
    text = str(value).strip()
    try:
        if text.endswith("%"):
            share = float(text[:-1]) * total / 100
            return max(0, math.ceil(share) if round_up else math.floor(share))
        return max(0, int(text))
    except ValueError:
        return 0


def _budget(spec: RolloutSpec, total: int) -> tuple[int, int]:
    surge = _resolve(spec.max_surge, total, round_up=True)
    unavailable = _resolve(spec.max_unavailable, total, round_up=False)
    return (surge, 1) if surge == 0 and unavailable == 0 else (surge, unavailable)  # as the Deployment controller


def _towards(total: int, stable_target: int, canary_target: int, observed: Observed, surge: int,
             unavailable: int) -> tuple[int, int]:
    """The next (stable, canary) replicas on the way to the targets: a side shrinks only as far as the other
    side's Ready pods keep total − maxUnavailable pods Ready, and a side grows only up to total + maxSurge pods
    (or the targets' sum, when the targets themselves need more: one replica and its canary)."""
    ceiling = max(total + surge, stable_target + canary_target)
    floor = min(total - unavailable, stable_target + canary_target)
    stable, canary = observed.stable.replicas, observed.canary.replicas
    if stable_target < stable:
        stable = max(stable_target, min(stable, floor - observed.canary.ready))
    if canary_target < canary:
        canary = max(canary_target, min(canary, floor - observed.stable.ready))
    if canary_target > canary:
        canary = max(canary, min(canary_target, ceiling - stable))
    if stable_target > stable:
        stable = max(stable, min(stable_target, ceiling - canary))
    return stable, canary


# --- the rollout a promote or abort names ----------------------------------------------------------

def names(value: str, target: Revision, stable: Revision | None) -> bool:
    """Whether rollout.promote/abort's `target` names the rollout of `target`: by its pod template fingerprint,
    or by its model version when the rollout changes the version (so "3", left in the spec after version 3's
    rollout, does not name a later image change that keeps version 3)."""
    return value == target.template or (
        value == target.version and (stable is None or stable.version != target.version))


def _held_failure(previous: Mapping[str, Any], target: Revision) -> tuple[str, str] | None:
    """An automatic abort (or failure) recorded against the target: held until the spec asks for another one."""
    if not target.template or previous.get("failedTemplate") != target.template:
        return None
    same = previous.get("canaryTemplate") == target.template
    reason = previous.get("abortReason") if same and previous.get("abortReason") != ABORTED_BY_SPEC else None
    return reason or CANARY_FAILED, str(previous.get("failureMessage") or "")


# --- the machine -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Context:
    spec: RolloutSpec
    target: Revision
    stable: Revision
    observed: Observed
    now: str
    total: int
    routed: bool
    surge: int
    unavailable: int
    problem: Problem | None

    @property
    def what(self) -> str:
        return f"version {self.target.version}" if self.target.version != self.stable.version else \
            f"pod template {self.target.template}"

    def canary_detail(self, wanted: int) -> str:
        text = f"{self.observed.canary.ready}/{wanted} {self.what} pods Ready"
        return f"{text}; {self.problem.message}" if self.problem is not None else text


@dataclass(frozen=True)
class _Wait:
    """A step that is not done: what the decision says while it waits."""

    state: State
    message: str
    phase: str = PROGRESSING
    scrape: Scrape | None = None
    requeue_after: float | None = None
    failure: tuple[str, str] | None = None  # (reason, message): the step failed the rollout


def decide(spec: RolloutSpec, target: Revision, stable: Revision | None, previous: Mapping[str, Any],
           observed: Observed, now: str) -> Decision:
    """The next step of a Canary or BlueGreen rollout of `target` from `stable` (rollout.py's stable template;
    None before any template served), given status.rollout as last written (`previous`), what was observed
    before acting, and now (RFC 3339)."""
    if spec.strategy not in ("Canary", "BlueGreen"):
        raise ValueError(f"canary.decide decides Canary and BlueGreen rollouts, not {spec.strategy}")
    total = max(0, observed.desired_replicas)
    routed = spec.strategy == "Canary" and spec.canary is not None and spec.canary.gateway_api is not None
    problem = summarize(observed.canary_problems)
    if stable is None or stable.template == target.template:
        return _settled(spec, target, stable, observed, total, routed, problem)
    surge, unavailable = _budget(spec, total)
    ctx = _Context(spec, target, stable, observed, now, total, routed, surge, unavailable, problem)

    state = State.from_status(previous, target) or State(target.template, target.version, 0, now)
    aborted_by_spec = spec.abort is not None and names(spec.abort.target, target, stable)
    promote = spec.promote if spec.promote is not None and names(spec.promote.target, target, stable) else None
    failure = _held_failure(previous, target)
    if failure is None and observed.canary_failure:
        failure = (CANARY_FAILED, f"{ctx.what} failed on its own pods: {observed.canary_failure}")
    if state.abort_reason == ABORTED_BY_SPEC and not aborted_by_spec and failure is None:
        state = State(target.template, target.version, 0, now)  # the abort was lifted: start again
    if failure is not None and (spec.auto_rollback or aborted_by_spec or promote is None
                                or promote.through_step is not None):
        return _stop(ctx, state, *failure, aborted_by_spec=aborted_by_spec)
    if failure is None and aborted_by_spec:
        return _stop(ctx, state, ABORTED_BY_SPEC, f"rollout.abort names this rollout ({spec.abort.target})",
                     aborted_by_spec=True)
    if failure is not None:  # autoRollback off, and a person promotes it anyway
        state = replace(state, abort_reason=None, failure_message="")
    if total == 0:
        return Decision(PROGRESSING, f"replicas is 0: the rollout of {ctx.what} waits for pods to serve", 0, 0,
                        state, RouteWeights(100, 0) if routed else None, _active(ctx, state), problem=problem)
    if spec.strategy == "Canary":
        return _canary(ctx, state, promote)
    return _blue_green(ctx, state, promote)


def _active(ctx: _Context, state: State) -> str:
    if ctx.spec.strategy == "BlueGreen":
        return ctx.target.template if state.step >= 1 else ctx.stable.template
    return ctx.stable.template if ctx.routed else ""


def _settled(spec: RolloutSpec, target: Revision, stable: Revision | None, observed: Observed, total: int,
             routed: bool, problem: Problem | None) -> Decision:
    """No canary: the target is the stable template, or the first template of all (nothing to compare a canary
    with, so it is deployed whole, on the stable side). A canary Deployment left over goes to 0 (with a route,
    once the route sends it nothing)."""
    draining = routed and (observed.route_canary_weight or 0) > 0
    canary = observed.canary.replicas if draining else 0
    active = target.template if (routed or spec.strategy == "BlueGreen") else ""
    ready = observed.stable.ready >= total
    if stable is None and not ready:
        message = (f"version {target.version} is the first to serve: deployed whole, with no stable version to "
                   f"compare a canary with ({observed.stable.ready}/{total} pods Ready)")
        phase = PROGRESSING
    else:
        message, phase = f"version {target.version} serves on every pod", IDLE
    return Decision(phase, message, total, canary, None, RouteWeights(100, 0) if routed else None, active,
                    requeue_after=RECHECK_SECONDS if draining else None,
                    problem=problem if stable is None else None)


def _stop(ctx: _Context, state: State, reason: str, message: str, *, aborted_by_spec: bool) -> Decision:
    """An abort: the canary to 0 and the stable side to the full count at once, so stable serves everything
    (with a route, the canary keeps its pods until the route sends it nothing). With autoRollback false an
    automatic failure stops the rollout where it is instead (Failed), until a person promotes or aborts it."""
    automatic = reason != ABORTED_BY_SPEC
    state = replace(state, abort_reason=reason, failure_message=message if automatic else "")
    observed = ctx.observed
    if not (ctx.spec.auto_rollback or aborted_by_spec):
        weight = state.weight
        return Decision(FAILED, f"the rollout of {ctx.what} failed and stays where it stopped (autoRollback is "
                                f"off; promote or abort it): {message}",
                        observed.stable.replicas, observed.canary.replicas, state,
                        RouteWeights(100 - weight, weight) if ctx.routed else None, _active(ctx, state),
                        abort=Abort(reason, message), problem=ctx.problem)
    state = replace(state, weight=0)
    draining = ctx.routed and (observed.route_canary_weight or 0) > 0
    return Decision(ABORTED, f"the rollout of {ctx.what} was aborted ({reason}); version {ctx.stable.version} "
                             f"serves everything: {message}",
                    ctx.total, observed.canary.replicas if draining else 0, state,
                    RouteWeights(100, 0) if ctx.routed else None,
                    ctx.stable.template if (ctx.routed or ctx.spec.strategy == "BlueGreen") else "",
                    abort=Abort(reason, message), requeue_after=RECHECK_SECONDS if draining else None,
                    problem=ctx.problem)


def _elapsed(ctx: _Context, state: State) -> float:
    return max(0.0, _seconds(state.step_started_at, ctx.now)) if state.step_started_at else 0.0


def _deadline(ctx: _Context, state: State, what: str, wanted: int) -> tuple[str, str] | float:
    """The failure once a step has not been reached within progressDeadlineSeconds, else seconds left."""
    deadline = ctx.spec.progress_deadline_seconds
    elapsed = _elapsed(ctx, state)
    if elapsed >= deadline:
        return DEADLINE_EXCEEDED, f"{what} not reached within {deadline} s: {ctx.canary_detail(wanted)}"
    return deadline - elapsed


def _analyse(ctx: _Context, state: State, step: AnalysisStep, label: str) -> State | _Wait:
    """One analysis step: the baseline, the verdict after the interval, and what the verdict means."""
    settings = ctx.spec.analysis_or_default
    interval = step.interval_seconds or settings.interval_seconds
    record = state.analysis if state.analysis is not None and state.analysis.step == state.step else None
    if record is None or record.started_at is None or ctx.observed.baseline_at != record.started_at:
        # No baseline yet, or the one held is gone (the operator restarted): start measuring now.
        started = replace(state, analysis=AnalysisRecord(state.step, ctx.now))
        # Messages name when a wait ends, not how long is left: status then changes only when something does.
        return _Wait(started, f"{label}: analysing until {_later(ctx.now, interval)}", scrape=Scrape.BASELINE,
                     requeue_after=interval)
    timeout = settings.inconclusive_timeout_seconds
    elapsed = _elapsed(ctx, state)
    due = _later(record.started_at, interval)
    if record.checked_at is not None:
        due = max(due, _later(record.checked_at, interval), key=_time)
    if _time(ctx.now) < _time(due):
        inconclusive = record.verdict == Outcome.INCONCLUSIVE.value
        if inconclusive and elapsed >= timeout:
            return _Wait(state, "", failure=(ANALYSIS_INCONCLUSIVE, f"{label}: still inconclusive after "
                                                                   f"{int(elapsed)} s: {record.message}"))
        left = _seconds(ctx.now, due)
        last = f" (last verdict: {record.verdict})" if record.verdict else ""
        return _Wait(state, f"{label}: analysing until {due}{last}",
                     requeue_after=_soonest(left, timeout - elapsed if inconclusive else None))
    verdict = ctx.observed.verdict
    if verdict is None:
        return _Wait(state, f"{label}: taking the verdict", scrape=Scrape.VERDICT, requeue_after=RECHECK_SECONDS)
    judged = replace(state, analysis=record.with_verdict(verdict, ctx.now))
    if verdict.outcome is Outcome.PASS:
        return judged
    if verdict.outcome is Outcome.FAIL:
        return _Wait(judged, "", failure=(ANALYSIS_FAILED, f"{label}: {verdict.message}"))
    if elapsed >= timeout:
        return _Wait(judged, "", failure=(ANALYSIS_INCONCLUSIVE,
                                          f"{label}: still inconclusive after {int(elapsed)} s: {verdict.message}"))
    return _Wait(judged, f"{label}: inconclusive ({'; '.join(verdict.reasons)}), measuring on",
                 requeue_after=min(interval, timeout - elapsed))


def _advance(ctx: _Context, state: State) -> State:
    return replace(state, step=state.step + 1, step_started_at=ctx.now)


def _canary(ctx: _Context, state: State, promote: PromoteSpec | None) -> Decision:
    steps = ctx.spec.canary.steps if ctx.spec.canary is not None else []
    if promote is not None and promote.through_step is None and state.step < len(steps):
        state = replace(state, step=len(steps), step_started_at=ctx.now)  # promoted at once: every step skipped
    released = promote.through_step if promote is not None and promote.through_step is not None else -1
    while state.step < len(steps):
        step = steps[state.step]
        label = f"steps[{state.step}]"
        if step.set_weight is not None:
            outcome = _set_weight(ctx, state, step.set_weight, f"{label} (setWeight {step.set_weight})")
        elif step.pause is not None:
            outcome = _pause(ctx, state, step.pause.duration_seconds, released, f"{label} (pause)")
        else:
            outcome = _analyse(ctx, state, step.analysis, f"{label} (analysis)")
        if isinstance(outcome, _Wait):
            return _waiting(ctx, outcome, steps[state.step].set_weight)
        state = _advance(ctx, outcome)
    return _promoting(ctx, state)


def _set_weight(ctx: _Context, state: State, weight: int, label: str) -> State | _Wait:
    observed = ctx.observed
    stable, canary = replica_split(weight, ctx.total, ctx.routed)
    canary_ready = observed.canary.ready >= canary
    if ctx.routed:
        reached = canary_ready and observed.route_canary_weight == weight
        state = replace(state, weight=weight if canary_ready else state.weight)
    else:
        reached = canary_ready and observed.canary.replicas == canary and observed.stable.replicas == stable
    if reached:
        return replace(state, weight=weight)
    deadline = _deadline(ctx, state, label, canary)
    if isinstance(deadline, tuple):
        return _Wait(state, "", failure=deadline)
    waiting_for = ("the HTTPRoute to give it the weight" if ctx.routed and canary_ready
                   else ctx.canary_detail(canary))
    return _Wait(state, f"{label}: waiting for {waiting_for}",
                 requeue_after=_soonest(deadline, RECHECK_SECONDS if ctx.routed and canary_ready else None))


def _pause(ctx: _Context, state: State, duration: int | None, released: int, label: str) -> State | _Wait:
    if duration is not None:
        left = duration - _elapsed(ctx, state)
        if left <= 0:
            return state
        return _Wait(state, f"{label}: at weight {state.weight} until {_later(state.step_started_at, duration)}",
                     requeue_after=left)
    if released >= state.step:
        return state
    return _Wait(state, f"{label}: paused at weight {state.weight} until rollout.promote names this rollout "
                        f"({ctx.target.version!r} or {ctx.target.template!r}) with throughStep ≥ {state.step}, "
                        f"or without one", phase=PAUSED)


def _waiting(ctx: _Context, wait: _Wait, set_weight: int | None) -> Decision:
    """A Canary decision while a step waits: the step's split (or the weight reached so far), or the failure."""
    if wait.failure is not None:
        return _stop(ctx, wait.state, *wait.failure, aborted_by_spec=False)
    weight = set_weight if set_weight is not None else wait.state.weight
    want_stable, want_canary = replica_split(weight, ctx.total, ctx.routed)
    stable, canary = _towards(ctx.total, want_stable, want_canary, ctx.observed, ctx.surge, ctx.unavailable)
    route = RouteWeights(100 - wait.state.weight, wait.state.weight) if ctx.routed else None
    return Decision(wait.phase, wait.message, stable, canary, wait.state, route, _active(ctx, wait.state),
                    scrape=wait.scrape, requeue_after=wait.requeue_after, problem=ctx.problem)


def _promoting(ctx: _Context, state: State) -> Decision:
    """Every step done (or skipped): the canary side grows to the full count, takes all the traffic, and the
    target becomes the stable template; the old side then goes to 0."""
    observed, total = ctx.observed, ctx.total
    canary_ready = observed.canary.ready >= total
    label = f"promoting {ctx.what}"
    if ctx.routed:
        stable, canary = total, total
        weight = 100 if canary_ready else state.weight
        state = replace(state, weight=weight)
        done = canary_ready and observed.route_canary_weight == 100
    else:
        stable, canary = _towards(total, 0, total, observed, ctx.surge, ctx.unavailable)
        done = canary_ready
    if done:
        return Decision(IDLE, f"{ctx.what} is promoted and serves everything", 0, total, replace(state, weight=100),
                        RouteWeights(0, 100) if ctx.routed else None, _active(ctx, state), promote=True,
                        problem=ctx.problem)
    deadline = _deadline(ctx, state, label, total)
    if isinstance(deadline, tuple):
        return _stop(ctx, state, *deadline, aborted_by_spec=False)
    waiting_for = ("the HTTPRoute to send it everything" if ctx.routed and canary_ready
                   else ctx.canary_detail(total))
    return Decision(PROGRESSING, f"{label}: waiting for {waiting_for}", stable, canary, state,
                    RouteWeights(100 - state.weight, state.weight) if ctx.routed else None, _active(ctx, state),
                    requeue_after=_soonest(deadline, RECHECK_SECONDS if ctx.routed and canary_ready else None),
                    problem=ctx.problem)


def _blue_green(ctx: _Context, state: State, promote: PromoteSpec | None) -> Decision:
    settings = ctx.spec.blue_green
    auto_promote = settings.auto_promote if settings is not None else True
    analysis = settings.analysis if settings is not None else None
    total, observed = ctx.total, ctx.observed
    if state.step == 0:
        label = f"preview of {ctx.what}"
        if observed.canary.ready < total:
            deadline = _deadline(ctx, state, label, total)
            if isinstance(deadline, tuple):
                return _stop(ctx, state, *deadline, aborted_by_spec=False)
            return _blue_green_decision(ctx, _Wait(state, f"{label}: waiting for {ctx.canary_detail(total)}",
                                                   requeue_after=deadline))
        passed = state.analysis is not None and state.analysis.step == 0 and state.analysis.verdict == "Pass"
        if analysis is not None and not passed and promote is None:
            outcome = _analyse(ctx, state, analysis, f"{label} (analysis)")
            if isinstance(outcome, _Wait):
                return _blue_green_decision(ctx, outcome)
            state = outcome
        if not auto_promote and promote is None:
            return _blue_green_decision(ctx, _Wait(state, f"{label}: Ready on every pod; waiting for rollout.promote "
                                                          f"to name this rollout ({ctx.target.version!r} or "
                                                          f"{ctx.target.template!r})", phase=PAUSED))
        state = replace(_advance(ctx, state), weight=100)  # the switch
    delay = settings.scale_down_delay_seconds if settings is not None else 30
    left = delay - _elapsed(ctx, state)
    if left > 0:
        return _blue_green_decision(ctx, _Wait(state, f"{ctx.what} is active; version {ctx.stable.version} keeps its "
                                                      f"pods until {_later(state.step_started_at, delay)}",
                                               requeue_after=left))
    return Decision(IDLE, f"{ctx.what} is promoted; version {ctx.stable.version} scales down", 0, total, state,
                    None, ctx.target.template, promote=True, problem=ctx.problem)


def _blue_green_decision(ctx: _Context, wait: _Wait) -> Decision:
    """Both sides at the full count (the preview beside the active pods), the active Service on one of them."""
    if wait.failure is not None:
        return _stop(ctx, wait.state, *wait.failure, aborted_by_spec=False)
    return Decision(wait.phase, wait.message, ctx.total, ctx.total, wait.state, None, _active(ctx, wait.state),
                    scrape=wait.scrape, requeue_after=wait.requeue_after, problem=ctx.problem)
