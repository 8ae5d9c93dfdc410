#!/usr/bin/env python3
"""Regenerate tests/fixtures/gitops/*.yaml: ModelDeployments whose status the operator derived.

Each fixture is a named scenario: an observed world (the Deployment and Pods as the API server
shows them, Triton's answer per pod, what the reconciler found wrong) goes through the operator's
own modeldeploy.status.derive_status (or invalid_status), step by step where the situation has a
history (a rollout, a rollback), so lastTransitionTime moves only where a condition really flipped.
Two fixtures cannot come from the status code, and say so in their header: `no-status` (the
operator has not reconciled yet) and `terminating` (the API server marks a deletion; the operator
stops writing status then).

Each scenario also states, by hand, the verdict Argo CD's health script and kstatus must reach on
it: tests/test_gitops.py runs both over the files. The clock is fixed, so output is deterministic.

    .venv/bin/python scripts/generate-gitops-fixtures.py          # rewrite the fixtures
    .venv/bin/python scripts/generate-gitops-fixtures.py --check  # exit 1 naming the drifted ones
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from modeldeploy import naming, progressive
from modeldeploy.analysis import SideStats, Thresholds, Verdict, verdict
from modeldeploy.errors import InvalidSpec, parse_model_deployment
from modeldeploy.model_health import ModelSignature, PodModelReport, TensorSpec, VersionState, explain_not_ready
from modeldeploy.render.deployment import pod_template_fingerprint
from modeldeploy.status import Observed, Problem, derive_status, invalid_status

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "gitops"
COMMAND = ".venv/bin/python scripts/generate-gitops-fixtures.py"

NAME, NAMESPACE, MODEL = "resnet50", "vision", "resnet50"
UID = "0b6c1f8e-5d1e-4c3a-9a53-6f1f3c2b7d10"
IMAGE = "nvcr.io/nvidia/tritonserver:24.08-py3"
CREATED = "2026-11-23T07:55:00Z"
T0, T1, T2, T3 = "2026-11-23T08:00:00Z", "2026-11-23T08:05:00Z", "2026-11-23T08:06:00Z", "2026-11-23T08:08:00Z"
DELETED = "2026-11-23T09:00:00Z"

Status = dict[str, Any]


# --- the observed world ------------------------------------------------------------------------

def model_deployment(version: str = "3", *, generation: int = 1, **spec: Any) -> dict[str, Any]:
    """The object as the user applied it (CRD defaults are not spelled out)."""
    body = {"model": {"repository": "s3://models/triton", "version": version}, "replicas": 2}
    body.update(copy.deepcopy(spec))
    return {"apiVersion": "modeldeploy.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": NAME, "namespace": NAMESPACE, "uid": UID, "generation": generation,
                         "creationTimestamp": CREATED},
            "spec": body}


def fingerprint(version: str, **spec: Any) -> str:
    """The pod template fingerprint the operator renders for this spec (on the template and its pods)."""
    return pod_template_fingerprint(parse_model_deployment(model_deployment(version, **spec)))


def deployment(version: str, *, replicas: int = 2, updated: int | None = None, available: int | None = None,
               total: int | None = None, generation: int = 1, progressing: str = "NewReplicaSetAvailable",
               replica_set: str = "resnet50-7d9f", template: str | None = None) -> dict[str, Any]:
    """The Deployment as kube-controller-manager reports it (status fields omitted when 0, as it does)."""
    updated = replicas if updated is None else updated
    available = updated if available is None else available
    total = replicas if total is None else total
    minimum = available >= replicas  # maxUnavailable 0 (the default): every desired replica available
    progress = {
        "NewReplicaSetAvailable": ("True", f'ReplicaSet "{replica_set}" has successfully progressed.'),
        "ReplicaSetUpdated": ("True", f'ReplicaSet "{replica_set}" is progressing.'),
        "ProgressDeadlineExceeded": ("False", f'ReplicaSet "{replica_set}" has timed out progressing.'),
    }[progressing]
    status = {"observedGeneration": generation, "replicas": total, "updatedReplicas": updated,
              "readyReplicas": available, "availableReplicas": available,
              "unavailableReplicas": max(total - available, 0),
              "conditions": [
                  {"type": "Available", "status": "True" if minimum else "False",
                   "reason": "MinimumReplicasAvailable" if minimum else "MinimumReplicasUnavailable",
                   "message": "Deployment has minimum availability." if minimum
                   else "Deployment does not have minimum availability."},
                  {"type": "Progressing", "status": progress[0], "reason": progressing, "message": progress[1]}]}
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": NAME, "namespace": NAMESPACE, "generation": generation},
            "spec": {"replicas": replicas,
                     "template": {"metadata": {"labels": naming.object_labels(NAME, version), "annotations": {
                         naming.POD_TEMPLATE_ANNOTATION: template or fingerprint(version)}}}},
            "status": {k: v for k, v in status.items() if v != 0}}


def pod(name: str, version: str = "3", *, ready: bool = True, waiting: dict[str, Any] | None = None,
        last_exit: int | None = None, unschedulable: str | None = None, template: str | None = None,
        slot: str = "") -> dict[str, Any]:
    """A pod as the kubelet reports it: running Triton, or stuck (waiting / unschedulable)."""
    meta = {"name": name, "namespace": NAMESPACE, "uid": f"uid-{name}",
            "labels": {**naming.object_labels(NAME, version), **naming.slot_labels(slot)},
            "annotations": {naming.POD_TEMPLATE_ANNOTATION: template or fingerprint(version)}}
    if unschedulable is not None:
        status: dict[str, Any] = {"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": unschedulable}]}
        return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "status": status}
    container: dict[str, Any] = {"name": "triton", "image": IMAGE, "ready": ready,
                                 "restartCount": 0 if last_exit is None else 2,
                                 "started": waiting is None}
    if waiting is not None:
        container["state"] = {"waiting": waiting}
    else:
        container["state"] = {"running": {"startedAt": T0}}
        container["containerID"] = f"containerd://{name}"
    if last_exit is not None:
        container["lastState"] = {"terminated": {"exitCode": last_exit, "reason": "Error"}}
    pulled = not (waiting or {}).get("reason", "").endswith(("ImagePullBackOff", "ErrImagePull"))
    status = {"phase": "Running" if pulled else "Pending", "podIP": f"10.0.0.{sum(map(ord, name)) % 250 + 2}",
              "conditions": [{"type": "PodScheduled", "status": "True"},
                             {"type": "Ready", "status": "True" if ready else "False"}],
              "containerStatuses": [container]}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "status": status}


SIGNATURE = ModelSignature(name=MODEL, platform="onnxruntime_onnx", backend="onnxruntime", max_batch_size=8,
                           inputs=(TensorSpec("input", "FP32", (-1, 3, 224, 224)),),
                           outputs=(TensorSpec("output", "FP32", (-1, 1000)),))


def loaded() -> PodModelReport:
    """Triton: the version asked for is ready (and its metadata and config as read from Triton)."""
    return PodModelReport(reachable=True, live=True, server_ready=True, version_ready=True, reason="", message="",
                          signature=SIGNATURE)


def not_ready(version: str, state: str, reason: str = "") -> PodModelReport:
    """Triton: the version is not ready; reason and message as the probe derives them from the index row."""
    why, message = explain_not_ready(MODEL, version, (VersionState(MODEL, version, state, reason),))
    return PodModelReport(reachable=True, live=True, server_ready=False, version_ready=False, reason=why,
                          message=message)


def reports(pods: list[dict[str, Any]], answer: Callable[[dict[str, Any]], PodModelReport]) -> dict[str, Any]:
    return {p["metadata"]["uid"]: answer(p) for p in pods}


def derive(obj: dict[str, Any], observed: Observed, previous: Status, now: str) -> Status:
    return derive_status(parse_model_deployment(obj), observed, previous, now)


def serving(version: str = "3", n: int = 2, prefix: str = "resnet50-7d9f") -> list[dict[str, Any]]:
    return [pod(f"{prefix}-{chr(ord('a') + i)}", version) for i in range(n)]


def ready_world(version: str = "3", generation: int = 1) -> Observed:
    pods = serving(version)
    return Observed(deployment=deployment(version, generation=generation), pods=pods,
                    reports=reports(pods, lambda _: loaded()))


# The reconciler's words for what it found (operator/modeldeploy/reconciler.py).
SECRET_MISSING = Problem("SecretNotFound", f"spec.model.credentialsSecret: Secret {NAMESPACE}/s3-creds not found")
NO_SERVICE_MONITOR_KIND = Problem(
    "ServiceMonitorUnavailable",
    "monitoring.serviceMonitor is set but the ServiceMonitor kind (Prometheus Operator) is not installed", False)
LOAD_ERROR = ("Internal: RuntimeError: weights file missing: /models/resnet50/{v}/model.onnx\n\n"
              "At:\n  /opt/tritonserver/backends/onnxruntime/model.py(42): initialize")


# --- the scenarios -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    build: Callable[[], dict[str, Any]]  # the whole object, status included (or not)
    argocd: tuple[str, str]  # what deploy/argocd/health.lua must return: (status, message)
    kstatus: str
    source: str = "its status is what modeldeploy.status.derive_status gives for this world"


def _no_status() -> dict[str, Any]:
    return model_deployment()


def _ready() -> dict[str, Any]:
    obj = model_deployment()
    return {**obj, "status": derive(obj, ready_world(), {}, T0)}


def _terminating() -> dict[str, Any]:
    obj = _ready()
    meta = obj["metadata"]  # kubectl delete --cascade=foreground, as the API server records it
    meta.update(generation=meta["generation"] + 1, deletionTimestamp=DELETED, deletionGracePeriodSeconds=0,
                finalizers=["foregroundDeletion"])
    return obj


def _generation_not_observed() -> dict[str, Any]:
    obj = _ready()
    obj["metadata"]["generation"] = 2
    obj["spec"]["replicas"] = 3
    return obj


def _scaled_to_zero() -> dict[str, Any]:
    obj = model_deployment(replicas=0)
    return {**obj, "status": derive(obj, Observed(deployment=deployment("3", replicas=0)), {}, T0)}


def _model_not_probed_yet() -> dict[str, Any]:
    obj = model_deployment()
    return {**obj, "status": derive(obj, Observed(deployment=deployment("3"), pods=serving()), {}, T0)}


def _crash_loop() -> dict[str, Any]:
    obj = model_deployment()
    pods = [pod(f"resnet50-7d9f-{s}", ready=False, last_exit=1,
                waiting={"reason": "CrashLoopBackOff",
                         "message": f"back-off 2m40s restarting failed container=triton pod=resnet50-7d9f-{s}"})
            for s in "ab"]
    return {**obj, "status": derive(obj, Observed(deployment=deployment("3", available=0), pods=pods), {}, T0)}


def _image_pull_backoff() -> dict[str, Any]:
    obj = model_deployment(replicas=1)
    pulling = [pod("resnet50-7d9f-a", ready=False,
                   waiting={"reason": "ImagePullBackOff", "message": f'Back-off pulling image "{IMAGE}"'})]
    world = Observed(deployment=deployment("3", replicas=1, available=0), pods=pulling)
    return {**obj, "status": derive(obj, world, {}, T0)}


def _unschedulable() -> dict[str, Any]:
    obj = model_deployment(replicas=1, resources={"gpu": 8})
    gpus = fingerprint("3", resources={"gpu": 8})
    pending = [pod("resnet50-7d9f-a", unschedulable="0/2 nodes are available: 2 Insufficient nvidia.com/gpu.",
                   template=gpus)]
    world = Observed(deployment=deployment("3", replicas=1, available=0, template=gpus), pods=pending)
    return {**obj, "status": derive(obj, world, {}, T0)}


def _model_load_failed() -> dict[str, Any]:
    obj = model_deployment()
    pods = serving()  # the pods run (--exit-on-error=false); Triton says the load failed
    world = Observed(deployment=deployment("3"), pods=pods,
                     reports=reports(pods, lambda _: not_ready("3", "UNAVAILABLE", LOAD_ERROR.format(v=3))))
    return {**obj, "status": derive(obj, world, {}, T0)}


def _progress_deadline_exceeded() -> dict[str, Any]:
    obj = model_deployment()
    pods = [pod(f"resnet50-7d9f-{s}", ready=False) for s in "ab"]  # Triton up, the model still loading
    world = Observed(deployment=deployment("3", available=0, progressing="ProgressDeadlineExceeded"), pods=pods,
                     reports=reports(pods, lambda _: not_ready("3", "LOADING")))
    return {**obj, "status": derive(obj, world, {}, T0)}


def _secret_not_found() -> dict[str, Any]:
    obj = model_deployment()
    obj["spec"]["model"]["credentialsSecret"] = "s3-creds"
    return {**obj, "status": derive(obj, Observed(problem=SECRET_MISSING), {}, T0)}


def _invalid_spec() -> dict[str, Any]:
    obj = model_deployment(resources={"gpu": 1, "mig": "1g.10gb"})
    try:
        parse_model_deployment(obj)
    except InvalidSpec as error:  # what the reconciler does with it
        problem = Problem("InvalidSpec", "; ".join(error.problems))
    else:
        raise AssertionError("the invalid-spec scenario's spec is accepted by the operator")
    return {**obj, "status": invalid_status(obj["metadata"]["generation"], NAME, problem, {}, T0)}


def _degraded_while_serving() -> dict[str, Any]:
    obj = model_deployment(monitoring={"serviceMonitor": True})
    world = ready_world()
    world = Observed(deployment=world.deployment, pods=world.pods, reports=world.reports,
                     side_problems=[NO_SERVICE_MONITOR_KIND])
    return {**obj, "status": derive(obj, world, {}, T0)}


def _rolling_update() -> dict[str, Any]:
    """3 serves; the spec asks for 4; one new pod is up (maxSurge 1), two old ones still serve."""
    before = _ready()["status"]
    obj = model_deployment("4", generation=2)
    pods = [*serving("3"), pod("resnet50-5c8b-a", "4")]
    world = Observed(deployment=deployment("4", updated=1, available=3, total=3, generation=2,
                                           progressing="ReplicaSetUpdated", replica_set="resnet50-5c8b"),
                     pods=pods, reports=reports(pods, lambda _: loaded()))
    return {**obj, "status": derive(obj, world, before, T1)}


def _version_7_failing(template: str, *, updated: int, generation: int) -> Observed:
    """Two pods of 3 serve; the one pod of 7 runs, but Triton could not load 7 on it."""
    new = pod("resnet50-5c8b-a", "7", ready=False)
    answers = {**reports(serving("3"), lambda _: loaded()),
               **reports([new], lambda _: not_ready("7", "UNAVAILABLE", LOAD_ERROR.format(v=7)))}
    return Observed(deployment=deployment(template, updated=updated, available=2, total=3, generation=generation,
                                          progressing="ReplicaSetUpdated",
                                          replica_set="resnet50-5c8b" if template == "7" else "resnet50-7d9f"),
                    pods=[*serving("3"), new], reports=answers)


def _rolling_back() -> dict[str, Any]:
    """3 served; the spec asks for 7; the first pod of 7 cannot load it: the reconcile that sees it."""
    obj = model_deployment("7", generation=2)
    return {**obj, "status": derive(obj, _version_7_failing("7", updated=1, generation=2), _ready()["status"], T1)}


def _rolled_back() -> dict[str, Any]:
    """The next reconcile puts 3 back in the template; once the pod of 7 is gone, 3 serves on every pod."""
    obj = _rolling_back()
    back = derive(obj, _version_7_failing("3", updated=2, generation=3), obj["status"], T2)
    return {**obj, "status": derive(obj, ready_world("3", generation=3), back, T3)}


# Canary: 4 pods of 3 serve; the spec asks for 4 with these steps.
CANARY = {"strategy": "Canary", "canary": {"steps": [{"setWeight": 25}, {"analysis": {"intervalSeconds": 60}},
                                                     {"pause": {}}]}}


def _canary_ready() -> tuple[dict[str, Any], Status]:
    obj = model_deployment(replicas=4, rollout=CANARY)
    pods = serving("3", n=4)
    world = Observed(deployment=deployment("3", replicas=4), pods=pods, reports=reports(pods, lambda _: loaded()))
    return obj, derive(obj, world, {}, T0)


def _canary_world(canary_pods: int, *, verdict: Verdict | None = None, baseline_at: str | None = None,
                  previous: Status, now: str) -> tuple[dict[str, Any], Status]:
    """Version 4's canary: `canary_pods` of it Ready on the second Deployment, the rest of the 4 on version 3."""
    obj = model_deployment("4", generation=2, replicas=4, rollout=CANARY)
    md = parse_model_deployment(obj)
    stable = serving("3", n=4 - canary_pods)
    canary = [pod(f"resnet50-b-5c8b-{chr(ord('a') + i)}", "4", slot="b") for i in range(canary_pods)]
    second = deployment("4", replicas=canary_pods, replica_set="resnet50-b-5c8b")
    second["metadata"]["name"] = f"{NAME}{naming.SECOND_SLOT}"
    children = {"Deployment": deployment("3", replicas=4 - canary_pods, generation=2), "Deployment-b": second}
    answers = reports([*stable, *canary], lambda _: loaded())
    step = progressive.decide(md, previous, children, [*stable, *canary], answers, now, baseline_at=baseline_at,
                              verdict=verdict)
    world = Observed(deployment=children[step.serving_slot], pods=[*stable, *canary], reports=answers,
                     other_deployment=children[step.beside_slot])
    return obj, derive_status(md, world, previous, now, progressive.rollout_decision(step), step.decision)


