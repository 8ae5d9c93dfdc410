"""The CRD is generated from the API models, committed, and a structural schema the API server accepts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from modeldeploy.api import ModelDeploymentSpec
from modeldeploy.crd import crd, crd_yaml
from tests.support.specs import load_examples, minimal
from tests.test_api import defaulted, failing_cel_messages

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
        assert isinstance(spec[always].get("default"), dict), always
    for opt_in in ("autoscaling", "disruptionBudget"):
        assert "default" not in spec[opt_in], opt_in
    assert spec["triton"]["properties"]["startupTimeoutSeconds"]["default"] == 300
    assert spec["replicas"]["default"] == 1
    # The whole object, nested defaults filled in: the API server checks CEL rules on it as written.
    assert spec["rollout"]["default"] == {"strategy": "RollingUpdate", "maxSurge": 1, "maxUnavailable": 0,
                                          "progressDeadlineSeconds": 600, "autoRollback": True,
                                          "failAfterRestarts": 3, "failAfterUnhealthySeconds": 120}
    assert spec["resources"]["default"] == {"sharedMemory": "1Gi"}  # empty requests/limits stay absent


def _defaults() -> list[tuple[str, dict]]:
    """Every schema node that has a `default:`, with its path."""
    return [(path, node) for path, node in _walk(_schema()) if "default" in node]


def test_every_default_passes_every_cel_rule_as_written():
    """The API server refuses the whole CRD unless every `default:` passes the rules of its own node and of
    the nodes below it, evaluated on the default exactly as written: nested defaults are not applied first.
    (Seen on a real API server: `default: {}` for rollout gave `no such key: maxSurge evaluating rule`.)"""
    failed = {path: failing_cel_messages(node, node["default"], apply_defaults=False) for path, node in _defaults()}
    assert {path: messages for path, messages in failed.items() if messages} == {}
    # Not vacuous: defaults with rules of their own, and rules at the top level of spec, are among those checked.
    ruled = {path for path, node in _defaults() if any("x-kubernetes-validations" in n for _, n in _walk(node))}
    assert {".spec.rollout", ".spec.resources"} <= ruled


def test_every_default_fits_its_own_schema_and_is_pruned():
    """The API server also validates each default against the schema it sits in, refuses a default with
    fields the schema does not know ("must not have unknown fields"), and allows none under metadata."""
    import jsonschema

    defaults = _defaults()
    assert len(defaults) >= 20
    for path, node in defaults:
        assert not path.startswith(".metadata"), path
        jsonschema.validate(node["default"], _json_schema(node))
        assert _pruned(node["default"], node, path) == [], path


def test_leaving_an_object_out_stores_what_an_empty_one_does():
    """An always-present object defaults to itself with its own defaults filled in, so `rollout` left out
    and `rollout: {}` are stored alike (empty collections stay absent in both)."""
    objects = [(path, node) for path, node in _defaults() if node.get("type") == "object" and "properties" in node]
    assert {".spec.triton", ".spec.rollout", ".status.rollout"} <= {path for path, _ in objects}
    for path, node in objects:
        assert node["default"] == defaulted(node, {}), path


def test_the_api_server_and_pydantic_default_a_spec_alike():
    """What the API server stores for a spec (the CRD's defaults applied) means the same to the operator as
    the spec as written: the CRD's defaults are pydantic's."""
    spec_schema = _schema()["properties"]["spec"]
    for doc in (minimal(), *load_examples()):
        stored = defaulted(spec_schema, doc["spec"])
        assert ModelDeploymentSpec.model_validate(stored) == ModelDeploymentSpec.model_validate(doc["spec"])
        assert failing_cel_messages(spec_schema, stored, apply_defaults=False) == []


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
        "Ready", "Model", "Version", "Replicas", "Rollout", "Weight", "Age"]
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
