"""The in-memory cluster keeps the API server semantics the reconciler relies on (tier 2's ground)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from modeldeploy import FIELD_MANAGER, permissions
from modeldeploy.intent import replicas_owned_by_others
from modeldeploy.kube import (
    DEPLOYMENT,
    HPA,
    MODEL_DEPLOYMENT,
    POD,
    PVC,
    SECRET,
    SERVICE,
    SERVICE_MONITOR,
    ApiError,
)
from tests.support import specs
from tests.support.deployment_controller import REPLICA_SET, pods_of, rolling, settle, template_hash
from tests.support.fake_cluster import ElementKey, FakeCluster, fields_v1

NS = "vision"
REPLICAS = ("spec", "replicas")
CONTAINERS = ("spec", "template", "spec", "containers")
TRITON = (*CONTAINERS, ElementKey({"name": "triton"}))


@pytest.fixture()
def fake() -> FakeCluster:
    return FakeCluster()


def deployment(replicas: int | None = 2, *, labels: dict[str, str] | None = None,
               annotations: dict[str, str] | None = None, image: str = "nvcr.io/nvidia/tritonserver:24.08-py3",
               version: str = "3", owner_uid: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "resnet50", "namespace": NS, "labels": labels or {"app": "resnet50"}}
    if annotations:
        meta["annotations"] = annotations
    if owner_uid:
        meta["ownerReferences"] = [{"apiVersion": "modeldeploy.dev/v1alpha1", "kind": "ModelDeployment",
                                    "name": "resnet50", "uid": owner_uid, "controller": True,
                                    "blockOwnerDeletion": True}]
    spec: dict[str, Any] = {
        "selector": {"matchLabels": {"app": "resnet50"}},
        "template": {"metadata": {"labels": {"app": "resnet50", "app.kubernetes.io/version": version}},
                     "spec": {"containers": [{"name": "triton", "image": image,
                                              "ports": [{"name": "http", "containerPort": 8000}]}]}},
    }
    if replicas is not None:
        spec["replicas"] = replicas
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": spec}


def service() -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "resnet50", "namespace": NS},
            "spec": {"selector": {"app": "resnet50"}, "ports": [{"name": "http", "port": 8000}]}}


def rv(obj: dict[str, Any]) -> int:
    return int(obj["metadata"]["resourceVersion"])


# --- resourceVersion and generation -------------------------------------------------------

async def test_resource_version_is_global_and_moves_only_on_change(fake):
    first = await fake.apply(deployment())
    other = await fake.apply(service())
    assert rv(other) > rv(first)
    again = await fake.apply(deployment())
    assert again == fake.get_now(DEPLOYMENT, NS, "resnet50")
    assert rv(again) == rv(first)  # a no-op apply writes nothing
    changed = await fake.apply(deployment(annotations={"a": "b"}))
    assert rv(changed) > rv(other)


async def test_uid_creation_timestamp_and_generation_on_create(fake):
    created = await fake.apply(deployment())
    meta = created["metadata"]
    assert meta["uid"] and meta["creationTimestamp"].endswith("Z") and meta["generation"] == 1


async def test_generation_moves_only_with_the_spec(fake):
    await fake.apply(deployment())
    relabelled = await fake.apply(deployment(annotations={"note": "x"}))
    assert relabelled["metadata"]["generation"] == 1
    status = fake.set_status(DEPLOYMENT, NS, "resnet50", {"replicas": 2})
    assert status["metadata"]["generation"] == 1 and rv(status) > rv(relabelled)
    scaled = await fake.apply(deployment(replicas=4, annotations={"note": "x"}))
    assert scaled["metadata"]["generation"] == 2
    edited = fake.update_spec(DEPLOYMENT, NS, "resnet50", {"minReadySeconds": 5})
    assert edited["metadata"]["generation"] == 3


async def test_generation_counts_for_custom_resources_too(fake):
    md = fake.create(specs.minimal())
    assert md["metadata"]["generation"] == 1
    same = fake.update_spec(MODEL_DEPLOYMENT, NS, "resnet50", {"replicas": None})
    assert same["metadata"]["generation"] == 1 and rv(same) == rv(md)  # a merge patch that changes nothing
    edited = fake.update_spec(MODEL_DEPLOYMENT, NS, "resnet50", {"replicas": 3})
    assert edited["metadata"]["generation"] == 2
    labelled = fake.update({"apiVersion": "modeldeploy.dev/v1alpha1", "kind": "ModelDeployment",
                            "metadata": {"name": "resnet50", "namespace": NS, "labels": {"team": "vision"}}})
    assert labelled["metadata"]["generation"] == 2


# --- status -------------------------------------------------------------------------------

async def test_status_only_through_the_status_subresource(fake):
    created = fake.create({**specs.minimal(), "status": {"phase": "made-up"}})
    assert "status" not in created  # the API server drops status on create
    patched = await fake.patch_status(NS, "resnet50", {"conditions": [{"type": "Ready", "status": "False"}],
                                                       "currentVersion": "3"})
    assert patched["metadata"]["generation"] == 1
    # The patch replaces the whole status: keys not sent are gone.
    replaced = await fake.patch_status(NS, "resnet50", {"conditions": [{"type": "Ready", "status": "True"}]})
    assert replaced["status"] == {"conditions": [{"type": "Ready", "status": "True"}]}
    # A user's update (even of a whole object carrying a status) never changes it.
    whole = copy.deepcopy(replaced)
    whole["status"] = {"hacked": True}
    whole["spec"]["replicas"] = 2
    updated = fake.update(whole)
    assert updated["status"] == replaced["status"] and updated["spec"]["replicas"] == 2


async def test_a_status_patch_that_changes_nothing_writes_nothing(fake):
    fake.create(specs.minimal())
    first = await fake.patch_status(NS, "resnet50", {"observedGeneration": 1})
    second = await fake.patch_status(NS, "resnet50", {"observedGeneration": 1})
    assert rv(second) == rv(first)
    assert [w[0] for w in fake.writes] == ["patch_status", "patch_status"]  # still two requests sent


async def test_apply_never_changes_status(fake):
    await fake.apply(deployment())
    fake.set_status(DEPLOYMENT, NS, "resnet50", {"replicas": 2, "readyReplicas": 2})
    with_status = {**deployment(), "status": {"replicas": 9}}
    stored = await fake.apply(with_status)
    assert stored["status"] == {"replicas": 2, "readyReplicas": 2}


async def test_patch_status_of_a_missing_object_is_not_found(fake):
    with pytest.raises(ApiError) as refused:
        await fake.patch_status(NS, "ghost", {})
    assert refused.value.status == 404


# --- garbage collection -------------------------------------------------------------------

async def test_deleting_an_owner_collects_its_dependents_recursively(fake):
    md = fake.create(specs.minimal())
    await fake.apply(deployment(owner_uid=md["metadata"]["uid"]))
    settle(fake, NS, "resnet50")
    assert len(pods_of(fake, NS, "resnet50")) == 2 and fake.list_now(REPLICA_SET, NS)
    fake.delete_as_user(MODEL_DEPLOYMENT, NS, "resnet50")
    assert fake.get_now(DEPLOYMENT, NS, "resnet50") is None
    assert fake.list_now(REPLICA_SET, NS) == [] and fake.list_now(POD, NS) == []


async def test_a_dependent_with_another_owner_survives(fake):
    first = fake.add_secret(NS, "a")
    second = fake.add_secret(NS, "b")
    refs = [{"apiVersion": "v1", "kind": "Secret", "name": s["metadata"]["name"], "uid": s["metadata"]["uid"]}
            for s in (first, second)]
    fake.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "c", "namespace": NS,
                                                                   "ownerReferences": refs}})
    fake.delete_as_user(SECRET, NS, "a")
    survivor = fake.get_now(SECRET, NS, "c")
    assert survivor is not None and [r["name"] for r in survivor["metadata"]["ownerReferences"]] == ["b"]
    fake.delete_as_user(SECRET, NS, "b")
    assert fake.get_now(SECRET, NS, "c") is None


async def test_collect_garbage_removes_objects_whose_owner_never_existed(fake):
    await fake.apply(deployment(owner_uid="no-such-uid"))
    assert fake.collect_garbage() == [("Deployment", NS, "resnet50")]
    assert fake.get_now(DEPLOYMENT, NS, "resnet50") is None


async def test_delete_honours_the_uid_precondition(fake):
    old = await fake.apply(deployment(owner_uid="md-uid"))
    fake.delete_as_user(DEPLOYMENT, NS, "resnet50")
    replacement = await fake.apply(deployment(owner_uid="md-uid"))
    await fake.delete(HPA, NS, "resnet50", uid="whatever")  # 404 is fine
    await fake.delete(DEPLOYMENT, NS, "resnet50", uid=old["metadata"]["uid"])  # the replacement is not it
    assert fake.get_now(DEPLOYMENT, NS, "resnet50")["metadata"]["uid"] == replacement["metadata"]["uid"]
    with pytest.raises(permissions.UndeclaredAPICall):
        await fake.delete(SECRET, NS, "creds", uid="u")  # never declared
    hpa = await fake.apply({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                            "metadata": {"name": "resnet50", "namespace": NS},
                            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                                        "name": "resnet50"}, "maxReplicas": 4}})
    await fake.delete(HPA, NS, "resnet50", uid="an-older-hpa")
    assert fake.get_now(HPA, NS, "resnet50") is not None
    await fake.delete(HPA, NS, "resnet50", uid=hpa["metadata"]["uid"])
    assert fake.get_now(HPA, NS, "resnet50") is None


async def test_finalizers_hold_deletion_and_bump_generation(fake):
    fake.create({**specs.minimal(), "metadata": {"name": "resnet50", "namespace": NS, "finalizers": ["x/y"]}})
    fake.delete_as_user(MODEL_DEPLOYMENT, NS, "resnet50")
    deleting = fake.get_now(MODEL_DEPLOYMENT, NS, "resnet50")
    assert deleting["metadata"]["deletionTimestamp"] and deleting["metadata"]["generation"] == 2
    fake.update({"apiVersion": "modeldeploy.dev/v1alpha1", "kind": "ModelDeployment",
                 "metadata": {"name": "resnet50", "namespace": NS, "finalizers": None}})
    assert fake.get_now(MODEL_DEPLOYMENT, NS, "resnet50") is None


# --- server-side apply field ownership ----------------------------------------------------

async def test_apply_records_managed_fields_like_the_api_server(fake):
    stored = await fake.apply(deployment())
    (entry,) = stored["metadata"]["managedFields"]
    assert entry["manager"] == FIELD_MANAGER and entry["operation"] == "Apply"
    assert entry["fieldsType"] == "FieldsV1" and entry["apiVersion"] == "apps/v1"
    assert entry["fieldsV1"]["f:spec"]["f:replicas"] == {}
    assert entry["fieldsV1"]["f:metadata"]["f:labels"] == {"f:app": {}}
    assert "f:template" in entry["fieldsV1"]["f:spec"]
    # Server defaults belong to nobody.
    assert "f:revisionHistoryLimit" not in entry["fieldsV1"]["f:spec"]
    assert stored["spec"]["revisionHistoryLimit"] == 10


async def test_the_hpa_keeps_its_replicas_when_we_stop_sending_them(fake):
    await fake.apply(deployment(replicas=2))
    assert REPLICAS in fake.managed_fields(DEPLOYMENT, NS, "resnet50")[FIELD_MANAGER]
    scaled = fake.scale(DEPLOYMENT, NS, "resnet50", 5)  # the HPA controller, via the scale subresource
    owners = fake.managed_fields(DEPLOYMENT, NS, "resnet50")
    assert REPLICAS in owners["kube-controller-manager"] and REPLICAS not in owners[FIELD_MANAGER]
    hpa_entry = next(e for e in scaled["metadata"]["managedFields"] if e["manager"] == "kube-controller-manager")
    assert hpa_entry == {**hpa_entry, "operation": "Update", "subresource": "scale",
                         "fieldsV1": {"f:spec": {"f:replicas": {}}}}
    assert replicas_owned_by_others(scaled)
    kept = await fake.apply(deployment(replicas=None))
    assert kept["spec"]["replicas"] == 5
    assert REPLICAS in fake.managed_fields(DEPLOYMENT, NS, "resnet50")["kube-controller-manager"]


async def test_dropping_replicas_nobody_else_owns_resets_them_to_the_default(fake):
    await fake.apply(deployment(replicas=3))
    dropped = await fake.apply(deployment(replicas=None))
    assert dropped["spec"]["replicas"] == 1  # exactly the trap: removed, then defaulted
    owners = fake.managed_fields(DEPLOYMENT, NS, "resnet50")
    assert all(REPLICAS not in paths for paths in owners.values())
    assert not replicas_owned_by_others(dropped)


async def test_applying_the_value_another_manager_set_shares_ownership(fake):
    await fake.apply(deployment(replicas=2))
    fake.scale(DEPLOYMENT, NS, "resnet50", 5)
    await fake.apply(deployment(replicas=5))
    owners = fake.managed_fields(DEPLOYMENT, NS, "resnet50")
    assert REPLICAS in owners[FIELD_MANAGER] and REPLICAS in owners["kube-controller-manager"]
    kept = await fake.apply(deployment(replicas=None))
    assert kept["spec"]["replicas"] == 5  # the other owner keeps it


async def test_a_forced_apply_of_another_value_takes_ownership(fake):
    await fake.apply(deployment(replicas=2))
    fake.scale(DEPLOYMENT, NS, "resnet50", 5)
    taken = await fake.apply(deployment(replicas=7))
    assert taken["spec"]["replicas"] == 7
    owners = fake.managed_fields(DEPLOYMENT, NS, "resnet50")
    assert REPLICAS in owners[FIELD_MANAGER] and "kube-controller-manager" not in owners
    assert not replicas_owned_by_others(taken)


async def test_an_update_that_changes_nothing_takes_nothing(fake):
    before = await fake.apply(deployment(replicas=2))
    after = fake.scale(DEPLOYMENT, NS, "resnet50", 2)
    assert rv(after) == rv(before) and "kube-controller-manager" not in fake.managed_fields(DEPLOYMENT, NS,
                                                                                            "resnet50")


async def test_a_hand_edit_moves_ownership_of_that_field_and_apply_takes_it_back(fake):
    await fake.apply(deployment())
    edited = fake.get_now(DEPLOYMENT, NS, "resnet50")
    edited["spec"]["template"]["spec"]["containers"][0]["image"] = "evil:latest"
    fake.update(edited, manager="kubectl-edit")
    owners = fake.managed_fields(DEPLOYMENT, NS, "resnet50")
    image = (*TRITON, "image")
    assert owners["kubectl-edit"] == {image}  # that field of that container, not the list
    assert image not in owners[FIELD_MANAGER] and {TRITON, (*TRITON, "name")} <= owners[FIELD_MANAGER]
    restored = await fake.apply(deployment())
    assert restored["spec"]["template"]["spec"]["containers"][0]["image"].startswith("nvcr.io/")
    assert "kubectl-edit" not in fake.managed_fields(DEPLOYMENT, NS, "resnet50")


async def test_a_whole_object_update_with_a_stale_resource_version_conflicts(fake):
    stale = await fake.apply(deployment())
    await fake.apply(deployment(annotations={"x": "y"}))
    with pytest.raises(ApiError) as refused:
        fake.update(stale)
    assert refused.value.status == 409


async def test_fields_we_stop_sending_are_removed_others_stay(fake):
    await fake.apply(deployment(annotations={"ours": "1", "gone": "2"}))
    fake.update({"apiVersion": "apps/v1", "kind": "Deployment",
                 "metadata": {"name": "resnet50", "namespace": NS, "annotations": {"theirs": "3"}}})
    stored = await fake.apply(deployment(annotations={"ours": "1"}))
    assert stored["metadata"]["annotations"] == {"ours": "1", "theirs": "3"}
    stored = await fake.apply(deployment())
    assert stored["metadata"]["annotations"] == {"theirs": "3"}


async def test_fields_v1_encoding():
    assert fields_v1({("spec", "replicas"), ("metadata", "labels", "a.b/c")}) == {
        "f:metadata": {"f:labels": {"f:a.b/c": {}}}, "f:spec": {"f:replicas": {}}}
    port = ElementKey({"protocol": "TCP", "containerPort": 8000})
    assert port == 'k:{"containerPort":8000,"protocol":"TCP"}'  # key fields sorted, compact JSON
    assert fields_v1({("spec", "ports", port), ("spec", "ports", port, "name")}) == {
        "f:spec": {"f:ports": {port: {".": {}, "f:name": {}}}}}


# --- server-side apply of associative lists (merged by key, owned per element) ------------

def env(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"name": n, "value": v} for n, v in pairs]


def with_containers(obj: dict[str, Any], *, env_vars: list[dict[str, str]] | None = None,
                    extra: list[dict[str, Any]] = ()) -> dict[str, Any]:
    """deployment() with env on the triton container and/or more containers after it."""
    out = copy.deepcopy(obj)
    containers = out["spec"]["template"]["spec"]["containers"]
    if env_vars is not None:
        containers[0]["env"] = env_vars
    containers.extend(copy.deepcopy(list(extra)))
    return out


def edit(fake: FakeCluster, change, manager: str = "istio-injector") -> dict[str, Any]:
    """Another actor's Update of the whole object (as a controller or kubectl edit sends it)."""
    obj = fake.get_now(DEPLOYMENT, NS, "resnet50")
    change(obj["spec"]["template"]["spec"])
    return fake.update(obj, manager=manager)


