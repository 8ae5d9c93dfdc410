"""Pure decisions about children: when to apply, what to delete, who owns replicas."""

from __future__ import annotations

import copy

from modeldeploy.errors import parse_model_deployment
from modeldeploy.intent import INTENT_HASH, is_subset, needs_apply, plan, replicas_intent, with_intent_hash
from modeldeploy.render import render_children
from tests.support.specs import minimal

UID = "uid-1"


def md(**spec):
    doc = minimal(**spec)
    doc["metadata"]["uid"] = UID
    return parse_model_deployment(doc)


def stored(obj, **extra_spec):
    """What the API server would return: our fields plus defaults it adds."""
    out = copy.deepcopy(obj)
    out["metadata"].update({"uid": "child-uid", "resourceVersion": "7", "generation": 1})
    out.setdefault("spec", {}).update(extra_spec)
    return out


def test_absent_child_needs_apply():
    assert needs_apply(with_intent_hash({"metadata": {"name": "x"}, "spec": {"a": 1}}), None)


def test_same_intent_with_server_defaults_needs_nothing():
    desired = with_intent_hash(render_children(md(), replicas=1, owner_uid=UID)["Deployment"])
    assert not needs_apply(desired, stored(desired, minReadySeconds=0, paused=False))


def test_changed_intent_needs_apply():
    old = with_intent_hash(render_children(md(), replicas=1, owner_uid=UID)["Deployment"])
    new = with_intent_hash(render_children(md(replicas=2), replicas=2, owner_uid=UID)["Deployment"])
    assert new["metadata"]["annotations"][INTENT_HASH] != old["metadata"]["annotations"][INTENT_HASH]
    assert needs_apply(new, stored(old))


def test_dropped_field_changes_the_hash_so_the_server_removes_it():
    annotated = md(service={"annotations": {"example.com/lb": "internal"}})
    with_annotation = with_intent_hash(render_children(annotated, replicas=1, owner_uid=UID)["Service"])
    without = with_intent_hash(render_children(md(), replicas=1, owner_uid=UID)["Service"])
    unannotated = copy.deepcopy(without)
    del unannotated["metadata"]["annotations"]
    assert is_subset(unannotated, stored(with_annotation))  # a subset check alone would miss it
    assert needs_apply(without, stored(with_annotation))


def test_hand_edit_is_drift():
    desired = with_intent_hash(render_children(md(), replicas=1, owner_uid=UID)["Service"])
    edited = stored(desired)
    edited["spec"]["type"] = "NodePort"
    assert needs_apply(desired, edited)


def test_what_others_add_to_keyed_lists_is_not_drift_but_a_change_to_ours_is():
    """A mesh injects a sidecar, its env and volumes; the API server merges them by key beside ours.
    Re-applying then would change nothing and post an event on every reconcile."""
    desired = with_intent_hash(render_children(md(model={"repository": "pvc://store/triton", "version": "3"}),
                                               replicas=1, owner_uid=UID)["Deployment"])
    injected = stored(desired)
    pod = injected["spec"]["template"]["spec"]
    pod["containers"].insert(0, {"name": "istio-proxy", "image": "proxyv2", "env": [{"name": "A", "value": "1"}]})
    triton = pod["containers"][1]
    triton["env"] = [{"name": "MESH", "value": "on"}, *triton.get("env", [])]
    triton["volumeMounts"].append({"name": "istio-data", "mountPath": "/etc/istio/proxy"})
    pod["volumes"].append({"name": "istio-data", "emptyDir": {}})
    pod["initContainers"].insert(0, {"name": "istio-init", "image": "proxyv2"})
    assert not needs_apply(desired, injected)

    mounted_elsewhere = copy.deepcopy(injected)
    mounted_elsewhere["spec"]["template"]["spec"]["containers"][1]["volumeMounts"][0]["mountPath"] = "/elsewhere"
    assert needs_apply(desired, mounted_elsewhere)  # our mount at /dev/shm is gone
    new_image = copy.deepcopy(injected)
    new_image["spec"]["template"]["spec"]["containers"][1]["image"] = "evil:latest"
    assert needs_apply(desired, new_image)
    no_pin = copy.deepcopy(injected)
    no_pin["spec"]["template"]["spec"]["initContainers"].pop()
    assert needs_apply(desired, no_pin)


