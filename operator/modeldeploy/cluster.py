"""The real cluster boundary: the Cluster protocol against a Kubernetes API server.

The only module that imports the kubernetes client. Every request is built from a Kind with an
explicit path (core: /api/v1/namespaces/{ns}/{plural}/{name}; groups:
/apis/{group}/{version}/namespaces/{ns}/{plural}/{name}), so any kind works without discovery.
The blocking client runs in worker threads of its own; every call is checked against
modeldeploy.permissions before it is sent.

What the API server answers, and how it is read here (kubernetes apiserver / apimachinery):
- a missing object: 404 with a Status whose details carry the object's name
  (apierrors.NewNotFound(groupResource, name));
- a missing resource type (CRD not installed): either the plain-text "404 page not found" of
  the last delegate (notfoundhandler -> http.NotFound), or, inside an installed group version,
  a Status "the server could not find the requested resource" with empty details
  (the go-restful service error handler). Neither names an object, which tells them apart.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from modeldeploy import FIELD_MANAGER, GROUP, PLURAL, __version__, permissions
from modeldeploy.kube import (
    HTTP_ROUTE,
    KIND_BY_NAME,
    LEASE,
    MODEL_DEPLOYMENT,
    ApiError,
    Kind,
    NoClusterConfig,
    kind_not_installed,
)
from modeldeploy.render.capabilities import ServerCapabilities, capabilities_from_openapi

log = logging.getLogger(__name__)

# Up to 8 reconciles run at once, each reading its five child kinds concurrently.
POOL_SIZE = 40
REQUEST_TIMEOUT = (10.0, 60.0)  # connect, read (seconds)
# core/v1 Event validation (pkg/apis/core/validation/events.go): with eventTime set, action,
# reason (<= 128), reportingComponent (a qualified name) and reportingInstance (<= 128) are
# required, and the message is at most 1024 bytes.
EVENT_MESSAGE_LIMIT = 1024
EVENT_FIELD_LIMIT = 128
EVENT_ACTION = "Reconcile"
EVENT_SOURCE = FIELD_MANAGER
REPORTING_CONTROLLER = f"{GROUP}/operator"

APPLY_PATCH = "application/apply-patch+yaml"
JSON_PATCH = "application/json-patch+json"
JSON = "application/json"
# Only metadata, never a Secret's data, for existence checks (same "get" permission).
METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"

# The API server's OpenAPI: the policy/v1 group alone where OpenAPI v3 is served (beta and on by
# default from Kubernetes 1.24, GA in 1.27), else the whole v2 document. Non-resource URLs, which
# the built-in system:discovery ClusterRole lets every authenticated user read ("/openapi",
# "/openapi/*"), so they need no rule in modeldeploy.permissions or in the chart's RBAC.
OPENAPI_V3_POLICY = "/openapi/v3/apis/policy/v1"
OPENAPI_V2 = "/openapi/v2"

# metav1.StatusReason for a status code, when the body is not a Status.
_REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 405: "MethodNotAllowed",
            406: "NotAcceptable", 409: "Conflict", 410: "Expired", 413: "RequestEntityTooLarge",
            415: "UnsupportedMediaType", 422: "Invalid", 429: "TooManyRequests", 500: "InternalError",
            503: "ServiceUnavailable", 504: "Timeout"}


def object_path(kind: Kind, namespace: str | None, name: str | None = None, subresource: str | None = None) -> str:
    """The REST path of a collection (name None; namespace None: across every namespace) or of one object."""
    path = f"/apis/{kind.group}/{kind.version}" if kind.group else f"/api/{kind.version}"
    if kind.namespaced and (namespace is not None or name is not None):
        path += f"/namespaces/{quote(namespace or '', safe='')}"
    path += f"/{kind.plural}"
    if name is not None:
        path += f"/{quote(name, safe='')}"
    if subresource:
        path += f"/{subresource}"
    return path


def micro_time(moment: datetime) -> str:
    """metav1.MicroTime: RFC 3339 with microseconds, in UTC with Z."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def rfc3339(moment: datetime) -> str:
    """metav1.Time: RFC 3339 to the second, in UTC with Z."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def truncate_utf8(text: str, limit: int) -> str:
    encoded = text.encode()
    if len(encoded) <= limit:
        return text
    return encoded[:limit - 3].decode(errors="ignore") + "..."


def event_body(involved: dict[str, Any], event_type: str, reason: str, message: str, *,
               reporting_instance: str, now: datetime) -> dict[str, Any]:
    """A core/v1 Event about `involved`, as posted (pure, shared by tests)."""
    meta = involved.get("metadata", {})
    involved_object = {"apiVersion": involved.get("apiVersion"), "kind": involved.get("kind"),
                       "name": meta.get("name"), "namespace": meta.get("namespace"), "uid": meta.get("uid"),
                       "resourceVersion": meta.get("resourceVersion")}
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta.get('name')}.", "namespace": meta.get("namespace")},
        "involvedObject": {k: v for k, v in involved_object.items() if v is not None},
        "action": EVENT_ACTION,
        "reason": reason[:EVENT_FIELD_LIMIT],
        "message": truncate_utf8(message, EVENT_MESSAGE_LIMIT),
        "type": event_type,
        "source": {"component": EVENT_SOURCE},
        "reportingComponent": REPORTING_CONTROLLER,
        "reportingInstance": reporting_instance[:EVENT_FIELD_LIMIT],
        "firstTimestamp": rfc3339(now),
        "lastTimestamp": rfc3339(now),
        "eventTime": micro_time(now),
        "count": 1,
    }


class _Refused(Exception):
    """A non-2xx answer: its status code and the parsed Status body (None when not a Status)."""

    def __init__(self, status: int, http_reason: str, body: Any) -> None:
        super().__init__(status)
        self.status = status
        self.http_reason = http_reason
        self.body = body if isinstance(body, dict) and body.get("kind") == "Status" else None
        self.raw = body

    @property
    def names_object(self) -> bool:
        """Whether the 404 is about an object (details.name), not about the resource type."""
        return bool(((self.body or {}).get("details") or {}).get("name"))

    def error(self) -> ApiError:
        status = self.body or {}
        reason = status.get("reason") or _REASONS.get(self.status) or self.http_reason or "Unknown"
        message = status.get("message") or (self.raw if isinstance(self.raw, str) and self.raw else "") \
            or self.http_reason or f"HTTP {self.status}"
        return ApiError(self.status, reason, message.strip() if isinstance(message, str) else str(message))


def _parse(data: bytes | str | None) -> Any:
    if data is None:
        return None
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


class KubernetesCluster:
    """The Cluster protocol over HTTP, with field manager "modeldeploy"."""

    def __init__(self, configuration: k8s_client.Configuration, *, reporting_instance: str | None = None,
                 request_timeout: tuple[float, float] = REQUEST_TIMEOUT) -> None:
        configuration.connection_pool_maxsize = max(configuration.connection_pool_maxsize or 0, POOL_SIZE)
        self._api = k8s_client.ApiClient(configuration)
        self._api.user_agent = f"{FIELD_MANAGER}/{__version__}"
        self._timeout = request_timeout
        # Our own threads, as many as pooled connections: the loop's default pool has only cpu+4.
        self._threads = ThreadPoolExecutor(max_workers=POOL_SIZE, thread_name_prefix="kube-api")
        self.reporting_instance = reporting_instance or os.environ.get("POD_NAME") or socket.gethostname()

    @classmethod
    def from_environment(cls) -> KubernetesCluster:
        """In-cluster config (service account) when available, else KUBECONFIG or ~/.kube/config."""
        configuration = k8s_client.Configuration()
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)
        except k8s_config.ConfigException:
            try:
                k8s_config.load_kube_config(client_configuration=configuration)
            except (k8s_config.ConfigException, OSError) as error:
                raise NoClusterConfig(
                    f"no Kubernetes cluster configured: not running in a pod, and no usable kube-config "
                    f"(KUBECONFIG or ~/.kube/config): {error}") from None
        return cls(configuration)

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
        self._api.close()

    # --- transport -------------------------------------------------------------------------

    def _send(self, method: str, path: str, *, query: list[tuple[str, str]] | None = None,
              body: Any = None, content_type: str | None = None, accept: str = JSON, raw: bool = False) -> Any:
        """One blocking request: the parsed 2xx body (the bytes with `raw`), or _Refused; network
        failures -> ApiError 503."""
        headers = {"Accept": accept}
        if content_type:
            headers["Content-Type"] = content_type
        api = self._api
        try:
            if hasattr(api, "param_serialize"):  # kubernetes >= 37: call_api sends, never raises for a status
                method_, url, headers_, body_, post = api.param_serialize(
                    method, path, query_params=query or [], header_params=headers, body=body,
                    auth_settings=["BearerToken"])
                response = api.call_api(method_, url, headers_, body_, post, _request_timeout=self._timeout)
                data = response.read()
                response.response.release_conn()
                status, reason = response.status, response.reason
            else:  # kubernetes < 37: call_api(resource_path, method, ...) raises ApiException for a status
                try:
                    raw = api.call_api(path, method, query_params=query or [], header_params=headers, body=body,
                                       auth_settings=["BearerToken"], _return_http_data_only=True,
                                       _preload_content=False, _request_timeout=self._timeout)
                except ApiException as error:
                    if not error.status:
                        raise
                    raise _Refused(error.status, error.reason or "", _parse(error.body)) from None
                data = raw.data
                raw.release_conn()
                status, reason = raw.status, raw.reason
        except ApiException as error:  # status 0: TLS failures and unpreparable requests
            if error.status:
                raise _Refused(error.status, error.reason or "", _parse(error.body)) from None
            raise ApiError(503, "ServiceUnavailable", str(error.reason or error)) from None
        except urllib3.exceptions.HTTPError as error:
            raise ApiError(503, "ServiceUnavailable", str(error)) from None
        if not 200 <= status <= 299:
            raise _Refused(status, reason or "", _parse(data))
        return data if raw else _parse(data)

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(
            self._threads, functools.partial(self._send, method, path, **kwargs))

    # --- discovery -------------------------------------------------------------------------

    async def server_capabilities(self) -> ServerCapabilities:
        """Which optional fields this API server supports, from its OpenAPI (read once, at startup).

        Raises ApiError when neither document can be read, OpenAPIUnreadable when the answer does
        not describe what we look for; the caller decides what to assume then.
        """
        try:
            document = await self._call("GET", OPENAPI_V3_POLICY, raw=True)
        except _Refused as refused:  # 404: no OpenAPI v3 (before 1.24, or turned off)
            log.debug("no %s (%s); reading %s", OPENAPI_V3_POLICY, refused.error(), OPENAPI_V2)
            try:
                document = await self._call("GET", OPENAPI_V2, raw=True)
            except _Refused as refused_v2:
                raise refused_v2.error() from None
        return capabilities_from_openapi(document or b"")

    # --- the protocol ----------------------------------------------------------------------

    async def get(self, kind: Kind, namespace: str, name: str, *, accept: str = JSON,
                  fresh: bool = True) -> dict[str, Any] | None:
        permissions.require(kind.group, kind.plural, "get")
        try:
            return await self._call("GET", object_path(kind, namespace, name), accept=accept)
        except _Refused as refused:
            if refused.status == 404:
                if refused.names_object:
                    return None
                raise kind_not_installed(kind) from None
            raise refused.error() from None

    async def exists(self, kind: Kind, namespace: str, name: str) -> bool:
        # Metadata only: a Secret's data never reaches the operator.
        return await self.get(kind, namespace, name, accept=METADATA_ONLY) is not None

    async def list(self, kind: Kind, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        return (await self.list_all(kind, namespace, label_selector))[0]

    async def list_all(self, kind: Kind, namespace: str | None,
                       label_selector: str) -> tuple[list[dict[str, Any]], str]:
        permissions.require(kind.group, kind.plural, "list")
        query = [("labelSelector", label_selector)] if label_selector else []
        try:
            answer = await self._call("GET", object_path(kind, namespace), query=query)
        except _Refused as refused:
            if refused.status == 404 and not refused.names_object:
                raise kind_not_installed(kind) from None
            raise refused.error() from None
        items = (answer or {}).get("items") or []
        for item in items:  # list items carry neither apiVersion nor kind
            item.setdefault("apiVersion", kind.api_version)
            item.setdefault("kind", kind.kind)
        return items, ((answer or {}).get("metadata") or {}).get("resourceVersion") or ""

    async def apply(self, obj: dict[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
        kind = _kind_of(obj)
        meta = obj.get("metadata") or {}
        # An apply that creates the object needs create as well as patch (and owner references, finalizers).
        permissions.require_apply(kind.group, kind.plural, meta.get("ownerReferences"))
        query = [("fieldManager", FIELD_MANAGER), ("force", "true")]
        if dry_run:
            query.append(("dryRun", "All"))
        try:
            # JSON is valid YAML: the client sends the dict as JSON under the apply-patch content type.
            return await self._call("PATCH", object_path(kind, meta.get("namespace"), meta["name"]), query=query,
                                    body=obj, content_type=APPLY_PATCH)
        except _Refused as refused:
            if refused.status == 404 and not refused.names_object:
                raise kind_not_installed(kind) from None
            raise refused.error() from None

    async def delete(self, kind: Kind, namespace: str, name: str, *, uid: str) -> None:
        permissions.require(kind.group, kind.plural, "delete")
        body = {"preconditions": {"uid": uid}, "propagationPolicy": "Background"}
        try:
            await self._call("DELETE", object_path(kind, namespace, name), body=body, content_type=JSON)
        except _Refused as refused:
            if refused.status == 404:
                return  # already gone (or the kind is not installed: nothing to delete)
            if refused.status == 409:
                log.info("not deleting %s %s/%s: it is another object now (uid precondition)", kind.kind,
                         namespace, name)
                return
            raise refused.error() from None

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any], *,
                           resource_version: str | None = None) -> dict[str, Any]:
        permissions.require(GROUP, f"{PLURAL}/status", "patch")
        patch = [{"op": "add", "path": "/status", "value": status}]  # replaces the whole status
        if resource_version:
            # A precondition: the patched object carries this resourceVersion, so the API server's
            # update conflicts (409) unless it is still current. Measured on kube-apiserver 1.27 for the
            # status subresource: a `replace` of /metadata/resourceVersion gives 409 Conflict (as a merge
            # patch with metadata.resourceVersion does), whereas a JSON patch `test` op on it fails with
            # 422 "the server rejected our request", indistinguishable from an invalid patch.
            patch.insert(0, {"op": "replace", "path": "/metadata/resourceVersion", "value": resource_version})
        try:
            return await self._call("PATCH", object_path(MODEL_DEPLOYMENT, namespace, name, "status"),
                                    query=[("fieldManager", FIELD_MANAGER)], body=patch, content_type=JSON_PATCH)
        except _Refused as refused:
            raise refused.error() from None

    async def create_lease(self, lease: dict[str, Any]) -> dict[str, Any]:
        permissions.require(LEASE.group, LEASE.plural, "create")
        meta = lease["metadata"]
        try:
            return await self._call("POST", object_path(LEASE, meta["namespace"]),
                                    query=[("fieldManager", FIELD_MANAGER)], body=lease, content_type=JSON)
        except _Refused as refused:
            raise refused.error() from None  # 409 AlreadyExists: someone else created it first

    async def replace_lease(self, lease: dict[str, Any]) -> dict[str, Any]:
        return await self._replace(LEASE, lease)

    async def replace_route(self, route: dict[str, Any]) -> dict[str, Any]:
        return await self._replace(HTTP_ROUTE, route)

    async def _replace(self, kind: Kind, obj: dict[str, Any]) -> dict[str, Any]:
        permissions.require(kind.group, kind.plural, "update")
        meta = obj["metadata"]
        if not meta.get("resourceVersion"):
            raise ValueError(f"a {kind.kind} is replaced only with the resourceVersion it was read with")
        try:
            return await self._call("PUT", object_path(kind, meta["namespace"], meta["name"]),
                                    query=[("fieldManager", FIELD_MANAGER)], body=obj, content_type=JSON)
        except _Refused as refused:
            if refused.status == 404 and not refused.names_object:
                raise kind_not_installed(kind) from None
            raise refused.error() from None  # 409 Conflict: someone else wrote it since we read it

    async def post_event(self, involved: dict[str, Any], event_type: str, reason: str, message: str) -> None:
        permissions.require("", "events", "create")
        body = event_body(involved, event_type, reason, message, reporting_instance=self.reporting_instance,
                          now=datetime.now(timezone.utc))
        namespace = body["metadata"]["namespace"]
        try:
            await self._call("POST", f"/api/v1/namespaces/{quote(namespace or '', safe='')}/events",
                             query=[("fieldManager", FIELD_MANAGER)], body=body, content_type=JSON)
        except Exception as error:  # an event never fails a reconcile
            shown = error.error() if isinstance(error, _Refused) else error
            log.warning("could not post event %s about %s/%s: %s", reason, namespace,
                        body["involvedObject"].get("name"), shown)


def _kind_of(obj: dict[str, Any]) -> Kind:
    api_version, kind_name = obj.get("apiVersion", ""), obj.get("kind", "")
    known = KIND_BY_NAME.get(kind_name)
    if known is not None and known.api_version == api_version:
        return known
    raise ValueError(f"unknown kind {api_version} {kind_name}: add it to modeldeploy.kube")
