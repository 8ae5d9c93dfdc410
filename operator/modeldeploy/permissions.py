"""Every Kubernetes API call the operator makes, declared once.

The cluster boundary refuses a call that is not declared here, and the Helm chart's RBAC
rules are tested against this list in both directions (nothing missing, nothing extra).
So this is the operator's least-privilege contract.
"""

from __future__ import annotations

from dataclasses import dataclass

from modeldeploy import GROUP, PLURAL


@dataclass(frozen=True)
class Permission:
    api_group: str  # "" is the core group
    resource: str  # with "/status" etc. for subresources
    verbs: frozenset[str]
    cluster_scoped: bool = False
    why: str = ""


def _p(group: str, resource: str, verbs: str, why: str, cluster_scoped: bool = False) -> Permission:
    return Permission(group, resource, frozenset(verbs.split()), cluster_scoped, why)


# Namespaced permissions: a Role in each watched namespace, or the ClusterRole in cluster-wide mode.
NAMESPACED: tuple[Permission, ...] = (
    _p(GROUP, PLURAL, "get list watch", "watch ModelDeployments (kopf) and read them when reconciling"),
    _p(GROUP, f"{PLURAL}/status", "patch", "status is written only through the status subresource"),
    _p("apps", "deployments", "get list watch patch", "server-side apply of the Triton Deployment; watch it"),
    _p("", "services", "get list watch patch", "server-side apply of the Service; watch it"),
    _p("autoscaling", "horizontalpodautoscalers", "get list watch patch delete",
       "server-side apply of the HPA; delete it when autoscaling is removed"),
    _p("policy", "poddisruptionbudgets", "get list watch patch delete",
       "server-side apply of the PDB; delete it when the budget is removed"),
    _p("monitoring.coreos.com", "servicemonitors", "get patch delete",
       "optional ServiceMonitor for Triton's metrics (read, applied and deleted by name; not watched)"),
    _p("", "pods", "list watch", "surface Unschedulable/CrashLoopBackOff reasons and probe Triton at pod IPs"),
    _p("", "secrets", "get", "check that spec.model.credentialsSecret exists before rolling it out"),
    _p("", "persistentvolumeclaims", "get", "check that a pvc:// repository's claim exists"),
    _p("", "events", "create", "Normal/Warning events on ModelDeployments"),
)

# Cluster-scoped, in both install modes: kopf discovers the ModelDeployment resource through its CRD.
CLUSTER: tuple[Permission, ...] = (
    _p("apiextensions.k8s.io", "customresourcedefinitions", "list watch",
       "kopf discovers the ModelDeployment resource", cluster_scoped=True),
)
# Not namespaces: kopf lists them only to expand namespace patterns, which we never pass (it
# serves all namespaces, or exactly the ones named, and falls back to those names on a 403).

ALL: tuple[Permission, ...] = NAMESPACED + CLUSTER


def allowed(api_group: str, resource: str, verb: str) -> bool:
    return any(p.api_group == api_group and p.resource == resource and verb in p.verbs for p in ALL)


class UndeclaredAPICall(RuntimeError):
    """Raised by the cluster boundary for a call missing from this list: a bug, never user error."""


def require(api_group: str, resource: str, verb: str) -> None:
    if not allowed(api_group, resource, verb):
        raise UndeclaredAPICall(
            f"{verb} {resource}.{api_group or 'core'} is not declared in modeldeploy.permissions")
