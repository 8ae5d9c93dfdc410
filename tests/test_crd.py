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


def _json_schema(node):
    """The CRD's OpenAPI schema as plain JSON Schema (dropping the x-kubernetes-* annotations)."""
    if isinstance(node, dict):
        return {k: _json_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if isinstance(node, list):
        return [_json_schema(v) for v in node]
    return node


def test_statuses_the_operator_writes_fit_the_crd_schema():
    import jsonschema

    from modeldeploy.errors import parse_model_deployment
    from modeldeploy.status import Observed, Problem, derive_status, invalid_status
    from tests.support.specs import minimal
    from tests.support.world import Report, deployment, pod

    schema = _json_schema(_schema()["properties"]["status"])
    doc = minimal()
    doc["metadata"].update(uid="u", generation=1)
    md = parse_model_deployment(doc)
    pods = [pod("a", "3"), pod("b", "3", ready=False, waiting="CrashLoopBackOff", last_exit=1)]
    statuses = [
        derive_status(md, Observed(deployment=deployment("3"), pods=pods,
                                   reports={"uid-a": Report(), "uid-b": Report(False, "ModelLoadFailed", "x")}),
                      {}, "2026-11-23T08:00:00Z"),
        derive_status(md, Observed(problem=Problem("SecretNotFound", "missing")), {}, "2026-11-23T08:00:00Z"),
        invalid_status(3, "resnet50", Problem("InvalidSpec", "bad"), {}, "2026-11-23T08:00:00Z"),
    ]
    for status in statuses:
        jsonschema.validate(status, schema)
        assert _pruned(status, _schema()["properties"]["status"]) == []


def _pruned(value, schema, path="status"):
    """Fields the API server would drop because the structural schema does not know them."""
    if isinstance(value, dict) and "properties" in schema:
        out = []
        for key, item in value.items():
            if key not in schema["properties"]:
                out.append(f"{path}.{key}")
            else:
                out += _pruned(item, schema["properties"][key], f"{path}.{key}")
        return out
    if isinstance(value, list) and "items" in schema:
        return [p for i, item in enumerate(value) for p in _pruned(item, schema["items"], f"{path}[{i}]")]
    return []
