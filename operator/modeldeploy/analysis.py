"""Canary analysis from Triton's own per-version metrics. Pure: no I/O, no clock.

Triton serves, per pod, per model and version, cumulative counters on its metrics port
(:8002/metrics, Prometheus text exposition; the triton boundary fetches it with
`modeldeploy.triton.scrape_metrics`). Comparing two scrapes of each pod tells what each version
did in between, without Prometheus:

    text ──parse_metrics──► {(model, version): VersionMetrics}     one scrape of one pod
    Sample(pod, time, metrics)                                      ... with its pod and time
    delta(before, after, model, version) ──► PodDelta               what one pod's version did
    aggregate([PodDelta, ...]) ──► SideStats                        canary pods, stable pods
    verdict(canary, stable, Thresholds) ──► Verdict                 Pass / Fail / Inconclusive

What Triton 2.51 exposes and how each number is read (measured; docs/triton-flags.md, "Metrics the
analysis reads"):

- `nv_inference_request_success{model,version}`: requests that succeeded. A python model that
  *returns* an error response (`InferenceResponse(error=...)`) is counted here too: Triton's core
  only sees a failure when the backend fails the request (e.g. execute() raises).
- `nv_inference_request_failure{model,reason,version}`, reason one of OTHER, BACKEND, CANCELED,
  REJECTED (all four series always present). CANCELED (the client cancelled a request still
  queued) is not the version's fault and is left out of the failures; the others count. Texts
  without a `reason` label (older Tritons) count every failure.
- `nv_inference_request_duration_us`, `nv_inference_queue_duration_us`: cumulative microseconds of
  the *successful* requests only (they equal the `success` and `queue` ns of the statistics
  extension, whose counts are the success count), so the means divide by Δsuccess.
- `nv_inference_count`: inferences (batch elements), kept for information.
- `nv_inference_pending_request_count{model,version}`: a gauge, requests waiting right now.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum

__all__ = [
    "CANCELED",
    "FAMILIES",
    "InconclusivePolicy",
    "Outcome",
    "PodDelta",
    "Sample",
    "Series",
    "SideStats",
    "Thresholds",
    "Verdict",
    "VersionMetrics",
    "aggregate",
    "delta",
    "parse_exposition",
    "parse_metrics",
    "side_deltas",
    "verdict",
]

SUCCESS = "nv_inference_request_success"
FAILURE = "nv_inference_request_failure"
REQUEST_DURATION = "nv_inference_request_duration_us"
QUEUE_DURATION = "nv_inference_queue_duration_us"
INFERENCE_COUNT = "nv_inference_count"
PENDING = "nv_inference_pending_request_count"
FAMILIES = (SUCCESS, FAILURE, REQUEST_DURATION, QUEUE_DURATION, INFERENCE_COUNT, PENDING)
CANCELED = "CANCELED"  # Triton's spelling of the reason label's value
NO_REASON = ""  # the failure counter of a Triton whose failures carry no reason label

ModelVersion = tuple[str, str]


# --- the text exposition ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Series:
    """One sample line: family name, labels (sorted by name), value."""

    name: str
    labels: tuple[tuple[str, str], ...]
    value: float

    def label(self, name: str, default: str | None = None) -> str | None:
        return next((v for k, v in self.labels if k == name), default)


_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}


def _name_end(line: str, start: int) -> int:
    end = start
    while end < len(line) and (line[end].isalnum() or line[end] in "_:"):
        end += 1
    return end


def _parse_labels(line: str, pos: int) -> tuple[tuple[tuple[str, str], ...], int]:
    """line[pos] is '{'. Returns the labels and the index after '}'; ValueError if malformed."""
    labels: dict[str, str] = {}
    pos += 1
    while True:
        while pos < len(line) and line[pos] in " \t":
            pos += 1
        if pos < len(line) and line[pos] == "}":
            return tuple(sorted(labels.items())), pos + 1
        end = _name_end(line, pos)
        if end == pos:
            raise ValueError("label name expected")
        name = line[pos:end]
        pos = end
        while pos < len(line) and line[pos] in " \t":
            pos += 1
        if line[pos:pos + 1] != "=":
            raise ValueError(f"label {name}: '=' expected")
        pos += 1
        while pos < len(line) and line[pos] in " \t":
            pos += 1
        if line[pos:pos + 1] != '"':
            raise ValueError(f"label {name}: a quoted value expected")
        pos += 1
        value: list[str] = []
        while True:
            if pos >= len(line):
                raise ValueError(f"label {name}: unterminated value")
            char = line[pos]
            if char == "\\":
                if pos + 1 >= len(line):
                    raise ValueError(f"label {name}: dangling backslash")
                value.append(_ESCAPES.get(line[pos + 1], "\\" + line[pos + 1]))
                pos += 2
            elif char == '"':
                pos += 1
                break
            else:
                value.append(char)
                pos += 1
        if name in labels:
            raise ValueError(f"label {name} repeated")
        labels[name] = "".join(value)
        while pos < len(line) and line[pos] in " \t":
            pos += 1
        if pos < len(line) and line[pos] == ",":
            pos += 1
        elif not (pos < len(line) and line[pos] == "}"):
            raise ValueError("',' or '}' expected after a label")


def _parse_line(line: str) -> Series:
    end = _name_end(line, 0)
    if end == 0 or line[0].isdigit():
        raise ValueError("metric name expected")
    name, pos = line[:end], end
    labels: tuple[tuple[str, str], ...] = ()
    if pos < len(line) and line[pos] == "{":
        labels, pos = _parse_labels(line, pos)
    rest = line[pos:].split()
    if not rest or len(rest) > 2 or (pos < len(line) and line[pos] not in " \t"):
        raise ValueError("value expected after the name and labels")
    value = float(rest[0])  # float() reads +Inf, -Inf, Inf and NaN as Prometheus writes them
    if len(rest) == 2:
        int(rest[1])  # an optional timestamp (ms): validated, not used
    return Series(name, labels, value)


def parse_exposition(text: str) -> tuple[list[Series], list[str]]:
    """Every sample line of a Prometheus text exposition, and the lines that could not be read
    (never an exception: one garbled line does not lose a scrape). Comments (# HELP, # TYPE, any
    other #) and blank lines are skipped."""
    series: list[Series] = []
    bad: list[str] = []
    for raw in text.split("\n"):  # not splitlines(): \r, \x85, \u2028... may sit in a label value
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            series.append(_parse_line(line))
        except ValueError:
            bad.append(raw)
    return series, bad


# --- per (model, version) counters ----------------------------------------------------------------

@dataclass(frozen=True)
class VersionMetrics:
    """What one scrape of one pod says about one model version. Counters are cumulative since the
    version was loaded (a restarted process, or a reloaded model, starts again from 0)."""

    # None: the text had no (readable, finite) series for it.
    success: float | None = None
    failures: Mapping[str, float] = field(default_factory=dict)  # reason -> count (NO_REASON: unlabelled)
    request_duration_us: float | None = None  # of successful requests
    queue_duration_us: float | None = None  # of successful requests
    inference_count: float | None = None
    pending: float | None = None  # gauge

    def counters(self) -> dict[str, float]:
        """Every counter the text had, by a stable name (failures as failure:<reason>): what delta compares."""
        values = {"success": self.success, "request_duration_us": self.request_duration_us,
                  "queue_duration_us": self.queue_duration_us, "inference_count": self.inference_count}
        counters = {name: value for name, value in values.items() if value is not None}
        counters.update({f"failure:{reason}": count for reason, count in self.failures.items()})
        return counters


_COUNTER_FIELDS = {SUCCESS: "success", REQUEST_DURATION: "request_duration_us",
                   QUEUE_DURATION: "queue_duration_us", INFERENCE_COUNT: "inference_count", PENDING: "pending"}


def parse_metrics(text: str) -> dict[ModelVersion, VersionMetrics]:
    """The families the analysis reads, per (model, version). Other families, series without a
    model or version label, and non-finite values (NaN, ±Inf: no counter of Triton's is ever one)
    are ignored; so are lines that cannot be read."""
    fields: dict[ModelVersion, dict[str, float]] = {}
    failures: dict[ModelVersion, dict[str, float]] = {}
    series, _ = parse_exposition(text)
    for one in series:
        if one.name not in FAMILIES or not math.isfinite(one.value):
            continue
        model, version = one.label("model"), one.label("version")
        if model is None or version is None:
            continue
        key = (model, version)
        fields.setdefault(key, {})
        if one.name == FAILURE:
            reason = one.label("reason", NO_REASON) or NO_REASON
            by_reason = failures.setdefault(key, {})
            by_reason[reason] = by_reason.get(reason, 0.0) + one.value
        else:
            fields[key][_COUNTER_FIELDS[one.name]] = one.value
    return {key: VersionMetrics(failures=dict(sorted(failures.get(key, {}).items())), **values)
            for key, values in sorted(fields.items())}


@dataclass(frozen=True)
class Sample:
    """One scrape of one pod. `time` is the caller's clock in seconds (only differences are used)."""

    pod: str
    time: float
    metrics: Mapping[ModelVersion, VersionMetrics]

    @classmethod
    def from_text(cls, pod: str, time: float, text: str) -> Sample:
        return cls(pod, time, parse_metrics(text))

    def version(self, model: str, version: str) -> VersionMetrics | None:
        return self.metrics.get((model, version))


# --- what one pod's version did between two samples -----------------------------------------------

@dataclass(frozen=True)
class PodDelta:
    pod: str
    model: str
    version: str
    seconds: float
    success: float = 0.0
    failures: Mapping[str, float] = field(default_factory=dict)  # reason -> count
    request_duration_us: float = 0.0
    queue_duration_us: float = 0.0
    inference_count: float = 0.0
    pending: float = 0.0  # the gauge in the later sample
    reset: bool = False  # a counter went down: the process restarted (or the model was reloaded)
    present: bool = True  # False: the later sample has no series for this version (not loaded)

    @property
    def canceled(self) -> float:
        return self.failures.get(CANCELED, 0.0)

    @property
    def failed(self) -> float:
        """Failures that count against the version: every reason but CANCELED."""
        return sum(count for reason, count in self.failures.items() if reason != CANCELED)


def delta(before: Sample, after: Sample, model: str, version: str) -> PodDelta:
    """What `version` of `model` did on one pod between two of its samples.

    A counter lower in `after` than in `before` means Triton's counters for that version started
    again from 0 (the process restarted, or the model was unloaded and loaded again). Like
    Prometheus' increase(), the later value is then taken as the increase since the restart, and
    `reset` says so; unlike increase(), which looks at each series alone, one counter going down
    resets all of that version's counters, since they restart together (a counter that merely
    stayed above its old value would otherwise contribute a too-small difference). A restart
    followed by more traffic than before, on every counter, cannot be told from steady traffic (as
    with Prometheus). A series absent from `before` counts from 0; one absent from `after` adds
    nothing; a version absent from `after` did nothing we can see (`present` False). Raises ValueError for samples of different pods or out of order."""
    if before.pod != after.pod:
        raise ValueError(f"samples of different pods: {before.pod!r} and {after.pod!r}")
    if after.time < before.time:
        raise ValueError(f"pod {after.pod}: the later sample ({after.time}) is older than the earlier ({before.time})")
    seconds = after.time - before.time
    new = after.version(model, version)
    if new is None:
        return PodDelta(after.pod, model, version, seconds, present=False)
    old = before.version(model, version) or VersionMetrics()
    old_counters, new_counters = old.counters(), new.counters()
    # Only a series present in both samples can show a reset: a series missing from `after` (a line
    # that could not be read) says nothing, and its increase is unknown, so 0.
    reset = any(name in new_counters and new_counters[name] < value for name, value in old_counters.items())

    def increase(name: str) -> float:
        if name not in new_counters:
            return 0.0
        return new_counters[name] if reset else new_counters[name] - old_counters.get(name, 0.0)

    return PodDelta(
        after.pod, model, version, seconds,
        success=increase("success"),
        failures={reason: increase(f"failure:{reason}") for reason in new.failures},
        request_duration_us=increase("request_duration_us"),
        queue_duration_us=increase("queue_duration_us"),
        inference_count=increase("inference_count"),
        pending=new.pending or 0.0,
        reset=reset,
    )


# --- one side (canary pods or stable pods) --------------------------------------------------------

@dataclass(frozen=True)
class SideStats:
    pods: int = 0
    successes: float = 0.0
    failures: float = 0.0  # CANCELED excluded
    canceled: float = 0.0
    request_duration_us: float = 0.0
    queue_duration_us: float = 0.0
    max_pending: float = 0.0
    reset_pods: tuple[str, ...] = ()
    absent_pods: tuple[str, ...] = ()  # pods whose later sample had no series for the version

    @property
    def requests(self) -> float:
        """Requests that reached a verdict of their own: successes plus failures (not CANCELED)."""
        return self.successes + self.failures

    @property
    def error_ratio(self) -> float | None:
        return self.failures / self.requests if self.requests > 0 else None

    @property
    def mean_latency_ms(self) -> float | None:
        """Mean duration of a successful request, in ms (Triton times only successful ones)."""
        return self.request_duration_us / self.successes / 1000 if self.successes > 0 else None

    @property
    def mean_queue_ms(self) -> float | None:
        return self.queue_duration_us / self.successes / 1000 if self.successes > 0 else None


def aggregate(deltas: Iterable[PodDelta]) -> SideStats:
    """Sum the pods of one side. Means are weighted by requests (Σduration / Σsuccesses), not a
    mean of per-pod means; pending is the largest of the pods' gauges."""
    items = list(deltas)
    return SideStats(
        pods=len(items),
        successes=sum(d.success for d in items),
        failures=sum(d.failed for d in items),
        canceled=sum(d.canceled for d in items),
        request_duration_us=sum(d.request_duration_us for d in items),
        queue_duration_us=sum(d.queue_duration_us for d in items),
        max_pending=max((d.pending for d in items), default=0.0),
        reset_pods=tuple(d.pod for d in items if d.reset),
        absent_pods=tuple(d.pod for d in items if not d.present),
    )


# --- the verdict ------------------------------------------------------------------------------------

class Outcome(str, Enum):
    PASS = "Pass"
    FAIL = "Fail"
    INCONCLUSIVE = "Inconclusive"


class InconclusivePolicy(str, Enum):
    """What an inconclusive analysis becomes. WAIT (the default): stay Inconclusive, analyse again
    later (the caller decides how long it may wait). PASS: promote anyway. FAIL: abort."""

    WAIT = "wait"
    PASS = "pass"
    FAIL = "fail"


@dataclass(frozen=True)
class Thresholds:
    """When a canary passes. A canary fails if any rule fails; it passes only when every rule could
    be judged and held.

    - Errors, absolute: canary failures / requests ≤ `max_error_ratio` (1%).
    - Errors, relative to stable: canary ratio ≤ stable ratio × `error_ratio_factor` (2) +
      `error_ratio_margin` (0.5 percentage points). The factor catches a canary that doubles an
      existing error rate; the margin keeps one stray error from failing a canary against a stable
      version that had none (with 0 stable errors, 1 in 200 canary requests passes, 1 in 100 fails).
    - Latency: canary mean ≤ stable mean × `latency_factor` (1.5) + `latency_margin_ms` (5 ms); the
      same for queue time (`queue_factor`, `queue_margin_ms`). The factor is the regression we
      refuse; the margin keeps millisecond-scale jitter on fast models (a 2 ms model measured at
      4 ms) from failing a canary.
    - `max_pending`: the largest pending-request gauge seen on a canary pod; None (default): not judged.
    - Evidence: fewer than `min_requests` (20) canary requests, or fewer than
      `min_stable_requests` (20) stable ones (no baseline for the relative rules), is inconclusive.
      20 is the smallest count at which one failure (5%) is distinguishable from the 1% limit, and
      a few seconds of traffic for most services. Failures that already exceed `max_error_ratio` of
      `min_requests` fail at once: more requests could not bring the ratio back under it.
    - `inconclusive`: what an inconclusive analysis becomes (InconclusivePolicy, default WAIT).
    """

    max_error_ratio: float = 0.01
    error_ratio_factor: float = 2.0
    error_ratio_margin: float = 0.005
    latency_factor: float = 1.5
    latency_margin_ms: float = 5.0
    queue_factor: float = 1.5
    queue_margin_ms: float = 5.0
    max_pending: float | None = None
    min_requests: int = 20
    min_stable_requests: int = 20
    inconclusive: InconclusivePolicy = InconclusivePolicy.WAIT

    def __post_init__(self) -> None:
        for name in ("max_error_ratio", "error_ratio_factor", "error_ratio_margin", "latency_factor",
                     "latency_margin_ms", "queue_factor", "queue_margin_ms", "min_requests", "min_stable_requests"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"Thresholds.{name} must be a finite number ≥ 0, got {value!r}")
        if self.max_pending is not None and not self.max_pending >= 0:
            raise ValueError(f"Thresholds.max_pending must be ≥ 0 or None, got {self.max_pending!r}")
        object.__setattr__(self, "inconclusive", InconclusivePolicy(self.inconclusive))


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome  # after the inconclusive policy
    message: str  # for humans: every number the decision rests on
    reasons: tuple[str, ...] = ()  # one line per rule that failed, or per missing piece of evidence
    inconclusive: bool = False  # the evidence did not decide; `outcome` is what `policy` made of it
    policy: InconclusivePolicy | None = None  # the policy applied (only when inconclusive)
    canary: SideStats = field(default_factory=SideStats)
    stable: SideStats = field(default_factory=SideStats)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} ms"


