"""The real cluster boundary over real HTTP: a local server records each request and answers
with canned, Kubernetes-shaped responses (the Status bodies kube-apiserver sends)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from kubernetes import client as k8s_client

from modeldeploy import permissions
from modeldeploy.cluster import POOL_SIZE, KubernetesCluster
from modeldeploy.kube import DEPLOYMENT, HPA, LEASE, POD, SECRET, SERVICE, SERVICE_MONITOR, ApiError
from modeldeploy.render.capabilities import OpenAPIUnreadable, ServerCapabilities

NS = "vision"
TOKEN = "t0ken"


def status(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                            "message": message, "reason": reason, "code": code}
    if details is not None:
        body["details"] = details
    return body


def object_not_found(resource: str, group: str, name: str) -> tuple[int, dict[str, Any]]:
    """apierrors.NewNotFound: details name the object."""
    qualified = f"{resource}.{group}" if group else resource
    return 404, status(404, "NotFound", f'{qualified} "{name}" not found',
                       {"name": name, "group": group, "kind": resource})


# The go-restful service error handler inside an installed group version: a Status, empty details.
RESOURCE_NOT_FOUND = (404, status(404, "NotFound", "the server could not find the requested resource", {}))
# The last delegate (notfoundhandler -> http.NotFound) for a group nobody serves: plain text.
PAGE_NOT_FOUND = (404, "404 page not found\n")


class Recorder(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.requests: list[dict[str, Any]] = []
        self.routes: dict[tuple[str, str], tuple[int, Any]] = {}
        self.lock = threading.Lock()

    def answer(self, method: str, path: str, code: int, body: Any) -> None:
        self.routes[(method, path)] = (code, body)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Recorder

    def log_message(self, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode()
        with self.server.lock:
            self.server.requests.append({"method": self.command, "path": url.path, "query": parse_qs(url.query),
                                         "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
        code, answer = self.server.routes.get((self.command, url.path), PAGE_NOT_FOUND)
        if isinstance(answer, str):
            data, content_type = answer.encode(), "text/plain; charset=utf-8"
        else:
            data, content_type = json.dumps(answer).encode(), "application/json"
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _handle


@pytest.fixture()
def server():
    recorder = Recorder()
    thread = threading.Thread(target=recorder.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield recorder
    recorder.shutdown()
    recorder.server_close()


def make_cluster(host: str) -> KubernetesCluster:
    configuration = k8s_client.Configuration(host=host, api_key={"authorization": f"Bearer {TOKEN}"})
    return KubernetesCluster(configuration, reporting_instance="operator-pod-7f9c")


@pytest.fixture()
def cluster(server):
    made = make_cluster(f"http://127.0.0.1:{server.server_address[1]}")
    yield made
    made.close()


def deployment(**meta: Any) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "resnet50", "namespace": NS, "uid": "dep-uid", "resourceVersion": "42", **meta},
            "spec": {"replicas": 2}}


def model_deployment() -> dict[str, Any]:
    return {"apiVersion": "modeldeploy.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "resnet50", "namespace": NS, "uid": "md-uid", "resourceVersion": "77"},
            "spec": {}}


DEPLOYMENT_PATH = f"/apis/apps/v1/namespaces/{NS}/deployments/resnet50"
MONITOR_PATH = f"/apis/monitoring.coreos.com/v1/namespaces/{NS}/servicemonitors/resnet50"


# --- get, exists, list --------------------------------------------------------------------

async def test_get_sends_an_authenticated_get_to_the_object_path(server, cluster):
    server.answer("GET", DEPLOYMENT_PATH, 200, deployment())
    assert await cluster.get(DEPLOYMENT, NS, "resnet50") == deployment()
    (request,) = server.requests
    assert (request["method"], request["path"], request["query"], request["body"]) == ("GET", DEPLOYMENT_PATH, {},
                                                                                        None)
    assert request["headers"]["authorization"] == f"Bearer {TOKEN}"
    assert request["headers"]["accept"] == "application/json"
    assert request["headers"]["user-agent"].startswith("modeldeploy/")


async def test_core_kinds_live_under_api_v1(server, cluster):
    server.answer("GET", f"/api/v1/namespaces/{NS}/services/resnet50", 200,
                  {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "resnet50"}})
    assert (await cluster.get(SERVICE, NS, "resnet50"))["kind"] == "Service"


async def test_a_missing_object_is_none(server, cluster):
    server.answer("GET", DEPLOYMENT_PATH, *object_not_found("deployments", "apps", "resnet50"))
    assert await cluster.get(DEPLOYMENT, NS, "resnet50") is None


@pytest.mark.parametrize("answer", [PAGE_NOT_FOUND, RESOURCE_NOT_FOUND], ids=["no-such-group", "no-such-resource"])
async def test_a_missing_kind_is_an_error_naming_its_crd(server, cluster, answer):
    server.answer("GET", MONITOR_PATH, *answer)
    with pytest.raises(ApiError) as refused:
        await cluster.get(SERVICE_MONITOR, NS, "resnet50")
    assert (refused.value.status, refused.value.reason) == (404, "NotFound")
    assert refused.value.message == ("the server could not find the requested resource "
                                     "(servicemonitors.monitoring.coreos.com): is its CRD installed?")


async def test_exists_asks_for_metadata_only(server, cluster):
    path = f"/api/v1/namespaces/{NS}/secrets/creds"
    server.answer("GET", path, 200, {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                                     "metadata": {"name": "creds"}})
    assert await cluster.exists(SECRET, NS, "creds")
    assert server.requests[0]["headers"]["accept"].startswith(
        "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1")
    server.answer("GET", path, *object_not_found("secrets", "", "creds"))
    assert not await cluster.exists(SECRET, NS, "creds")


async def test_list_sends_the_label_selector_and_fills_in_kinds(server, cluster):
    path = f"/api/v1/namespaces/{NS}/pods"
    server.answer("GET", path, 200, {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "9"},
                                     "items": [{"metadata": {"name": "a"}}, {"metadata": {"name": "b"}}]})
    selector = "app.kubernetes.io/name=triton,app.kubernetes.io/instance=resnet50"
    items = await cluster.list(POD, NS, selector)
    assert [(i["apiVersion"], i["kind"], i["metadata"]["name"]) for i in items] == [("v1", "Pod", "a"),
                                                                                   ("v1", "Pod", "b")]
    assert server.requests[0]["query"] == {"labelSelector": [selector]}


async def test_list_of_a_missing_kind_names_it(server, cluster):
    # autoscaling/v2 is missing on old clusters: the server answers a plain 404 for the path.
    with pytest.raises(ApiError) as refused:
        await cluster.list(HPA, NS, "a=b")
    assert "horizontalpodautoscalers.autoscaling" in refused.value.message


async def test_a_listing_for_the_watch_cache_spans_every_namespace_and_carries_its_resource_version(server,
                                                                                                      cluster):
    server.answer("GET", "/apis/apps/v1/deployments", 200,
                  {"kind": "DeploymentList", "metadata": {"resourceVersion": "4711"}, "items": [deployment()]})
    items, version = await cluster.list_all(DEPLOYMENT, None, "app.kubernetes.io/managed-by=modeldeploy")
    assert version == "4711" and items[0]["kind"] == "Deployment" and items[0]["apiVersion"] == "apps/v1"
    (request,) = server.requests
    assert request["query"] == {"labelSelector": ["app.kubernetes.io/managed-by=modeldeploy"]}


def test_service_monitors_are_listed_but_never_watched():
    assert permissions.allowed("monitoring.coreos.com", "servicemonitors", "list")
    assert not permissions.allowed("monitoring.coreos.com", "servicemonitors", "watch")


# --- apply --------------------------------------------------------------------------------

async def test_apply_is_a_forced_server_side_apply_patch(server, cluster):
    desired = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "resnet50", "namespace": NS},
               "spec": {"replicas": 2}}
    server.answer("PATCH", DEPLOYMENT_PATH, 200, deployment())
    assert await cluster.apply(desired) == deployment()
    (request,) = server.requests
    assert request["method"] == "PATCH" and request["path"] == DEPLOYMENT_PATH
    assert request["query"] == {"fieldManager": ["modeldeploy"], "force": ["true"]}
    assert request["headers"]["content-type"] == "application/apply-patch+yaml"
    assert request["body"] == desired  # JSON: valid YAML


async def test_dry_run_apply_adds_dry_run_all(server, cluster):
    server.answer("PATCH", DEPLOYMENT_PATH, 200, deployment())
    await cluster.apply(deployment(), dry_run=True)
    assert server.requests[0]["query"] == {"fieldManager": ["modeldeploy"], "force": ["true"], "dryRun": ["All"]}


async def test_an_invalid_object_is_a_422_with_the_servers_message(server, cluster):
    message = ('Deployment.apps "resnet50" is invalid: spec.template.spec.containers[0].resources.requests: '
               'Invalid value: "2": must be less than or equal to cpu limit of 1')
    server.answer("PATCH", DEPLOYMENT_PATH, 422, status(422, "Invalid", message, {
        "name": "resnet50", "group": "apps", "kind": "Deployment",
        "causes": [{"reason": "FieldValueInvalid", "field": "spec.template.spec.containers[0].resources.requests"}]}))
    with pytest.raises(ApiError) as refused:
        await cluster.apply(deployment(), dry_run=True)
    assert (refused.value.status, refused.value.reason, refused.value.message) == (422, "Invalid", message)
    assert refused.value.invalid


async def test_applying_a_kind_that_is_not_installed_names_its_crd(server, cluster):
    monitor = {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
               "metadata": {"name": "resnet50", "namespace": NS}, "spec": {}}
    with pytest.raises(ApiError) as refused:
        await cluster.apply(monitor)
    assert refused.value.status == 404 and "servicemonitors.monitoring.coreos.com" in refused.value.message


async def test_apply_into_a_missing_namespace_keeps_the_servers_message(server, cluster):
    server.answer("PATCH", DEPLOYMENT_PATH, *object_not_found("namespaces", "", NS))
    with pytest.raises(ApiError) as refused:
        await cluster.apply(deployment())
    assert refused.value.message == f'namespaces "{NS}" not found'


# --- delete -------------------------------------------------------------------------------

HPA_PATH = f"/apis/autoscaling/v2/namespaces/{NS}/horizontalpodautoscalers/resnet50"


async def test_delete_sends_a_uid_precondition_and_background_propagation(server, cluster):
    server.answer("DELETE", HPA_PATH, 200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                                            "details": {"name": "resnet50", "group": "autoscaling",
                                                        "kind": "horizontalpodautoscalers", "uid": "hpa-uid"}})
    await cluster.delete(HPA, NS, "resnet50", uid="hpa-uid")
    (request,) = server.requests
    assert (request["method"], request["path"]) == ("DELETE", HPA_PATH)
    assert request["headers"]["content-type"] == "application/json"
    assert request["body"] == {"preconditions": {"uid": "hpa-uid"}, "propagationPolicy": "Background"}


async def test_delete_of_a_gone_or_replaced_object_is_fine(server, cluster):
    server.answer("DELETE", HPA_PATH, *object_not_found("horizontalpodautoscalers", "autoscaling", "resnet50"))
    await cluster.delete(HPA, NS, "resnet50", uid="hpa-uid")
    server.answer("DELETE", HPA_PATH, 409, status(
        409, "Conflict", "Precondition failed: UID in precondition: hpa-uid, UID in object meta: other-uid",
        {"name": "resnet50", "group": "autoscaling", "kind": "horizontalpodautoscalers"}))
    await cluster.delete(HPA, NS, "resnet50", uid="hpa-uid")
    server.answer("DELETE", HPA_PATH, 403, status(
        403, "Forbidden", 'horizontalpodautoscalers.autoscaling "resnet50" is forbidden: User '
                          '"system:serviceaccount:modeldeploy:modeldeploy" cannot delete resource',
        {"name": "resnet50", "group": "autoscaling", "kind": "horizontalpodautoscalers"}))
    with pytest.raises(ApiError) as refused:
        await cluster.delete(HPA, NS, "resnet50", uid="hpa-uid")
    assert (refused.value.status, refused.value.reason) == (403, "Forbidden")


# --- status and events --------------------------------------------------------------------

async def test_patch_status_replaces_the_status_through_the_subresource(server, cluster):
    path = f"/apis/modeldeploy.dev/v1alpha1/namespaces/{NS}/modeldeployments/resnet50/status"
    new_status = {"observedGeneration": 3, "conditions": [{"type": "Ready", "status": "True"}]}
    server.answer("PATCH", path, 200, {**model_deployment(), "status": new_status})
    stored = await cluster.patch_status(NS, "resnet50", new_status)
    assert stored["status"] == new_status
    (request,) = server.requests
    assert request["method"] == "PATCH" and request["path"] == path
    assert request["headers"]["content-type"] == "application/json-patch+json"
    assert request["body"] == [{"op": "add", "path": "/status", "value": new_status}]
    assert request["query"] == {"fieldManager": ["modeldeploy"]}


async def test_patch_status_with_a_resource_version_is_fenced_by_it(server, cluster):
    """The precondition as kube-apiserver honours it on the status subresource (measured on 1.27): a
    replace of /metadata/resourceVersion makes the update conflict (409) unless it is still current;
    a `test` op would fail with an indistinguishable 422 instead."""
    path = f"/apis/modeldeploy.dev/v1alpha1/namespaces/{NS}/modeldeployments/resnet50/status"
    new_status = {"observedGeneration": 3}
    server.answer("PATCH", path, 409, status(
        409, "Conflict", 'Operation cannot be fulfilled on modeldeployments.modeldeploy.dev "resnet50": the object '
                         "has been modified; please apply your changes to the latest version and try again",
        {"name": "resnet50", "group": "modeldeploy.dev", "kind": "modeldeployments"}))
    with pytest.raises(ApiError) as refused:
        await cluster.patch_status(NS, "resnet50", new_status, resource_version="4242")
    assert refused.value.conflict and refused.value.reason == "Conflict"
    (request,) = server.requests
    assert request["body"] == [{"op": "replace", "path": "/metadata/resourceVersion", "value": "4242"},
                               {"op": "add", "path": "/status", "value": new_status}]


LEASE_PATH = "/apis/coordination.k8s.io/v1/namespaces/modeldeploy-system/leases"


def lease(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "modeldeploy", "namespace": "modeldeploy-system", "resourceVersion": "77"},
            "spec": {"holderIdentity": "pod-a_1", "leaseDurationSeconds": 15, **spec}}


async def test_a_lease_is_read_created_and_replaced_with_its_resource_version(server, cluster):
    server.answer("GET", f"{LEASE_PATH}/modeldeploy", 200, lease())
    assert (await cluster.get(LEASE, "modeldeploy-system", "modeldeploy"))["spec"]["holderIdentity"] == "pod-a_1"
    server.answer("POST", LEASE_PATH, 201, lease())
    created = {k: v for k, v in lease().items()}
    created["metadata"] = {"name": "modeldeploy", "namespace": "modeldeploy-system"}
    await cluster.create_lease(created)
    server.answer("PUT", f"{LEASE_PATH}/modeldeploy", 200, lease(holderIdentity="pod-b_2"))
    await cluster.replace_lease(lease(holderIdentity="pod-b_2"))
    get, post, put = server.requests
    assert (get["method"], post["method"], post["path"]) == ("GET", "POST", LEASE_PATH)
    assert post["body"] == created and post["query"] == {"fieldManager": ["modeldeploy"]}
    assert (put["method"], put["path"]) == ("PUT", f"{LEASE_PATH}/modeldeploy")
    assert put["body"]["metadata"]["resourceVersion"] == "77"  # the optimistic-concurrency precondition
    with pytest.raises(ValueError):  # never an unconditional replace
        await cluster.replace_lease({**lease(), "metadata": {"name": "modeldeploy", "namespace": "modeldeploy-system"}})


@pytest.mark.parametrize(("method", "reason"), [("PUT", "Conflict"), ("POST", "AlreadyExists")])
async def test_losing_the_race_for_a_lease_is_a_409(server, cluster, method, reason):
    path = f"{LEASE_PATH}/modeldeploy" if method == "PUT" else LEASE_PATH
    server.answer(method, path, 409, status(409, reason, f'leases.coordination.k8s.io "modeldeploy": {reason}',
                                            {"name": "modeldeploy", "group": "coordination.k8s.io",
                                             "kind": "leases"}))
    with pytest.raises(ApiError) as lost:
        if method == "PUT":
            await cluster.replace_lease(lease())
        else:
            await cluster.create_lease(lease())
    assert lost.value.conflict and lost.value.reason == reason


async def test_an_httproute_is_replaced_over_the_resource_version_it_was_read_with(server, cluster):
    path = f"/apis/gateway.networking.k8s.io/v1/namespaces/{NS}/httproutes/resnet50"
    route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
             "metadata": {"name": "resnet50", "namespace": NS, "resourceVersion": "12"},
             "spec": {"rules": [{"backendRefs": [{"name": "resnet50", "port": 8000, "weight": 100}]}]}}
    server.answer("PUT", path, 200, route)
    assert await cluster.replace_route(route) == route
    (put,) = server.requests
    assert (put["method"], put["path"], put["body"]) == ("PUT", path, route)
    server.answer("PUT", path, 404, status(404, "NotFound", "the server could not find the requested resource"))
    with pytest.raises(ApiError) as missing:  # the Gateway API's CRD is not installed
        await cluster.replace_route(route)
    assert "is its CRD installed?" in missing.value.message
    with pytest.raises(ValueError):  # never an unconditional replace
        await cluster.replace_route({**route, "metadata": {"name": "resnet50", "namespace": NS}})


async def test_post_event_creates_a_core_event_about_the_object(server, cluster):
    path = f"/api/v1/namespaces/{NS}/events"
    server.answer("POST", path, 201, {"kind": "Event", "apiVersion": "v1", "metadata": {"name": "resnet50.1"}})
    await cluster.post_event(model_deployment(), "Warning", "SecretNotFound", "é" * 600)
    (request,) = server.requests
    assert (request["method"], request["path"]) == ("POST", path)
    assert request["headers"]["content-type"] == "application/json"
    event = request["body"]
    assert event["apiVersion"] == "v1" and event["kind"] == "Event"
    assert event["metadata"] == {"generateName": "resnet50.", "namespace": NS}
    assert event["involvedObject"] == {"apiVersion": "modeldeploy.dev/v1alpha1", "kind": "ModelDeployment",
                                       "name": "resnet50", "namespace": NS, "uid": "md-uid",
                                       "resourceVersion": "77"}
    assert (event["type"], event["reason"]) == ("Warning", "SecretNotFound")
    assert event["action"] == "Reconcile"  # required by the API server once eventTime is set
    assert len(event["message"].encode()) <= 1024 and event["message"].endswith("...")
    assert event["source"] == {"component": "modeldeploy"}
    assert event["reportingComponent"] == "modeldeploy.dev/operator"
    assert event["reportingInstance"] == "operator-pod-7f9c"
    assert event["count"] == 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", event["eventTime"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", event["firstTimestamp"])
    assert event["firstTimestamp"] == event["lastTimestamp"]


async def test_an_event_that_cannot_be_posted_is_logged_and_swallowed(server, cluster, caplog):
    server.answer("POST", f"/api/v1/namespaces/{NS}/events", 403, status(
        403, "Forbidden", 'events is forbidden: User "system:serviceaccount:x:y" cannot create resource "events"'))
    with caplog.at_level(logging.WARNING, logger="modeldeploy.cluster"):
        await cluster.post_event(model_deployment(), "Normal", "Created", "created Deployment resnet50")
    assert "events is forbidden" in caplog.text


async def test_an_event_is_swallowed_when_the_server_is_unreachable(caplog):
    cluster = make_cluster(f"http://127.0.0.1:{free_port()}")
    with caplog.at_level(logging.WARNING, logger="modeldeploy.cluster"):
        await cluster.post_event(model_deployment(), "Normal", "Created", "x")
    assert "could not post event" in caplog.text


# --- discovery: what the API server supports ------------------------------------------------

OPENAPI = Path(__file__).parent / "fixtures" / "openapi"
V3_POLICY, V2 = "/openapi/v3/apis/policy/v1", "/openapi/v2"


def openapi(name: str) -> dict[str, Any]:
    return json.loads((OPENAPI / name).read_text())


async def test_capabilities_come_from_the_policy_group_of_openapi_v3(server, cluster):
    server.answer("GET", V3_POLICY, 200, openapi("v3-1.27-policy-v1.json"))
    assert await cluster.server_capabilities() == ServerCapabilities()
    (request,) = server.requests  # the small per-group document only, never the whole v2
    assert (request["method"], request["path"], request["query"]) == ("GET", V3_POLICY, {})
    assert request["headers"]["authorization"] == f"Bearer {TOKEN}"
    assert request["headers"]["accept"] == "application/json"


async def test_without_openapi_v3_capabilities_come_from_v2(server, cluster):
    # Kubernetes before 1.24 (or v3 turned off): the v3 path is the plain "404 page not found".
    server.answer("GET", V2, 200, openapi("v2-1.24.json"))
    assert await cluster.server_capabilities() == ServerCapabilities(pdb_unhealthy_pod_eviction_policy=False)
    assert [r["path"] for r in server.requests] == [V3_POLICY, V2]


async def test_an_alpha_field_counts_as_missing(server, cluster):
    server.answer("GET", V2, 200, openapi("v2-1.26.json"))
    assert not (await cluster.server_capabilities()).pdb_unhealthy_pod_eviction_policy


async def test_discovery_needs_no_declared_permission_but_a_refusal_is_an_error(server, cluster):
    # Non-resource URLs: the built-in system:discovery role lets every authenticated user read them,
    # so modeldeploy.permissions declares (and the chart grants) nothing for them.
    assert not any("openapi" in p.resource for p in permissions.ALL)
    refusal = status(403, "Forbidden", 'forbidden: User "system:anonymous" cannot get path "/openapi/v2"', {})
    server.answer("GET", V3_POLICY, 403, refusal)
    server.answer("GET", V2, 403, refusal)
    with pytest.raises(ApiError) as refused:
        await cluster.server_capabilities()
    assert (refused.value.status, refused.value.reason) == (403, "Forbidden")
    assert "/openapi/v2" in refused.value.message


async def test_a_document_without_the_schema_is_unreadable(server, cluster):
    server.answer("GET", V2, 200, {"swagger": "2.0", "definitions": {}})
    with pytest.raises(OpenAPIUnreadable):
        await cluster.server_capabilities()


async def test_discovery_against_an_unreachable_server_is_service_unavailable():
    cluster = make_cluster(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ApiError) as refused:
        await cluster.server_capabilities()
    assert refused.value.status == 503
    cluster.close()


# --- errors and permissions ---------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_network_errors_are_service_unavailable():
    cluster = make_cluster(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ApiError) as refused:
        await cluster.get(DEPLOYMENT, NS, "resnet50")
    assert (refused.value.status, refused.value.reason) == (503, "ServiceUnavailable")


async def test_a_body_that_is_not_a_status_still_maps(server, cluster):
    server.answer("GET", DEPLOYMENT_PATH, 500, "etcdserver: request timed out")
    with pytest.raises(ApiError) as refused:
        await cluster.get(DEPLOYMENT, NS, "resnet50")
    assert (refused.value.status, refused.value.reason, refused.value.message) == (
        500, "InternalError", "etcdserver: request timed out")
    server.answer("PATCH", DEPLOYMENT_PATH, 409, status(409, "Conflict", "Operation cannot be fulfilled"))
    with pytest.raises(ApiError) as refused:
        await cluster.apply(deployment())
    assert refused.value.conflict and refused.value.message == "Operation cannot be fulfilled"


@pytest.mark.parametrize("call", [
    lambda c: c.get(POD, NS, "resnet50-abc"),  # pods are listed, never fetched
    lambda c: c.delete(SECRET, NS, "creds", uid="u"),  # a Secret the spec names is only ever checked
    lambda c: c.list(SECRET, NS, ""),  # one named Secret is checked, Secrets are never listed
    lambda c: c.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": NS}}),
    lambda c: c.list(LEASE, NS, ""),  # the one Lease is read by name, never listed or watched
    lambda c: c.delete(LEASE, NS, "modeldeploy", uid="u"),  # released, never deleted
], ids=["get-pod", "delete-secret", "list-secrets", "apply-secret", "list-leases", "delete-lease"])
async def test_an_undeclared_call_is_refused_before_it_is_sent(server, cluster, call):
    with pytest.raises(permissions.UndeclaredAPICall):
        await call(cluster)
    assert server.requests == []


async def test_concurrent_reconciles_share_a_large_enough_pool(server, cluster):
    assert cluster._api.configuration.connection_pool_maxsize >= POOL_SIZE >= 8  # noqa: SLF001
    server.answer("GET", DEPLOYMENT_PATH, 200, deployment())
    results = await asyncio.gather(*(cluster.get(DEPLOYMENT, NS, "resnet50") for _ in range(24)))
    assert all(r == deployment() for r in results) and len(server.requests) == 24