def _canary_analysing() -> dict[str, Any]:
    """steps[0] is done (1 of 4 pods runs 4): steps[1]'s analysis has taken its baseline."""
    _, ready = _canary_ready()
    obj, status = _canary_world(1, previous=ready, now=T1)
    return {**obj, "status": status}


def _canary_analysis_failed() -> dict[str, Any]:
    """The analysis' verdict a minute later: version 4 failed 20% of its requests; version 3 serves everything."""
    obj = _canary_analysing()
    canary = SideStats(pods=1, successes=80, failures=20, request_duration_us=80 * 2000)
    stable = SideStats(pods=3, successes=300, request_duration_us=300 * 2000)
    started = obj["status"]["rollout"]["analysis"]["startedAt"]
    _, status = _canary_world(1, previous=obj["status"], now=T2, baseline_at=started,
                              verdict=verdict(canary, stable, Thresholds()))
    return {**obj, "status": status}


def _canary_paused() -> dict[str, Any]:
    """The analysis passed: steps[2] pauses until rollout.promote names the rollout."""
    obj = _canary_analysing()
    canary = SideStats(pods=1, successes=100, request_duration_us=100 * 2000)
    stable = SideStats(pods=3, successes=300, request_duration_us=300 * 2000)
    started = obj["status"]["rollout"]["analysis"]["startedAt"]
    _, status = _canary_world(1, previous=obj["status"], now=T2, baseline_at=started,
                              verdict=verdict(canary, stable, Thresholds()))
    return {**obj, "status": status}


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("no-status", "Just applied: the operator has not written any status yet. kstatus has nothing to compare "
             "and no conditions to read, so it calls the object Current.",
             _no_status, ("Progressing", "Waiting for the operator to observe generation 1"), "Current",
             source="no status at all: what the API server stores before the operator's first reconcile, "
                    "so nothing here comes from derive_status"),
    Scenario("ready", "Version 3 serves on 2/2 pods and Triton reports it loaded.",
             _ready, ("Healthy", "ModelServing: resnet50 version 3 serves on 2/2 pods"), "Current"),
    Scenario("terminating", "Being deleted (foreground): kstatus says Terminating. Argo CD itself reports "
             "'Pending deletion' for an object with a deletionTimestamp and runs no health script; the script "
             "alone sees the generation the deletion bumped.",
             _terminating, ("Progressing", "Waiting for the operator to observe generation 2"), "Terminating",
             source="the status is the ready scenario's (derive_status); the deletion is marked in metadata "
                    "by hand, as the API server does it (the operator writes no status for a deleting object)"),
    Scenario("generation-not-observed", "The spec changed (replicas 2 -> 3) and the operator has not reconciled "
             "it yet.",
             _generation_not_observed, ("Progressing", "Waiting for the operator to observe generation 2"),
             "InProgress",
             source="the status is the ready scenario's (derive_status) for generation 1; the spec and "
                    "generation then changed"),
    Scenario("scaled-to-zero", "spec.replicas is 0 and no autoscaler: scaled to zero on purpose.",
             _scaled_to_zero, ("Suspended", "Scaled to zero replicas"), "Current"),
    Scenario("model-not-probed-yet", "Pods are up but Triton has not been asked yet: not ready, nothing wrong.",
             _model_not_probed_yet,
             ("Progressing", "ModelStatusUnknown: pod resnet50-7d9f-a: not probed yet"), "InProgress"),
    Scenario("crash-loop", "Triton's container has crashed twice on start: below rollout.failAfterRestarts (3), "
             "it may clear by itself, so not Stalled.",
             _crash_loop,
             ("Degraded", "CrashLoopBackOff: pod resnet50-7d9f-a: container triton is in CrashLoopBackOff: "
                          "last exit code 1 (Error) (and 1 more pods)"), "InProgress"),
    Scenario("image-pull-backoff", "The Triton image cannot be pulled.",
             _image_pull_backoff,
             ("Degraded", "ImagePullBackOff: pod resnet50-7d9f-a: container triton is in ImagePullBackOff: "
                          'Back-off pulling image "nvcr.io/nvidia/tritonserver:24.08-py3"'), "InProgress"),
    Scenario("unschedulable", "No node has 8 GPUs: the pod stays Pending.",
             _unschedulable,
             ("Degraded", "Unschedulable: pod resnet50-7d9f-a: 0/2 nodes are available: "
                          "2 Insufficient nvidia.com/gpu."), "InProgress"),
    Scenario("model-load-failed", "Triton refuses to load the model on every pod.",
             _model_load_failed,
             ("Degraded", "ModelLoadFailed: pod resnet50-7d9f-a: resnet50 version 3: Internal: RuntimeError: "
                          "weights file missing: /models/resnet50/3/model.onnx (and 1 more pods)"), "Failed"),
    Scenario("progress-deadline-exceeded", "The Deployment's progress deadline passed while Triton was still "
             "loading the model.",
             _progress_deadline_exceeded,
             ("Degraded", 'ProgressDeadlineExceeded: ReplicaSet "resnet50-7d9f" has timed out progressing.'),
             "Failed"),
    Scenario("secret-not-found", "spec.model.credentialsSecret names a Secret that does not exist.",
             _secret_not_found,
             ("Degraded", "SecretNotFound: spec.model.credentialsSecret: Secret vision/s3-creds not found"),
             "Failed"),
    Scenario("invalid-spec", "A spec the operator cannot act on (gpu and mig both set; the CRD refuses it "
             "too, so the operator sees it only under an older CRD).",
             _invalid_spec,
             ("Degraded", "InvalidSpec: spec.resources: resources.gpu and resources.mig are mutually exclusive: "
                          "request whole GPUs or one MIG slice"), "Failed",
             source="its status is what modeldeploy.status.invalid_status gives for the operator's own "
                    "InvalidSpec problems"),
    Scenario("degraded-while-serving", "The model serves, but the requested ServiceMonitor cannot be created. "
             "kstatus: not Stalled (it may clear when the CRD is installed) and nothing left to reconcile, "
             "so Current.",
             _degraded_while_serving,
             ("Degraded", "ServiceMonitorUnavailable: monitoring.serviceMonitor is set but the ServiceMonitor kind "
                          "(Prometheus Operator) is not installed"), "Current"),
    Scenario("rolling-update", "Version rollout 3 -> 4 under way: 1 of 2 pods updated.",
             _rolling_update,
             ("Progressing", "RollingUpdate: rolling out version 4: 1 of 2 new replicas have been updated"),
             "InProgress",
             source="its status is what derive_status gives at 08:05 after the ready scenario's at 08:00"),
    Scenario("rolling-back", "Version 7 failed to load on its first pod; the operator rolls back to 3.",
             _rolling_back,
             ("Degraded", "RolledBack: version 7 failed and was rolled back to version 3: pod resnet50-5c8b-a: "
                          "resnet50 version 7: Internal: RuntimeError: weights file missing: "
                          "/models/resnet50/7/model.onnx"), "Failed",
             source="its status is what derive_status gives in two steps: 3 ready (08:00), then the first "
                    "pod of version 7 cannot load it (08:05)"),
    Scenario("canary-analysing", "Canary 3 -> 4: one of 4 pods runs 4 (weight 25%), and its analysis against "
             "version 3 is under way.",
             _canary_analysing, ("Progressing", "Canary: steps[1] (analysis): analysing until 2026-11-23T08:06:00Z"), "InProgress",
             source="its status is what derive_status gives with the step machine's decision (progressive.decide) "
                    "at 08:05 after the canary-ready world at 08:00"),
    Scenario("canary-paused", "Canary 3 -> 4: the analysis passed; the rollout waits at a pause for "
             "rollout.promote. Argo CD shows it Suspended, as it does a paused Argo Rollout.",
             _canary_paused, ("Suspended", "RolloutPaused: steps[2] (pause): paused at weight 25 until rollout.promote names this "
                                       "rollout ('4' or 'fdb579d87531cd69') with throughStep ≥ 2, or without one"), "InProgress",
             source="its status is what derive_status gives with the step machine's decisions in two steps: "
                    "the analysis' baseline (08:05), then its passing verdict (08:06)"),
    Scenario("canary-analysis-failed", "Canary 3 -> 4: version 4 failed 20% of its requests at the analysis and "
             "was aborted; version 3 serves everything until the spec changes.",
             _canary_analysis_failed, ("Degraded", "AnalysisFailed: the rollout of version 4 was aborted (AnalysisFailed); version 3 "
                          "serves everything: steps[1] (analysis): Fail: canary error ratio 20.00% (20/100) > max "
                          "1.00%. canary: 100 requests on 1 pod(s), 20 failed (20.00%), mean latency 2.00 ms, mean "
                          "queue 0.00 ms, max pending 0; stable: 300 requests on 3 pod(s), 0 failed (0.00%), mean "
                          "latency 2.00 ms, mean queue 0.00 ms, max pending 0."), "Failed",
             source="its status is what derive_status gives with the step machine's decisions in two steps: "
                    "the analysis' baseline (08:05), then its failing verdict (08:06)"),
    Scenario("rolled-back", "Version 7 failed; version 3 serves again and stays until the spec changes.",
             _rolled_back,
             ("Degraded", "RolledBack: version 7 failed and was rolled back to version 3: pod resnet50-5c8b-a: "
                          "resnet50 version 7: Internal: RuntimeError: weights file missing: "
                          "/models/resnet50/7/model.onnx"), "Failed",
             source="its status is what derive_status gives in four steps: the rolling-back scenario's two, "
                    "then 3 back in the template with the pod of 7 still there (08:06), then 3 ready on every "
                    "pod (08:08)"),
)


