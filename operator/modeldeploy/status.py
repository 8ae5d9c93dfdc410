"""Pure status derivation: the observed world in, the status block and its conditions out.

Nothing here talks to the cluster or to Triton; the reconciler hands in what it saw.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modeldeploy import naming
from modeldeploy.api import (
    CONDITION_TYPES,
    Condition,
    Endpoints,
    ModelDeployment,
    ModelDeploymentStatus,
    RolloutStatus,
    ServedModelStatus,
    TensorStatus,
    VersionStatus,
)
from modeldeploy.model_health import PodModelReport
from modeldeploy.render.deployment import pod_template_fingerprint
from modeldeploy.triton_flags import GRPC_PORT, HTTP_PORT, METRICS_PORT


@dataclass(frozen=True)
class Problem:
    """Something that stops the operator from applying the spec (or makes it unservable)."""

    reason: str  # CamelCase: InvalidSpec, SecretNotFound, PVCNotFound, ChildConflict, ApplyFailed, ...
    message: str
    blocks_apply: bool = True


@dataclass(frozen=True)
class Observed:
    deployment: dict[str, Any] | None = None
    pods: Sequence[dict[str, Any]] = ()
    reports: Mapping[str, PodModelReport] = field(default_factory=dict)  # by pod uid
    problem: Problem | None = None  # a blocking problem found before or while applying
    side_problems: Sequence[Problem] = ()  # e.g. ServiceMonitor CRD missing: reported, not blocking


# --- pods ----------------------------------------------------------------------------------

POD_WAITING_REASONS = {
    "CrashLoopBackOff": "CrashLoopBackOff",
    "ImagePullBackOff": "ImagePullBackOff",
    "ErrImagePull": "ImagePullBackOff",
    "InvalidImageName": "ImagePullBackOff",
    "CreateContainerConfigError": "CreateContainerConfigError",
    "CreateContainerError": "CreateContainerError",
    "RunContainerError": "CrashLoopBackOff",
}

# Degraded reasons that will not clear without a change by a person: kstatus's Stalled.
STALLED_REASONS = frozenset({"InvalidSpec", "ChildConflict", "SecretNotFound", "PVCNotFound", "Forbidden",
                             "RolledBack", "RolloutFailed", "ProgressDeadlineExceeded", "ModelLoadFailed",
                             "ModelNotFound", "VersionNotLoaded"})

# Most specific and most actionable first.
DEGRADED_PRIORITY = ("InvalidSpec", "ChildConflict", "SecretNotFound", "PVCNotFound", "ApplyFailed", "RolledBack",
                     "ProgressDeadlineExceeded", "ModelLoadFailed", "CrashLoopBackOff", "ImagePullBackOff",
                     "CreateContainerConfigError", "CreateContainerError", "Unschedulable", "ModelNotFound",
                     "VersionNotLoaded", "TritonUnreachable", "ServiceMonitorUnavailable")


def _condition(obj: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    for cond in obj.get("status", {}).get("conditions") or []:
        if cond.get("type") == kind:
            return cond
    return {}


def is_terminating(pod: Mapping[str, Any]) -> bool:
    return bool(pod.get("metadata", {}).get("deletionTimestamp"))


def is_ready(pod: Mapping[str, Any]) -> bool:
    return _condition(pod, "Ready").get("status") == "True"


def pod_version(pod: Mapping[str, Any]) -> str:
    return (pod.get("metadata", {}).get("labels") or {}).get(naming.VERSION_LABEL, "")


def triton_container(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    return next((c for c in pod.get("status", {}).get("containerStatuses") or [] if c.get("name") == "triton"), None)


def is_running(pod: Mapping[str, Any]) -> bool:
    """Triton can answer at the pod's IP: phase Running, an IP, and its container running and past its
    startup probe (a crash-looping container has a Running pod but no server; one still loading its
    model serves no HTTP yet)."""
    status = pod.get("status", {})
    if status.get("phase") != "Running" or not status.get("podIP"):
        return False
    triton = triton_container(pod)
    return triton is None or ("running" in (triton.get("state") or {}) and triton.get("started", True) is not False)


def container_id(pod: Mapping[str, Any]) -> str:
    """Changes when the Triton container restarts inside the same pod (so a cached answer is not reused)."""
    triton = triton_container(pod) or {}
    return str(triton.get("containerID") or triton.get("restartCount", ""))


def pod_problems(pods: Sequence[Mapping[str, Any]]) -> list[Problem]:
    """What Kubernetes says is wrong with the pods, one Problem per pod, in pod-name order."""
    problems: list[Problem] = []
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        if is_terminating(pod):
            continue
        name = pod["metadata"]["name"]
        scheduled = _condition(pod, "PodScheduled")
        if scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
            problems.append(Problem("Unschedulable", f"pod {name}: {scheduled.get('message', '').strip()}", False))
            continue
        status = pod.get("status", {})
        for container in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
            waiting = (container.get("state") or {}).get("waiting") or {}
            reason = POD_WAITING_REASONS.get(waiting.get("reason", ""))
            if reason is None:
                continue
            detail = waiting.get("message", "")
            last = ((container.get("lastState") or {}).get("terminated")) or {}
            if reason == "CrashLoopBackOff" and last:
                detail = (f"last exit code {last.get('exitCode')}"
                          + (f" ({last['reason']})" if last.get("reason") else "")
                          + (f": {last['message'].strip()}" if last.get("message") else ""))
            text = f"pod {name}: container {container.get('name')} is in {waiting.get('reason')}"
            problems.append(Problem(reason, f"{text}: {detail}" if detail else text, False))
            break
    return problems


def summarize(problems: Sequence[Problem]) -> Problem | None:
    """The most important problem, mentioning how many more of its kind there are."""
    if not problems:
        return None
    rank = {reason: i for i, reason in enumerate(DEGRADED_PRIORITY)}
    first = min(problems, key=lambda p: rank.get(p.reason, len(rank)))
    same = [p for p in problems if p.reason == first.reason]
    if len(same) > 1:
        return Problem(first.reason, f"{first.message} (and {len(same) - 1} more pods)", first.blocks_apply)
    return first


# --- the Deployment's rollout, by kubectl rollout status's rules -----------------------------

@dataclass(frozen=True)
class RolloutProgress:
    complete: bool
    failed: bool
    message: str
    desired: int
    updated: int


def rollout_progress(deployment: Mapping[str, Any] | None) -> RolloutProgress:
    if deployment is None:
        return RolloutProgress(False, False, "the Deployment does not exist yet", 0, 0)
    spec, status = deployment.get("spec", {}), deployment.get("status", {})
    desired = spec.get("replicas", 1)
    updated = status.get("updatedReplicas", 0)
    if deployment.get("metadata", {}).get("generation", 0) > status.get("observedGeneration", 0):
        return RolloutProgress(False, False, "waiting for the Deployment's new spec to be observed", desired, updated)
    progressing = _condition(deployment, "Progressing")
    if progressing.get("reason") == "ProgressDeadlineExceeded":
        return RolloutProgress(False, True, progressing.get("message", "progress deadline exceeded"), desired, updated)
    if updated < desired:
        return RolloutProgress(False, False, f"{updated} of {desired} new replicas have been updated", desired, updated)
    replicas = status.get("replicas", 0)
    if replicas > updated:
        return RolloutProgress(False, False, f"{replicas - updated} old replicas are pending termination",
                               desired, updated)
    available = status.get("availableReplicas", 0)
    if available < updated:
        return RolloutProgress(False, False, f"{available} of {updated} updated replicas are available",
                               desired, updated)
    return RolloutProgress(True, False, f"{updated} of {desired} replicas updated and available", desired, updated)


def template_version(deployment: Mapping[str, Any] | None) -> str:
    if deployment is None:
        return ""
    labels = deployment.get("spec", {}).get("template", {}).get("metadata", {}).get("labels") or {}
    return labels.get(naming.VERSION_LABEL, "")


# --- rollback ------------------------------------------------------------------------------

def still_failed(md: ModelDeployment, previous: Mapping[str, Any]) -> bool:
    """Whether the spec still asks for the pod template whose rollout failed.

    Only a change to what the pods run retries it: scaling it, or editing its metadata, does not
    (a status written before failedTemplate existed falls back to the generation)."""
    rollout = previous.get("rollout") or {}
    if rollout.get("failedTemplate"):
        return rollout["failedTemplate"] == pod_template_fingerprint(md)
    return previous.get("observedGeneration") == md.metadata.generation


def serving_version(md: ModelDeployment, previous: Mapping[str, Any]) -> str:
    """The version to put in the pod template: spec's, unless its rollout failed and we roll back."""
    target = md.spec.model.version
    rollout = previous.get("rollout") or {}
    current = previous.get("currentVersion", "")
    if (md.spec.rollout.auto_rollback and rollout.get("failedVersion") == target and current and current != target
            and still_failed(md, previous)):
        return current
    return target


