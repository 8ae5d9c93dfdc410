"""What the API server supports of the optional fields the renderers set. Pure: data in, data out.

The renderers take a ServerCapabilities and leave out what the server does not support, so one
code path serves old and new clusters. The default is "everything supported": `modeldeploy
render` (no cluster) shows the full modern spec, and so does the operator when it could not
find out (see modeldeploy.operator.discover_capabilities for why that is the safe guess).

The operator learns the value once at startup from the API server's OpenAPI document
(modeldeploy.cluster reads it; capabilities_from_openapi below decides).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

PDB_SPEC_SCHEMA = "io.k8s.api.policy.v1.PodDisruptionBudgetSpec"


@dataclass(frozen=True)
class ServerCapabilities:
    """One field per optional API feature a renderer uses; True means "set it"."""

    # PodDisruptionBudget.spec.unhealthyPodEvictionPolicy: absent before Kubernetes 1.26, alpha
    # (feature gate PDBUnhealthyPodEvictionPolicy, off by default) in 1.26, beta and on from 1.27,
    # GA in 1.31. Where the schema lacks it, server-side apply refuses the whole PDB ("field not
    # declared in schema"); where the gate is off, the server silently drops it, and the operator
    # would see drift and re-apply on every reconcile.
    pdb_unhealthy_pod_eviction_policy: bool = True


# For the startup log: per capability, the field it is about and what the operator does without it.
_WITHOUT: dict[str, tuple[str, str]] = {
    "pdb_unhealthy_pod_eviction_policy": (
        "PodDisruptionBudget.spec.unhealthyPodEvictionPolicy",
        "PDBs are applied without it (the server's default, IfHealthyBudget, applies: an unready "
        "Triton pod can block a node drain while the budget is used up)"),
}


def limitations(capabilities: ServerCapabilities) -> list[str]:
    """One sentence per unsupported feature, for the operator's startup log (empty: all supported)."""
    return [f"this API server has no usable {field}: {consequence}"
            for name, (field, consequence) in _WITHOUT.items() if not getattr(capabilities, name)]


class OpenAPIUnreadable(ValueError):
    """The document does not say what we need to know (not JSON, or the schema is not in it)."""


def _schema(document: bytes | str, name: str) -> dict[str, Any]:
    """The schema `name` out of an OpenAPI document (v2 `definitions` or v3 `components.schemas`).

    Only that schema is parsed: a cluster's /openapi/v2 holds every CRD's schema and can run to
    tens of megabytes, which the operator must not turn into Python objects just to read one.
    Schema names are keys only in the schema table (references are "#/definitions/<name>" or
    "#/components/schemas/<name>"), so the first `"<name>":` key starts the schema.
    """
    text = document.decode("utf-8", errors="replace") if isinstance(document, bytes) else document
    decoder = json.JSONDecoder()
    for match in re.finditer(re.escape(json.dumps(name)) + r"\s*:\s*", text):
        try:
            schema, _ = decoder.raw_decode(text, match.end())
        except ValueError:
            continue
        if isinstance(schema, dict):
            return schema
    raise OpenAPIUnreadable(f"the OpenAPI document does not describe {name}")


def _usable(schema: dict[str, Any], field: str) -> bool:
    """Whether the schema declares `field` and the server keeps it by default.

    A field behind an alpha feature gate is declared in the schema even when the gate is off
    (the default), and then dropped on every write; Kubernetes says so in its description
    ("This field is alpha-level ... (disabled by default)"). Using it there would make every
    reconcile see drift and re-apply, so it counts as unsupported; a cluster that turned the gate
    on only loses an optional setting.
    """
    prop = (schema.get("properties") or {}).get(field)
    if not isinstance(prop, dict):
        return False
    description = str(prop.get("description") or "")
    return "alpha-level" not in description and "disabled by default" not in description


def capabilities_from_openapi(document: bytes | str) -> ServerCapabilities:
    """The capabilities an OpenAPI document (v2 or v3, the JSON the API server serves) declares.

    Raises OpenAPIUnreadable when the document does not describe the schemas we look at.
    """
    pdb_spec = _schema(document, PDB_SPEC_SCHEMA)
    return ServerCapabilities(pdb_unhealthy_pod_eviction_policy=_usable(pdb_spec, "unhealthyPodEvictionPolicy"))