def _describe(name: str, side: SideStats) -> str:
    text = (f"{name}: {side.requests:g} requests on {side.pods} pod(s), {side.failures:g} failed "
            f"({_pct(side.error_ratio)}), mean latency {_ms(side.mean_latency_ms)}, "
            f"mean queue {_ms(side.mean_queue_ms)}, max pending {side.max_pending:g}")
    if side.canceled:
        text += f", {side.canceled:g} canceled (not counted)"
    if side.reset_pods:
        text += f", counters restarted on {', '.join(side.reset_pods)}"
    if side.absent_pods:
        text += f", version not loaded on {', '.join(side.absent_pods)}"
    return text


def _inconclusive(reasons: list[str], canary: SideStats, stable: SideStats, thresholds: Thresholds,
                  summary: str) -> Verdict:
    policy = thresholds.inconclusive
    outcome = {InconclusivePolicy.WAIT: Outcome.INCONCLUSIVE, InconclusivePolicy.PASS: Outcome.PASS,
               InconclusivePolicy.FAIL: Outcome.FAIL}[policy]
    applied = {InconclusivePolicy.WAIT: "waiting for more traffic",
               InconclusivePolicy.PASS: "passed anyway",
               InconclusivePolicy.FAIL: "failed anyway"}[policy]
    message = (f"{outcome.value}: inconclusive ({'; '.join(reasons)}), {applied} "
               f"(inconclusive policy: {policy.value}). {summary}")
    return Verdict(outcome, message, tuple(reasons), True, policy, canary, stable)


