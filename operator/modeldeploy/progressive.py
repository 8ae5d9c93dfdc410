"""Canary and BlueGreen on the cluster, pure: which of the two Deployments runs which template, what the step
machine (canary.py) is shown of them, and the children that carry out its decision.

The two Deployments are slots, `<name>` and `<name>-b`. Neither is "the canary" for good: the *stable* slot runs
the stable template (rollout.py's: the last that served on every pod), the other one runs the target while a
canary or a preview is under way, and promotion swaps the roles without restarting a pod. Which slot is stable is
read off the cluster each time (the one whose pod template is the stable one), not remembered, so a lost status
write or an operator restart cannot put the stable version on the wrong side.

RollingUpdate keeps using one Deployment: the stable slot (`<name>`, unless a Canary or BlueGreen rollout left the
stable version on `<name>-b`); the other slot is deleted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modeldeploy import canary, naming, rollout
from modeldeploy.analysis import Verdict
from modeldeploy.api import ModelDeployment
from modeldeploy.model_health import PodModelReport
from modeldeploy.pods import is_ready, is_terminating, pod_problems, pod_template, spec_replicas
from modeldeploy.render import owned, render_beside, render_children
from modeldeploy.render.capabilities import ServerCapabilities
from modeldeploy.render.deployment import deployment_template_fingerprint, render_deployment
from modeldeploy.render.service import render_service

FIRST = "Deployment"
SECOND = f"Deployment{naming.SECOND_SLOT}"
PREVIEW = f"Service{naming.PREVIEW_SUFFIX}"
CANARY_SERVICE = f"Service{naming.CANARY_SUFFIX}"


def is_progressive(md: ModelDeployment) -> bool:
    return md.spec.rollout.strategy in ("Canary", "BlueGreen")


def route_of(md: ModelDeployment) -> tuple[str, str] | None:
    """(namespace, name) of the HTTPRoute a Canary's weights are set on; None: split by replica ratio."""
    canary = md.spec.rollout.canary
    gateway = canary.gateway_api if md.spec.rollout.strategy == "Canary" and canary is not None else None
    return (gateway.namespace or md.namespace, gateway.http_route) if gateway is not None else None


def needs_route(md: ModelDeployment, previous: Mapping[str, Any], children: Mapping[str, Any]) -> bool:
    """Whether this reconcile reads the HTTPRoute: a routed Canary with a rollout under way (the stable template
    is not the spec's), or a canary Service the route may still send to. A settled object reads nothing."""
    if route_of(md) is None:
        return False
    stable = rollout.stable_template(md, previous.get("rollout") or {})
    return (stable is not None and stable.fingerprint != rollout.template_of(md).fingerprint) \
        or children.get(CANARY_SERVICE) is not None


@dataclass(frozen=True)
class Slots:
    stable: str  # the key (FIRST or SECOND) of the Deployment that runs the stable template
    other: str  # the other one: the target's while a canary or preview is under way

    @staticmethod
    def suffix(key: str) -> str:
        return key[len(FIRST):]


def assign_slots(children: Mapping[str, Any], stable_template: str) -> Slots:
    """The stable slot is the Deployment that runs the stable template (the larger, if both do); failing that
    the larger of those that exist (a first version, or a status that lost its stable template); else the first."""
    def replicas(key: str) -> int:
        found = children.get(key)
        return spec_replicas(found) if found is not None else -1

    existing = [key for key in (FIRST, SECOND) if children.get(key) is not None]
    running_stable = [key for key in existing
                      if stable_template and deployment_template_fingerprint(children[key]) == stable_template]
    stable = max(running_stable or existing or [FIRST], key=replicas)  # ties: the first slot
    return Slots(stable, SECOND if stable == FIRST else FIRST)


def in_slot(pod: Mapping[str, Any], key: str) -> bool:
    labels = pod.get("metadata", {}).get("labels") or {}
    return labels.get(naming.SLOT_LABEL) == naming.slot_labels(Slots.suffix(key)).get(naming.SLOT_LABEL)


