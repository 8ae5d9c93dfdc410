"""Generate the ModelDeployment CustomResourceDefinition from the pydantic API models.

pydantic emits JSON Schema; Kubernetes wants a *structural* OpenAPI v3 schema. This module
inlines references, turns Optional into plain optional properties, int|str into
x-kubernetes-int-or-string, carries defaults and descriptions, and attaches each class's
`rules` as x-kubernetes-validations (CEL).
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel

from modeldeploy import GROUP, KIND, PLURAL, SHORT_NAMES, SINGULAR, VERSION
from modeldeploy.api import ROOT_RULES, ApiModel, ModelDeploymentSpec, ModelDeploymentStatus, Rule

# Keys that structural schemas do not accept, or that say nothing to the API server.
_DROPPED_KEYS = {"title", "additionalProperties", "$defs", "const"}


def _model_classes(root: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """Every pydantic class reachable from root, by the name pydantic uses in $defs."""
    found: dict[str, type[BaseModel]] = {}

    def visit(cls: type[BaseModel]) -> None:
        if cls.__name__ in found:
            return
        found[cls.__name__] = cls
        for field in cls.model_fields.values():
            for candidate in _types_in(field.annotation):
                if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                    visit(candidate)

    visit(root)
    return found


def _types_in(annotation: Any) -> list[Any]:
    args = getattr(annotation, "__args__", None)
    if not args:
        return [annotation]
    out = [annotation]
    for arg in args:
        out.extend(_types_in(arg))
    return out


def _validations(rules: tuple[Rule, ...]) -> list[dict[str, str]]:
    return [{"rule": r.cel, "message": r.message} for r in rules]


def _without_empty_collections(value: dict[str, Any]) -> dict[str, Any]:
    """value less its empty lists and maps, at every depth (the object itself may end up empty)."""
    out: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(item, dict):
            item = _without_empty_collections(item)
        if not (isinstance(item, dict | list) and not item):
            out[key] = item
    return out


def _is_int_or_string(options: list[dict[str, Any]]) -> bool:
    return sorted(o.get("type", "") for o in options) == ["integer", "string"]


class _Converter:
    def __init__(self, root: type[BaseModel]) -> None:
        self.schema = root.model_json_schema(by_alias=True, mode="validation")
        self.defs = self.schema.get("$defs", {})
        self.classes = _model_classes(root)

    def convert(self, node: dict[str, Any], cls: type[BaseModel] | None = None) -> dict[str, Any]:
        node = dict(node)
        if "$ref" in node:
            name = node.pop("$ref").rsplit("/", 1)[-1]
            referenced = self.convert(self.defs[name], self.classes.get(name))
            return {**referenced, **self.convert_siblings(node)}
        if "anyOf" in node:
            options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
            if len(options) == 1:
                return {**self.convert(options[0]), **self.convert_siblings(node)}
            if _is_int_or_string(options):
                node.pop("x-kubernetes-int-or-string", None)
                return {"anyOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": True,
                        **self.convert_siblings(node)}
            raise ValueError(f"no structural form for a union of {options}")
        if node.get("x-kubernetes-int-or-string"):
            # Set through json_schema_extra on a field whose own type is already int|str.
            node.pop("type", None)
            node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        out: dict[str, Any] = {}
        if "const" in node:
            out["enum"] = [node["const"]]
        for key, value in node.items():
            if key in _DROPPED_KEYS:
                continue
            if key == "properties":
                out["properties"] = {k: self.convert(v) for k, v in value.items()}
            elif key == "items":
                out["items"] = self.convert(value)
            elif key == "default" and isinstance(value, dict | list) and not value:
                continue  # empty collections: left to the object default below
            else:
                out[key] = value
        additional = node.get("additionalProperties")
        if isinstance(additional, dict) and not node.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = self.convert(additional)
        if node.get("x-kubernetes-preserve-unknown-fields"):
            out["type"] = "object"
        if cls is not None:
            self.default_nested_objects(cls, out)
            if cls.__doc__ and "description" not in out:
                out["description"] = " ".join(cls.__doc__.split())
            if issubclass(cls, ApiModel) and cls.rules:
                out["x-kubernetes-validations"] = _validations(cls.rules)
        return out

    @staticmethod
    def default_nested_objects(cls: type[BaseModel], out: dict[str, Any]) -> None:
        """Nested objects that always exist (their pydantic default is a factory) default to the whole object.

        Without a default the API server applies no nested defaults when the parent is absent. And the
        default is the object with its own defaults filled in, not `{}`: the API server evaluates every CEL
        rule against every `default:` as written, without applying the defaults nested in it, so `{}` for
        rollout fails its rule with `no such key: maxSurge` and the CRD is refused. The value is what
        pydantic's default instance dumps (by alias, without None), less empty collections, which the
        schema never defaults either: leaving the object out stores exactly what writing `{}` would.
        Objects whose absence means something (autoscaling, disruptionBudget) default to None and stay absent.
        """
        for name, field in cls.model_fields.items():
            factory = field.default_factory
            if isinstance(factory, type) and issubclass(factory, BaseModel):
                instance = factory()
                out["properties"][field.alias or name]["default"] = _without_empty_collections(
                    instance.model_dump(by_alias=True, exclude_none=True, mode="json"))

    def convert_siblings(self, node: dict[str, Any]) -> dict[str, Any]:
        """Keys beside a $ref/anyOf (description, default) apply to the property itself."""
        return {k: v for k, v in node.items()
                if k not in _DROPPED_KEYS and not (k == "default" and v is None)}


def spec_schema() -> dict[str, Any]:
    return _Converter(ModelDeploymentSpec).convert(
        ModelDeploymentSpec.model_json_schema(by_alias=True, mode="validation"), ModelDeploymentSpec)


def status_schema() -> dict[str, Any]:
    return _Converter(ModelDeploymentStatus).convert(
        ModelDeploymentStatus.model_json_schema(by_alias=True, mode="validation"), ModelDeploymentStatus)


def crd() -> dict[str, Any]:
    root = {
        "type": "object",
        "description": ("ModelDeployment serves one model with NVIDIA Triton Inference Server: a Deployment, "
                        "Service, and optionally a HorizontalPodAutoscaler, PodDisruptionBudget and ServiceMonitor."),
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "modeldeploy.dev/v1alpha1"},
            "kind": {"type": "string", "description": "ModelDeployment"},
            "metadata": {"type": "object"},
            "spec": spec_schema(),
            "status": status_schema(),
        },
        "x-kubernetes-validations": _validations(ROOT_RULES),
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "modeldeploy", "app.kubernetes.io/component": "crd"},
        },
        "spec": {
            "group": GROUP,
            "names": {"kind": KIND, "listKind": f"{KIND}List", "plural": PLURAL, "singular": SINGULAR,
                      "shortNames": list(SHORT_NAMES), "categories": ["all", "modeldeploy"]},
            "scope": "Namespaced",
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "schema": {"openAPIV3Schema": root},
                "subresources": {
                    "status": {},
                    "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas",
                              "labelSelectorPath": ".status.selector"},
                },
                "additionalPrinterColumns": [
                    {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
                    {"name": "Model", "type": "string", "jsonPath": ".status.model.name"},
                    {"name": "Version", "type": "string", "jsonPath": ".status.currentVersion"},
                    {"name": "Replicas", "type": "string", "jsonPath": ".status.replicaSummary"},
                    {"name": "Rollout", "type": "string", "jsonPath": ".status.rollout.phase"},
                    # Canary and BlueGreen only (RollingUpdate has no weight): in `kubectl get -o wide`.
                    {"name": "Weight", "type": "integer", "jsonPath": ".status.rollout.weight", "priority": 1,
                     "description": "Percent of traffic on the canary (BlueGreen: 0, then 100 after the switch)."},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                ],
            }],
        },
    }


def crd_yaml() -> str:
    header = "# Generated by `modeldeploy crd` from operator/modeldeploy/api.py. Do not edit.\n"
    return header + yaml.safe_dump(crd(), sort_keys=False, width=120, default_flow_style=False)
