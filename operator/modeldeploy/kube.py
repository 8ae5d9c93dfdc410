"""The cluster boundary's contract: kinds, errors and the Cluster protocol. Pure: no kubernetes client here.

`modeldeploy.cluster` implements it against a real API server; `tests/support/fake_cluster.py`
implements it in memory with the API server semantics the reconciler relies on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from modeldeploy import GROUP, KIND, PLURAL, VERSION, naming


@dataclass(frozen=True)
class Kind:
    group: str  # "" for core
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


MODEL_DEPLOYMENT = Kind(GROUP, VERSION, PLURAL, KIND)
DEPLOYMENT = Kind("apps", "v1", "deployments", "Deployment")
SERVICE = Kind("", "v1", "services", "Service")
HPA = Kind("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler")
PDB = Kind("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget")
SERVICE_MONITOR = Kind("monitoring.coreos.com", "v1", "servicemonitors", "ServiceMonitor")
POD = Kind("", "v1", "pods", "Pod")
SECRET = Kind("", "v1", "secrets", "Secret")
PVC = Kind("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim")
LEASE = Kind("coordination.k8s.io", "v1", "leases", "Lease")  # leader election, in the operator's own namespace
# Canary with trafficRouting.gatewayAPI: the user's HTTPRoute, whose backendRefs' weights the operator sets.
HTTP_ROUTE = Kind("gateway.networking.k8s.io", "v1", "httproutes", "HTTPRoute")

# Children in apply order (the Deployment first: the others refer to it).
CHILD_KINDS: tuple[Kind, ...] = (DEPLOYMENT, SERVICE, HPA, PDB, SERVICE_MONITOR)
KIND_BY_NAME: dict[str, Kind] = {k.kind: k for k in (*CHILD_KINDS, MODEL_DEPLOYMENT, POD, SECRET, PVC, LEASE,
                                                     HTTP_ROUTE)}

# Every child a ModelDeployment can have, by key: its kind and the suffix of its name after the object's. The key
# is the kind, plus the suffix for the second Deployment and the preview Service (Canary and BlueGreen), in apply
# order (Deployments first: the others refer to them).
CHILD_SLOTS: dict[str, tuple[Kind, str]] = {
    "Deployment": (DEPLOYMENT, ""),
    f"Deployment{naming.SECOND_SLOT}": (DEPLOYMENT, naming.SECOND_SLOT),
    "Service": (SERVICE, ""),
    f"Service{naming.PREVIEW_SUFFIX}": (SERVICE, naming.PREVIEW_SUFFIX),
    f"Service{naming.CANARY_SUFFIX}": (SERVICE, naming.CANARY_SUFFIX),
    "HorizontalPodAutoscaler": (HPA, ""),
    "PodDisruptionBudget": (PDB, ""),
    "ServiceMonitor": (SERVICE_MONITOR, ""),
}


def child_key(child: dict[str, Any], owner: str) -> str:
    """The CHILD_SLOTS key of a child of the object named `owner`."""
    return child["kind"] + child["metadata"]["name"][len(owner):]


class ApiError(Exception):
    """An API server refusal, carrying what the user needs: HTTP status, reason and message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason  # NotFound, Conflict, Invalid, Forbidden, AlreadyExists, ...
        self.message = message

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def invalid(self) -> bool:
        return self.status == 422


def resource_name(kind: Kind) -> str:
    return f"{kind.plural}.{kind.group}" if kind.group else kind.plural


def kind_not_installed(kind: Kind) -> ApiError:
    """What the API server answers for a kind whose CRD is not installed."""
    return ApiError(404, "NotFound", f"the server could not find the requested resource ({resource_name(kind)}): "
                                     f"is its CRD installed?")


class NoClusterConfig(Exception):
    """Neither in-cluster credentials nor a kube-config were found."""


class Cluster(Protocol):
    """What the reconciler may do to the cluster. Every write is deliberate and counted by the fake."""

    async def get(self, kind: Kind, namespace: str, name: str, *, fresh: bool = False) -> dict[str, Any] | None:
        """The object, or None when it does not exist (404 of the object; a 404 for a kind
        whose CRD is not installed raises ApiError). A cluster that reads from watch caches asks the
        API server itself when `fresh`."""

    async def exists(self, kind: Kind, namespace: str, name: str) -> bool:
        """Whether the object exists (for a Secret or PVC the spec names)."""

    async def list(self, kind: Kind, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        """Objects of kind in namespace matching the selector ("k=v,k2=v2")."""

    async def list_all(self, kind: Kind, namespace: str | None,
                       label_selector: str) -> tuple[list[dict[str, Any]], str]:
        """A full listing of kind in namespace (None: every namespace) and the listing's resourceVersion,
        to fill a watch cache from."""

    async def apply(self, obj: dict[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
        """Server-side apply (field manager "modeldeploy", force=True). Returns the object as stored
        (for dry_run, as it would be stored). Raises ApiError (422 Invalid, 404 for a missing CRD, ...)."""

    async def delete(self, kind: Kind, namespace: str, name: str, *, uid: str) -> None:
        """Delete with a uid precondition (never deletes a same-named replacement); 404 is fine."""

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any], *,
                           resource_version: str | None = None) -> dict[str, Any]:
        """Replace the ModelDeployment's whole status via the status subresource (a JSON patch of /status).
        With resource_version, only if the object still has it: otherwise ApiError 409 Conflict (someone
        changed it since it was read)."""

    async def create_lease(self, lease: dict[str, Any]) -> dict[str, Any]:
        """Create a coordination.k8s.io/v1 Lease (POST); one that exists already is ApiError 409 AlreadyExists."""

    async def replace_route(self, route: dict[str, Any]) -> dict[str, Any]:
        """Replace an HTTPRoute (PUT) carrying the metadata.resourceVersion it was read with: ApiError 409
        Conflict when someone else wrote it since, 404 when it is gone."""

    async def replace_lease(self, lease: dict[str, Any]) -> dict[str, Any]:
        """Replace a Lease (PUT) carrying the metadata.resourceVersion it was read with: ApiError 409
        Conflict when someone else wrote it since (the race is lost), 404 when it is gone."""

    async def post_event(self, involved: dict[str, Any], event_type: str, reason: str, message: str) -> None:
        """A core/v1 Event about `involved` (Normal or Warning)."""
