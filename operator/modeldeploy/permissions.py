"""Every Kubernetes API call the operator makes, declared once, with every verb the API server
checks for it: a server-side apply that creates an object is also authorized as `create`, and
an ownerReference with blockOwnerDeletion needs `update` on the owner's finalizers.

The cluster boundary refuses a call that is not declared here, and the Helm chart's RBAC
rules are tested against this list in both directions (nothing missing, nothing extra).
So this is the operator's least-privilege contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modeldeploy import GROUP, KIND, PLURAL


@dataclass(frozen=True)
class Permission:
    api_group: str  # "" is the core group
    resource: str  # with "/status" etc. for subresources
    verbs: frozenset[str]
    cluster_scoped: bool = False
    why: str = ""


def _p(group: str, resource: str, verbs: str, why: str, cluster_scoped: bool = False) -> Permission:
    return Permission(group, resource, frozenset(verbs.split()), cluster_scoped, why)


# Server-side apply is a PATCH, but one that creates the object when it does not exist yet, and
# the API server then authorizes it as `create` as well as `patch`. The cluster boundary requires
# both for every apply (require_apply), so a kind it applies must be declared with both.
APPLY_VERBS = frozenset({"patch", "create"})

# Namespaced permissions: a Role in each watched namespace, or the ClusterRole in cluster-wide mode.
NAMESPACED: tuple[Permission, ...] = (
    _p(GROUP, PLURAL, "get list watch", "watch ModelDeployments (kopf) and read them when reconciling"),
    _p(GROUP, f"{PLURAL}/status", "patch", "status is written only through the status subresource"),
    _p(GROUP, f"{PLURAL}/finalizers", "update",
       "children's ownerReferences set blockOwnerDeletion: true, which the OwnerReferencesPermissionEnforcement "
       "admission plugin (OpenShift, hardened clusters) allows only to a writer that may update the owner's "
       "finalizers; the operator never writes finalizers"),
    _p("apps", "deployments", "get list watch patch create delete",
       "server-side apply of the Triton Deployments (create: the apply that first makes one); watch them; delete "
       "Canary's and BlueGreen's second one once no rollout needs it"),
    _p("", "services", "get list watch patch create delete",
       "server-side apply of the Service (create: the apply that first makes it); watch it; delete BlueGreen's "
       "preview Service once the preview is over"),
    _p("autoscaling", "horizontalpodautoscalers", "get list watch patch create delete",
       "server-side apply of the HPA (create: the apply that first makes it); delete it when autoscaling is removed"),
    _p("policy", "poddisruptionbudgets", "get list watch patch create delete",
       "server-side apply of the PDB (create: the apply that first makes it); delete it when the budget is removed"),
    _p("monitoring.coreos.com", "servicemonitors", "get list patch create delete",
       "optional ServiceMonitor for Triton's metrics (applied and deleted by name; listed into the watch cache "
       "at startup and at each resync, not watched)"),
    _p("gateway.networking.k8s.io", "httproutes", "get update",
       "Canary with trafficRouting.gatewayAPI: read the HTTPRoute it names and set the weights of its backendRefs "
       "(replaced with the resourceVersion read; never created, deleted or watched)"),
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

# In the operator's own (release) namespace only, in both install modes: a Role there, never part of
# the ClusterRole or of the Roles in watched namespaces.
RELEASE_NAMESPACE: tuple[Permission, ...] = (
    _p("coordination.k8s.io", "leases", "get create update",
       "leader election between the operator's replicas: read the Lease, create it the first time, renew, "
       "take over or release it with a resourceVersion precondition (update); never watched or deleted"),
)

ALL: tuple[Permission, ...] = NAMESPACED + CLUSTER + RELEASE_NAMESPACE


def allowed(api_group: str, resource: str, verb: str) -> bool:
    return any(p.api_group == api_group and p.resource == resource and verb in p.verbs for p in ALL)


class UndeclaredAPICall(RuntimeError):
    """Raised by the cluster boundary for a call missing from this list: a bug, never user error."""


def require(api_group: str, resource: str, verb: str) -> None:
    if not allowed(api_group, resource, verb):
        raise UndeclaredAPICall(
            f"{verb} {resource}.{api_group or 'core'} is not declared in modeldeploy.permissions")


def require_apply(api_group: str, resource: str, owner_references: list[dict[str, Any]] | None = None) -> None:
    """A server-side apply of a resource, with the object's ownerReferences.

    The apply may create the object, so it needs `create` as well as `patch`. An ownerReference with
    blockOwnerDeletion needs `update` on the owner's finalizers (OwnerReferencesPermissionEnforcement);
    the operator's objects are only ever owned by a ModelDeployment.
    """
    for verb in sorted(APPLY_VERBS):
        require(api_group, resource, verb)
    for ref in owner_references or ():
        if not ref.get("blockOwnerDeletion"):
            continue
        if (ref.get("apiVersion", "").split("/")[0], ref.get("kind")) != (GROUP, KIND):
            raise UndeclaredAPICall(f"an ownerReference to a {ref.get('kind')} ({ref.get('apiVersion')}) that "
                                    "blocks deletion is not declared in modeldeploy.permissions")
        require(GROUP, f"{PLURAL}/finalizers", "update")