# --- conditions ----------------------------------------------------------------------------

def _merge_conditions(previous: Sequence[Mapping[str, Any]], fresh: Sequence[Condition],
                      now: str) -> list[dict[str, Any]]:
    """lastTransitionTime changes only when a condition's status flips."""
    before = {c.get("type"): c for c in previous}
    out: list[dict[str, Any]] = []
    for cond in fresh:
        old = before.get(cond.type)
        if old is not None and old.get("status") == cond.status and old.get("lastTransitionTime"):
            cond = cond.model_copy(update={"last_transition_time": old["lastTransitionTime"]})
        else:
            cond = cond.model_copy(update={"last_transition_time": now})
        out.append(cond.wire())
    return out


def _served_model(md: ModelDeployment, reports: Sequence[PodModelReport]) -> ServedModelStatus:
    signature = next((r.signature for r in reports if r.version_ready and r.signature is not None), None)
    if signature is None:
        return ServedModelStatus(name=md.model_name)
    return ServedModelStatus(
        name=md.model_name, platform=signature.platform, backend=signature.backend,
        max_batch_size=signature.max_batch_size,
        inputs=[TensorStatus(name=t.name, datatype=t.datatype, shape=list(t.shape)) for t in signature.inputs],
        outputs=[TensorStatus(name=t.name, datatype=t.datatype, shape=list(t.shape)) for t in signature.outputs])


