"""Pure inspection of what Kubernetes and Triton say about a ModelDeployment's pods and Deployment.

Shared by the rollout state machine (rollout.py) and the status it reports (status.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modeldeploy import naming
from modeldeploy.api import ModelDeployment
from modeldeploy.model_health import PodModelReport
from modeldeploy.render.deployment import PIN_LOADED_CONTAINER, TRITON_CONTAINER


@dataclass(frozen=True)
class Problem:
    """Something that stops the operator from applying the spec (or makes it unservable)."""

    reason: str  # CamelCase: InvalidSpec, SecretNotFound, PVCNotFound, ChildConflict, ApplyFailed, ...
    message: str
    blocks_apply: bool = True


# Triton's reasons that a version will not load on a pod (deterministic, unlike "still loading").
LOAD_FAILURES = frozenset({"ModelLoadFailed", "ModelNotFound", "VersionNotLoaded"})


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

# Most specific and most actionable first.
DEGRADED_PRIORITY = ("InvalidSpec", "ChildConflict", "SecretNotFound", "PVCNotFound", "ApplyFailed", "RolledBack",
                     "ProgressDeadlineExceeded", "ModelLoadFailed", "CrashLoopBackOff", "ImagePullBackOff",
                     "CreateContainerConfigError", "CreateContainerError", "Unschedulable", "ModelNotFound",
                     "VersionNotLoaded", "TritonUnreachable", "ServiceMonitorUnavailable")


def condition_of(obj: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    for cond in obj.get("status", {}).get("conditions") or []:
        if cond.get("type") == kind:
            return cond
    return {}


def is_terminating(pod: Mapping[str, Any]) -> bool:
    return bool(pod.get("metadata", {}).get("deletionTimestamp"))


def is_ready(pod: Mapping[str, Any]) -> bool:
    return condition_of(pod, "Ready").get("status") == "True"


def pod_version(pod: Mapping[str, Any]) -> str:
    return (pod.get("metadata", {}).get("labels") or {}).get(naming.VERSION_LABEL, "")


def pod_template(pod: Mapping[str, Any]) -> str:
    """The fingerprint of the pod template that made the pod ("" for a pod from before it was recorded)."""
    return (pod.get("metadata", {}).get("annotations") or {}).get(naming.POD_TEMPLATE_ANNOTATION, "")


def triton_container(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    return container_status(pod, TRITON_CONTAINER)


def container_status(pod: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    return next((c for c in pod.get("status", {}).get("containerStatuses") or [] if c.get("name") == name), None)


def is_running(pod: Mapping[str, Any]) -> bool:
    """Triton can answer at the pod's IP: phase Running, an IP, and its container running and past its
    startup probe (a crash-looping container has a Running pod but no server; one still loading its
    model serves no HTTP yet)."""
    status = pod.get("status", {})
    if status.get("phase") != "Running" or not status.get("podIP"):
        return False
    triton = triton_container(pod)
    return triton is None or ("running" in (triton.get("state") or {}) and triton.get("started", True) is not False)


def pin_settled(pod: Mapping[str, Any]) -> bool:
    """Whether the pod's pin-loaded sidecar, if it has one, has done its part for the running Triton
    (pin_loaded.py): until then Triton may serve what the repository's own policy loads."""
    sidecar = container_status(pod, PIN_LOADED_CONTAINER)
    return sidecar is None or bool(sidecar.get("ready"))


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
        scheduled = condition_of(pod, "PodScheduled")
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
    progressing = condition_of(deployment, "Progressing")
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


def spec_replicas(deployment: Mapping[str, Any] | None) -> int:
    """The replica count a Deployment asks for (0 when there is none)."""
    return int((deployment or {}).get("spec", {}).get("replicas", 0))


def template_version(deployment: Mapping[str, Any] | None) -> str:
    if deployment is None:
        return ""
    labels = deployment.get("spec", {}).get("template", {}).get("metadata", {}).get("labels") or {}
    return labels.get(naming.VERSION_LABEL, "")


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
        if not report.version_ready and not pin_settled(pod):
            # Triton serves what the repository's own policy loaded until the sidecar pins the version.
            return ModelVerdict(False, "VersionPinning",
                                f"pod {pod['metadata']['name']}: the pin-loaded sidecar is loading version {version} "
                                f"of {name} ({report.message})", False)
        if not report.version_ready:
            failed = report.reason in LOAD_FAILURES
            others = sum(1 for p in running if not getattr(reports.get(p["metadata"].get("uid", "")),
                                                            "version_ready", False)) - 1
            more = f" (and {others} more pods)" if others > 0 else ""
            return ModelVerdict(False, report.reason or "ModelNotReady",
                                f"pod {pod['metadata']['name']}: {report.message}{more}", failed)
    return ModelVerdict(True, "ModelLoaded",
                        f"Triton reports {name} version {version} ready on {len(running)} "
                        f"pod{'s' if len(running) != 1 else ''}", False)


