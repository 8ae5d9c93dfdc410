"""The Helm chart, with the real helm binary: lint, template in each mode, every object validated against
Kubernetes' own schemas, schema refusals, the operator's RBAC exactly as permissions.py declares it.

helm is found beside the venv's python (where scripts/install-helm.sh puts it) or on PATH. Without it the
tests skip, except under CI, where a missing helm is a failure.
"""

from __future__ import annotations

import os
import subprocess
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from kubernetes import client as k8s_client

from modeldeploy import GROUP, PLURAL, permissions
from modeldeploy.cluster import KubernetesCluster
from modeldeploy.kube import CHILD_KINDS, ApiError
from modeldeploy.naming import owner_reference
from tests.support.tools import helm_path

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "modeldeploy"
RELEASE, HOME = "md", "modeldeploy-system"
pytestmark = pytest.mark.helm

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.25.0", kubernetes_validate.latest_version())
# Kinds that are not part of Kubernetes: kubernetes-validate has no schema for them.
NO_SCHEMA = {("monitoring.coreos.com/v1", "ServiceMonitor")}

NAMESPACED = ("--set", "rbac.scope=namespaced", "--set", "watchNamespaces={vision,nlp}")
METRICS = ("--set", "metrics.service.enabled=true", "--set", "metrics.serviceMonitor.enabled=true")
MODES = {"default": (), "namespaced": NAMESPACED, "metrics": METRICS}

AGGREGATE = "rbac.authorization.k8s.io/aggregate-to-"


def _helm() -> str:
    found = helm_path()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("helm is missing, and CI must run these tests: bash scripts/install-helm.sh .venv/bin")
        pytest.skip("helm is not installed (bash scripts/install-helm.sh .venv/bin); CI would fail here")
    return found


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([_helm(), *args], capture_output=True, text=True, timeout=120, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stderr}")
    return result


def template(*values: str, crds: bool = False) -> list[dict[str, Any]]:
    args = ["template", RELEASE, str(CHART), "--namespace", HOME, *values]
    if crds:
        args.append("--include-crds")
    return [doc for doc in yaml.safe_load_all(helm(*args).stdout) if doc]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind]
    return found


# --- helm itself ------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_lint(mode):
    helm("lint", "--strict", str(CHART), *MODES[mode])


@pytest.mark.parametrize("mode", MODES)
def test_every_rendered_object_is_valid_kubernetes(mode):
    docs = template(*MODES[mode], crds=True)
    assert {"CustomResourceDefinition", "Deployment", "ServiceAccount", "ClusterRole"} <= {d["kind"] for d in docs}
    checked = 0
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in NO_SCHEMA:
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                raise AssertionError(f"{doc['kind']}/{doc['metadata']['name']} on Kubernetes {version}: "
                                     f"{error.message} at {list(error.path)}") from None
        checked += 1
    assert checked == len([d for d in docs if (d["apiVersion"], d["kind"]) not in NO_SCHEMA])


@pytest.mark.parametrize(("api_version", "kind"), sorted(NO_SCHEMA))
def test_only_kinds_without_a_kubernetes_schema_are_skipped(api_version, kind):
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate({"apiVersion": api_version, "kind": kind, "metadata": {"name": "x"}},
                                     KUBERNETES_VERSIONS[-1], strict=True)


def test_the_chart_supports_kubernetes_1_25_and_later():
    # 1.25: CEL validation rules on by default. The operator leaves out the PDB fields an older
    # server lacks, so 1.25 and 1.26 need nothing else.
    for version in ("1.25.0", "v1.25.3-eks-4a3ea1b", "1.26.9", "1.27.0"):
        assert helm("template", RELEASE, str(CHART), "--kube-version", version).returncode == 0, version
    refused = helm("template", RELEASE, str(CHART), "--kube-version", "1.24.17", check=False)
    assert refused.returncode != 0 and "kubeVersion" in refused.stderr


