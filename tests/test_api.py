"""The API models: defaults, field rules, and each cross-field rule with its message."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import celpy
import pytest
import yaml

from modeldeploy import api
from modeldeploy.analysis import InconclusivePolicy, Thresholds
from modeldeploy.api import (
    ROOT_RULES,
    AUTOSCALING_NOT_WITH_PROGRESSIVE,
    AnalysisSpec,
    ModelDeployment,
    ModelDeploymentSpec,
    ModelSource,
    ResourcesSpec,
    parse_quantity,
)
from modeldeploy.crd import crd
from modeldeploy.errors import InvalidSpec, parse_model_deployment
from tests.support.specs import load_examples, minimal, with_path

SHA = "a" * 64

# (path to set under the document, value, the message the rule gives) — each breaks exactly one rule.
BROKEN_RULES = [
    ("spec.resources", {"gpu": 1, "mig": "1g.10gb"}, "resources.gpu and resources.mig are mutually exclusive"),
    ("spec.resources", {"requests": {"nvidia.com/gpu": 1}}, "resources.requests must not name nvidia.com/*"),
    ("spec.resources", {"limits": {"nvidia.com/gpu": 1}}, "resources.limits must not name nvidia.com/*"),
    ("spec.autoscaling", {"minReplicas": 5, "maxReplicas": 2, "targetQueueTimeMicroseconds": 100},
     "autoscaling.minReplicas must not exceed autoscaling.maxReplicas"),
    ("spec.autoscaling", {"maxReplicas": 2}, "autoscaling needs a target"),
    ("spec.autoscaling", {"maxReplicas": 2, "targetCPUUtilization": 70},
     "autoscaling.targetCPUUtilization needs resources.requests.cpu"),
    ("spec.rollout", {"strategy": "Canary", "canary": {"steps": [{"setWeight": 50}, {"setWeight": 10}]}},
     "rollout.canary.steps setWeight values must be strictly rising"),
    ("spec.rollout", {"strategy": "Canary", "canary": {"steps": [
        {"setWeight": 10}, {"pause": {}}, {"analysis": {}}, {"setWeight": 10}]}},
     "rollout.canary.steps setWeight values must be strictly rising"),
    ("spec.rollout", {"strategy": "Canary", "canary": {"steps": [{"setWeight": 10, "pause": {}}]}},
     "each step needs exactly one of setWeight, pause and analysis"),
    ("spec.rollout", {"strategy": "Canary", "canary": {"steps": [{"setWeight": 10}, {}]}},
     "each step needs exactly one of setWeight, pause and analysis"),
    ("spec.rollout", {"strategy": "Canary", "canary": {"steps": [{"pause": {}}, {"setWeight": 10}]}},
     "rollout.canary.steps must start with a setWeight step"),
    ("spec.rollout", {"strategy": "Canary", "canary": {"steps": [{"setWeight": 10}], "trafficRouting": {}}},
     "rollout.canary.trafficRouting needs gatewayAPI"),
    ("spec.rollout", {"strategy": "Canary"}, "rollout.canary (its steps) is required when rollout.strategy is Canary"),
    ("spec.rollout", {"canary": {"steps": [{"setWeight": 10}]}},
     "rollout.canary applies only when rollout.strategy is Canary"),
    ("spec.rollout", {"strategy": "BlueGreen", "canary": {"steps": [{"setWeight": 10}]}},
     "rollout.canary applies only when rollout.strategy is Canary"),
    ("spec.rollout", {"strategy": "Canary", "canary": {"steps": [{"setWeight": 10}]}, "blueGreen": {}},
     "rollout.blueGreen applies only when rollout.strategy is BlueGreen"),
    ("spec.rollout", {"analysis": {}}, "rollout.analysis, rollout.promote and rollout.abort apply only to"),
    ("spec.rollout", {"abort": {"target": "4"}}, "rollout.analysis, rollout.promote and rollout.abort apply only to"),
    ("spec.rollout", {"strategy": "Canary", "canary": {"steps": [{"setWeight": 10}, {"pause": {}}]},
                      "promote": {"target": "4", "throughStep": 2}},
     "rollout.promote.throughStep must be the index of one of rollout.canary.steps"),
    ("spec.rollout", {"strategy": "BlueGreen", "promote": {"target": "4", "throughStep": 0}},
     "rollout.promote.throughStep must be the index of one of rollout.canary.steps"),
    ("spec.rollout", {"strategy": "BlueGreen", "promote": {"target": "4"}, "abort": {"target": "4"}},
     "rollout.promote and rollout.abort must not name the same rollout"),
    ("spec.rollout", {"maxSurge": 0, "maxUnavailable": "0%"}, "must not both be 0"),
    ("spec.model", {"repository": "ftp://models/x", "version": "1"}, "model.repository must be s3://"),
    ("spec.model", {"repository": "pvc://Bad_Claim/x", "version": "1"}, "model.repository must be s3://"),
    ("spec.model", {"repository": "https://host/repo.tar.gz", "version": "1"}, "model.sha256 is required"),
    ("spec.model", {"repository": "s3://b/p", "version": "1", "sha256": SHA}, "model.sha256 applies only"),
    ("spec.model", {"repository": "pvc://claim/p", "version": "1", "credentialsSecret": "s"},
     "model.credentialsSecret applies only"),
    ("spec.disruptionBudget", {}, "disruptionBudget needs exactly one"),
    ("spec.disruptionBudget", {"maxUnavailable": 1, "minAvailable": 1}, "disruptionBudget needs exactly one"),
    ("metadata.name", "3d-model", "metadata.name must be a DNS label"),
]


@pytest.mark.parametrize(("path", "value", "message"), BROKEN_RULES)
def test_each_rule_refuses_with_its_message(path, value, message):
    with pytest.raises(InvalidSpec) as caught:
        parse_model_deployment(with_path(minimal(), path, value))
    assert any(message in problem for problem in caught.value.problems), caught.value.problems


def evaluate_cel(rule: str, value) -> bool:
    """One CEL rule with `self` bound to value, by a real CEL evaluator (raises celpy.CELEvalError)."""
    env = celpy.Environment()
    return bool(env.program(env.compile(rule)).evaluate({"self": celpy.json_to_cel(value)}))


def failing_cel_messages(schema: dict, value, *, apply_defaults: bool = True) -> list[str]:
    """Walk value with its schema as the API server does and run every node's rules, the nodes below first.

    apply_defaults: value is an object being written, so the schema's defaults fill in missing properties
    before the rules run. Without it value is taken as written: that is how the API server checks a
    `default:` of the CRD itself, with none of the defaults nested in it applied.
    A rule that fails gives its message; a rule that cannot be evaluated (e.g. `no such key`) refuses the
    value too, as on the API server, with the error instead of the message.
    """
    failed: list[str] = []
    if isinstance(value, dict) and "properties" in schema:
        value = dict(value)
        for key, prop in schema["properties"].items():
            if apply_defaults and key not in value and "default" in prop:
                value[key] = prop["default"]
            if key in value:
                failed += failing_cel_messages(prop, value[key], apply_defaults=apply_defaults)
                if apply_defaults:
                    value[key] = defaulted(prop, value[key])
    elif isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        for item in value.values():
            failed += failing_cel_messages(schema["additionalProperties"], item, apply_defaults=apply_defaults)
    elif isinstance(value, list) and "items" in schema:
        for item in value:
            failed += failing_cel_messages(schema["items"], item, apply_defaults=apply_defaults)
    for rule in schema.get("x-kubernetes-validations", []):
        try:
            if not evaluate_cel(rule["rule"], value):
                failed.append(rule["message"])
        except celpy.CELEvalError as error:
            failed.append(f"{_cel_error(error)} evaluating rule: {rule['rule']}")
    return failed


def _cel_error(error: celpy.CELEvalError) -> str:
    """An evaluation error as the API server words it: `no such key: maxSurge` for a missing field."""
    missing = re.findall(r"no such member in mapping: \\*'(\w+)", str(error))
    return "; ".join(f"no such key: {key}" for key in dict.fromkeys(missing)) or str(error.args[0])


def defaulted(schema: dict, value):
    """value with the schema's defaults filled in, at every depth, as the API server stores it."""
    if isinstance(value, dict) and "properties" in schema:
        out = dict(value)
        for key, prop in schema["properties"].items():
            if key not in out and "default" in prop:
                out[key] = prop["default"]
            if key in out:
                out[key] = defaulted(prop, out[key])
        return out
    if isinstance(value, list) and "items" in schema:
        return [defaulted(schema["items"], item) for item in value]
    return value


