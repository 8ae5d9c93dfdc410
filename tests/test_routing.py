"""The HTTPRoute weights of a routed Canary (routing.py), on routes as users write them."""

from __future__ import annotations

import copy

from modeldeploy.canary import RouteWeights
from modeldeploy.routing import canary_weight, with_weights


def route(*rules, namespace="vision"):
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "resnet50", "namespace": namespace, "resourceVersion": "7"},
            "spec": {"parentRefs": [{"name": "gateway"}], "rules": list(rules)}}


def rule(*refs, path="/"):
    return {"matches": [{"path": {"type": "PathPrefix", "value": path}}], "backendRefs": list(refs)}


def ref(name, weight=None, **extra):
    out = {"name": name, "port": 8000, **extra}
    if weight is not None:
        out["weight"] = weight
    return out


def test_the_canary_weight_is_its_share_in_the_rules_that_send_to_the_stable_service():
    assert canary_weight(route(rule(ref("resnet50"))), "resnet50", "resnet50-canary", "vision") == 0
    assert canary_weight(route(rule(ref("resnet50", 75), ref("resnet50-canary", 25))),
                         "resnet50", "resnet50-canary", "vision") == 25
    # Every rule must have it: the least counts. Rules to other Services do not.
    two = route(rule(ref("resnet50", 75), ref("resnet50-canary", 25)), rule(ref("resnet50"), path="/v2"),
                rule(ref("other")))
    assert canary_weight(two, "resnet50", "resnet50-canary", "vision") == 0
    # Gateway API's default weight is 1: a canary backend with none is half of an unweighted stable one.
    assert canary_weight(route(rule(ref("resnet50"), ref("resnet50-canary"))),
                         "resnet50", "resnet50-canary", "vision") == 50


def test_a_route_that_does_not_send_to_the_object_has_no_weight():
    assert canary_weight(route(rule(ref("other"))), "resnet50", "resnet50-canary", "vision") is None
    # Same name, another namespace's Service; or not a Service at all.
    assert canary_weight(route(rule(ref("resnet50", namespace="other"))), "resnet50", "resnet50-canary",
                         "vision") is None
    assert canary_weight(route(rule(ref("resnet50", group="example.com", kind="Backend"))), "resnet50",
                         "resnet50-canary", "vision") is None


def test_a_route_in_another_namespace_refers_to_the_service_by_namespace():
    routed = route(rule(ref("resnet50", namespace="vision")), namespace="gateways")
    assert canary_weight(routed, "resnet50", "resnet50-canary", "vision") == 0
    weighted = with_weights(routed, "resnet50", "resnet50-canary", "vision", RouteWeights(90, 10))
    assert weighted["spec"]["rules"][0]["backendRefs"] == [
        ref("resnet50", 90, namespace="vision"), ref("resnet50-canary", 10, namespace="vision")]


def test_weights_add_the_canary_backend_beside_the_stable_one_and_remove_it_at_zero():
    original = route(rule(ref("resnet50"), ref("other", 5)), rule(ref("unrelated")))
    kept = copy.deepcopy(original)
    weighted = with_weights(original, "resnet50", "resnet50-canary", "vision", RouteWeights(75, 25))
    assert original == kept  # not changed in place
    assert weighted["spec"]["rules"][0]["backendRefs"] == [ref("resnet50", 75), ref("resnet50-canary", 25),
                                                         ref("other", 5)]
    assert weighted["spec"]["rules"][1] == original["spec"]["rules"][1]
    assert weighted["spec"]["rules"][0]["matches"] == original["spec"]["rules"][0]["matches"]
    assert weighted["metadata"]["resourceVersion"] == "7"  # written over what was read
    assert canary_weight(weighted, "resnet50", "resnet50-canary", "vision") == 25
    again = with_weights(weighted, "resnet50", "resnet50-canary", "vision", RouteWeights(75, 25))
    assert again == weighted
    back = with_weights(weighted, "resnet50", "resnet50-canary", "vision", RouteWeights(100, 0))
    assert back["spec"]["rules"][0]["backendRefs"] == [ref("resnet50", 100), ref("other", 5)]
    everything = with_weights(weighted, "resnet50", "resnet50-canary", "vision", RouteWeights(0, 100))
    assert canary_weight(everything, "resnet50", "resnet50-canary", "vision") == 100