def test_app_version_is_the_package_version():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["apiVersion"] == "v2" and chart["kubeVersion"] == ">=1.25.0-0"
    assert chart["appVersion"] == project["version"]
    (container,) = one(template(), "Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["image"].endswith(f":{project['version']}")


def test_the_chart_crd_is_the_repository_crd_byte_for_byte():
    assert (CHART / "crds" / "modeldeployments.yaml").read_bytes() == (ROOT / "crds" / "modeldeployments.yaml").read_bytes()
    assert [p.name for p in (CHART / "crds").iterdir()] == ["modeldeployments.yaml"]


# --- the operator's Deployment ------------------------------------------------------------------

def test_the_operator_deployment_is_locked_down():
    deployment = one(template(), "Deployment")
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                                      "seccompProfile": {"type": "RuntimeDefault"}}
    assert pod["serviceAccountName"] == one(template(), "ServiceAccount")["metadata"]["name"]
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    probe = container["livenessProbe"]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert probe["path"] == "/healthz" and ports[probe["port"]] == 8080
    assert container["resources"]["requests"] and container["resources"]["limits"]
    # The only writable path is an emptyDir at /tmp.
    assert [m["mountPath"] for m in container["volumeMounts"]] == ["/tmp"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    (mount,) = container["volumeMounts"]
    assert "emptyDir" in volumes[mount["name"]]


ELECTION = ["--leader-election", "--lease-name", "md-modeldeploy"]  # the Lease is named after the release


def test_the_operator_runs_modeldeploy_run():
    (container,) = one(template(), "Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["modeldeploy"]
    assert container["args"] == ["run", "--health-port", "8080", *ELECTION]  # no --namespace: every namespace


def test_namespaced_mode_passes_each_namespace_to_the_operator():
    (container,) = one(template(*NAMESPACED), "Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["run", "--health-port", "8080", "--namespace", "vision", "--namespace", "nlp",
                                 *ELECTION]


# --- high availability: replicas, Lease, disruption budget --------------------------------------------

def test_two_replicas_elect_a_leader_and_roll_with_a_surge():
    docs = template()
    spec = one(docs, "Deployment")["spec"]
    assert spec["replicas"] == 2
    # With a Lease two operators at once are safe: start the new pod first, keep a standby throughout.
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    (container,) = spec["template"]["spec"]["containers"]
    assert {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]} == {
        "POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}
    # Liveness asks /healthz, which a healthy standby answers 200 too.
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_replicas_prefer_different_nodes_but_do_not_require_them():
    deployment = one(template(), "Deployment")
    affinity = deployment["spec"]["template"]["spec"]["affinity"]
    assert set(affinity) == {"podAntiAffinity"} and set(affinity["podAntiAffinity"]) == {
        "preferredDuringSchedulingIgnoredDuringExecution"}
    (term,) = affinity["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    # A user's affinity replaces the default.
    mine = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["system"]}]}]}}}
    values = ("--set-json", f"affinity={__import__('json').dumps(mine)}")
    assert one(template(*values), "Deployment")["spec"]["template"]["spec"]["affinity"] == mine


def test_a_disruption_budget_keeps_a_replica_through_drains_when_there_are_several():
    docs = template()
    budget = one(docs, "PodDisruptionBudget")
    assert budget["metadata"]["namespace"] == HOME
    assert budget["spec"] == {"maxUnavailable": 1,
                              "selector": one(docs, "Deployment")["spec"]["selector"]}
    single = template("--set", "replicaCount=1")
    assert one(single, "Deployment")["spec"]["replicas"] == 1
    assert "PodDisruptionBudget" not in {d["kind"] for d in single}
    assert one(template("--set", "replicaCount=3"), "Deployment")["spec"]["replicas"] == 3


def test_values_reach_the_deployment():
    deployment = one(template("--set", "image.repository=registry.example/md", "--set", "image.tag=1.2.3",
                              "--set", "resources.limits.memory=1Gi", "--set", "healthPort=9090"), "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.example/md:1.2.3"
    assert container["resources"]["limits"] == {"memory": "1Gi"}
    assert container["args"][1:3] == ["--health-port", "9090"] and container["ports"][0]["containerPort"] == 9090


# --- RBAC: exactly permissions.py ------------------------------------------------------------------

Grant = tuple[str, str, str]  # (apiGroup, resource, verb)


def _roles(docs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] in ("Role", "ClusterRole")]


def _is_user_role(role: dict[str, Any]) -> bool:
    """The aggregated roles for people: recognised by their aggregation labels, never by name."""
    return any(key.startswith(AGGREGATE) for key in (role["metadata"].get("labels") or {}))