def _versions(pods: Sequence[Mapping[str, Any]], reports: Mapping[str, PodModelReport]) -> list[VersionStatus]:
    by_version: dict[str, VersionStatus] = {}
    for pod in pods:
        if is_terminating(pod):
            continue
        version = pod_version(pod)
        entry = by_version.setdefault(version, VersionStatus(version=version))
        entry.replicas += 1
        entry.ready_replicas += is_ready(pod)
        report = reports.get(pod["metadata"].get("uid", ""))
        entry.model_ready += bool(report is not None and report.version_ready)
    return [by_version[v] for v in sorted(by_version, key=lambda v: (len(v), v))]


@dataclass(frozen=True)
class ModelVerdict:
    ready: bool
    reason: str
    message: str
    failed: bool  # Triton refused the version (a load failure), not merely "not yet"


def model_verdict(md: ModelDeployment, version: str, pods: Sequence[Mapping[str, Any]],
                  reports: Mapping[str, PodModelReport]) -> ModelVerdict:
    """Does Triton itself say `version` is loaded on every running pod of that version?"""
    name = md.model_name
    running = sorted((p for p in pods if not is_terminating(p) and pod_version(p) == version and is_running(p)),
                     key=lambda p: p["metadata"]["name"])
    if not running:
        return ModelVerdict(False, "NoPods", f"no running pod serves {name} version {version} yet", False)
    for pod in running:
        report = reports.get(pod["metadata"].get("uid", ""))
        if report is None:
            return ModelVerdict(False, "ModelStatusUnknown", f"pod {pod['metadata']['name']}: not probed yet", False)
        if not report.version_ready:
            failed = report.reason in ("ModelLoadFailed", "ModelNotFound", "VersionNotLoaded")
            others = sum(1 for p in running if not getattr(reports.get(p["metadata"].get("uid", "")),
                                                            "version_ready", False)) - 1
            more = f" (and {others} more pods)" if others > 0 else ""
            return ModelVerdict(False, report.reason or "ModelNotReady",
                                f"pod {pod['metadata']['name']}: {report.message}{more}", failed)
    return ModelVerdict(True, "ModelLoaded",
                        f"Triton reports {name} version {version} ready on {len(running)} "
                        f"pod{'s' if len(running) != 1 else ''}", False)