def test_atomic_lists_still_compare_whole():
    want = {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}], "args": ["--a", "--b"]}
    assert is_subset(want, copy.deepcopy(want))
    assert not is_subset(want, {**want, "tolerations": [*want["tolerations"], {"key": "x", "operator": "Exists"}]})
    assert not is_subset(want, {**want, "args": ["--a", "--b", "--c"]})


def test_quantities_compare_by_value():
    assert is_subset({"cpu": "1.5", "memory": "1024Mi"}, {"cpu": "1500m", "memory": "1Gi"})
    assert not is_subset({"cpu": "1.5"}, {"cpu": "2"})
    assert not is_subset({"image": "a"}, {"image": "b"})
    assert not is_subset([1, 2], [1, 2, 3])


def test_plan_applies_missing_and_deletes_unwanted_and_refuses_foreign():
    desired = render_children(md(), replicas=1, owner_uid=UID)
    ours = stored(with_intent_hash(render_children(md(autoscaling={"maxReplicas": 3,
                                                                   "targetQueueTimeMicroseconds": 5}),
                                                   replicas=1, owner_uid=UID)["HorizontalPodAutoscaler"]))
    foreign = {"kind": "Service", "metadata": {"name": "resnet50", "namespace": "vision"}, "spec": {}}
    result = plan(desired, {"Deployment": None, "Service": foreign, "HorizontalPodAutoscaler": ours,
                            "PodDisruptionBudget": None, "ServiceMonitor": None}, UID)
    assert [c["kind"] for c in result.apply] == ["Deployment"]
    assert [c["kind"] for c in result.delete] == ["HorizontalPodAutoscaler"]
    assert result.conflicts == ("Service vision/resnet50",)


def test_plan_leaves_a_foreign_object_that_we_do_not_want_alone():
    foreign = {"kind": "PodDisruptionBudget", "metadata": {"name": "resnet50", "namespace": "vision"}}
    result = plan({"PodDisruptionBudget": None}, {"PodDisruptionBudget": foreign}, UID)
    assert result == plan({}, {}, UID)


def _deployment(replicas, *managers):
    fields = [{"manager": m, "operation": "Update", "fieldsType": "FieldsV1",
               "fieldsV1": {"f:spec": {"f:replicas": {}}}} for m in managers]
    fields.append({"manager": "modeldeploy", "operation": "Apply", "fieldsType": "FieldsV1",
                   "fieldsV1": {"f:spec": {"f:template": {}}}})
    return {"metadata": {"managedFields": fields}, "spec": {"replicas": replicas}}


AUTOSCALED = {"autoscaling": {"minReplicas": 2, "maxReplicas": 6, "targetQueueTimeMicroseconds": 5}}


def test_replicas_without_autoscaling_follow_the_spec():
    assert replicas_intent(md(replicas=4), _deployment(7, "kube-controller-manager")) == 4


def test_replicas_start_at_min_when_autoscaling_creates_the_deployment():
    assert replicas_intent(md(**AUTOSCALED), None) == 2


def test_replicas_are_left_to_the_hpa_once_it_owns_them():
    assert replicas_intent(md(**AUTOSCALED), _deployment(5, "kube-controller-manager")) is None


def test_replicas_are_held_not_reset_during_the_hand_over():
    # We still own the field: keep the current value (clamped), never let it fall back to 1.
    assert replicas_intent(md(**AUTOSCALED), _deployment(5)) == 5
    assert replicas_intent(md(**AUTOSCALED), _deployment(1)) == 2
    assert replicas_intent(md(**AUTOSCALED), _deployment(9)) == 6