def containers_of(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return obj["spec"]["template"]["spec"]["containers"]


async def test_an_env_var_another_manager_added_survives_our_apply(fake):
    await fake.apply(with_containers(deployment(), env_vars=env(("A", "1"))))
    edit(fake, lambda spec: spec["containers"][0]["env"].append({"name": "PROXY", "value": "on"}))
    owners = fake.managed_fields(DEPLOYMENT, NS, "resnet50")
    proxy = (*TRITON, "env", ElementKey({"name": "PROXY"}))
    assert owners["istio-injector"] == {proxy, (*proxy, "name"), (*proxy, "value")}
    assert (*TRITON, "env", ElementKey({"name": "A"})) in owners[FIELD_MANAGER]

    stored = await fake.apply(with_containers(deployment(), env_vars=env(("A", "2"))))  # never mentions PROXY
    assert containers_of(stored)[0]["env"] == env(("A", "2"), ("PROXY", "on"))
    again = await fake.apply(with_containers(deployment(), env_vars=env(("A", "2"))))
    assert rv(again) == rv(stored)  # merged, not fought over
    fields = next(e for e in stored["metadata"]["managedFields"] if e["manager"] == "istio-injector")["fieldsV1"]
    triton = fields["f:spec"]["f:template"]["f:spec"]["f:containers"]['k:{"name":"triton"}']
    assert triton == {"f:env": {'k:{"name":"PROXY"}': {".": {}, "f:name": {}, "f:value": {}}}}


async def test_a_sidecar_another_manager_added_survives_our_apply(fake):
    await fake.apply(deployment())
    sidecar = {"name": "istio-proxy", "image": "istio/proxyv2:1.22.0"}
    edit(fake, lambda spec: spec["containers"].append(sidecar))
    assert (*CONTAINERS, ElementKey({"name": "istio-proxy"})) in \
        fake.managed_fields(DEPLOYMENT, NS, "resnet50")["istio-injector"]
    stored = await fake.apply(deployment(image="nvcr.io/nvidia/tritonserver:24.09-py3"))
    assert [(c["name"], c["image"]) for c in containers_of(stored)] == [
        ("triton", "nvcr.io/nvidia/tritonserver:24.09-py3"), ("istio-proxy", "istio/proxyv2:1.22.0")]
    owners = fake.managed_fields(DEPLOYMENT, NS, "resnet50")
    assert (*CONTAINERS, ElementKey({"name": "istio-proxy"})) not in owners[FIELD_MANAGER]


async def test_elements_we_stop_sending_go_unless_someone_else_owns_them(fake):
    exporter = {"name": "exporter", "image": "exporter:1"}
    await fake.apply(with_containers(deployment(), env_vars=env(("A", "1"), ("B", "1")), extra=[exporter]))
    edit(fake, lambda spec: spec["containers"][0]["env"][1].update(value="mine"), manager="kubectl-edit")
    stored = await fake.apply(with_containers(deployment(), env_vars=env(("A", "1"))))
    # exporter and nothing else was only ours: gone. B's value is kubectl-edit's: B stays.
    assert [c["name"] for c in containers_of(stored)] == ["triton"]
    assert containers_of(stored)[0]["env"] == env(("A", "1"), ("B", "mine"))
    owners = fake.managed_fields(DEPLOYMENT, NS, "resnet50")
    assert (*TRITON, "env", ElementKey({"name": "B"})) not in owners[FIELD_MANAGER]
    stored = await fake.apply(deployment())
    assert containers_of(stored)[0]["env"] == env(("B", "mine"))  # A went; the list stays for B


async def test_an_emptied_list_and_the_maps_it_leaves_empty_go(fake):
    await fake.apply(with_containers(deployment(), env_vars=env(("A", "1"))))
    stored = await fake.apply(deployment())
    assert "env" not in containers_of(stored)[0]
    assert not any("env" in path for path in fake.managed_fields(DEPLOYMENT, NS, "resnet50")[FIELD_MANAGER])


async def test_ports_are_keyed_by_port_and_protocol_and_the_protocol_default_counts(fake):
    stored = await fake.apply(deployment())
    port = ElementKey({"containerPort": 8000, "protocol": "TCP"})
    assert (*TRITON, "ports", port, "containerPort") in fake.managed_fields(DEPLOYMENT, NS, "resnet50")[FIELD_MANAGER]
    assert containers_of(stored)[0]["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    await fake.apply(service())
    fake.update({**fake.get_now(SERVICE, NS, "resnet50")} | {"spec": {
        **fake.get_now(SERVICE, NS, "resnet50")["spec"],
        "ports": [*fake.get_now(SERVICE, NS, "resnet50")["spec"]["ports"],
                  {"name": "dns", "port": 8000, "protocol": "UDP", "targetPort": 8000}]}}, manager="kubectl-edit")
    stored = await fake.apply(service())
    assert [(p["port"], p["protocol"]) for p in stored["spec"]["ports"]] == [(8000, "TCP"), (8000, "UDP")]
    assert ("spec", "ports", ElementKey({"port": 8000, "protocol": "UDP"})) in \
        fake.managed_fields(SERVICE, NS, "resnet50")["kubectl-edit"]


async def test_our_order_wins_for_our_elements_and_others_keep_their_place(fake):
    await fake.apply(with_containers(deployment(), env_vars=env(("A", "1"), ("B", "1"))))
    edit(fake, lambda spec: spec["containers"][0]["env"].append({"name": "X", "value": "x"}))
    stored = await fake.apply(with_containers(deployment(), env_vars=env(("A", "1"), ("C", "1"), ("B", "1"))))
    assert [e["name"] for e in containers_of(stored)[0]["env"]] == ["A", "C", "B", "X"]
    stored = await fake.apply(with_containers(deployment(), env_vars=env(("B", "1"), ("A", "1"), ("C", "1"))))
    # structured-merge-diff's order (typed/merge.go): X still follows B, which it followed before.
    assert [e["name"] for e in containers_of(stored)[0]["env"]] == ["B", "X", "A", "C"]


async def test_tolerations_are_atomic(fake):
    gpu = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    spot = {"key": "spot", "operator": "Exists"}
    with_gpu = deployment()
    with_gpu["spec"]["template"]["spec"]["tolerations"] = [gpu]
    await fake.apply(with_gpu)
    edit(fake, lambda spec: spec["tolerations"].append(spot), manager="kubectl-edit")
    tolerations = ("spec", "template", "spec", "tolerations")
    owners = fake.managed_fields(DEPLOYMENT, NS, "resnet50")
    assert tolerations in owners["kubectl-edit"] and tolerations not in owners[FIELD_MANAGER]  # the whole list
    stored = await fake.apply(with_gpu)
    assert stored["spec"]["template"]["spec"]["tolerations"] == [gpu]  # replaced as a whole
    assert "kubectl-edit" not in fake.managed_fields(DEPLOYMENT, NS, "resnet50")


async def test_duplicate_keys_in_an_apply_are_refused(fake):
    doubled = with_containers(deployment(), env_vars=env(("A", "1"), ("A", "2")))
    with pytest.raises(ApiError) as refused:
        await fake.apply(doubled, dry_run=True)
    assert refused.value.status == 422 and 'duplicate entries for key k:{"name":"A"}' in refused.value.message
    unnamed = with_containers(deployment(), extra=[{"image": "x:1"}])
    with pytest.raises(ApiError) as refused:
        await fake.apply(unnamed)
    assert refused.value.status == 422 and "key field(s) name" in refused.value.message
    assert fake.get_now(DEPLOYMENT, NS, "resnet50") is None


async def test_lists_of_custom_resources_stay_atomic(fake):
    md = specs.minimal(placement={"tolerations": [{"key": "a", "operator": "Exists"}]})
    fake.create(md, manager="kubectl-client-side-apply")
    stored = fake.update_spec(MODEL_DEPLOYMENT, NS, "resnet50",
                              {"placement": {"tolerations": [{"key": "b", "operator": "Exists"}]}})
    assert ("spec", "placement", "tolerations") in fake.managed_fields(MODEL_DEPLOYMENT, NS, "resnet50")["kubectl-edit"]
    assert stored["spec"]["placement"]["tolerations"] == [{"key": "b", "operator": "Exists"}]


# --- defaulting ---------------------------------------------------------------------------

async def test_service_defaults_and_allocations_are_stable(fake):
    first = await fake.apply(service())
    spec = first["spec"]
    assert spec["type"] == "ClusterIP" and spec["clusterIP"] == spec["clusterIPs"][0]
    assert spec["ports"] == [{"name": "http", "port": 8000, "protocol": "TCP", "targetPort": 8000}]
    again = await fake.apply(service())
    assert rv(again) == rv(first)
    node_port = {**service(), "spec": {**service()["spec"], "type": "NodePort"}}
    exposed = await fake.apply(node_port)
    again = await fake.apply(node_port)
    assert exposed["spec"]["clusterIP"] == spec["clusterIP"]
    assert again["spec"]["ports"][0]["nodePort"] == exposed["spec"]["ports"][0]["nodePort"] >= 30000
    assert rv(again) == rv(exposed)


async def test_rendered_children_reach_a_steady_state(fake):
    from modeldeploy.errors import parse_model_deployment
    from modeldeploy.render import render_children

    md = fake.create(specs.minimal(autoscaling={"minReplicas": 1, "maxReplicas": 3, "targetCPUUtilization": 70},
                                   disruptionBudget={"maxUnavailable": 1}, resources={"requests": {"cpu": "1"}},
                                   monitoring={"serviceMonitor": True}))
    children = render_children(parse_model_deployment(md), replicas=1, owner_uid=md["metadata"]["uid"])
    present = [c for c in children.values() if c is not None]
    stored = [await fake.apply(c) for c in present]
    assert [rv(await fake.apply(c)) for c in present] == [rv(s) for s in stored]


# --- kinds that are not installed ---------------------------------------------------------

async def test_a_kind_whose_crd_is_missing_is_a_not_found_error(fake):
    monitor = {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
               "metadata": {"name": "resnet50", "namespace": NS}, "spec": {"endpoints": []}}
    await fake.apply(monitor)
    fake.uninstall(SERVICE_MONITOR)
    assert fake.get_now(SERVICE_MONITOR, NS, "resnet50") is None
    for call in (fake.get(SERVICE_MONITOR, NS, "resnet50"), fake.list(SERVICE_MONITOR, NS, "a=b"),
                 fake.apply(monitor), fake.apply(monitor, dry_run=True)):
        with pytest.raises(ApiError) as refused:
            await call
        assert (refused.value.status, refused.value.reason) == (404, "NotFound")
        assert "servicemonitors.monitoring.coreos.com" in refused.value.message
        assert "CRD installed" in refused.value.message
    await fake.delete(SERVICE_MONITOR, NS, "resnet50", uid="x")  # nothing to delete: fine
    fake.install(SERVICE_MONITOR)
    assert await fake.get(SERVICE_MONITOR, NS, "resnet50") is None


# --- counting -----------------------------------------------------------------------------

async def test_writes_and_requests_are_counted(fake):
    md = fake.create(specs.minimal())
    fake.add_secret(NS, "creds")
    fake.add_pvc(NS, "store")
    assert fake.writes == [] and fake.requests == 0  # test setup is not the operator
    await fake.get(MODEL_DEPLOYMENT, NS, "resnet50")
    assert await fake.exists(SECRET, NS, "creds") and await fake.exists(PVC, NS, "store")
    assert not await fake.exists(SECRET, NS, "nope")
    await fake.list(POD, NS, "app=resnet50")
    await fake.apply(deployment(), dry_run=True)
    assert fake.writes == [] and fake.requests == 6
    await fake.apply(deployment())
    await fake.patch_status(NS, "resnet50", {"observedGeneration": 1})
    await fake.post_event(md, "Normal", "Created", "created Deployment resnet50")
    await fake.delete(HPA, NS, "resnet50", uid="u")
    assert fake.writes == [("apply", "Deployment", NS, "resnet50"), ("patch_status", "ModelDeployment", NS, "resnet50"),
                           ("post_event", "ModelDeployment", NS, "resnet50"),
                           ("delete", "HorizontalPodAutoscaler", NS, "resnet50")]
    assert fake.requests == 10
    event = fake.events[0]
    assert (event["type"], event["reason"], event["message"]) == ("Normal", "Created", "created Deployment resnet50")
    assert event["involvedObject"]["uid"] == md["metadata"]["uid"]
    fake.reset_counters()
    assert fake.writes == [] and fake.requests == 0 and fake.events == []


async def test_undeclared_calls_are_refused_like_the_real_boundary(fake):
    with pytest.raises(permissions.UndeclaredAPICall):
        await fake.get(POD, NS, "resnet50-abc")  # pods are listed, never fetched one by one
    with pytest.raises(permissions.UndeclaredAPICall):
        await fake.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": NS}})
    assert fake.requests == 0


# --- dry run ------------------------------------------------------------------------------

async def test_dry_run_validates_and_returns_without_storing(fake):
    would_be = await fake.apply(deployment(), dry_run=True)
    assert would_be["spec"]["replicas"] == 2 and would_be["spec"]["revisionHistoryLimit"] == 10
    assert fake.get_now(DEPLOYMENT, NS, "resnet50") is None
    stored = await fake.apply(deployment())
    would_be = await fake.apply(deployment(replicas=5), dry_run=True)
    assert would_be["spec"]["replicas"] == 5
    assert fake.get_now(DEPLOYMENT, NS, "resnet50") == stored
    moved = deployment()
    moved["spec"]["selector"]["matchLabels"]["tier"] = "gpu"
    moved["spec"]["template"]["metadata"]["labels"]["tier"] = "gpu"
    with pytest.raises(ApiError) as refused:
        await fake.apply(moved, dry_run=True)
    assert refused.value.status == 422 and "field is immutable" in refused.value.message


async def test_the_api_server_refuses_invalid_objects(fake):
    bad_label = deployment(labels={"app": "resnet50", "version": "not a valid label!"})
    with pytest.raises(ApiError) as refused:
        await fake.apply(bad_label, dry_run=True)
    assert refused.value.reason == "Invalid" and 'Deployment.apps "resnet50" is invalid' in refused.value.message
    unknown_field = deployment()
    unknown_field["spec"]["replicaz"] = 2
    with pytest.raises(ApiError) as refused:
        await fake.apply(unknown_field)
    assert refused.value.status == 422
    assert fake.get_now(DEPLOYMENT, NS, "resnet50") is None


# --- failure injection --------------------------------------------------------------------

async def test_the_next_apply_of_a_kind_can_be_made_to_fail(fake):
    fake.fail_next_apply(DEPLOYMENT, ApiError(422, "Invalid", "spec: bad"))
    await fake.apply(service())
    with pytest.raises(ApiError) as refused:
        await fake.apply(deployment(), dry_run=True)
    assert refused.value.message == "spec: bad"
    await fake.apply(deployment())  # only the next one
    fake.fail_next_apply(DEPLOYMENT, ApiError(409, "Conflict", "busy"), dry_run=False)
    await fake.apply(deployment(replicas=3), dry_run=True)
    with pytest.raises(ApiError):
        await fake.apply(deployment(replicas=3))
    assert fake.get_now(DEPLOYMENT, NS, "resnet50")["spec"]["replicas"] == 2


async def test_a_failing_event_is_swallowed(fake):
    md = fake.create(specs.minimal())
    fake.fail_next("post_event", None, ApiError(403, "Forbidden", "events is forbidden"))
    await fake.post_event(md, "Warning", "InvalidSpec", "x")
    assert fake.events == [] and fake.writes == [("post_event", "ModelDeployment", NS, "resnet50")]


# --- selectors and copies -----------------------------------------------------------------

async def test_list_filters_by_label_selector(fake):
    for name, labels in (("a", {"app": "x", "tier": "gpu"}), ("b", {"app": "x"}), ("c", {"app": "y"})):
        fake.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS, "labels": labels},
                     "spec": {"containers": [{"name": "c", "image": "i:1"}]}})
    fake.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "d", "namespace": "other",
                                                                  "labels": {"app": "x"}}, "spec": {"containers": []}})

    async def names(selector: str) -> list[str]:
        return [p["metadata"]["name"] for p in await fake.list(POD, NS, selector)]

    assert await names("app=x") == ["a", "b"]
    assert await names("app=x,tier=gpu") == ["a"]
    assert await names("app!=x") == ["c"]
    assert await names("tier") == ["a"] and await names("!tier") == ["b", "c"]
    assert await names("app in (x, y),app notin (y)") == ["a", "b"]
    assert await names("") == ["a", "b", "c"]