def _grants(role: dict[str, Any]) -> set[Grant]:
    out: set[Grant] = set()
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, rule  # no resourceNames/nonResourceURLs
        out |= {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    return out


def _declared(*groups: tuple[permissions.Permission, ...]) -> set[Grant]:
    return {(p.api_group, p.resource, verb) for group in groups for p in group for verb in p.verbs}


def _key(doc: dict[str, Any]) -> tuple[str, str, str]:
    return doc["kind"], doc["metadata"].get("namespace", ""), doc["metadata"]["name"]


@pytest.mark.parametrize("mode", MODES)
def test_no_wildcards_anywhere(mode):
    for role in _roles(template(*MODES[mode])):
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert not any("*" in item for item in rule[field]), (_key(role), rule)


def test_permissions_py_is_well_formed():
    """What the comparisons below rely on: no wildcard, every verb a real one, no resource twice."""
    verbs = {"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"}
    for group in (permissions.NAMESPACED, permissions.CLUSTER, permissions.RELEASE_NAMESPACE):
        keys = [(p.api_group, p.resource) for p in group]
        assert len(keys) == len(set(keys))
        for p in group:
            assert p.verbs and p.verbs <= verbs and "*" not in p.resource and "*" not in p.api_group, p
    assert all(not p.cluster_scoped for p in permissions.NAMESPACED + permissions.RELEASE_NAMESPACE)
    assert all(p.cluster_scoped for p in permissions.CLUSTER)
    assert permissions.ALL == permissions.NAMESPACED + permissions.CLUSTER + permissions.RELEASE_NAMESPACE
    # Leases only in the release namespace, and nothing else there.
    assert _declared(permissions.RELEASE_NAMESPACE) == {("coordination.k8s.io", "leases", v)
                                                        for v in ("get", "create", "update")}
    assert not {g for g, _, _ in _declared(permissions.NAMESPACED, permissions.CLUSTER)} & {"coordination.k8s.io"}


LEASE_ROLE = ("Role", HOME, "md-modeldeploy-leader-election")


def test_cluster_mode_grants_exactly_what_the_code_declares():
    docs = template()
    operator_roles = {_key(r): r for r in _roles(docs) if not _is_user_role(r)}
    assert set(operator_roles) == {("ClusterRole", "", "md-modeldeploy"), LEASE_ROLE}
    assert _grants(operator_roles["ClusterRole", "", "md-modeldeploy"]) == _declared(permissions.NAMESPACED,
                                                                                   permissions.CLUSTER)
    assert _grants(operator_roles[LEASE_ROLE]) == _declared(permissions.RELEASE_NAMESPACE)
    _assert_bound(docs, {("ClusterRole", "md-modeldeploy"), ("Role", "md-modeldeploy-leader-election")})
    assert {b["metadata"].get("namespace") for b in docs if b["kind"] == "RoleBinding"} == {HOME}


def test_namespaced_mode_grants_exactly_what_the_code_declares():
    docs = template(*NAMESPACED)
    operator_roles = {_key(r): r for r in _roles(docs) if not _is_user_role(r)}
    assert set(operator_roles) == {("Role", "vision", "md-modeldeploy"), ("Role", "nlp", "md-modeldeploy"),
                                   ("ClusterRole", "", "md-modeldeploy-discovery"), LEASE_ROLE}
    for key, role in operator_roles.items():
        expected = (_declared(permissions.CLUSTER) if key[0] == "ClusterRole" else
                    _declared(permissions.RELEASE_NAMESPACE) if key == LEASE_ROLE else
                    _declared(permissions.NAMESPACED))
        assert _grants(role) == expected, key
    _assert_bound(docs, {("Role", "md-modeldeploy"), ("ClusterRole", "md-modeldeploy-discovery"),
                         ("Role", "md-modeldeploy-leader-election")})
    assert {b["metadata"].get("namespace") for b in docs if b["kind"] == "RoleBinding"} == {"vision", "nlp", HOME}


def test_serving_the_release_namespace_itself_keeps_the_lease_role_apart():
    docs = template("--set", "rbac.scope=namespaced", "--set", f"watchNamespaces={{{HOME}}}")
    roles = {_key(r): _grants(r) for r in _roles(docs) if not _is_user_role(r) and r["kind"] == "Role"}
    assert roles == {("Role", HOME, "md-modeldeploy"): _declared(permissions.NAMESPACED),
                     LEASE_ROLE: _declared(permissions.RELEASE_NAMESPACE)}


# Server-side apply that creates an object is authorized as create as well as patch, and an ownerReference
# with blockOwnerDeletion needs update on the owner's finalizers (OwnerReferencesPermissionEnforcement):
# without these the chart's operator could apply nothing on a real API server.
APPLIED = [(kind.group, kind.plural, verb) for kind in CHILD_KINDS for verb in ("patch", "create")]
FINALIZERS = (GROUP, f"{PLURAL}/finalizers", "update")


def test_every_kind_the_operator_applies_is_declared_with_create_and_patch():
    assert set(APPLIED) <= _declared(permissions.NAMESPACED)
    assert permissions.APPLY_VERBS == {"patch", "create"}
    for kind in CHILD_KINDS:
        permissions.require_apply(kind.group, kind.plural, [owner_reference("resnet50", "uid")])
    # Patched but never applied: the status subresource (a JSON patch, never a create).
    patched_not_created = {(p.api_group, p.resource) for p in permissions.NAMESPACED
                           if "patch" in p.verbs and "create" not in p.verbs}
    assert patched_not_created == {(GROUP, f"{PLURAL}/status")}


def test_owner_references_that_block_deletion_are_declared_with_update_on_finalizers():
    assert owner_reference("resnet50", "uid")["blockOwnerDeletion"] is True
    assert FINALIZERS in _declared(permissions.NAMESPACED)
    why = {p.resource: p.why for p in permissions.NAMESPACED}[f"{PLURAL}/finalizers"]
    assert "blockOwnerDeletion" in why and "OwnerReferencesPermissionEnforcement" in why


@pytest.mark.parametrize("mode", ["default", "namespaced"])
def test_the_chart_grants_apply_create_and_owner_finalizers(mode):
    operator_roles = [r for r in _roles(template(*MODES[mode])) if not _is_user_role(r) and _key(r) != LEASE_ROLE]
    for role in operator_roles:
        if role["kind"] == "Role" or mode == "default":
            assert {*APPLIED, FINALIZERS} <= _grants(role), _key(role)


def _without(api_group: str, resource: str, verb: str) -> tuple[permissions.Permission, ...]:
    return tuple(permissions.Permission(p.api_group, p.resource, p.verbs - {verb}, p.cluster_scoped, p.why)
                 if (p.api_group, p.resource) == (api_group, resource) else p for p in permissions.ALL)


@pytest.mark.parametrize("missing", [
    None, ("apps", "deployments", "create"), ("apps", "deployments", "patch"), FINALIZERS,
], ids=["declared", "create", "patch", "finalizers"])
async def test_the_cluster_boundary_requires_all_an_apply_needs(monkeypatch, missing):
    """The boundary asks permissions.py for everything an apply needs, so the list and the code cannot drift."""
    if missing:
        monkeypatch.setattr(permissions, "ALL", _without(*missing))
    obj = {"apiVersion": "apps/v1", "kind": "Deployment",
           "metadata": {"name": "resnet50", "namespace": "vision",
                        "ownerReferences": [owner_reference("resnet50", "uid")]}}
    # Nothing listens there: a call that gets past the check is sent, and fails with 503.
    cluster = KubernetesCluster(k8s_client.Configuration(host="http://127.0.0.1:9"))
    try:
        if missing:
            with pytest.raises(permissions.UndeclaredAPICall, match=f"{missing[2]} {missing[1]}"):
                await cluster.apply(obj)
        else:
            with pytest.raises(ApiError) as unreachable:
                await cluster.apply(obj)
            assert unreachable.value.status == 503
    finally:
        cluster.close()


def test_an_owner_reference_to_another_kind_that_blocks_deletion_is_undeclared():
    other = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "x", "uid": "u", "blockOwnerDeletion": True}
    with pytest.raises(permissions.UndeclaredAPICall, match="ReplicaSet"):
        permissions.require_apply("apps", "deployments", [other])
    permissions.require_apply("apps", "deployments", [{**other, "blockOwnerDeletion": False}])


