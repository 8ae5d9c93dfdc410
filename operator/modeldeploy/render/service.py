"""Service and (optional) ServiceMonitor in front of Triton."""

from __future__ import annotations

from typing import Any

from modeldeploy import naming
from modeldeploy.api import ModelDeployment
from modeldeploy.triton_flags import GRPC_PORT, HTTP_PORT, METRICS_PORT


def render_service(md: ModelDeployment, *, suffix: str = "", template: str = "") -> dict[str, Any]:
    """The Service `<name><suffix>`: every pod of the object, or only those of one pod `template` (BlueGreen's
    active and preview Services)."""
    annotations = dict(sorted(md.spec.service.annotations.items()))
    selector = naming.selector_labels(md.name)
    if template:
        selector[naming.POD_TEMPLATE_LABEL] = template
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": naming.child_metadata(md.name, md.namespace, md.spec.model.version, suffix=suffix,
                                          **({"annotations": annotations} if annotations else {})),
        "spec": {
            "type": md.spec.service.type,
            "selector": selector,
            "ports": [
                {"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"},
                {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP",
                 "appProtocol": "kubernetes.io/h2c"},
                {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"},
            ],
        },
    }


def render_service_monitor(md: ModelDeployment) -> dict[str, Any] | None:
    if not md.spec.monitoring.service_monitor:
        return None
    return {
        "apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
        "metadata": naming.child_metadata(md.name, md.namespace, md.spec.model.version),
        "spec": {
            "selector": {"matchLabels": naming.selector_labels(md.name)},
            "endpoints": [{"port": "metrics", "path": "/metrics", "interval": md.spec.monitoring.interval}],
        },
    }
