"""The Helm chart on a real API server: the operator's ServiceAccount may do exactly what the
operator's code does (modeldeploy.permissions), `helm upgrade` keeps it serving, and `helm
uninstall` leaves nothing of the operator's behind."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest

from e2e.conftest import (CHART, OPERATOR_ACCOUNT, RELEASE, RELEASE_NAMESPACE, get_json, helm, install_operator,
                          kubectl, kubectl_wait_ready, model_deployment, operator_image_values, operator_log, wait_for)
from e2e.test_operator import simple_store
from modeldeploy import permissions

ALL_VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")


def can_i(account: str, verb: str, group: str, resource: str, namespace: str | None) -> bool:
    """A SubjectAccessReview for the account: exact group, resource and subresource, answered by the
    API server's authorizer whether or not the resource's CRD is installed (kubectl auth can-i
    resolves names through discovery, and says "no" for a CRD that is absent)."""
    plural, _, subresource = resource.partition("/")
    attributes = {"verb": verb, "group": group, "resource": plural}
    if subresource:
        attributes["subresource"] = subresource
    if namespace:
        attributes["namespace"] = namespace
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
              "spec": {"user": account, "groups": ["system:serviceaccounts", "system:authenticated"],
                       "resourceAttributes": attributes}}
    answer = json.loads(kubectl("create", "-o", "json", "-f", "-", stdin=json.dumps(review)).stdout)
    return bool(answer["status"].get("allowed"))


def granted(account: str, namespace: str, home: str) -> list[str]:
    return [f"{verb} {p.resource}.{p.api_group}" for p in permissions.NAMESPACED for verb in sorted(p.verbs)
            if can_i(account, verb, p.api_group, p.resource, namespace)] + \
           [f"{verb} {p.resource}.{p.api_group} (cluster)" for p in permissions.CLUSTER for verb in sorted(p.verbs)
            if can_i(account, verb, p.api_group, p.resource, None)] + \
           [f"{verb} {p.resource}.{p.api_group} (release namespace)" for p in permissions.RELEASE_NAMESPACE
            for verb in sorted(p.verbs) if can_i(account, verb, p.api_group, p.resource, home)]


def declared() -> list[str]:
    return [f"{verb} {p.resource}.{p.api_group}" for p in permissions.NAMESPACED for verb in sorted(p.verbs)] + \
           [f"{verb} {p.resource}.{p.api_group} (cluster)" for p in permissions.CLUSTER for verb in sorted(p.verbs)] + \
           [f"{verb} {p.resource}.{p.api_group} (release namespace)" for p in permissions.RELEASE_NAMESPACE
            for verb in sorted(p.verbs)]


def extra_grants(account: str, served: str, unserved: str | None, home: str) -> list[str]:
    extra = [f"{verb} {p.resource}.{p.api_group}" for p in permissions.NAMESPACED for verb in ALL_VERBS
             if verb not in p.verbs and can_i(account, verb, p.api_group, p.resource, served)]
    # Leases: only the declared verbs, only in the release namespace (never where it serves, nor cluster-wide).
    for p in permissions.RELEASE_NAMESPACE:
        extra += [f"{verb} {p.resource}.{p.api_group} in the release namespace" for verb in ALL_VERBS
                  if verb not in p.verbs and can_i(account, verb, p.api_group, p.resource, home)]
        extra += [f"{verb} {p.resource}.{p.api_group} in {served}" for verb in ALL_VERBS
                  if served != home and can_i(account, verb, p.api_group, p.resource, served)]
        extra += [f"{verb} {p.resource}.{p.api_group} cluster-wide" for verb in ("list", "watch")
                  if can_i(account, verb, p.api_group, p.resource, None)]
    if unserved and can_i(account, "get", "apps", "deployments", unserved):
        extra.append(f"get deployments in {unserved}, which it does not serve")
    extra += [f"{verb} secrets" for verb in ("list", "watch") if can_i(account, verb, "", "secrets", served)]
    if can_i(account, "list", "", "namespaces", None):
        extra.append("list namespaces (kopf needs them only for namespace patterns)")
    return extra


def test_the_cluster_wide_operator_may_do_everything_its_code_does_and_nothing_else(operator_release):
    assert granted(OPERATOR_ACCOUNT, "default", RELEASE_NAMESPACE) == declared()
    assert extra_grants(OPERATOR_ACCOUNT, "default", None, RELEASE_NAMESPACE) == []


@pytest.fixture(scope="module")
def namespaced_release(operator_release: str) -> Iterator[tuple[str, str, str]]:
    """A second, namespaced-mode release serving one (empty) namespace: (home, watched, account)."""
    suffix = uuid.uuid4().hex[:6]
    home, watched = f"md-chart-{suffix}", f"md-watched-{suffix}"
    kubectl("create", "namespace", home)
    kubectl("create", "namespace", watched)
    release = f"md{suffix}"
    helm("install", release, str(CHART), "-n", home, "--skip-crds", *operator_image_values(),
         "--set", "rbac.scope=namespaced", "--set", f"watchNamespaces={{{watched}}}",
         "--set", "rbac.aggregateToDefaultRoles=false")
    try:
        yield home, watched, f"system:serviceaccount:{home}:{release}-modeldeploy"
    finally:
        helm("uninstall", release, "-n", home)
        kubectl("delete", "namespace", home, watched, "--wait=false", check=False)


def test_the_namespaced_operator_may_do_everything_its_code_does(namespaced_release):
    home, watched, account = namespaced_release
    assert granted(account, watched, home) == declared()


def test_and_nothing_else(namespaced_release):
    home, watched, account = namespaced_release
    assert extra_grants(account, watched, home, home) == []


def test_helm_upgrade_rolls_the_operator_and_it_keeps_serving(namespace):
    simple_store(namespace)
    kubectl("apply", "-f", "-", stdin=json.dumps(model_deployment("kept", namespace)))
    kubectl_wait_ready(namespace, "kept")
    before = get_json("deployment", RELEASE, "-n", RELEASE_NAMESPACE)["metadata"]["generation"]
    install_operator("--set", "resources.limits.memory=600Mi")
    after = get_json("deployment", RELEASE, "-n", RELEASE_NAMESPACE)
    assert after["metadata"]["generation"] > before
    assert after["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] == "600Mi"
    # The new operator pod reconciles: a deleted child comes back, and the model still serves.
    kubectl("delete", "service", "kept", "-n", namespace)
    wait_for("the Service to come back under the upgraded operator",
             lambda: get_json("service", "kept", "-n", namespace), timeout=60)
    kubectl_wait_ready(namespace, "kept")


@pytest.mark.last
def test_helm_uninstall_leaves_nothing_of_the_operators_behind(operator_release):
    """After the ModelDeployments are deleted and the release uninstalled, no object the operator or
    the chart made is left (the CRD stays: Helm never deletes CRDs, so users keep their data), but for
    the leader-election Lease the operator made: Helm deletes the RBAC that would let the last leader
    release it while that pod is still stopping, so it stays behind, naming a replica that is gone
    (harmless: the next install takes it over once it has expired; `kubectl delete lease` removes it)."""
    for md in (get_json("md", "-A") or {}).get("items", []):
        kubectl("delete", "md", md["metadata"]["name"], "-n", md["metadata"]["namespace"], "--wait=true",
                timeout=120)
    managed = "app.kubernetes.io/managed-by=modeldeploy"
    kinds = "deployments,services,horizontalpodautoscalers,poddisruptionbudgets"
    wait_for("the ModelDeployments' children to be garbage-collected",
             lambda: not (get_json(kinds, "-A", "-l", managed) or {}).get("items"), timeout=120)
    helm("uninstall", RELEASE, "-n", RELEASE_NAMESPACE, "--wait")
    chart_objects = "deployments,serviceaccounts,services,roles,rolebindings,poddisruptionbudgets"
    left = (get_json(chart_objects, "-n", RELEASE_NAMESPACE, "-l", f"app.kubernetes.io/instance={RELEASE}")
            or {}).get("items", [])
    left += [o for o in (get_json("clusterroles,clusterrolebindings", "-l", f"app.kubernetes.io/instance={RELEASE}")
                         or {}).get("items", [])]
    assert [f"{o['kind']}/{o['metadata']['name']}" for o in left] == [], operator_log()
    wait_for("the operator's pod to go", lambda: not (get_json(
        "pods", "-n", RELEASE_NAMESPACE) or {}).get("items"), timeout=90)
    assert get_json("crd", "modeldeployments.modeldeploy.dev") is not None
    leases = (get_json("leases", "-n", RELEASE_NAMESPACE) or {}).get("items", [])
    assert [lease["metadata"]["name"] for lease in leases] in ([], [RELEASE])  # made by the operator, not by Helm