def derive_status(md: ModelDeployment, observed: Observed, previous: Mapping[str, Any], now: str) -> dict[str, Any]:
    """The whole status block for md, given what was observed."""
    target = md.spec.model.version
    deployment = observed.deployment
    pods = [p for p in observed.pods if not is_terminating(p)]
    progress = rollout_progress(deployment)
    serving = template_version(deployment) or serving_version(md, previous)
    rolled_back = serving != target
    previous_rollout = previous.get("rollout") or {}
    failed = still_failed(md, previous)
    failed_version = previous_rollout.get("failedVersion", "") if failed else ""
    failure_message = previous_rollout.get("failureMessage", "") if failed else ""

    current = previous.get("currentVersion", "")
    if progress.complete and serving:
        current = serving

    # Two questions: is the version the template names (the target, or the one rolled back to)
    # loaded, which decides Ready and failure; and does the version that serves now still serve,
    # which ModelReady reports: the current version while it has running pods (a rollout or a
    # rollback leaves them up until the new ones are ready), else the one taking over.
    verdict = model_verdict(md, serving, pods, observed.reports)
    serving_now = current if current and current != serving and any(
        pod_version(p) == current and is_running(p) for p in pods) else serving
    model_ready = verdict if serving_now == serving else model_verdict(md, serving_now, pods, observed.reports)
    pod_issues = pod_problems(pods)
    target_pod_issues = [p for p in pod_problems([q for q in pods if pod_version(q) == target])
                         if p.reason in ("CrashLoopBackOff", "ImagePullBackOff", "CreateContainerConfigError")]

    # A version rollout fails when Triton refuses the version, its pods crash, or the deadline passes.
    if not rolled_back and serving == target and target != current and current and observed.problem is None:
        if progress.failed or verdict.failed or target_pod_issues:
            failed_version = target
            failure_message = (verdict.message if verdict.failed else target_pod_issues[0].message
                               if target_pod_issues else progress.message)

    problems: list[Problem] = list(pod_issues) + list(observed.side_problems)
    if observed.problem is not None:
        problems.append(observed.problem)
    if progress.failed:
        problems.append(Problem("ProgressDeadlineExceeded", progress.message, False))
    if verdict.failed or verdict.reason == "TritonUnreachable":
        problems.append(Problem(verdict.reason, verdict.message, False))
    if failed_version and md.spec.rollout.auto_rollback and current and current != failed_version:
        problems.append(Problem("RolledBack", f"version {failed_version} failed and was rolled back to {current}"
                                + (f": {summarize(problems).message}" if summarize(problems) else ""), False))
    degraded = summarize(problems)

    desired = deployment.get("spec", {}).get("replicas", 0) if deployment else 0
    dstatus = (deployment or {}).get("status", {})
    ready_replicas = dstatus.get("readyReplicas", 0)

    # Ready: the target version serves, on every desired pod, and Triton agrees.
    if observed.problem is not None:
        ready = (False, observed.problem.reason, observed.problem.message)
    elif failed_version == target:
        ready = (False, degraded.reason if degraded else "RolloutFailed",
                 f"version {target} failed: {degraded.message if degraded else 'rollout failed'}")
    elif deployment is not None and desired == 0:
        ready = (False, "ScaledToZero", "replicas is 0: no pod serves the model")
    elif not progress.complete:
        detail = f"; {degraded.message}" if degraded and degraded.message != progress.message else ""
        ready = (False, degraded.reason if degraded else "RolloutInProgress",
                 f"rolling out version {target}: {progress.message}{detail}")
    elif not verdict.ready:
        ready = (False, verdict.reason, verdict.message)
    else:
        ready = (True, "ModelServing", f"{md.model_name} version {target} serves on {ready_replicas}/{desired} pods")

    available = _condition(deployment or {}, "Available")
    if deployment is None:
        available_cond = ("False", "DeploymentMissing", "the Deployment does not exist yet")
    else:
        available_cond = (available.get("status", "Unknown"), available.get("reason") or "Unknown",
                          available.get("message", ""))

    if observed.problem is not None and observed.problem.blocks_apply:
        # Nothing is being rolled out: the spec could not be applied at all.
        phase = "Failed" if deployment is None else "Idle"
        progressing = ("False", observed.problem.reason, observed.problem.message)
    elif failed_version and md.spec.rollout.auto_rollback and current and current != failed_version:
        phase = "RolledBack" if progress.complete else "Progressing"
        progressing = ("False", "RolledBack", f"version {failed_version} was rolled back to {current}") \
            if progress.complete else ("True", "RollingBack", f"rolling back to version {current}: {progress.message}")
    elif failed_version or progress.failed:
        phase = "Failed"
        progressing = ("False", "ProgressDeadlineExceeded" if progress.failed else "RolloutFailed",
                       degraded.message if degraded else progress.message)
    elif progress.complete:
        phase = "Idle"
        progressing = ("False", "RolloutComplete", f"version {current} is rolled out: {progress.message}")
    else:
        phase = "Progressing"
        progressing = ("True", "RollingUpdate", f"rolling out version {serving}: {progress.message}")

    generation = md.metadata.generation
    stalled = degraded is not None and (degraded.reason in STALLED_REASONS or observed.problem is not None)
    reconciling = not ready[0] and not stalled and ready[1] != "ScaledToZero"
    fresh = [
        Condition(type="Ready", status="True" if ready[0] else "False", reason=ready[1], message=ready[2],
                  last_transition_time="", observed_generation=generation),
        Condition(type="Available", status=available_cond[0], reason=available_cond[1], message=available_cond[2],
                  last_transition_time="", observed_generation=generation),
        Condition(type="ModelReady", status="True" if model_ready.ready else "False", reason=model_ready.reason,
                  message=model_ready.message, last_transition_time="", observed_generation=generation),
        Condition(type="Progressing", status=progressing[0], reason=progressing[1], message=progressing[2],
                  last_transition_time="", observed_generation=generation),
        Condition(type="Degraded", status="True" if degraded else "False",
                  reason=degraded.reason if degraded else "AsExpected",
                  message=degraded.message if degraded else "", last_transition_time="",
                  observed_generation=generation),
        Condition(type="Reconciling", status="True" if reconciling else "False",
                  reason=ready[1] if reconciling else "Reconciled",
                  message=ready[2] if reconciling else "", last_transition_time="", observed_generation=generation),
        Condition(type="Stalled", status="True" if stalled else "False",
                  reason=degraded.reason if stalled and degraded else "NotStalled",
                  message=degraded.message if stalled and degraded else "", last_transition_time="",
                  observed_generation=generation),
    ]
    assert [c.type for c in fresh] == list(CONDITION_TYPES)

    ready_reports = [observed.reports[p["metadata"]["uid"]] for p in pods
                     if pod_version(p) == serving and p["metadata"].get("uid") in observed.reports]
    host = naming.service_host(md.name, md.namespace)
    status = ModelDeploymentStatus(
        observed_generation=generation,
        replicas=dstatus.get("replicas", 0),
        ready_replicas=ready_replicas,
        updated_replicas=dstatus.get("updatedReplicas", 0),
        available_replicas=dstatus.get("availableReplicas", 0),
        replica_summary=f"{ready_replicas}/{desired}",
        selector=naming.selector_string(md.name),
        current_version=current,
        target_version=target,
        rollout=RolloutStatus(phase=phase, updated_replicas=progress.updated, desired_replicas=progress.desired,
                              failed_version=failed_version, failure_message=failure_message if failed_version else "",
                              failed_template=pod_template_fingerprint(md) if failed_version else "",
                              message=progressing[2]),
        versions=_versions(pods, observed.reports),
        endpoints=Endpoints(http=f"http://{host}:{HTTP_PORT}", grpc=f"{host}:{GRPC_PORT}",
                            metrics=f"http://{host}:{METRICS_PORT}/metrics"),
        model=_served_model(md, ready_reports),
    ).wire()
    status["conditions"] = _merge_conditions(previous.get("conditions") or [], fresh, now)
    return status


