"""Pure decisions about children: which to apply or delete, and who owns the replica count.

A steady-state reconcile must send no write. A child needs an apply only when
- it does not exist, or
- our intent changed since we last applied it (the intent's hash rides along as an annotation,
  written in the same apply, so a field we stop sending triggers one apply that removes it), or
- someone changed a field we set (drift: kubectl edit, another controller).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from modeldeploy import FIELD_MANAGER, naming
from modeldeploy.api import ModelDeployment, parse_quantity

INTENT_HASH = f"{naming.PREFIX}/intent-hash"


def intent_hash(obj: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:20]


def with_intent_hash(obj: dict[str, Any]) -> dict[str, Any]:
    """The object to apply, annotated with the hash of everything else in it."""
    digest = intent_hash(obj)
    meta = {**obj["metadata"], "annotations": {**obj["metadata"].get("annotations", {}), INTENT_HASH: digest}}
    return {**obj, "metadata": meta}


def _same_scalar(want: Any, have: Any) -> bool:
    if want == have:
        return True
    # The API server canonicalises quantities ("1.5" cpu reads back as "1500m").
    if isinstance(want, str | int) and isinstance(have, str | int) and not isinstance(want, bool) \
            and not isinstance(have, bool) and (isinstance(want, str) or isinstance(have, str)):
        try:
            return parse_quantity(want) == parse_quantity(have)
        except ValueError:
            return False
    return False


def _merge_key(items: list[Any]) -> str | None:
    """The key the API server merges a list of objects by, as far as our lists go: volumeMounts by
    mountPath, and containers, env, ports, volumes… by name. None: an atomic list (tolerations,
    args, HPA metrics), compared element by element."""
    if not items or not all(isinstance(item, dict) for item in items):
        return None
    for key in ("mountPath", "name"):
        if all(key in item for item in items):
            return key
    return None


def is_subset(want: Any, have: Any) -> bool:
    """Every field we set is present with our value (the server may add defaults around them, and
    others may add elements to the lists it merges by key: a mesh's sidecar, an injected env var)."""
    if isinstance(want, dict):
        return isinstance(have, dict) and all(k in have and is_subset(v, have[k]) for k, v in want.items())
    if isinstance(want, list):
        if not isinstance(have, list):
            return False
        key = _merge_key(want)
        if key is None:
            return len(want) == len(have) and all(map(is_subset, want, have))
        theirs = {item.get(key): item for item in have if isinstance(item, dict)}
        return all(item[key] in theirs and is_subset(item, theirs[item[key]]) for item in want)
    return _same_scalar(want, have)


def needs_apply(desired: dict[str, Any], observed: dict[str, Any] | None) -> bool:
    if observed is None:
        return True
    annotations = observed.get("metadata", {}).get("annotations") or {}
    if annotations.get(INTENT_HASH) != desired["metadata"]["annotations"][INTENT_HASH]:
        return True
    return not is_subset(desired, observed)


def controlled_by(obj: dict[str, Any], owner_uid: str) -> bool:
    return any(ref.get("controller") and ref.get("uid") == owner_uid
               for ref in obj.get("metadata", {}).get("ownerReferences") or [])


def replicas_owned_by_others(deployment: dict[str, Any]) -> bool:
    """Whether another field manager (the HPA controller, a user's kubectl scale) owns spec.replicas."""
    for entry in deployment.get("metadata", {}).get("managedFields") or []:
        if entry.get("manager") == FIELD_MANAGER:
            continue
        if "f:replicas" in (entry.get("fieldsV1") or {}).get("f:spec", {}):
            return True
    return False


def replicas_intent(md: ModelDeployment, observed_deployment: dict[str, Any] | None) -> int | None:
    """The replica count we apply, or None to leave it to the HPA.

    Without autoscaling spec.replicas decides. With it, the HPA owns the count: we drop the
    field from our intent once another manager owns it. Until then we keep asserting the
    current value (clamped to the HPA's bounds), because dropping a field nobody else owns
    makes the API server reset it to the default of 1.
    """
    scaling = md.spec.autoscaling
    if scaling is None:
        return md.spec.replicas
    if observed_deployment is None:
        return scaling.min_replicas
    if replicas_owned_by_others(observed_deployment):
        return None
    current = observed_deployment.get("spec", {}).get("replicas", 1)
    return min(max(current, scaling.min_replicas), scaling.max_replicas)


@dataclass(frozen=True)
class Plan:
    apply: tuple[dict[str, Any], ...]  # children to server-side apply, in order
    delete: tuple[dict[str, Any], ...]  # observed children (ours) that must go
    conflicts: tuple[str, ...]  # "Service vision/resnet50" exists and is not ours


def plan(desired: dict[str, dict[str, Any] | None], observed: dict[str, dict[str, Any] | None],
         owner_uid: str) -> Plan:
    """Compare desired children (by key: the kind, or kube.CHILD_SLOTS' key; None = must not exist) with what the
    cluster has under the same keys."""
    apply: list[dict[str, Any]] = []
    delete: list[dict[str, Any]] = []
    conflicts: list[str] = []
    for kind, want in desired.items():
        have = observed.get(kind)
        if have is not None and not controlled_by(have, owner_uid):
            if want is not None:
                meta = have["metadata"]
                conflicts.append(f"{have.get('kind') or kind} {meta.get('namespace')}/{meta['name']}")
            continue
        if want is None:
            if have is not None:
                delete.append(have)
        else:
            annotated = with_intent_hash(want)
            if needs_apply(annotated, have):
                apply.append(annotated)
    return Plan(tuple(apply), tuple(delete), tuple(conflicts))
