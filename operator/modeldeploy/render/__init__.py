"""Pure renderers: a ModelDeployment in, its children out. `modeldeploy render` and the operator share them."""

from __future__ import annotations

from typing import Any

from modeldeploy import naming
from modeldeploy.api import ModelDeployment
from modeldeploy.render.capabilities import ServerCapabilities
from modeldeploy.render.deployment import deployment_template_fingerprint, render_deployment
from modeldeploy.render.scaling import render_hpa, render_pdb
from modeldeploy.render.service import render_service, render_service_monitor


def default_replicas(md: ModelDeployment) -> int:
    """The Deployment's replica count when nothing is observed yet (offline render, first create)."""
    if md.spec.autoscaling is not None:
        return md.spec.autoscaling.min_replicas
    return md.spec.replicas


def render_children(md: ModelDeployment, *, replicas: int | None = None, owner_uid: str | None = None,
                    capabilities: ServerCapabilities = ServerCapabilities(),
                    slot: str = "") -> dict[str, dict[str, Any] | None]:
    """Every child by kind; None marks a kind that must not exist (e.g. HPA with autoscaling off).

    `replicas` None with autoscaling on leaves the count to the HPA; offline callers pass
    default_replicas(md). Optional fields the API server lacks (`capabilities`) are left out.
    `slot`: the Deployment is the second one (`<name>-b`), where a Canary or BlueGreen rollout left the
    stable version; the HPA scales it. Canary and BlueGreen label the pods with their template, and
    BlueGreen's Service selects that template's pods.
    """
    deployment = render_deployment(md, replicas=replicas, slot=slot,
                                   template_label=md.spec.rollout.strategy != "RollingUpdate")
    template = deployment_template_fingerprint(deployment) if md.spec.rollout.strategy == "BlueGreen" else ""
    children = {"Deployment": deployment, "Service": render_service(md, template=template),
                **render_beside(md, deployment=md.name + slot, capabilities=capabilities)}
    return owned(children, md, owner_uid)


def render_beside(md: ModelDeployment, *, deployment: str,
                  capabilities: ServerCapabilities) -> dict[str, dict[str, Any] | None]:
    """The children beside the Deployments and Services: the HPA (scaling the Deployment named `deployment`),
    the PDB and the ServiceMonitor."""
    return {"HorizontalPodAutoscaler": render_hpa(md, deployment=deployment),
            "PodDisruptionBudget": render_pdb(md, capabilities),
            "ServiceMonitor": render_service_monitor(md)}


def owned(children: dict[str, dict[str, Any] | None], md: ModelDeployment,
          owner_uid: str | None) -> dict[str, dict[str, Any] | None]:
    """`children`, each with the ModelDeployment as its controller (when its uid is known)."""
    if owner_uid:
        for child in children.values():
            if child is not None:
                child["metadata"]["ownerReferences"] = [naming.owner_reference(md.name, owner_uid)]
    return children


def render_manifests(md: ModelDeployment, *,
                     capabilities: ServerCapabilities = ServerCapabilities()) -> list[dict[str, Any]]:
    """What `modeldeploy render` prints: the children that exist, in apply order (by default for a
    server that supports every optional field)."""
    children = render_children(md, replicas=default_replicas(md), owner_uid=md.metadata.uid,
                               capabilities=capabilities)
    return [c for c in children.values() if c is not None]
