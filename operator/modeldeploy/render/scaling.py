"""HorizontalPodAutoscaler and PodDisruptionBudget."""

from __future__ import annotations

from typing import Any

from modeldeploy import naming
from modeldeploy.api import ModelDeployment
from modeldeploy.render.capabilities import ServerCapabilities

# Triton's queue time as a Pods metric, served to the HPA by a metrics adapter (README: Autoscaling).
QUEUE_TIME_METRIC = "nv_inference_queue_duration_us"


def render_hpa(md: ModelDeployment, *, deployment: str = "") -> dict[str, Any] | None:
    """The HPA, scaling the Deployment named `deployment` (default the object's own name)."""
    scaling = md.spec.autoscaling
    if scaling is None:
        return None
    metrics: list[dict[str, Any]] = []
    if scaling.target_cpu_utilization is not None:
        metrics.append({"type": "Resource", "resource": {
            "name": "cpu", "target": {"type": "Utilization", "averageUtilization": scaling.target_cpu_utilization}}})
    if scaling.target_queue_time_microseconds is not None:
        metrics.append({"type": "Pods", "pods": {
            "metric": {"name": QUEUE_TIME_METRIC},
            "target": {"type": "AverageValue", "averageValue": str(scaling.target_queue_time_microseconds)}}})
    metrics.extend(scaling.metrics)
    spec: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment or md.name},
        "minReplicas": scaling.min_replicas,
        "maxReplicas": scaling.max_replicas,
        "metrics": metrics,
    }
    if scaling.behavior:
        spec["behavior"] = scaling.behavior
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": naming.child_metadata(md.name, md.namespace, md.spec.model.version),
            "spec": spec}


def render_pdb(md: ModelDeployment, capabilities: ServerCapabilities = ServerCapabilities()) -> dict[str, Any] | None:
    budget = md.spec.disruption_budget
    if budget is None:
        return None
    spec: dict[str, Any] = {"selector": {"matchLabels": naming.selector_labels(md.name)}}
    if budget.max_unavailable is not None:
        spec["maxUnavailable"] = budget.max_unavailable
    else:
        spec["minAvailable"] = budget.min_available
    if capabilities.pdb_unhealthy_pod_eviction_policy:
        # A crash-looping Triton pod must not block node drains. Servers before Kubernetes 1.27
        # refuse (or drop) the field: there the PDB is applied without it.
        spec["unhealthyPodEvictionPolicy"] = "AlwaysAllow"
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": naming.child_metadata(md.name, md.namespace, md.spec.model.version), "spec": spec}
