"""Server capabilities: the pure mapping from an API server's OpenAPI document to what it supports."""

from __future__ import annotations

import json
from dataclasses import FrozenInstanceError, fields
from pathlib import Path

import pytest

from modeldeploy.render.capabilities import (
    PDB_SPEC_SCHEMA,
    OpenAPIUnreadable,
    ServerCapabilities,
    capabilities_from_openapi,
    limitations,
)

OPENAPI = Path(__file__).parent / "fixtures" / "openapi"
OLD = ServerCapabilities(pdb_unhealthy_pod_eviction_policy=False)


def document(name: str) -> bytes:
    return (OPENAPI / name).read_bytes()


@pytest.mark.parametrize(("name", "supported"), [
    ("v2-1.24.json", False),  # not in the schema: server-side apply refuses the PDB (it says v1.27.0)
    ("v2-1.26.json", False),  # alpha, gate off by default: the server drops it on every write
    ("v3-1.27-policy-v1.json", True),  # beta, on by default
    ("v3-1.31-policy-v1.json", True),  # GA
])
def test_unhealthy_pod_eviction_policy_from_recorded_documents(name, supported):
    assert capabilities_from_openapi(document(name)) == ServerCapabilities(
        pdb_unhealthy_pod_eviction_policy=supported)


def test_text_bytes_and_pretty_printed_json_read_the_same():
    compact = document("v3-1.27-policy-v1.json")
    pretty = json.dumps(json.loads(compact), indent=2)
    assert capabilities_from_openapi(compact) == capabilities_from_openapi(compact.decode()) == \
        capabilities_from_openapi(pretty) == ServerCapabilities()
    old = json.dumps(json.loads(document("v2-1.24.json")), indent=4)
    assert capabilities_from_openapi(old) == OLD


def test_only_the_definition_counts_not_references_or_other_schemas():
    # The PodDisruptionBudget refers to its spec before the spec's definition; another schema
    # declares a property of the same name. Neither may be taken for the spec.
    doc = {"definitions": {
        "io.k8s.api.policy.v1.PodDisruptionBudget": {
            "properties": {"spec": {"$ref": f"#/definitions/{PDB_SPEC_SCHEMA}"}}},
        "dev.example.v1.Other": {"properties": {"unhealthyPodEvictionPolicy": {"type": "string"}}},
        PDB_SPEC_SCHEMA: {"properties": {"maxUnavailable": {}, "minAvailable": {}, "selector": {}}},
    }}
    assert capabilities_from_openapi(json.dumps(doc)) == OLD
    doc["definitions"][PDB_SPEC_SCHEMA]["properties"]["unhealthyPodEvictionPolicy"] = {"type": "string"}
    assert capabilities_from_openapi(json.dumps(doc)) == ServerCapabilities()


def test_a_field_without_a_description_counts_as_supported():
    doc = {"components": {"schemas": {PDB_SPEC_SCHEMA: {"properties": {"unhealthyPodEvictionPolicy": {
        "type": "string"}}}}}}
    assert capabilities_from_openapi(json.dumps(doc)).pdb_unhealthy_pod_eviction_policy


@pytest.mark.parametrize("text", [
    b"",
    b"404 page not found\n",
    b'{"swagger":"2.0","definitions":{"io.k8s.api.core.v1.Pod":{"type":"object"}}}',  # no policy/v1
    b'{"definitions":{"io.k8s.api.policy.v1.PodDisruptionBudgetSpec":',  # cut off
    b'{"definitions":{"io.k8s.api.policy.v1.PodDisruptionBudgetSpec":"not a schema"}}',
], ids=["empty", "not-json", "no-pdb", "truncated", "not-an-object"])
def test_a_document_that_does_not_say_is_an_error(text):
    with pytest.raises(OpenAPIUnreadable, match="PodDisruptionBudgetSpec"):
        capabilities_from_openapi(text)


def test_the_default_is_everything_supported_and_the_value_is_immutable():
    assert all(getattr(ServerCapabilities(), f.name) is True for f in fields(ServerCapabilities))
    with pytest.raises(FrozenInstanceError):
        ServerCapabilities().pdb_unhealthy_pod_eviction_policy = False  # type: ignore[misc]


def test_every_missing_capability_is_said_in_one_sentence():
    assert limitations(ServerCapabilities()) == []
    (line,) = limitations(OLD)
    assert line.startswith("this API server has no usable PodDisruptionBudget.spec.unhealthyPodEvictionPolicy: "
                           "PDBs are applied without it")
    nothing = ServerCapabilities(**{f.name: False for f in fields(ServerCapabilities)})
    assert len(limitations(nothing)) == len(fields(ServerCapabilities))