def _root_schema() -> dict:
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    # metadata has no properties in the CRD (the API server owns it); keep it as given.
    return schema


@pytest.mark.parametrize(("path", "value", "message"), BROKEN_RULES)
def test_the_crd_cel_rule_refuses_the_same_spec(path, value, message):
    """The CEL in the CRD, run by a real CEL evaluator, agrees with the Python check."""
    failed = failing_cel_messages(_root_schema(), with_path(minimal(), path, value))
    assert any(message in m for m in failed), failed


@pytest.mark.parametrize("doc", [*load_examples(), minimal()], ids=lambda d: d["metadata"]["name"])
def test_valid_specs_pass_every_cel_rule(doc):
    assert failing_cel_messages(_root_schema(), doc) == []


def test_minimal_spec_gets_production_defaults():
    md = parse_model_deployment(minimal())
    assert md.model_name == "resnet50"
    assert md.spec.replicas == 1
    assert md.spec.triton.startup_timeout_seconds == 300
    assert md.spec.resources.shared_memory == "1Gi"
    assert md.spec.rollout.max_unavailable == 0 and md.spec.rollout.max_surge == 1
    assert md.spec.autoscaling is None and md.spec.disruption_budget is None


@pytest.mark.parametrize("doc", load_examples(), ids=lambda d: d["metadata"]["name"])
def test_examples_are_valid(doc):
    assert isinstance(parse_model_deployment(doc), ModelDeployment)


