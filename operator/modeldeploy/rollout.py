"""The rollout state machine, pure: which pod template the pods run, whether a new one failed, and
the rollout's phase.

Every reconcile hands in the spec, the status it wrote last time and what it observed before
acting (the Deployment, the pods, Triton's answers). What it decides from them:

- the *target* template is what the spec asks for; the *stable* template is the last one that
  ran on every desired pod with Triton reporting its version ready. The stable template's spec
  sections (model, triton, resources, placement) are kept in status, so a rollback restores all
  of it: version, image, args and resources.
- the target *fails* on evidence: Triton refuses its version on one of its pods (once the pod's
  pin-loaded sidecar, where there is one, has pinned it), a container of
  one of its pods restarts `rollout.failAfterRestarts` times, one of its pods waits in
  CrashLoopBackOff/ImagePullBackOff/a config error for `rollout.failAfterUnhealthySeconds`, or the
  Deployment exceeds its progress deadline on it. One pod is enough once its evidence passes the
  threshold; a failure is then held, so a pod that recovers does not flip it back.
- a failure is held until the spec asks for another pod template (by fingerprint). Scaling and
  metadata edits leave the fingerprint alone, so they never redeploy a failed template. It is
  also dropped when the failed template itself proves good (with no rollback it keeps running).
- with `rollout.autoRollback` and a stable template to return to, the pods run the stable
  template again; otherwise the target's rollout is Failed and stays as Kubernetes left it.

The pods of each template are told apart by the modeldeploy.dev/pod-template annotation, so an
image-only change, which keeps the version label, is a rollout like any other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from modeldeploy.api import ModelDeployment, ModelSource, PlacementSpec, ResourcesSpec, TritonSpec
from modeldeploy.model_health import PodModelReport
from modeldeploy.pods import (
    LOAD_FAILURES,
    is_terminating,
    model_verdict,
    pin_settled,
    pod_problems,
    pod_template,
    rollout_progress,
    template_version,
)
from modeldeploy.render.deployment import deployment_template_fingerprint, pod_template_fingerprint

# The spec sections the pod template is made of (with metadata.name): what a rollback restores.
POD_TEMPLATE_SECTIONS = {"model": ModelSource, "triton": TritonSpec, "resources": ResourcesSpec,
                         "placement": PlacementSpec}

# Waiting states (as pods.pod_problems names them) that fail a template once they last long enough.
UNHEALTHY_WAITING = frozenset({"CrashLoopBackOff", "ImagePullBackOff", "CreateContainerConfigError",
                               "CreateContainerError"})


@dataclass(frozen=True)
class PodTemplate:
    """A pod template, and an object whose pods run it (its spec sections are the template's)."""

    fingerprint: str
    version: str
    spec: ModelDeployment

    @property
    def sections(self) -> dict[str, Any]:
        wire = self.spec.spec.wire()
        return {key: wire[key] for key in POD_TEMPLATE_SECTIONS if key in wire}


@dataclass(frozen=True)
class Failure:
    template: str  # fingerprint
    version: str
    message: str


@dataclass(frozen=True)
class RolloutDecision:
    target: PodTemplate
    stable: PodTemplate | None
    failure: Failure | None  # of the target; never of the stable template
    rolling_back: bool  # the pods are to run the stable template, not the target
    unhealthy_since: str | None  # when a target pod was first seen waiting unhealthy (RFC 3339)
    recheck_after: float | None  # seconds until that wait would fail the target

    @property
    def render(self) -> ModelDeployment:
        """The object to render children from: the spec, with the stable template's sections when
        rolling back (replicas, autoscaling, Service… stay the spec's)."""
        return self.stable.spec if self.rolling_back and self.stable is not None else self.target.spec

    @property
    def pending(self) -> bool:
        """The target has not proven good yet: it is being rolled out, or it failed."""
        return self.stable is None or self.stable.fingerprint != self.target.fingerprint


def template_of(md: ModelDeployment) -> PodTemplate:
    return PodTemplate(pod_template_fingerprint(md), md.spec.model.version, md)


def with_sections(md: ModelDeployment, sections: Mapping[str, Any]) -> ModelDeployment | None:
    """md whose pods run the template that `sections` describe; None if they no longer parse (a
    status edited by hand, or written by an operator whose API has since changed)."""
    try:
        update = {key: model.model_validate(sections.get(key, {})) for key, model in POD_TEMPLATE_SECTIONS.items()}
    except (ValidationError, TypeError, AttributeError):
        return None
    return md.model_copy(update={"spec": md.spec.model_copy(update=update)})


def stable_template(md: ModelDeployment, rollout: Mapping[str, Any]) -> PodTemplate | None:
    """The stable template recorded in status, fingerprinted by today's renderer (so an operator
    upgrade that changes the rendering does not make the spec's own template look new)."""
    sections = rollout.get("stableSpec")
    if not isinstance(sections, Mapping):
        return None
    spec = with_sections(md, sections)
    return template_of(spec) if spec is not None else None


def _seconds_between(start: str, end: str) -> float:
    return (datetime.fromisoformat(end.replace("Z", "+00:00"))
            - datetime.fromisoformat(start.replace("Z", "+00:00"))).total_seconds()


def _own_pods(pods: Sequence[Mapping[str, Any]], fingerprint: str) -> list[Mapping[str, Any]]:
    return sorted((p for p in pods if not is_terminating(p) and pod_template(p) == fingerprint),
                  key=lambda p: p["metadata"]["name"])


def proven_good(md: ModelDeployment, deployment: Mapping[str, Any] | None, pods: Sequence[Mapping[str, Any]],
                reports: Mapping[str, PodModelReport]) -> str:
    """The fingerprint of the template the Deployment runs, if it is rolled out on every desired pod
    and Triton reports its version ready on each; else "". No pods prove nothing (scaled to 0)."""
    fingerprint = deployment_template_fingerprint(deployment)
    if not fingerprint or not rollout_progress(deployment).complete:
        return ""
    own = _own_pods(pods, fingerprint)
    if not own or not model_verdict(md, template_version(deployment), own, reports).ready:
        return ""
    return fingerprint


def _restarts(pod: Mapping[str, Any], limit: int) -> str:
    """Why the pod's restarts fail its template, or ""."""
    status = pod.get("status", {})
    for container in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        count = container.get("restartCount", 0)
        if count >= limit:
            last = (container.get("lastState") or {}).get("terminated") or {}
            detail = ""
            if last:
                detail = (f"; last exit code {last.get('exitCode')}"
                          + (f" ({last['reason']})" if last.get("reason") else "")
                          + (f": {last['message'].strip()}" if last.get("message") else ""))
            return (f"pod {pod['metadata']['name']}: container {container.get('name')} restarted {count} times"
                    f"{detail}")
    return ""


@dataclass(frozen=True)
class Evidence:
    message: str  # "" while nothing fails the template
    unhealthy_since: str | None
    recheck_after: float | None


def failure_evidence(md: ModelDeployment, fingerprint: str, deployment: Mapping[str, Any] | None,
                     pods: Sequence[Mapping[str, Any]], reports: Mapping[str, PodModelReport],
                     unhealthy_since: str | None, now: str) -> Evidence:
    """Whether what was observed fails the pod template `fingerprint`, and the unhealthy clock."""
    own = _own_pods(pods, fingerprint)
    for pod in own:
        report = reports.get(pod["metadata"].get("uid", ""))
        # Deterministic, so one pod is evidence; on s3/gs/as only once the pod's version is pinned.
        if report is not None and report.reason in LOAD_FAILURES and pin_settled(pod):
            return Evidence(f"pod {pod['metadata']['name']}: {report.message}", None, None)
    for pod in own:
        if why := _restarts(pod, md.spec.rollout.fail_after_restarts):
            return Evidence(why, None, None)
    waiting = [p for p in pod_problems(own) if p.reason in UNHEALTHY_WAITING]
    since, recheck = None, None
    if waiting:
        since = unhealthy_since or now
        elapsed = max(0.0, _seconds_between(since, now))
        grace = md.spec.rollout.fail_after_unhealthy_seconds
        if elapsed >= grace:
            return Evidence(f"{waiting[0].message} (for {int(elapsed)} s)", None, None)
        recheck = grace - elapsed
    progress = rollout_progress(deployment)
    if progress.failed and deployment_template_fingerprint(deployment) == fingerprint:
        return Evidence(progress.message, None, None)
    return Evidence("", since, recheck)


def decide(md: ModelDeployment, previous: Mapping[str, Any], deployment: Mapping[str, Any] | None,
           pods: Sequence[Mapping[str, Any]], reports: Mapping[str, PodModelReport], now: str) -> RolloutDecision:
    """The rollout's next state, from the spec, the last status and what was observed before acting."""
    rollout = previous.get("rollout") or {}
    target = template_of(md)
    stable = stable_template(md, rollout)
    if (stable is None or stable.fingerprint != target.fingerprint) and \
            proven_good(md, deployment, pods, reports) == target.fingerprint:
        stable = target
    decision = RolloutDecision(target, stable, None, False, None, None)
    if not decision.pending:
        return decision

    failure: Failure | None = None
    since: str | None = None
    recheck: float | None = None
    if rollout.get("failedTemplate") == target.fingerprint:
        failure = Failure(target.fingerprint, rollout.get("failedVersion") or target.version,
                          rollout.get("failureMessage", ""))
    else:
        # The clock runs for one target: a new spec starts it again.
        running_since = rollout.get("unhealthySince") if rollout.get("targetTemplate") == target.fingerprint else None
        evidence = failure_evidence(md, target.fingerprint, deployment, pods, reports, running_since, now)
        if evidence.message:
            failure = Failure(target.fingerprint, target.version, evidence.message)
        since, recheck = evidence.unhealthy_since, evidence.recheck_after
    rolling_back = failure is not None and md.spec.rollout.auto_rollback and stable is not None
    return RolloutDecision(target, stable, failure, rolling_back, since, recheck)


@dataclass(frozen=True)
class Phase:
    name: str  # Idle | Progressing | Failed | RolledBack
    progressing: bool  # the Progressing condition's status
    reason: str
    message: str


def describe_change(stable: PodTemplate, target: PodTemplate, limit: int = 3) -> str:
    """What the target changes from the stable template, for people: "version 4", or
    "the change of triton.image (a → b)"."""
    before, after = _leaves(stable.sections), _leaves(target.sections)
    changed = sorted(key for key in before.keys() | after.keys() if before.get(key) != after.get(key))
    if changed in ([], ["model.version"]):
        return f"version {target.version}"
    shown = [f"{key} ({_short(before.get(key))} → {_short(after.get(key))})" for key in changed[:limit]]
    more = f" and {len(changed) - limit} more" if len(changed) > limit else ""
    return f"the change of {', '.join(shown)}{more}"


def _leaves(value: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted path → value of every non-mapping value; an empty mapping is the same as none."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_leaves(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def _short(value: Any) -> str:
    text = "unset" if value is None else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def phase(decision: RolloutDecision, deployment: Mapping[str, Any] | None) -> Phase:
    """The rollout's phase once this reconcile's changes are applied (`deployment` as stored)."""
    progress = rollout_progress(deployment)
    failure, stable = decision.failure, decision.stable
    if failure is not None and decision.rolling_back and stable is not None:
        what = describe_change(stable, decision.target)
        if progress.complete and deployment_template_fingerprint(deployment) == stable.fingerprint:
            return Phase("RolledBack", False, "RolledBack",
                         f"{what} failed and was rolled back to version {stable.version}: {failure.message}")
        return Phase("Progressing", True, "RollingBack",
                     f"{what} failed; rolling back to version {stable.version}: {progress.message}")
    if failure is not None:
        return Phase("Failed", False, "ProgressDeadlineExceeded" if progress.failed else "RolloutFailed",
                     failure.message)
    if progress.failed:
        return Phase("Failed", False, "ProgressDeadlineExceeded", progress.message)
    if progress.complete:
        return Phase("Idle", False, "RolloutComplete",
                     f"version {template_version(deployment)} is rolled out: {progress.message}")
    return Phase("Progressing", True, "RollingUpdate",
                 f"rolling out version {decision.render.spec.model.version}: {progress.message}")