def side_pods(pods: Sequence[Mapping[str, Any]], key: str, template: str) -> list[Mapping[str, Any]]:
    """The pods of one side: its slot's, running `template`, not going away."""
    return [p for p in pods if in_slot(p, key) and pod_template(p) == template and not is_terminating(p)]


@dataclass(frozen=True)
class Step:
    """One decision of a Canary or BlueGreen rollout, with what it was decided from."""

    md: ModelDeployment
    target: rollout.PodTemplate
    stable: rollout.PodTemplate | None  # before this decision's promotion
    slots: Slots
    decision: canary.Decision
    evidence: rollout.Evidence | None  # the target's pods failing (rollout.py), while a canary is under way

    @property
    def under_way(self) -> bool:
        """A canary or preview of the target beside the stable version (not a first version, not settled)."""
        return self.stable is not None and self.stable.fingerprint != self.target.fingerprint

    @property
    def stable_after(self) -> rollout.PodTemplate | None:
        return self.target if self.decision.promote else self.stable

    @property
    def serving_slot(self) -> str:
        """The Deployment whose pods serve once this decision is carried out (the promoted canary's, after a
        promotion): the one status speaks of."""
        return self.slots.other if self.decision.promote else self.slots.stable

    @property
    def beside_slot(self) -> str:
        """The other Deployment, whose pods status counts beside the serving one's while they run."""
        return self.slots.stable if self.decision.promote else self.slots.other

    def scrape_sides(self, pods: Sequence[Mapping[str, Any]]) -> tuple[list[Mapping[str, Any]],
                                                                         list[Mapping[str, Any]]]:
        """(canary pods, stable pods) an analysis scrapes."""
        stable = self.stable.fingerprint if self.stable is not None else ""
        return (side_pods(pods, self.slots.other, self.target.fingerprint),
                side_pods(pods, self.slots.stable, stable))


def decide(md: ModelDeployment, previous: Mapping[str, Any], children: Mapping[str, Any],
           pods: Sequence[Mapping[str, Any]], reports: Mapping[str, PodModelReport], now: str, *,
           baseline_at: str | None = None, verdict: Verdict | None = None,
           route_weight: int | None = None) -> Step:
    """The step machine's next decision, from the spec, the last status and the cluster as observed
    (`route_weight`: the canary's weight in the HTTPRoute as read, with trafficRouting.gatewayAPI)."""
    last = previous.get("rollout") or {}
    target = rollout.template_of(md)
    stable = rollout.stable_template(md, last)
    slots = assign_slots(children, stable.fingerprint if stable is not None else "")
    stable_deployment, other_deployment = children.get(slots.stable), children.get(slots.other)
    if (stable is None or stable.fingerprint != target.fingerprint) and \
            rollout.proven_good(md, stable_deployment, side_pods(pods, slots.stable, target.fingerprint),
                                reports) == target.fingerprint:
        stable = target  # the first version (or one the stable Deployment already runs) serves on every pod
    target_pods = side_pods(pods, slots.other, target.fingerprint)
    evidence = None
    if stable is not None and stable.fingerprint != target.fingerprint:
        since = last.get("unhealthySince") if last.get("targetTemplate") == target.fingerprint else None
        evidence = rollout.failure_evidence(md, target.fingerprint, other_deployment, target_pods, reports, since,
                                            now)
    stable_side_template = (stable or target).fingerprint
    observed = canary.Observed(
        desired_replicas=md.spec.replicas,
        stable=_side(stable_deployment, side_pods(pods, slots.stable, stable_side_template)),
        canary=_side(other_deployment, target_pods),
        canary_failure=evidence.message if evidence is not None else "",
        canary_problems=tuple(pod_problems(target_pods)),
        route_canary_weight=route_weight, baseline_at=baseline_at, verdict=verdict)
    decision = canary.decide(md.spec.rollout, canary.Revision(target.fingerprint, target.version),
                             canary.Revision(stable.fingerprint, stable.version) if stable is not None else None,
                             last, observed, now)
    return Step(md, target, stable, slots, decision, evidence)