# --- output ------------------------------------------------------------------------------------

def _wrap(text: str, width: int = 104) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return [*lines, line] if line else lines


def render(scenario: Scenario) -> str:
    """The fixture file's text for one scenario."""
    header = [*_wrap(scenario.description), *_wrap(f"Generated by scripts/generate-gitops-fixtures.py: "
                                                    f"{scenario.source}. Do not edit; regenerate: {COMMAND}")]
    document = {"expect": {"argocd": {"status": scenario.argocd[0], "message": scenario.argocd[1]},
                           "kstatus": scenario.kstatus},
                "object": scenario.build()}
    body = yaml.safe_dump(document, sort_keys=False, width=120, allow_unicode=True)
    return "".join(f"# {line}\n" for line in header) + body


def generate() -> dict[str, str]:
    """Every fixture's file name and text."""
    names = [s.name for s in SCENARIOS]
    assert len(set(names)) == len(names), "scenario names must be unique"
    return {f"{s.name}.yaml": render(s) for s in SCENARIOS}


def drifted(directory: Path = FIXTURES) -> list[str]:
    """Fixture files that differ from what the scenarios give now, are missing, or are not made by a scenario."""
    wanted = generate()
    present = {p.name for p in directory.glob("*.yaml")}
    return sorted(name for name in wanted.keys() | present
                  if name not in wanted or name not in present or (directory / name).read_text() != wanted[name])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if any fixture drifted")
    args = parser.parse_args(argv)
    if args.check:
        stale = drifted()
        for name in stale:
            print(f"drifted: tests/fixtures/gitops/{name}", file=sys.stderr)
        if stale:
            print(f"regenerate with: {COMMAND}", file=sys.stderr)
        return 1 if stale else 0
    wanted = generate()
    FIXTURES.mkdir(parents=True, exist_ok=True)
    for stale in sorted({p.name for p in FIXTURES.glob("*.yaml")} - wanted.keys()):
        (FIXTURES / stale).unlink()
        print(f"removed tests/fixtures/gitops/{stale} (no scenario makes it)")
    for name, text in wanted.items():
        path = FIXTURES / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            print(f"wrote tests/fixtures/gitops/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
