"""Pure status derivation: the observed world in, the status block and its conditions out.

Nothing here talks to the cluster or to Triton; the reconciler hands in what it saw.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modeldeploy import canary, naming, rollout
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
from modeldeploy.pods import (
    Problem,
    condition_of,
    is_ready,
    is_running,
    is_terminating,
    model_verdict,
    pod_problems,
    pod_template,
    pod_version,
    rollout_progress,
    spec_replicas,
    summarize,
    template_version,
)
from modeldeploy.render.deployment import deployment_template_fingerprint
from modeldeploy.rollout import RolloutDecision
from modeldeploy.triton_flags import GRPC_PORT, HTTP_PORT, METRICS_PORT


# Degraded reasons that will not clear without a change by a person: kstatus's Stalled.
STALLED_REASONS = frozenset({"InvalidSpec", "ChildConflict", "SecretNotFound", "PVCNotFound", "Forbidden",
                             "RolledBack", "RolloutFailed", "ProgressDeadlineExceeded", "ModelLoadFailed",
                             "ModelNotFound", "VersionNotLoaded", canary.ANALYSIS_FAILED,
                             canary.ANALYSIS_INCONCLUSIVE, canary.CANARY_FAILED, canary.ABORTED_BY_SPEC})

# The step machine's fields in status.rollout (State.to_status), kept after a promotion as the record of the
# rollout that made the stable version.
CANARY_FIELDS = ("canaryTemplate", "canaryVersion", "step", "stepStartedAt", "weight", "analysis")


@dataclass(frozen=True)
class Observed:
    deployment: dict[str, Any] | None = None
    pods: Sequence[dict[str, Any]] = ()
    reports: Mapping[str, PodModelReport] = field(default_factory=dict)  # by pod uid
    problem: Problem | None = None  # a blocking problem found before or while applying
    side_problems: Sequence[Problem] = ()  # e.g. ServiceMonitor CRD missing: reported, not blocking
    # Canary and BlueGreen: the other Deployment (the canary's or the preview's, or the old version's until it
    # goes), counted in the replica fields beside `deployment`.
    other_deployment: dict[str, Any] | None = None


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


def _of_template(pods: Sequence[Mapping[str, Any]], fingerprint: str) -> list[Mapping[str, Any]]:
    """The pods a template made; all of them for a Deployment from before templates were annotated."""
    return [p for p in pods if pod_template(p) == fingerprint] if fingerprint else list(pods)


def _progressive_conditions(step: canary.Decision, strategy: str, ready: tuple[bool, str, str],
                            phase: rollout.Phase, degraded: Problem | None) -> tuple[tuple[bool, str, str], rollout.Phase,
                                                                                     Problem | None]:
    """Ready, the phase (Progressing) and Degraded while a Canary or BlueGreen rollout is under way or aborted:
    the stable version serves (Available, ModelReady speak of it), the target does not serve everywhere yet."""
    if step.state is None or step.promote:
        return ready, phase, degraded  # no canary beside the stable version: as any other rollout
    if step.abort is not None:
        reason = step.abort.reason
        return ((False, reason, step.message), rollout.Phase(step.phase, False, reason, step.message),
                Problem(reason, step.message, False))
    paused = step.phase == canary.PAUSED
    reason = "RolloutPaused" if paused else "RolloutInProgress"
    return ((False, reason, step.message), rollout.Phase(step.phase, True, "RolloutPaused" if paused else strategy,
                                                         step.message), degraded)


def derive_status(md: ModelDeployment, observed: Observed, previous: Mapping[str, Any], now: str,
                  decision: RolloutDecision | None = None,
                  progressive_step: canary.Decision | None = None) -> dict[str, Any]:
    """The whole status block for md, given what was observed (after this reconcile's changes) and
    the rollout decision it acted on (decided from the same observation when not given); with Canary and
    BlueGreen, also the step machine's decision."""
    target = md.spec.model.version
    deployment = observed.deployment
    pods = [p for p in observed.pods if not is_terminating(p)]
    if decision is None:
        decision = rollout.decide(md, previous, deployment, pods, observed.reports, now)
    progress = rollout_progress(deployment)
    serving = template_version(deployment) or decision.render.spec.model.version
    failure, stable = decision.failure, decision.stable

    current = previous.get("currentVersion", "")
    if progress.complete and serving:
        current = serving

    # Two questions: is the template the Deployment runs (the target, or the stable one rolled back
    # to) serving its version, which decides Ready; and does what serves now still serve, which
    # ModelReady reports: the stable template while it has running pods (a rollout or a rollback
    # leaves them up until the new ones are ready), else the one taking over.
    running_fingerprint = deployment_template_fingerprint(deployment)
    verdict = model_verdict(md, serving, _of_template(pods, running_fingerprint), observed.reports)
    model_ready = verdict
    if stable is not None and stable.fingerprint != running_fingerprint and any(
            is_running(p) for p in _of_template(pods, stable.fingerprint)):
        model_ready = model_verdict(md, stable.version, _of_template(pods, stable.fingerprint), observed.reports)
    elif not running_fingerprint and current and current != serving and any(
            pod_version(p) == current and is_running(p) for p in pods):
        model_ready = model_verdict(md, current, pods, observed.reports)

    problems: list[Problem] = list(pod_problems(pods)) + list(observed.side_problems)
    if observed.problem is not None:
        problems.append(observed.problem)
    if progress.failed:
        problems.append(Problem("ProgressDeadlineExceeded", progress.message, False))
    if verdict.failed or verdict.reason == "TritonUnreachable":
        problems.append(Problem(verdict.reason, verdict.message, False))
    if failure is not None and decision.rolling_back and stable is not None:
        problems.append(Problem("RolledBack", f"{rollout.describe_change(stable, decision.target)} failed and was "
                                              f"rolled back to version {stable.version}: {failure.message}", False))
    degraded = summarize(problems)

    desired = spec_replicas(deployment)
    dstatus = (deployment or {}).get("status", {})
    ready_replicas = dstatus.get("readyReplicas", 0)

    # Ready: the target version serves, on every desired pod, and Triton agrees.
    if observed.problem is not None:
        ready = (False, observed.problem.reason, observed.problem.message)
    elif failure is not None:
        what = rollout.describe_change(stable, decision.target) if stable is not None else f"version {target}"
        rolled_back = degraded is not None and degraded.reason == "RolledBack"
        ready = (False, degraded.reason if degraded else "RolloutFailed",
                 degraded.message if degraded and rolled_back else f"{what} failed: {failure.message}")
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

    available = condition_of(deployment or {}, "Available")
    if deployment is None:
        available_cond = ("False", "DeploymentMissing", "the Deployment does not exist yet")
    else:
        available_cond = (available.get("status", "Unknown"), available.get("reason") or "Unknown",
                          available.get("message", ""))

    if observed.problem is not None and observed.problem.blocks_apply:
        # Nothing is being rolled out: the spec could not be applied at all.
        phase = rollout.Phase("Failed" if deployment is None else "Idle", False, observed.problem.reason,
                              observed.problem.message)
    else:
        phase = rollout.phase(decision, deployment)
    if progressive_step is not None:
        ready, phase, degraded = _progressive_conditions(progressive_step, md.spec.rollout.strategy, ready, phase,
                                                         degraded)
    progressing = ("True" if phase.progressing else "False", phase.reason, phase.message)

    generation = md.metadata.generation
    # A failed template waits for a person (a new spec) whatever the pods' own state says.
    stalled = degraded is not None and (degraded.reason in STALLED_REASONS or observed.problem is not None
                                        or failure is not None)
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
    counted = [d for d in (deployment, observed.other_deployment) if d is not None]

    def total(field: str) -> int:
        return sum(int(d.get("status", {}).get(field, 0)) for d in counted)

    status = ModelDeploymentStatus(
        observed_generation=generation,
        replicas=total("replicas"),
        ready_replicas=total("readyReplicas"),
        updated_replicas=total("updatedReplicas"),
        available_replicas=total("availableReplicas"),
        replica_summary=f"{total('readyReplicas')}/{sum(spec_replicas(d) for d in counted)}",
        selector=naming.selector_string(md.name),
        current_version=current,
        target_version=target,
        rollout=RolloutStatus(
            phase=phase.name, updated_replicas=progress.updated, desired_replicas=progress.desired,
            target_template=decision.target.fingerprint,
            stable_template=stable.fingerprint if stable else "", stable_version=stable.version if stable else "",
            stable_spec=stable.sections if stable else None,
            failed_version=failure.version if failure else "", failure_message=failure.message if failure else "",
            failed_template=failure.template if failure else "", unhealthy_since=decision.unhealthy_since,
            message=phase.message),
        versions=_versions(pods, observed.reports),
        endpoints=Endpoints(http=f"http://{host}:{HTTP_PORT}", grpc=f"{host}:{GRPC_PORT}",
                            metrics=f"http://{host}:{METRICS_PORT}/metrics"),
        model=_served_model(md, ready_reports),
    ).wire()
    if progressive_step is not None:
        status["rollout"].update(_canary_fields(progressive_step, previous.get("rollout") or {}, stable))
    status["conditions"] = _merge_conditions(previous.get("conditions") or [], fresh, now)
    return status


def _canary_fields(step: canary.Decision, previous: Mapping[str, Any],
                   stable: rollout.PodTemplate | None) -> dict[str, Any]:
    """status.rollout's step machine fields: the decision's state, or, once settled, those of the rollout that
    made the stable version (so its last analysis stays visible)."""
    if step.state is not None:
        return {"phase": step.phase, "message": step.message, **step.state.to_status()}
    if stable is not None and previous.get("canaryTemplate") == stable.fingerprint:
        return {key: previous[key] for key in CANARY_FIELDS if key in previous}
    return {}


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

