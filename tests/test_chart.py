"""The Helm chart, with the real helm binary: lint, template, schema, exact least-privilege RBAC."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from modeldeploy import permissions
from tests.support.manifests import validate_all
from tests.support.tools import helm_path

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "modeldeploy"
pytestmark = pytest.mark.helm


def _helm() -> str:
    found = helm_path()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("helm is not installed: `make test` installs it (scripts/install-helm.sh)")
        pytest.skip("helm is not installed; run scripts/install-helm.sh")
    return found


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([_helm(), *args], capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stderr}")
    return result


def template(*values: str, namespace: str = "modeldeploy-system") -> list[dict]:
    out = helm("template", "md", str(CHART), "--namespace", namespace, *values).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


NAMESPACED_VALUES = ("--set", "rbac.scope=namespaced", "--set", "watchNamespaces={vision,nlp}")
METRICS_VALUES = ("--set", "metrics.service.enabled=true", "--set", "metrics.serviceMonitor.enabled=true")


def test_lint():
    helm("lint", "--strict", str(CHART))


@pytest.mark.parametrize("values", [(), NAMESPACED_VALUES, METRICS_VALUES], ids=["default", "namespaced", "metrics"])
def test_rendered_objects_are_valid_kubernetes(values):
    docs = template(*values)
    assert {d["kind"] for d in docs} >= {"Deployment", "ServiceAccount", "ClusterRole"}
    validate_all(docs)


def test_the_chart_crd_is_the_generated_crd():
    assert (CHART / "crds" / "modeldeployments.yaml").read_bytes() == (ROOT / "crds" / "modeldeployments.yaml").read_bytes()


def test_operator_deployment_is_locked_down():
    (deployment,) = [d for d in template() if d["kind"] == "Deployment"]
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert container["args"] == ["--health-port=8080"]


def test_namespaced_mode_passes_the_namespaces_to_the_operator():
    (deployment,) = [d for d in template(*NAMESPACED_VALUES) if d["kind"] == "Deployment"]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["args"] == [
        "--health-port=8080", "--namespace=vision", "--namespace=nlp"]


def _grants(docs: list[dict], kinds: set[str], *, exclude_suffixes=("-edit", "-view")) -> dict[str, set]:
    """(apiGroup, resource, verb) triples granted by the operator's roles, per role name."""
    out: dict[str, set] = {}
    for doc in docs:
        if doc["kind"] not in kinds or doc["metadata"]["name"].endswith(exclude_suffixes):
            continue
        key = f"{doc['kind']}/{doc['metadata'].get('namespace', '')}/{doc['metadata']['name']}"
        for rule in doc["rules"]:
            for part in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[part], f"wildcard in {key}"
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    out.setdefault(key, set()).update((group, resource, verb) for verb in rule["verbs"])
    return out


def _declared(*groups: tuple[permissions.Permission, ...]) -> set:
    return {(p.api_group, p.resource, verb) for group in groups for p in group for verb in p.verbs}


def test_cluster_mode_grants_exactly_what_the_code_uses():
    grants = _grants(template(), {"ClusterRole", "Role"})
    assert list(grants.values()) == [_declared(permissions.NAMESPACED, permissions.CLUSTER,
                                               permissions.CLUSTER_WIDE_ONLY)]


def test_namespaced_mode_grants_exactly_what_the_code_uses():
    docs = template(*NAMESPACED_VALUES)
    roles = _grants(docs, {"Role"})
    assert sorted(roles) == ["Role/nlp/md-modeldeploy", "Role/vision/md-modeldeploy"]
    assert all(granted == _declared(permissions.NAMESPACED) for granted in roles.values())
    assert list(_grants(docs, {"ClusterRole"}).values()) == [_declared(permissions.CLUSTER)]
    bindings = [d for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")]
    assert {b["subjects"][0]["name"] for b in bindings} == {"md-modeldeploy"}


def test_user_roles_name_the_scale_and_status_subresources():
    docs = {d["metadata"]["name"]: d for d in template() if d["kind"] == "ClusterRole"}
    edit = {r for rule in docs["md-modeldeploy-edit"]["rules"] for r in rule["resources"]}
    assert edit == {"modeldeployments", "modeldeployments/scale", "modeldeployments/status"}
    assert docs["md-modeldeploy-edit"]["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert docs["md-modeldeploy-view"]["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"


def test_metrics_service_and_monitor():
    docs = {d["kind"]: d for d in template(*METRICS_VALUES)}
    assert docs["Service"]["spec"]["ports"][0]["port"] == 8080
    assert docs["ServiceMonitor"]["spec"]["endpoints"][0]["path"] == "/metrics"
    assert "Service" not in {d["kind"] for d in template()}


@pytest.mark.parametrize(("values", "message"), [
    (("--set", "rbac.scope=everywhere"), "/rbac/scope"),
    (("--set", "rbac.scope=namespaced"), "/watchNamespaces"),
    (("--set", "image.tagg=1"), "tagg"),
    (("--set", "healthPort=80"), "/healthPort"),
    (("--set", "watchNamespaces={Bad_NS}"), "/watchNamespaces/0"),
])
def test_values_that_break_the_schema_are_refused(values, message, tmp_path):
    result = helm("template", "md", str(CHART), *values, check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr
    bad = tmp_path / "bad-values.yaml"
    bad.write_text("metrics:\n  serviceMonitor:\n    enabled: yes-please\n")
    refused = helm("lint", str(CHART), "-f", str(bad), check=False)
    assert refused.returncode != 0
