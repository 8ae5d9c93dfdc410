"""The CRD is generated from the API models, committed, and a structural schema the API server accepts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from modeldeploy.crd import crd, crd_yaml

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "crds" / "modeldeployments.yaml"


def _schema() -> dict:
    return crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _walk(node: dict, path: str = ""):
    yield path, node
    for key, child in node.get("properties", {}).items():
        yield from _walk(child, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


def test_committed_crd_is_current():
    assert COMMITTED.read_text() == crd_yaml(), (
        "crds/modeldeployments.yaml is stale: run `modeldeploy crd > crds/modeldeployments.yaml`")


def test_cli_prints_the_same_crd():
    out = subprocess.run([sys.executable, "-m", "modeldeploy", "crd"], capture_output=True, text=True, check=True)
    assert out.stdout == COMMITTED.read_text()


def test_schema_is_structural():
    """Every node has a type (or is int-or-string / preserve-unknown); no free anyOf; no refs left."""
    for path, node in _walk(_schema()):
        assert "$ref" not in node and "allOf" not in node and "oneOf" not in node, path
        assert "additionalProperties" not in node or "properties" not in node, path
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string") is True, path
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
        else:
            assert "type" in node, f"{path} has no type"
        assert node.get("additionalProperties") is not False, path
        assert "nullable" not in node and "title" not in node and "const" not in node, path


def test_every_spec_field_is_documented_for_kubectl_explain():
    spec = _schema()["properties"]["spec"]
    missing = [path for path, node in _walk(spec, "spec") if path and not path.endswith(("[]", "{}"))
               and not node.get("description")]
    assert missing == []


def test_defaults_reach_nested_objects():
    spec = _schema()["properties"]["spec"]["properties"]
    for always in ("triton", "resources", "placement", "rollout", "service", "monitoring"):
        assert spec[always].get("default") == {}, always
    for opt_in in ("autoscaling", "disruptionBudget"):
        assert "default" not in spec[opt_in], opt_in
    assert spec["triton"]["properties"]["startupTimeoutSeconds"]["default"] == 300
    assert spec["replicas"]["default"] == 1


def test_every_rule_has_a_message_and_cel():
    rules = [(path, r) for path, node in _walk(_schema()) for r in node.get("x-kubernetes-validations", [])]
    assert len(rules) >= 12
    for path, rule in rules:
        assert rule["rule"] and rule["message"], path


def test_subresources_names_and_columns():
    doc = crd()
    version = doc["spec"]["versions"][0]
    assert doc["metadata"]["name"] == "modeldeployments.modeldeploy.dev"
    assert doc["spec"]["names"]["shortNames"] == ["md"]
    assert version["subresources"]["status"] == {}
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector"}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Ready", "Model", "Version", "Replicas", "Rollout", "Age"]
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    for column in version["additionalPrinterColumns"][1:-1]:
        first = column["jsonPath"].split(".")[2]
        assert first in status, column


def test_conditions_are_a_map_list_keyed_by_type():
    conditions = _schema()["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]


def test_committed_file_is_plain_yaml():
    assert yaml.safe_load(COMMITTED.read_text()) == crd()