async def test_callers_can_never_mutate_stored_state(fake):
    sent = deployment()
    stored = await fake.apply(sent)
    sent["spec"]["replicas"] = 99
    stored["spec"]["replicas"] = 42
    stored["metadata"]["labels"]["x"] = "y"
    got = await fake.get(DEPLOYMENT, NS, "resnet50")
    assert got["spec"]["replicas"] == 2 and "x" not in got["metadata"]["labels"]
    got["spec"]["replicas"] = 7
    assert fake.get_now(DEPLOYMENT, NS, "resnet50")["spec"]["replicas"] == 2


# --- the deployment controller simulation -------------------------------------------------

async def test_settle_runs_pods_and_reports_a_complete_rollout(fake):
    await fake.apply(deployment(replicas=2))
    dep = settle(fake, NS, "resnet50")
    pod_hash = template_hash(dep["spec"]["template"])
    pods = pods_of(fake, NS, "resnet50")
    assert [p["metadata"]["name"] for p in pods] == [f"resnet50-{pod_hash}-0", f"resnet50-{pod_hash}-1"]
    for pod in pods:
        assert pod["metadata"]["labels"]["app.kubernetes.io/version"] == "3"
        assert pod["metadata"]["labels"]["pod-template-hash"] == pod_hash
        assert pod["status"]["phase"] == "Running" and pod["status"]["podIP"] == "127.0.0.1"
        assert {c["type"]: c["status"] for c in pod["status"]["conditions"]}["Ready"] == "True"
    status = dep["status"]
    assert status["observedGeneration"] == dep["metadata"]["generation"]
    assert (status["replicas"], status["updatedReplicas"], status["readyReplicas"],
            status["availableReplicas"]) == (2, 2, 2, 2)
    assert {c["type"]: c["reason"] for c in status["conditions"]} == {
        "Available": "MinimumReplicasAvailable", "Progressing": "NewReplicaSetAvailable"}
    uids = [p["metadata"]["uid"] for p in pods]
    before = rv(dep)
    again = settle(fake, NS, "resnet50")
    assert [p["metadata"]["uid"] for p in pods_of(fake, NS, "resnet50")] == uids and rv(again) == before


