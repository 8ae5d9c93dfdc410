"""Observed-world data for pure status tests: Deployments and Pods as the API server shows them."""

from __future__ import annotations

from typing import Any

from modeldeploy import naming
from modeldeploy.model_health import PodModelReport


def Report(version_ready: bool = True, reason: str = "", message: str = "") -> PodModelReport:  # noqa: N802
    """A Triton answer for one pod, as the triton boundary would give it."""
    return PodModelReport(reachable=True, live=True, server_ready=version_ready, version_ready=version_ready,
                          reason=reason, message=message)


def deployment(version: str = "3", *, replicas: int = 2, updated: int | None = None, ready: int | None = None,
               available: int | None = None, total: int | None = None, generation: int = 1,
               observed_generation: int | None = None, deadline_exceeded: bool = False,
               template: str = "") -> dict[str, Any]:
    """A Deployment as the API server shows it; `template` is the fingerprint its pod template carries."""
    updated = replicas if updated is None else updated
    ready = updated if ready is None else ready
    available = ready if available is None else available
    conditions = [{"type": "Available", "status": "True" if available >= replicas else "False",
                   "reason": "MinimumReplicasAvailable" if available >= replicas else "MinimumReplicasUnavailable",
                   "message": "Deployment has minimum availability."}]
    if deadline_exceeded:
        conditions.append({"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                           "message": 'ReplicaSet "resnet50-abc" has timed out progressing.'})
    else:
        conditions.append({"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
                           "message": "ReplicaSet has successfully progressed."})
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "resnet50", "namespace": "vision", "generation": generation},
        "spec": {"replicas": replicas, "template": {"metadata": {
            "labels": naming.object_labels("resnet50", version),
            **({"annotations": {naming.POD_TEMPLATE_ANNOTATION: template}} if template else {})}}},
        "status": {"observedGeneration": generation if observed_generation is None else observed_generation,
                   "replicas": replicas if total is None else total, "updatedReplicas": updated,
                   "readyReplicas": ready, "availableReplicas": available, "conditions": conditions},
    }


def pod(name: str, version: str = "3", *, ready: bool = True, ip: str = "10.0.0.1", waiting: str | None = None,
        unschedulable: str | None = None, last_exit: int | None = None, template: str = "",
        restarts: int = 0) -> dict[str, Any]:
    """A pod as the API server shows it; `template` is the fingerprint of the template that made it."""
    conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
    status: dict[str, Any] = {"phase": "Running", "podIP": ip, "conditions": conditions}
    if unschedulable is not None:
        status = {"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": unschedulable}]}
    elif waiting is not None:
        container: dict[str, Any] = {"name": "triton", "ready": False,
                                     "state": {"waiting": {"reason": waiting, "message": f"{waiting} detail"}}}
        if last_exit is not None:
            container["lastState"] = {"terminated": {"exitCode": last_exit, "reason": "Error"}}
        status["containerStatuses"] = [container]
    if restarts:
        container = (status.get("containerStatuses") or [{"name": "triton", "ready": ready,
                                                          "state": {"running": {}}, "started": True}])[0]
        container["restartCount"] = restarts
        container.setdefault("lastState", {"terminated": {"exitCode": 1, "reason": "Error"}})
        status["containerStatuses"] = [container]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "vision", "uid": f"uid-{name}",
                         "labels": naming.object_labels("resnet50", version),
                         **({"annotations": {naming.POD_TEMPLATE_ANNOTATION: template}} if template else {})},
            "status": status}