def _assert_bound(docs: list[dict[str, Any]], roles: set[tuple[str, str]]) -> None:
    """Each operator role is bound to the operator's ServiceAccount, and nothing else is bound."""
    account = one(docs, "ServiceAccount")["metadata"]
    bindings = [d for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")]
    assert {(b["roleRef"]["kind"], b["roleRef"]["name"]) for b in bindings} == roles
    for binding in bindings:
        assert binding["roleRef"]["apiGroup"] == "rbac.authorization.k8s.io"
        assert (binding["kind"] == "RoleBinding") == (binding["roleRef"]["kind"] == "Role")
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["name"],
                                        "namespace": account["namespace"]}]


def test_user_roles_are_aggregated_and_name_the_subresources():
    roles = {r["metadata"]["name"]: r for r in _roles(template()) if _is_user_role(r)}
    assert set(roles) == {"md-modeldeploy-edit", "md-modeldeploy-view"}
    edit, view = roles["md-modeldeploy-edit"], roles["md-modeldeploy-view"]
    assert {k for k in edit["metadata"]["labels"] if k.startswith(AGGREGATE)} == {
        AGGREGATE + "admin", AGGREGATE + "edit"}
    assert {k for k in view["metadata"]["labels"] if k.startswith(AGGREGATE)} == {AGGREGATE + "view"}
    resources = {"modeldeployments", "modeldeployments/status", "modeldeployments/scale"}
    read = {"get", "list", "watch"}
    assert _grants(view) == {("modeldeploy.dev", r, v) for r in resources for v in read}
    granted = _grants(edit)
    assert {r for _, r, _ in granted} == resources and {g for g, _, _ in granted} == {"modeldeploy.dev"}
    assert {v for _, r, v in granted if r == "modeldeployments"} == read | {
        "create", "update", "patch", "delete", "deletecollection"}
    assert {v for _, r, v in granted if r == "modeldeployments/scale"} == {"get", "update", "patch"}
    assert {v for _, r, v in granted if r == "modeldeployments/status"} == read  # only the operator writes it
    # They are for people: nothing binds them to the operator.
    assert not [b for b in template() if b.get("roleRef", {}).get("name") in roles]