@pytest.mark.parametrize(("path", "value", "expected"), [
    ("spec.replicas", -1, "spec.replicas: Input should be greater than or equal to 0"),
    ("spec.model", {"repository": "s3://b/p"}, "spec.model.version: is required"),
    ("spec.model", {"repository": "s3://b/p", "version": "v3"}, "spec.model.version: String should match pattern"),
    ("spec.resources", {"gpus": 1}, "spec.resources.gpus: is not a field of ModelDeployment"),
    ("spec.resources", {"requests": {"memory": "lots"}}, "'lots' is not a Kubernetes quantity"),
    ("spec.resources", {"mig": "2g"}, "spec.resources.mig: String should match pattern"),
    ("spec.rollout", {"strategy": "Rolling"},
     "spec.rollout.strategy: must be 'RollingUpdate', 'Canary' or 'BlueGreen' (got 'Rolling')"),
    ("spec.rollout", {"strategy": "Canary", "canary": {"steps": [{"setWeight": 0}]}},
     "spec.rollout.canary.steps[0].setWeight: Input should be greater than or equal to 1"),
    ("spec.rollout", {"strategy": "BlueGreen", "promote": {"target": "v4"}},
     "spec.rollout.promote.target: String should match pattern"),
    ("spec.rollout", {"strategy": "Canary", "canary": {"steps": [{"setWeight": 10}], "trafficRouting": {
        "gatewayAPI": {"httpRoute": "Route_1"}}}},
     "spec.rollout.canary.trafficRouting.gatewayAPI.httpRoute: String should match pattern"),
    ("spec.rollout", {"strategy": "Canary", "canary": {"steps": [{"setWeight": 10}]},
                      "analysis": {"inconclusive": "maybe"}},
     "spec.rollout.analysis.inconclusive: Input should be 'wait', 'pass' or 'fail'"),
    ("spec.placement", {"tolerations": [{"operator": "Sometimes"}]},
     "spec.placement.tolerations[0].operator: must be 'Exists' or 'Equal'"),
])
def test_field_errors_name_the_path(path, value, expected):
    with pytest.raises(InvalidSpec) as caught:
        parse_model_deployment(with_path(minimal(), path, value))
    assert any(expected in p for p in caught.value.problems), caught.value.problems


def test_not_an_object_is_a_clear_error():
    with pytest.raises(InvalidSpec, match="expected a ModelDeployment object"):
        parse_model_deployment(["not", "a", "dict"])


def test_gpu_resource_names():
    assert ResourcesSpec(gpu=2).gpu_resource == ("nvidia.com/gpu", 2)
    assert ResourcesSpec(mig="1g.10gb").gpu_resource == ("nvidia.com/mig-1g.10gb", 1)
    assert ResourcesSpec().gpu_resource is None


def test_repository_schemes():
    for uri in ("s3://bucket/path", "s3://host:9000/bucket/path", "gs://b/p", "as://acct/container/p",
                "pvc://model-store/triton", "pvc://model-store"):
        assert ModelSource(repository=uri, version="1").scheme == uri.split(":")[0]


@pytest.mark.parametrize(("text", "value"), [("2", 2), ("500m", 0.5), ("8Gi", 8 * 2**30), ("1e3", 1000), (3, 3)])
def test_parse_quantity(text, value):
    assert parse_quantity(text) == pytest.approx(value)