def _side(deployment: Mapping[str, Any] | None, pods: Sequence[Mapping[str, Any]]) -> canary.Side:
    return canary.Side(spec_replicas(deployment), sum(1 for p in pods if is_ready(p)))


def render(step: Step, *, owner_uid: str | None = None, capabilities: ServerCapabilities = ServerCapabilities(),
           route_weight: int | None = None) -> dict[str, dict[str, Any] | None]:
    """Every child by CHILD_SLOTS key (None: must not exist). The stable slot runs the stable template at the
    decision's stable count; the other slot runs the target while the decision gives it pods, and is deleted
    otherwise. BlueGreen's Service selects the active template's pods, and its preview Service the target's; so
    does a routed Canary's, with `<name>-canary` for the canary (`route_weight`: as the route was read)."""
    md, decision = step.md, step.decision
    stable_md = step.stable.spec if step.under_way and step.stable is not None else md
    deployments = {
        step.slots.stable: render_deployment(stable_md, replicas=decision.stable_replicas,
                                             slot=Slots.suffix(step.slots.stable), template_label=True),
        step.slots.other: render_deployment(md, replicas=decision.canary_replicas, slot=Slots.suffix(step.slots.other),
                                            template_label=True) if decision.canary_replicas > 0 else None,
    }
    blue_green = md.spec.rollout.strategy == "BlueGreen"
    # Canary by replica ratio: the one Service selects every pod. BlueGreen and a routed Canary: the active
    # template's pods, beside BlueGreen's preview or the route's canary backend (kept while the route may still
    # send to it).
    service = render_service(md, template=decision.active)
    preview = render_service(md, suffix=naming.PREVIEW_SUFFIX, template=step.target.fingerprint) \
        if blue_green and step.under_way and decision.canary_replicas > 0 and not decision.promote else None
    canary_service = render_service(md, suffix=naming.CANARY_SUFFIX, template=step.target.fingerprint) \
        if decision.route is not None and (decision.canary_replicas > 0 or (route_weight or 0) > 0) else None
    return owned({FIRST: deployments[FIRST], SECOND: deployments[SECOND], "Service": service, PREVIEW: preview,
                  CANARY_SERVICE: canary_service, **render_beside(md, deployment=md.name, capabilities=capabilities)},
                 md, owner_uid)


def rolling_update_children(md: ModelDeployment, render_md: ModelDeployment, slots: Slots, replicas: int | None, *,
                            owner_uid: str | None, capabilities: ServerCapabilities) -> dict[str, dict[str, Any] | None]:
    """RollingUpdate's children: one Deployment, in the stable slot (with its HPA pointing at it); the other slot
    and the preview Service must not exist."""
    suffix = Slots.suffix(slots.stable)
    children = render_children(render_md, replicas=replicas, owner_uid=owner_uid, capabilities=capabilities,
                               slot=suffix)
    deployment = children.pop("Deployment")
    return {slots.stable: deployment, slots.other: None, "Service": children.pop("Service"), PREVIEW: None,
            CANARY_SERVICE: None, **children}


def rollout_decision(step: Step) -> rollout.RolloutDecision:
    """What status.derive_status reads of a Canary or BlueGreen decision: the target, the stable template after
    it, and an automatic abort as the target's failure (held by its template, as a failed RollingUpdate is)."""
    decision = step.decision
    abort = decision.abort
    failure = None
    if abort is not None and abort.reason != canary.ABORTED_BY_SPEC:
        failure = rollout.Failure(step.target.fingerprint, step.target.version, abort.message)
    evidence = step.evidence
    return rollout.RolloutDecision(step.target, step.stable_after, failure,
                                   rolling_back=False,  # status speaks of an abort through the step machine
                                   unhealthy_since=evidence.unhealthy_since if evidence is not None else None,
                                   recheck_after=evidence.recheck_after if evidence is not None else None)