def invalid_status(generation: int | None, name: str, problem: Problem, previous: Mapping[str, Any],
                   now: str, *, stalled: bool = True) -> dict[str, Any]:
    """Status for a spec the operator cannot act on: say why, keep what is still true of the pods.

    stalled: a person must act (a bad spec); otherwise the operator keeps retrying (Reconciling)."""
    before = {c.get("type"): c for c in previous.get("conditions") or []}
    fresh: list[Condition] = []
    for kind in CONDITION_TYPES:
        if kind in ("Ready", "Degraded", "Stalled", "Reconciling"):
            true = {"Ready": False, "Degraded": True, "Stalled": stalled, "Reconciling": not stalled}[kind]
            quiet = kind == "Stalled" and not stalled
            fresh.append(Condition(type=kind, status="True" if true else "False",
                                   reason="NotStalled" if quiet else problem.reason,
                                   message="" if quiet else problem.message,
                                   last_transition_time="", observed_generation=generation))
        elif kind in before:
            fresh.append(Condition.model_validate({**before[kind], "observedGeneration": generation}))
        else:
            fresh.append(Condition(type=kind, status="Unknown", reason=problem.reason,
                                   message="not evaluated: the spec cannot be applied", last_transition_time="",
                                   observed_generation=generation))
    kept = {k: v for k, v in previous.items() if k not in ("conditions", "observedGeneration")}
    return {**kept, "observedGeneration": generation, "selector": naming.selector_string(name),
            "conditions": _merge_conditions(previous.get("conditions") or [], fresh, now)}