def test_root_rule_holds_only_for_dns_labels():
    rule = ROOT_RULES[0]
    assert rule.holds(ModelDeployment.model_construct(metadata=type("M", (), {"name": "resnet50"})()))
    assert evaluate_cel(rule.cel, {"metadata": {"name": "resnet50"}})
    assert not evaluate_cel(rule.cel, {"metadata": {"name": "Resnet50"}})


# --- Canary and BlueGreen --------------------------

DOCS = Path(__file__).resolve().parents[1] / "docs" / "progressive-delivery.md"


def _documented_examples() -> list[dict]:
    """The ModelDeployments of docs/progressive-delivery.md, so the design note cannot drift from the API."""
    blocks = re.findall(r"```yaml\n(.*?)```", DOCS.read_text(), flags=re.S)
    docs = [yaml.safe_load(block) for block in blocks]
    return [doc for doc in docs if isinstance(doc, dict) and doc.get("kind") == "ModelDeployment"]


def test_the_design_note_has_canary_routed_and_blue_green_examples():
    strategies = [(d["spec"]["rollout"]["strategy"], "trafficRouting" in d["spec"]["rollout"].get("canary", {}))
                  for d in _documented_examples()]
    assert strategies == [("Canary", False), ("Canary", True), ("BlueGreen", False)]


@pytest.mark.parametrize("doc", _documented_examples(), ids=lambda d: d["spec"]["rollout"]["strategy"])
def test_the_documented_canary_and_blue_green_examples_are_valid(doc):
    md = parse_model_deployment(doc)
    assert md.spec.rollout.strategy == doc["spec"]["rollout"]["strategy"]
    assert failing_cel_messages(_root_schema(), doc) == []


def _served(doc: dict) -> bool:
    return "trafficRouting" not in doc["spec"]["rollout"].get("canary", {})


@pytest.mark.parametrize("strategy", ["Canary", "BlueGreen"])
def test_autoscaling_with_canary_or_blue_green_is_refused(strategy):
    (doc,) = [d for d in _documented_examples() if d["spec"]["rollout"]["strategy"] == strategy and _served(d)]
    doc = {**doc, "spec": {**doc["spec"], "autoscaling": {"minReplicas": 1, "maxReplicas": 4,
                                                          "targetQueueTimeMicroseconds": 5000}}}
    with pytest.raises(InvalidSpec) as caught:
        parse_model_deployment(doc)
    assert caught.value.problems == [f"spec: {AUTOSCALING_NOT_WITH_PROGRESSIVE.message}"]
    assert failing_cel_messages(_root_schema(), doc) == [AUTOSCALING_NOT_WITH_PROGRESSIVE.message]


@pytest.mark.parametrize("strategy", ["Canary", "BlueGreen"])
def test_canary_and_blue_green_names_leave_room_for_the_preview_service(strategy):
    (doc,) = [d for d in _documented_examples() if d["spec"]["rollout"]["strategy"] == strategy and _served(d)]
    long = {**doc, "metadata": {**doc["metadata"], "name": "m" * 56}}
    with pytest.raises(InvalidSpec) as caught:
        parse_model_deployment(long)
    assert "at most 55 characters" in caught.value.problems[0]
    assert [m for m in failing_cel_messages(_root_schema(), long) if "at most 55" in m]
    parse_model_deployment({**doc, "metadata": {**doc["metadata"], "name": "m" * 55}})


def test_the_analysis_defaults_are_the_analysis_modules_own():
    """rollout.analysis maps field for field onto analysis.Thresholds, with its defaults."""
    assert AnalysisSpec().thresholds() == Thresholds()
    threshold_fields = {f.name for f in dataclasses.fields(Thresholds)}
    assert threshold_fields == set(AnalysisSpec.model_fields) - {"interval_seconds", "inconclusive_timeout_seconds"}
    custom = AnalysisSpec(max_error_ratio=0.05, min_requests=100, max_pending=3, inconclusive="pass")
    assert custom.thresholds() == Thresholds(max_error_ratio=0.05, min_requests=100, max_pending=3,
                                             inconclusive=InconclusivePolicy.PASS)
    schema = _root_schema()["properties"]["spec"]["properties"]["rollout"]["properties"]["analysis"]["properties"]
    assert schema["maxErrorRatio"]["default"] == Thresholds().max_error_ratio
    assert schema["inconclusive"]["enum"] == ["wait", "pass", "fail"] and schema["inconclusive"]["default"] == "wait"


def test_an_empty_analysis_block_is_the_defaults():
    rollout = api.RolloutSpec.model_validate({"strategy": "Canary", "canary": {"steps": [{"setWeight": 5}]}})
    assert rollout.analysis is None and rollout.analysis_or_default == AnalysisSpec()
