"""What kube-controller-manager's deployment controller, the scheduler and the kubelet would show.

A small, honest simulation on top of FakeCluster for reconciler tests: a ReplicaSet per pod
template (named <deployment>-<pod-template-hash>, owned by the Deployment), Pods owned by their
ReplicaSet (named <deployment>-<hash>-<i>, stable while their template is unchanged, so per-pod
caches stay valid), pod status as the kubelet reports it, and the Deployment's status and
conditions computed the way the deployment controller does (deployment/sync.go calculateStatus,
util/deployment_util.go). Nothing here is an operator write: all of it goes through FakeCluster's
test-setup helpers, under the managers the real components use.

    settle(fake, ns, name)                                   rollout complete, every pod Ready
    settle(fake, ns, name, ready=False)                      pods Running, not Ready
    settle(fake, ns, name, waiting_reason="CrashLoopBackOff")  or "ImagePullBackOff", ...
    settle(fake, ns, name, unschedulable_message="0/2 nodes are available: Insufficient nvidia.com/gpu.")
    settle(fake, ns, name, progress_deadline_exceeded=True)  Progressing=False ProgressDeadlineExceeded
    rolling(fake, ns, name, updated=1)                       mid-rollout: 1 pod of the new template,
                                                             the rest still of the old one
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from typing import Any

from modeldeploy.kube import DEPLOYMENT, POD, Kind
from tests.support.fake_cluster import FakeCluster

REPLICA_SET = Kind("apps", "v1", "replicasets", "ReplicaSet")
POD_TEMPLATE_HASH = "pod-template-hash"
REVISION = "deployment.kubernetes.io/revision"
CONTROLLER = "kube-controller-manager"
NODE_NAME = "gpu-node-1"
HOST_IP = "10.0.0.11"
# rand.SafeEncodeString's alphabet: no vowels, no 0/1/3 (never spells words, never ambiguous).
_SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def template_hash(template: dict[str, Any]) -> str:
    digest = int.from_bytes(hashlib.sha256(json.dumps(template, sort_keys=True).encode()).digest()[:8], "big")
    out = ""
    for _ in range(10):
        digest, index = divmod(digest, len(_SAFE_ALPHABET))
        out += _SAFE_ALPHABET[index]
    return out


def settle(fake: FakeCluster, namespace: str, name: str, *, ready: bool = True, pod_ip: str = "127.0.0.1",
           waiting_reason: str | None = None, unschedulable_message: str | None = None,
           progress_deadline_exceeded: bool = False) -> dict[str, Any]:
    """The rollout of the Deployment's current template has finished: spec.replicas pods of it,
    none of older templates, each in the state asked for. Returns the Deployment."""
    deployment = _deployment(fake, namespace, name)
    replicas = _replicas(deployment)
    return _sync(fake, deployment, new_count=replicas, old_count=0, ready=ready, pod_ip=pod_ip,
                 waiting_reason=waiting_reason, unschedulable_message=unschedulable_message,
                 deadline_exceeded=progress_deadline_exceeded)


def rolling(fake: FakeCluster, namespace: str, name: str, *, updated: int = 1, ready: bool = True,
            pod_ip: str = "127.0.0.1", waiting_reason: str | None = None, unschedulable_message: str | None = None,
            progress_deadline_exceeded: bool = False) -> dict[str, Any]:
    """Mid-rollout: `updated` pods of the current template (in the state asked for), and of the
    pods of older templates as many as still make up spec.replicas (they keep their state).
    Returns the Deployment."""
    deployment = _deployment(fake, namespace, name)
    replicas = _replicas(deployment)
    updated = max(0, min(updated, replicas))
    return _sync(fake, deployment, new_count=updated, old_count=replicas - updated, ready=ready, pod_ip=pod_ip,
                 waiting_reason=waiting_reason, unschedulable_message=unschedulable_message,
                 deadline_exceeded=progress_deadline_exceeded)


def pods_of(fake: FakeCluster, namespace: str, name: str) -> list[dict[str, Any]]:
    """The Deployment's pods (through its ReplicaSets), by name."""
    deployment = fake.get_now(DEPLOYMENT, namespace, name)
    if deployment is None:
        return []
    sets = {rs["metadata"]["uid"] for rs in _replica_sets(fake, deployment)}
    return [p for p in fake.list_now(POD, namespace)
            if any(ref.get("uid") in sets for ref in p["metadata"].get("ownerReferences") or [])]


# --- internals ------------------------------------------------------------------------------

def _deployment(fake: FakeCluster, namespace: str, name: str) -> dict[str, Any]:
    deployment = fake.get_now(DEPLOYMENT, namespace, name)
    if deployment is None:
        raise LookupError(f"no Deployment {namespace}/{name} to simulate")
    return deployment