def test_user_roles_can_be_left_out():
    assert not [r for r in _roles(template("--set", "rbac.aggregateToDefaultRoles=false")) if _is_user_role(r)]


# --- optional metrics objects ---------------------------------------------------------------------

def test_metrics_service_and_service_monitor():
    assert not {"Service", "ServiceMonitor"} & {d["kind"] for d in template()}
    docs = template(*METRICS, "--set", "metrics.serviceMonitor.labels.release=prometheus")
    service, monitor = one(docs, "Service"), one(docs, "ServiceMonitor")
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"] == [{"name": "http-metrics", "port": 8080, "targetPort": "http-metrics",
                                         "protocol": "TCP"}]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0] == {"port": "http-metrics", "path": "/metrics", "interval": "30s"}
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    only_service = {d["kind"] for d in template("--set", "metrics.service.enabled=true")}
    assert "Service" in only_service and "ServiceMonitor" not in only_service


# --- values.schema.json refuses what would be a mistake ------------------------------------------

@pytest.mark.parametrize(("values", "message"), [
    ({"rbac": {"scope": "everywhere"}}, "scope"),
    ({"rbac": {"scope": "namespaced"}}, "watchNamespaces"),  # namespaced needs namespaces
    ({"watchNamespaces": ["vision"]}, "watchNamespaces"),  # cluster scope serves every namespace
    ({"rbac": {"scope": "namespaced"}, "watchNamespaces": ["Bad_NS"]}, "watchNamespaces"),
    ({"image": {"tagg": "1"}}, "tagg"),  # a typo at any depth
    ({"replicas": 2}, "replicas"),  # a typo: the value is replicaCount
    ({"replicaCount": 0}, "replicaCount"),
    ({"replicaCount": "two"}, "replicaCount"),
    ({"metrics": {"serviceMonitor": {"enabled": "yes-please"}}}, "enabled"),
    ({"metrics": {"serviceMonitor": {"interval": "often"}}}, "interval"),
    ({"resources": {"limits": {"memroy": "1Gi"}}}, "memroy"),
    ({"healthPort": 80}, "healthPort"),
    ({"tolerations": [{"key": "nvidia.com/gpu", "efect": "NoSchedule"}]}, "efect"),
])
def test_values_that_break_the_schema_are_refused(values, message, tmp_path):
    bad = tmp_path / "values.yaml"
    bad.write_text(yaml.safe_dump(values))
    for command in ("template", "lint"):
        args = [command, RELEASE, str(CHART)] if command == "template" else [command, str(CHART)]
        result = helm(*args, "-f", str(bad), check=False)
        assert result.returncode != 0, f"helm {command} accepted {values}"
        assert message in result.stderr + result.stdout, result.stderr