def verdict(canary: SideStats, stable: SideStats, thresholds: Thresholds = Thresholds()) -> Verdict:
    """Pass, Fail or Inconclusive for the canary side against the stable side (see Thresholds)."""
    t = thresholds
    summary = f"{_describe('canary', canary)}; {_describe('stable', stable)}."

    def fail(reasons: list[str]) -> Verdict:
        return Verdict(Outcome.FAIL, f"Fail: {'; '.join(reasons)}. {summary}", tuple(reasons), False, None,
                       canary, stable)

    if canary.requests < t.min_requests:
        # Failures that exceed the limit even if every request still missing up to min_requests succeeded.
        if canary.failures / t.min_requests > t.max_error_ratio:
            return fail([f"canary error ratio {_pct(canary.error_ratio)} ({canary.failures:g}/{canary.requests:g}) "
                         f"exceeds max {_pct(t.max_error_ratio)} whatever follows: {canary.failures:g} failure(s) already "
                         f"more than {_pct(t.max_error_ratio)} of the minimum of {t.min_requests} requests"])
        return _inconclusive([f"canary served {canary.requests:g} requests, fewer than {t.min_requests}"],
                             canary, stable, t, summary)
    ratio = canary.error_ratio or 0.0
    if ratio > t.max_error_ratio:
        return fail([f"canary error ratio {_pct(ratio)} ({canary.failures:g}/{canary.requests:g}) > "
                     f"max {_pct(t.max_error_ratio)}"])
    if stable.requests < t.min_stable_requests:
        return _inconclusive([f"no baseline: stable served {stable.requests:g} requests, fewer than "
                              f"{t.min_stable_requests}"], canary, stable, t, summary)

    failed: list[str] = []
    held: list[str] = [f"canary error ratio {_pct(ratio)} ({canary.failures:g}/{canary.requests:g}) "
                       f"≤ max {_pct(t.max_error_ratio)}"]
    stable_ratio = stable.error_ratio or 0.0
    allowed_ratio = stable_ratio * t.error_ratio_factor + t.error_ratio_margin
    (failed if ratio > allowed_ratio else held).append(
        f"canary error ratio {_pct(ratio)} {'>' if ratio > allowed_ratio else '≤'} stable's {_pct(stable_ratio)} "
        f"× {t.error_ratio_factor:g} + {_pct(t.error_ratio_margin)} = {_pct(allowed_ratio)}")
    for what, ours, theirs, factor, margin in (
            ("latency", canary.mean_latency_ms, stable.mean_latency_ms, t.latency_factor, t.latency_margin_ms),
            ("queue time", canary.mean_queue_ms, stable.mean_queue_ms, t.queue_factor, t.queue_margin_ms)):
        if ours is None or theirs is None:
            continue  # no successful request on one side: the error rules above have spoken
        allowed = theirs * factor + margin
        (failed if ours > allowed else held).append(
            f"canary mean {what} {_ms(ours)} {'>' if ours > allowed else '≤'} stable's {_ms(theirs)} × {factor:g} "
            f"+ {margin:g} ms = {_ms(allowed)}")
    if t.max_pending is not None:
        over = canary.max_pending > t.max_pending
        (failed if over else held).append(
            f"canary pending requests {canary.max_pending:g} {'>' if over else '≤'} max {t.max_pending:g}")
    if failed:
        return fail(failed)
    return Verdict(Outcome.PASS, f"Pass: {'; '.join(held)}. {summary}", (), False, None, canary, stable)


def _iter_pairs(before: Iterable[Sample], after: Iterable[Sample]) -> Iterator[tuple[Sample, Sample]]:
    earlier = {s.pod: s for s in before}
    for later in after:
        if later.pod in earlier:
            yield earlier[later.pod], later


def side_deltas(before: Iterable[Sample], after: Iterable[Sample], model: str, version: str) -> list[PodDelta]:
    """delta() for every pod sampled both times (a pod seen only once is left out: no interval)."""
    return [delta(b, a, model, version) for b, a in _iter_pairs(before, after)]