def _replicas(deployment: dict[str, Any]) -> int:
    return int(deployment["spec"].get("replicas", 1))


def _replica_sets(fake: FakeCluster, deployment: dict[str, Any]) -> list[dict[str, Any]]:
    uid = deployment["metadata"]["uid"]
    return [rs for rs in fake.list_now(REPLICA_SET, deployment["metadata"]["namespace"])
            if any(ref.get("uid") == uid for ref in rs["metadata"].get("ownerReferences") or [])]


def _owner_ref(obj: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": obj["metadata"]["name"],
            "uid": obj["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}


def _ensure_replica_set(fake: FakeCluster, deployment: dict[str, Any], pod_hash: str) -> dict[str, Any]:
    meta = deployment["metadata"]
    namespace, rs_name = meta["namespace"], f"{meta['name']}-{pod_hash}"
    existing = fake.get_now(REPLICA_SET, namespace, rs_name)
    if existing is not None:
        return existing
    revisions = [int((rs["metadata"].get("annotations") or {}).get(REVISION, "0"))
                 for rs in _replica_sets(fake, deployment)]
    revision = str(max(revisions, default=0) + 1)
    template = copy.deepcopy(deployment["spec"]["template"])
    template.setdefault("metadata", {}).setdefault("labels", {})[POD_TEMPLATE_HASH] = pod_hash
    selector = copy.deepcopy(deployment["spec"]["selector"])
    selector.setdefault("matchLabels", {})[POD_TEMPLATE_HASH] = pod_hash
    fake.create({"apiVersion": "apps/v1", "kind": "ReplicaSet",
                 "metadata": {"name": rs_name, "namespace": namespace,
                              "labels": dict(template["metadata"]["labels"]),
                              "annotations": {REVISION: revision},
                              "ownerReferences": [_owner_ref(deployment)]},
                 "spec": {"replicas": 0, "selector": selector, "template": template}}, manager=CONTROLLER)
    fake.update({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {
        "name": meta["name"], "namespace": namespace, "annotations": {REVISION: revision}}}, CONTROLLER)
    return fake.get_now(REPLICA_SET, namespace, rs_name)  # type: ignore[return-value]


def _index(pod: dict[str, Any]) -> int:
    try:
        return int(pod["metadata"]["name"].rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return 1 << 30


def _sync(fake: FakeCluster, deployment: dict[str, Any], *, new_count: int, old_count: int, ready: bool,
          pod_ip: str, waiting_reason: str | None, unschedulable_message: str | None,
          deadline_exceeded: bool) -> dict[str, Any]:
    meta = deployment["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    pod_hash = template_hash(deployment["spec"]["template"])
    new_rs = _ensure_replica_set(fake, deployment, pod_hash)
    deployment = _deployment(fake, namespace, name)  # the revision annotation changed it
    rs_by_uid = {rs["metadata"]["uid"]: rs for rs in _replica_sets(fake, deployment)}

    current, old = [], []
    for pod in pods_of(fake, namespace, name):
        (current if (pod["metadata"].get("labels") or {}).get(POD_TEMPLATE_HASH) == pod_hash else old).append(pod)

    # Pods of the current template: keep the lowest indices, add the missing ones, remove the rest.
    current.sort(key=_index)
    for pod in current[new_count:]:
        fake.delete_as_user(POD, namespace, pod["metadata"]["name"])
    current = current[:new_count]
    taken = {_index(p) for p in current}
    free = (i for i in range(1 << 30) if i not in taken)
    for _ in range(new_count - len(current)):
        current.append(_create_pod(fake, new_rs, f"{name}-{pod_hash}-{next(free)}"))
    for pod in current:
        _set_pod_state(fake, pod, ready=ready, pod_ip=pod_ip, waiting_reason=waiting_reason,
                       unschedulable_message=unschedulable_message)

    # Pods of older templates: the newest ReplicaSets' lowest indices stay, as many as asked.
    def age(pod: dict[str, Any]) -> tuple[int, int]:
        owner = next((rs_by_uid[r["uid"]] for r in pod["metadata"].get("ownerReferences") or []
                      if r.get("uid") in rs_by_uid), {"metadata": {}})
        return -int((owner["metadata"].get("annotations") or {}).get(REVISION, "0")), _index(pod)

    old.sort(key=age)
    for pod in old[old_count:]:
        fake.delete_as_user(POD, namespace, pod["metadata"]["name"])
    old = old[:old_count]

    # ReplicaSets: spec.replicas and status follow their pods.
    pods = {p["metadata"]["name"]: p for p in pods_of(fake, namespace, name)}
    for rs in _replica_sets(fake, deployment):
        mine = [p for p in pods.values()
                if any(r.get("uid") == rs["metadata"]["uid"] for r in p["metadata"].get("ownerReferences") or [])]
        if rs["spec"].get("replicas") != len(mine):
            fake.update({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {
                "name": rs["metadata"]["name"], "namespace": namespace}, "spec": {"replicas": len(mine)}},
                CONTROLLER)
        ready_count = sum(_is_ready(p) for p in mine)
        fake.set_status(REPLICA_SET, namespace, rs["metadata"]["name"], _omit_zero({
            "replicas": len(mine), "fullyLabeledReplicas": len(mine), "readyReplicas": ready_count,
            "availableReplicas": ready_count, "observedGeneration": rs["metadata"]["generation"]}),
            manager=CONTROLLER)

    # The Deployment's status (deployment/sync.go calculateStatus).
    all_pods = list(pods.values())
    replicas = _replicas(deployment)
    total = len(all_pods)
    updated = sum((p["metadata"].get("labels") or {}).get(POD_TEMPLATE_HASH) == pod_hash for p in all_pods)
    ready_count = sum(_is_ready(p) for p in all_pods)
    available = ready_count  # minReadySeconds 0
    status = _omit_zero({"observedGeneration": deployment["metadata"]["generation"], "replicas": total,
                         "updatedReplicas": updated, "readyReplicas": ready_count, "availableReplicas": available,
                         "unavailableReplicas": max(total - available, 0)})
    previous = {c["type"]: c for c in (deployment.get("status") or {}).get("conditions") or []}
    rs_name = new_rs["metadata"]["name"]
    now = _now(fake)
    if available >= replicas - _max_unavailable(deployment):
        available_condition = ("True", "MinimumReplicasAvailable", "Deployment has minimum availability.")
    else:
        available_condition = ("False", "MinimumReplicasUnavailable", "Deployment does not have minimum availability.")
    if deadline_exceeded:
        progressing = ("False", "ProgressDeadlineExceeded", f'ReplicaSet "{rs_name}" has timed out progressing.')
    elif updated == replicas and total == replicas and available == replicas:
        progressing = ("True", "NewReplicaSetAvailable", f'ReplicaSet "{rs_name}" has successfully progressed.')
    else:
        progressing = ("True", "ReplicaSetUpdated", f'ReplicaSet "{rs_name}" is progressing.')
    status["conditions"] = [_condition("Available", available_condition, previous, now),
                            _condition("Progressing", progressing, previous, now)]
    fake.set_status(DEPLOYMENT, namespace, name, status, manager=CONTROLLER)
    return _deployment(fake, namespace, name)


def _condition(kind: str, state: tuple[str, str, str], previous: dict[str, dict[str, Any]],
               now: str) -> dict[str, Any]:
    status, reason, message = state
    before = previous.get(kind)
    if before and (before.get("status"), before.get("reason"), before.get("message")) == state:
        return before
    transition = before["lastTransitionTime"] if before and before.get("status") == status else now
    return {"type": kind, "status": status, "lastUpdateTime": now, "lastTransitionTime": transition,
            "reason": reason, "message": message}


def _max_unavailable(deployment: dict[str, Any]) -> int:
    """deploymentutil.MaxUnavailable: maxUnavailable rounded down, maxSurge up; both 0 -> 1."""
    strategy = deployment["spec"].get("strategy") or {}
    replicas = _replicas(deployment)
    if strategy.get("type", "RollingUpdate") != "RollingUpdate" or replicas == 0:
        return 0
    rolling_update = strategy.get("rollingUpdate") or {}

    def resolve(value: Any, round_up: bool) -> int:
        if isinstance(value, str) and value.endswith("%"):
            scaled = int(value[:-1]) * replicas / 100
            return math.ceil(scaled) if round_up else math.floor(scaled)
        return int(value)

    surge = resolve(rolling_update.get("maxSurge", "25%"), True)
    unavailable = resolve(rolling_update.get("maxUnavailable", "25%"), False)
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return min(unavailable, replicas)


def _omit_zero(status: dict[str, Any]) -> dict[str, Any]:
    """The API types mark these counters omitempty: a zero is absent."""
    return {k: v for k, v in status.items() if v not in (0, None)}


def _now(fake: FakeCluster) -> str:
    return fake.clock().strftime("%Y-%m-%dT%H:%M:%SZ")


def _create_pod(fake: FakeCluster, rs: dict[str, Any], pod_name: str) -> dict[str, Any]:
    template = rs["spec"]["template"]
    pod_meta: dict[str, Any] = {"name": pod_name, "namespace": rs["metadata"]["namespace"],
                                "labels": dict(template.get("metadata", {}).get("labels") or {}),
                                "ownerReferences": [_owner_ref(rs)]}
    if template.get("metadata", {}).get("annotations"):
        pod_meta["annotations"] = dict(template["metadata"]["annotations"])
    return fake.create({"apiVersion": "v1", "kind": "Pod", "metadata": pod_meta,
                        "spec": copy.deepcopy(template.get("spec") or {})}, manager=CONTROLLER)


def _is_ready(pod: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def _set_pod_state(fake: FakeCluster, pod: dict[str, Any], *, ready: bool, pod_ip: str, waiting_reason: str | None,
                   unschedulable_message: str | None) -> None:
    meta = pod["metadata"]
    namespace, pod_name = meta["namespace"], meta["name"]
    since = meta["creationTimestamp"]
    if unschedulable_message is not None:
        fake.set_status(POD, namespace, pod_name, {
            "phase": "Pending", "qosClass": _qos(pod),
            "conditions": [{"type": "PodScheduled", "status": "False", "lastTransitionTime": since,
                            "reason": "Unschedulable", "message": unschedulable_message}]}, manager="kube-scheduler")
        return
    if not pod["spec"].get("nodeName"):  # the scheduler binds it (pods/binding)
        fake.update({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod_name, "namespace": namespace},
                     "spec": {"nodeName": NODE_NAME}}, "kube-scheduler", subresource="binding")
    containers = pod["spec"].get("containers") or []
    statuses = []
    for container in containers:
        entry: dict[str, Any] = {"name": container["name"], "image": container.get("image", ""), "imageID": "",
                                 "containerID": "", "restartCount": 0, "ready": False, "started": False}
        if waiting_reason is None:
            # `ready` is Triton's readiness; a sidecar (pin-loaded) is ready once it runs.
            entry.update(state={"running": {"startedAt": since}}, ready=ready or container["name"] != "triton",
                         started=True,
                         imageID=f"{container.get('image', '')}@sha256:{'0' * 64}",
                         containerID=f"containerd://{hashlib.sha256(pod_name.encode()).hexdigest()}")
        elif waiting_reason in ("CrashLoopBackOff", "RunContainerError"):
            entry.update(restartCount=5, state={"waiting": {
                "reason": waiting_reason,
                "message": f"back-off 2m40s restarting failed container={container['name']} "
                           f"pod={pod_name}_{namespace}({meta['uid']})"}},
                lastState={"terminated": {"exitCode": 1, "reason": "Error", "startedAt": since,
                                          "finishedAt": since}})
        elif waiting_reason in ("ImagePullBackOff", "ErrImagePull"):
            entry["state"] = {"waiting": {"reason": waiting_reason,
                                          "message": f'Back-off pulling image "{container.get("image", "")}"'}}
        else:
            entry["state"] = {"waiting": {"reason": waiting_reason, "message": f"{waiting_reason}: see events"}}
        statuses.append(entry)
    all_ready = waiting_reason is None and ready
    not_ready = {} if all_ready else {
        "reason": "ContainersNotReady",
        "message": f"containers with unready status: [{' '.join(c['name'] for c in containers)}]"}
    # A container that has run (and crashes) leaves the pod Running; one whose image never
    # arrived (or could not be created) leaves it Pending.
    running = waiting_reason is None or waiting_reason in ("CrashLoopBackOff", "RunContainerError")
    fake.set_status(POD, namespace, pod_name, {
        "phase": "Running" if running else "Pending",
        "conditions": [
            {"type": "Initialized", "status": "True", "lastTransitionTime": since},
            {"type": "Ready", "status": "True" if all_ready else "False", "lastTransitionTime": since, **not_ready},
            {"type": "ContainersReady", "status": "True" if all_ready else "False", "lastTransitionTime": since,
             **not_ready},
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": since},
        ],
        "hostIP": HOST_IP, "hostIPs": [{"ip": HOST_IP}],
        "podIP": pod_ip, "podIPs": [{"ip": pod_ip}],
        "startTime": since, "qosClass": _qos(pod),
        "containerStatuses": statuses,
    }, manager="kubelet")


def _qos(pod: dict[str, Any]) -> str:
    containers = pod["spec"].get("containers") or []
    resources = [c.get("resources") or {} for c in containers]
    if not any(r.get("requests") or r.get("limits") for r in resources):
        return "BestEffort"
    guaranteed = all(r.get("limits") and all(r.get("requests", r["limits"]).get(k) == v
                                             for k, v in r["limits"].items())
                     and set(r.get("limits", {})) >= {"cpu", "memory"} for r in resources)
    return "Guaranteed" if guaranteed else "Burstable"
