"""Gateway API HTTPRoute weights for a Canary, pure: what the route gives the canary now, and the route with the
weights the step machine decided.

The user's HTTPRoute sends to the object's Service (`<name>`, which then selects only the stable version's pods).
In every rule that has a backendRef to that Service, the operator sets its weight and keeps a second backendRef,
to `<name>-canary` (the canary's pods; the same port), weighted for the canary, present only while the canary has
a weight. Everything else in the route (other rules, other backends, filters, matches) is left as it is. Rules
are an atomic list, so the route is written whole, over the resourceVersion it was read with.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import Any

from modeldeploy.canary import RouteWeights

GATEWAY_DEFAULT_WEIGHT = 1  # a backendRef without a weight (Gateway API's default)


def _is_service(ref: Mapping[str, Any], name: str, namespace: str, route_namespace: str) -> bool:
    return (ref.get("group") or "") == "" and (ref.get("kind") or "Service") == "Service" \
        and ref.get("name") == name and (ref.get("namespace") or route_namespace) == namespace


def _rules_to(route: Mapping[str, Any], stable: str, namespace: str) -> Iterator[dict[str, Any]]:
    """The route's rules that send to the stable Service."""
    route_namespace = route.get("metadata", {}).get("namespace", "")
    for rule in route.get("spec", {}).get("rules") or []:
        if any(_is_service(ref, stable, namespace, route_namespace) for ref in rule.get("backendRefs") or []):
            yield rule


def canary_weight(route: Mapping[str, Any], stable: str, canary: str, namespace: str) -> int | None:
    """The canary's share of the traffic (percent) as the route has it: the least over the rules that send to
    the stable Service (a step counts as reached only once every rule has it); None when no rule does (the
    route does not route to this object)."""
    route_namespace = route.get("metadata", {}).get("namespace", "")
    shares = []
    for rule in _rules_to(route, stable, namespace):
        refs = rule.get("backendRefs") or []
        def weight(name: str) -> int:
            return sum(int(r.get("weight", GATEWAY_DEFAULT_WEIGHT)) for r in refs
                       if _is_service(r, name, namespace, route_namespace))
        total = weight(stable) + weight(canary)
        shares.append(round(100 * weight(canary) / total) if total else 0)
    return min(shares) if shares else None


def with_weights(route: Mapping[str, Any], stable: str, canary: str, namespace: str,
                 weights: RouteWeights) -> dict[str, Any]:
    """The route with the stable and canary Services weighted as `weights` in every rule that sends to the
    stable Service. The canary's backendRef is added (a copy of the stable one, renamed) when its weight is
    above 0 and removed at 0."""
    out = copy.deepcopy(dict(route))
    route_namespace = out.get("metadata", {}).get("namespace", "")
    for rule in _rules_to(out, stable, namespace):
        refs = [r for r in rule["backendRefs"] if not _is_service(r, canary, namespace, route_namespace)]
        template = next(r for r in refs if _is_service(r, stable, namespace, route_namespace))
        for ref in refs:
            if _is_service(ref, stable, namespace, route_namespace):
                ref["weight"] = weights.stable
        if weights.canary > 0:
            refs.insert(refs.index(template) + 1, {**copy.deepcopy(template), "name": canary, "weight": weights.canary})
        rule["backendRefs"] = refs
    return out