async def test_settle_shows_crash_loops_pull_failures_and_unschedulable_pods(fake):
    await fake.apply(deployment(replicas=1))
    dep = settle(fake, NS, "resnet50", waiting_reason="CrashLoopBackOff")
    (pod,) = pods_of(fake, NS, "resnet50")
    assert pod["status"]["phase"] == "Running"
    assert pod["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert "readyReplicas" not in dep["status"]  # omitempty
    assert {c["type"]: c["status"] for c in dep["status"]["conditions"]} == {"Available": "False",
                                                                            "Progressing": "True"}
    settle(fake, NS, "resnet50", waiting_reason="ImagePullBackOff")
    (pod,) = pods_of(fake, NS, "resnet50")
    assert pod["status"]["phase"] == "Pending"
    assert pod["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ImagePullBackOff"
    message = "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."
    settle(fake, NS, "resnet50", unschedulable_message=message)
    (pod,) = pods_of(fake, NS, "resnet50")
    assert pod["status"]["phase"] == "Pending" and "podIP" not in pod["status"]
    assert pod["status"]["conditions"] == [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                            "message": message,
                                            "lastTransitionTime": pod["metadata"]["creationTimestamp"]}]
    dep = settle(fake, NS, "resnet50", ready=False, progress_deadline_exceeded=True)
    assert next(c for c in dep["status"]["conditions"] if c["type"] == "Progressing")["reason"] == \
        "ProgressDeadlineExceeded"


async def test_rolling_keeps_old_pods_beside_new_ones(fake):
    await fake.apply(deployment(replicas=3, version="3"))
    settle(fake, NS, "resnet50")
    old_names = [p["metadata"]["name"] for p in pods_of(fake, NS, "resnet50")]
    await fake.apply(deployment(replicas=3, version="4"))
    dep = rolling(fake, NS, "resnet50", updated=1)
    versions = sorted(p["metadata"]["labels"]["app.kubernetes.io/version"] for p in pods_of(fake, NS, "resnet50"))
    assert versions == ["3", "3", "4"]
    assert {p["metadata"]["name"] for p in pods_of(fake, NS, "resnet50")} >= set(old_names[:2])
    assert dep["status"]["updatedReplicas"] == 1 and dep["status"]["replicas"] == 3
    assert next(c for c in dep["status"]["conditions"] if c["type"] == "Progressing")["reason"] == "ReplicaSetUpdated"
    assert dep["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2"
    dep = settle(fake, NS, "resnet50")
    assert sorted(p["metadata"]["labels"]["app.kubernetes.io/version"]
                  for p in pods_of(fake, NS, "resnet50")) == ["4", "4", "4"]
    assert next(c for c in dep["status"]["conditions"] if c["type"] == "Progressing")["reason"] == \
        "NewReplicaSetAvailable"


async def test_the_simulated_controllers_never_touch_fields_we_own(fake):
    await fake.apply(deployment(replicas=2))
    fake.reset_counters()
    settle(fake, NS, "resnet50")
    rolling(fake, NS, "resnet50", updated=1)
    owners = fake.managed_fields(DEPLOYMENT, NS, "resnet50")
    ours = owners[FIELD_MANAGER]
    assert all(not (paths & ours) for manager, paths in owners.items() if manager != FIELD_MANAGER)
    assert fake.writes == []
