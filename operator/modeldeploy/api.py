"""The ModelDeployment API: pydantic models that are the one source of truth.

The CRD (schema, defaults, descriptions, CEL rules) is generated from these classes by
`modeldeploy.crd`; `modeldeploy render` and the operator validate with the same classes.

Cross-field rules are declared once per class as `Rule(cel, message, holds)`: the CEL
expression goes into the CRD so the API server refuses bad specs at `kubectl apply`, and
`holds` is the same rule in Python for offline validation. Tests evaluate both on the same
specs, so they cannot drift apart.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from modeldeploy import API_VERSION, KIND
from modeldeploy.analysis import InconclusivePolicy, Thresholds

# --- shared constrained types --------------------------------------------------------------

# Kubernetes resource.Quantity, e.g. 2, "500m", "8Gi", "1e3".
QUANTITY_PATTERN = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
DNS_LABEL_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
MODEL_VERSION_PATTERN = r"^[1-9][0-9]*$"
MIG_PROFILE_PATTERN = r"^[1-7]g\.[0-9]+gb(\+me)?$"
SHA256_PATTERN = r"^[a-f0-9]{64}$"
LABEL_KEY_PATTERN = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"

# One regex per repository scheme; the CEL rule and the Python check use the same text.
REPOSITORY_PATTERN = (
    r"^((s3|gs|as)://[^/\s]+(/\S*)?"
    r"|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/\S*)?"
    r"|https?://[^/\s]+/\S+)$"
)


QUANTITY_SCHEMA = {"x-kubernetes-int-or-string": True, "pattern": QUANTITY_PATTERN}


def _quantity_field(description: str, **kwargs: Any) -> Any:
    return Field(description=description, json_schema_extra=dict(QUANTITY_SCHEMA), **kwargs)


Quantity = Annotated[int | str, Field(union_mode="left_to_right")]
IntOrPercent = Annotated[int | str, Field(union_mode="left_to_right")]


def parse_quantity(value: int | str) -> float:
    """Numeric value of a Kubernetes quantity (for comparisons, never for output)."""
    text = str(value).strip()
    if not re.fullmatch(QUANTITY_PATTERN, text):
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 2, 500m, 8Gi)")
    suffixes = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
                "n": 1e-9, "u": 1e-6, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}
    for suffix in ("Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u", "m", "k", "M", "G", "T", "P", "E"):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * suffixes[suffix]
    return float(text)


# --- rules --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Rule:
    """A cross-field rule: `cel` for the API server, `holds` for Python, one message for both."""

    cel: str
    message: str
    holds: Callable[[Any], bool]


def enforce(rules: tuple[Rule, ...], obj: Any) -> None:
    """Raise the first broken rule's message as a validation error."""
    for rule in rules:
        if not rule.holds(obj):
            raise PydanticCustomError("rule", rule.message)


class CamelModel(BaseModel):
    """camelCase on the wire."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    def wire(self) -> dict[str, Any]:
        """The object as it is written in YAML: camelCase, unset optional fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class ApiModel(CamelModel):
    """Base for every API object: unknown fields refused, cross-field rules checked."""

    model_config = ConfigDict(extra="forbid", validate_default=True)
    rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> ApiModel:
        enforce(type(self).rules, self)
        return self


# --- spec ----------------------------------------------------------------------------------

class ModelSource(ApiModel):
    """Which model Triton serves, and where it comes from."""

    name: str | None = Field(
        None, max_length=128, pattern=MODEL_NAME_PATTERN,
        description="Triton model name, as in the model repository. Defaults to metadata.name.")
    repository: str = Field(
        ..., min_length=1, max_length=2048,
        description=("Model repository URI. s3://bucket/path, gs://bucket/path and as://account/container/path "
                     "are read by Triton itself (credentials from credentialsSecret); pvc://<claim>/<path> mounts "
                     "a PersistentVolumeClaim read-only; https://host/repo.tar.gz is an archive fetched by an init "
                     "container and checked against sha256."))
    version: str = Field(
        ..., pattern=MODEL_VERSION_PATTERN, max_length=19,
        description=("The model version to serve (Triton version directory, a positive integer, as a string). "
                     "Changing it is a version rollout."))
    sha256: str | None = Field(
        None, pattern=SHA256_PATTERN,
        description="SHA-256 of the https archive (lower-case hex); required for http(s) repositories.")
    credentials_secret: str | None = Field(
        None, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN,
        description=("Secret in the same namespace whose keys become Triton's environment, for cloud storage: "
                     "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_DEFAULT_REGION, GOOGLE_APPLICATION_CREDENTIALS "
                     "contents, AZURE_STORAGE_ACCOUNT/AZURE_STORAGE_KEY."))

    rules = (
        Rule(cel=f"self.repository.matches(r'{REPOSITORY_PATTERN}')",
             message=("model.repository must be s3://bucket/path, gs://bucket/path, as://account/container/path, "
                      "pvc://<claim>/<path> or an http(s):// archive URL"),
             holds=lambda m: re.fullmatch(REPOSITORY_PATTERN, m.repository) is not None),
        Rule(cel="!self.repository.startsWith('http') || has(self.sha256)",
             message="model.sha256 is required when model.repository is an http(s) archive",
             holds=lambda m: not m.repository.startswith("http") or m.sha256 is not None),
        Rule(cel="!has(self.sha256) || self.repository.startsWith('http')",
             message="model.sha256 applies only to http(s) archive repositories",
             holds=lambda m: m.sha256 is None or m.repository.startswith("http")),
        Rule(cel="!has(self.credentialsSecret) || self.repository.matches('^(s3|gs|as)://')",
             message="model.credentialsSecret applies only to s3://, gs:// and as:// repositories",
             holds=lambda m: m.credentials_secret is None or m.repository.split("://")[0] in ("s3", "gs", "as")),
    )

    @property
    def scheme(self) -> str:
        return self.repository.split("://", 1)[0]


DEFAULT_TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.08-py3"


class TritonSpec(ApiModel):
    """How the Triton container runs."""

    image: str = Field(DEFAULT_TRITON_IMAGE, min_length=1, max_length=512,
                       description="Triton Inference Server image.")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        "IfNotPresent", description="Image pull policy of the Triton container.")
    args: list[Annotated[str, Field(max_length=1024)]] = Field(
        default_factory=list, max_length=64,
        description="Extra tritonserver flags, appended after the ones the operator sets (e.g. --log-verbose=1).")
    startup_timeout_seconds: int = Field(
        300, ge=10, le=7200,
        description=("How long Triton may take to load the model before the pod is restarted: the startup "
                     "probe's budget. Large models load slowly; raise it rather than fighting restarts."))


class ResourcesSpec(ApiModel):
    """Compute for each Triton pod."""

    gpu: int | None = Field(None, ge=1, le=16, description="Whole GPUs per pod (nvidia.com/gpu). Exclusive with mig.")
    mig: str | None = Field(
        None, pattern=MIG_PROFILE_PATTERN,
        description="A MIG slice per pod, by profile (1g.10gb → nvidia.com/mig-1g.10gb). Exclusive with gpu.")
    requests: dict[str, Quantity] = Field(
        default_factory=dict, max_length=32, description="Container requests, e.g. {cpu: '2', memory: 8Gi}.",
        json_schema_extra={"additionalProperties": dict(QUANTITY_SCHEMA)})
    limits: dict[str, Quantity] = Field(
        default_factory=dict, max_length=32, description="Container limits, e.g. {memory: 16Gi}.",
        json_schema_extra={"additionalProperties": dict(QUANTITY_SCHEMA)})
    shared_memory: Quantity = _quantity_field(
        "Size of /dev/shm (a memory-backed emptyDir). Triton's python backend and DALI need more than "
        "the container default of 64Mi.", default="1Gi")

    rules = (
        Rule(cel="!(has(self.gpu) && has(self.mig))",
             message="resources.gpu and resources.mig are mutually exclusive: request whole GPUs or one MIG slice",
             holds=lambda r: not (r.gpu is not None and r.mig is not None)),
        Rule(cel="!has(self.requests) || self.requests.all(k, !k.startsWith('nvidia.com/'))",
             message="resources.requests must not name nvidia.com/* resources: use resources.gpu or resources.mig",
             holds=lambda r: not any(k.startswith("nvidia.com/") for k in r.requests)),
        Rule(cel="!has(self.limits) || self.limits.all(k, !k.startsWith('nvidia.com/'))",
             message="resources.limits must not name nvidia.com/* resources: use resources.gpu or resources.mig",
             holds=lambda r: not any(k.startswith("nvidia.com/") for k in r.limits)),
    )

    @model_validator(mode="after")
    def _quantities(self) -> ResourcesSpec:
        for kind, values in (("requests", self.requests), ("limits", self.limits),
                             ("sharedMemory", {"": self.shared_memory})):
            for key, value in values.items():
                if re.fullmatch(QUANTITY_PATTERN, str(value)) is None:
                    where = f"resources.{kind}" + (f".{key}" if key else "")
                    raise PydanticCustomError(
                        "quantity", f"{where} = {value!r} is not a Kubernetes quantity (e.g. 2, 500m, 8Gi)")
        return self

    @property
    def gpu_resource(self) -> tuple[str, int] | None:
        if self.gpu is not None:
            return "nvidia.com/gpu", self.gpu
        if self.mig is not None:
            return f"nvidia.com/mig-{self.mig}", 1
        return None


class Toleration(ApiModel):
    """A core/v1 Toleration."""

    key: str | None = Field(None, max_length=316, description="Taint key; empty with operator Exists matches all.")
    operator: Literal["Exists", "Equal"] = Field("Equal", description="Exists or Equal.")
    value: str | None = Field(None, max_length=63, description="Taint value, for operator Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to match; empty matches all.")
    toleration_seconds: int | None = Field(None, description="For NoExecute: how long the pod stays bound.")


class PlacementSpec(ApiModel):
    """Where Triton pods may run."""

    gpu_product: str | None = Field(
        None, max_length=63,
        description="GPU model to run on, as GPU feature discovery labels it (nodeSelector nvidia.com/gpu.product).")
    node_selector: dict[str, str] = Field(default_factory=dict, max_length=32, description="Extra nodeSelector labels.")
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=32,
        description="Extra tolerations. One for the nvidia.com/gpu taint is added when GPUs are requested.")
    affinity: dict[str, Any] = Field(
        default_factory=dict, description="A core/v1 Affinity, passed through.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})
    runtime_class_name: str | None = Field(
        None, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN,
        description="RuntimeClass for the pods, e.g. nvidia where the NVIDIA runtime is not the default.")
    priority_class_name: str | None = Field(None, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN,
                                            description="PriorityClass for the pods.")



class AutoscalingSpec(ApiModel):
    """A HorizontalPodAutoscaler (autoscaling/v2) that owns the replica count while present."""

    min_replicas: int = Field(1, ge=1, le=1000, description="Fewest replicas.")
    max_replicas: int = Field(..., ge=1, le=1000, description="Most replicas.")
    target_cpu_utilization: int | None = Field(
        None, ge=1, le=1000, alias="targetCPUUtilization",
        description="Average CPU utilization target, percent of resources.requests.cpu (which must be set).")
    target_queue_time_microseconds: int | None = Field(
        None, ge=1,
        description=("Average per-pod Triton queue time target (Pods metric nv_inference_queue_duration_us, "
                     "served to the HPA by a metrics adapter such as prometheus-adapter)."))
    metrics: list[dict[str, Any]] = Field(
        default_factory=list, max_length=16,
        description="Raw autoscaling/v2 MetricSpec entries, passed through.",
        json_schema_extra={"items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}})
    behavior: dict[str, Any] = Field(
        default_factory=dict, description="autoscaling/v2 HorizontalPodAutoscalerBehavior, passed through.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})

    rules = (
        Rule(cel="self.minReplicas <= self.maxReplicas",
             message="autoscaling.minReplicas must not exceed autoscaling.maxReplicas",
             holds=lambda a: a.min_replicas <= a.max_replicas),
        Rule(cel=("has(self.targetCPUUtilization) || has(self.targetQueueTimeMicroseconds) || "
                  "(has(self.metrics) && size(self.metrics) > 0)"),
             message="autoscaling needs a target: targetCPUUtilization, targetQueueTimeMicroseconds or metrics",
             holds=lambda a: bool(a.target_cpu_utilization or a.target_queue_time_microseconds or a.metrics)),
    )


# Rollouts are named by their model version, or by their pod template's fingerprint (16 hex digits,
# status.rollout.targetTemplate) for a change that keeps the version (an image change).
ROLLOUT_TARGET_PATTERN = r"^([1-9][0-9]{0,18}|[0-9a-f]{16})$"

_THRESHOLDS = Thresholds()  # analysis.py's documented defaults: the API's defaults are the same numbers


class PauseStep(ApiModel):
    """Hold the current weight: for a while, or until rollout.promote releases it."""

    duration_seconds: int | None = Field(
        None, ge=0, le=604800,
        description="How long to hold the current weight. Absent: until rollout.promote names this rollout.")


class AnalysisStep(ApiModel):
    """Compare the canary's pods with the stable pods over one interval (thresholds: rollout.analysis)."""

    interval_seconds: int | None = Field(
        None, ge=10, le=86400,
        description="How long to measure before the verdict; absent: rollout.analysis.intervalSeconds.")


class CanaryStep(ApiModel):
    """One step: exactly one of setWeight, pause and analysis."""

    set_weight: int | None = Field(
        None, ge=1, le=100,
        description=("Percent of traffic for the new version from this step on. Without trafficRouting it is "
                     "reached by replica ratio (total pods constant, within one pod of the weight)."))
    pause: PauseStep | None = Field(None, description="Hold the current weight.")
    analysis: AnalysisStep | None = Field(
        None, description="Analyse the canary against the stable version; a failed analysis aborts the canary.")

    rules = (
        Rule(cel="(has(self.setWeight) ? 1 : 0) + (has(self.pause) ? 1 : 0) + (has(self.analysis) ? 1 : 0) == 1",
             message="rollout.canary.steps: each step needs exactly one of setWeight, pause and analysis",
             holds=lambda s: [s.set_weight is not None, s.pause is not None, s.analysis is not None].count(True) == 1),
    )


MAX_CANARY_STEPS = 20

_WEIGHTS_CEL = "self.steps.filter(s, has(s.setWeight)).map(s, s.setWeight)"


def _strictly_rising_cel() -> str:
    # Standard CEL has no index iteration; maxItems bounds the list, so the pairs are spelled out.
    pairs = [f"(size({_WEIGHTS_CEL}) <= {i + 1} || {_WEIGHTS_CEL}[{i}] < {_WEIGHTS_CEL}[{i + 1}])"
             for i in range(MAX_CANARY_STEPS - 1)]
    return " && ".join(pairs)


class GatewayAPIRouting(ApiModel):
    """A Gateway API HTTPRoute whose backendRefs the operator weights between the stable and the canary Service."""

    http_route: str = Field(..., max_length=253, pattern=DNS_SUBDOMAIN_PATTERN,
                            description="Name of the HTTPRoute.")
    namespace: str | None = Field(
        None, max_length=63, pattern=DNS_LABEL_PATTERN,
        description=("Namespace of the HTTPRoute; default the ModelDeployment's. Elsewhere, a ReferenceGrant "
                     "must let it refer to this namespace's Services."))


class TrafficRouting(ApiModel):
    """How traffic is split. Absent: by replica ratio, behind the one Service."""

    gateway_api: GatewayAPIRouting | None = Field(
        None, alias="gatewayAPI",
        description=("Split by HTTPRoute weights: the stable version stays at full size throughout, the canary is "
                     "sized to its weight and gets traffic only once its pods are Ready."))

    rules = (
        Rule(cel="has(self.gatewayAPI)",
             message="rollout.canary.trafficRouting needs gatewayAPI (leave trafficRouting out to split by replicas)",
             holds=lambda t: t.gateway_api is not None),
    )


class CanarySpec(ApiModel):
    """A canary: the new version runs beside the stable one and takes traffic step by step."""

    steps: list[CanaryStep] = Field(
        ..., min_length=1, max_length=MAX_CANARY_STEPS,
        description=("The steps, in order: setWeight (weights strictly rising, the first step one), pause, "
                     "analysis. Once every step is done the new version is promoted."))
    traffic_routing: TrafficRouting | None = Field(
        None, description="Absent: the weight is reached by replica ratio behind the one Service.")

    rules = (
        Rule(cel="size(self.steps) > 0 && has(self.steps[0].setWeight)",
             message="rollout.canary.steps must start with a setWeight step (there is no canary to pause on or "
                     "analyse before it)",
             holds=lambda c: bool(c.steps) and c.steps[0].set_weight is not None),
        Rule(cel=_strictly_rising_cel(),
             message="rollout.canary.steps setWeight values must be strictly rising",
             holds=lambda c: all(a < b for a, b in zip(c.weights, c.weights[1:]))),
    )

    @property
    def weights(self) -> list[int]:
        return [s.set_weight for s in self.steps if s.set_weight is not None]

    @property
    def gateway_api(self) -> GatewayAPIRouting | None:
        return self.traffic_routing.gateway_api if self.traffic_routing is not None else None


class BlueGreenSpec(ApiModel):
    """Blue-green: the new version comes up in full behind a preview Service; promotion switches the active
    Service's selector to it."""

    auto_promote: bool = Field(
        True, description=("Switch as soon as the preview is Ready on every pod (and its analysis passed). False: "
                           "wait for rollout.promote."))
    analysis: AnalysisStep | None = Field(
        None, description=("Analyse the preview's pods against the active ones before switching. The preview "
                           "Service gets no production traffic: send it some (a smoke or load test), or the "
                           "analysis stays inconclusive."))
    scale_down_delay_seconds: int = Field(
        30, ge=0, le=86400,
        description=("How long the old version keeps its pods after the switch, so connections drain and an "
                     "abort can switch back at once."))


class AnalysisSpec(ApiModel):
    """When a canary (or a preview) passes: its pods' Triton metrics against the stable pods' over an interval.
    The defaults are the analysis's own (docs/triton-flags.md, "Metrics the analysis reads")."""

    interval_seconds: int = Field(60, ge=10, le=86400, description="How long each analysis measures.")
    inconclusive_timeout_seconds: int = Field(
        600, ge=10, le=86400,
        description=("With inconclusive: wait, how long an analysis step may stay inconclusive (too little traffic) "
                     "before the canary is aborted."))
    max_error_ratio: float = Field(
        _THRESHOLDS.max_error_ratio, ge=0, le=1,
        description="Canary failures / requests above which it fails, whatever the stable version does.")
    error_ratio_factor: float = Field(
        _THRESHOLDS.error_ratio_factor, ge=0, le=1000,
        description="The canary fails above the stable error ratio × this + errorRatioMargin.")
    error_ratio_margin: float = Field(
        _THRESHOLDS.error_ratio_margin, ge=0, le=1,
        description="Added to the stable error ratio × errorRatioFactor (a fraction: 0.005 is 0.5 points).")
    latency_factor: float = Field(
        _THRESHOLDS.latency_factor, ge=0, le=1000,
        description="The canary fails above the stable mean latency × this + latencyMarginMs.")
    latency_margin_ms: float = Field(_THRESHOLDS.latency_margin_ms, ge=0, le=3600000,
                                     description="Added to the stable mean latency × latencyFactor.")
    queue_factor: float = Field(
        _THRESHOLDS.queue_factor, ge=0, le=1000,
        description="The canary fails above the stable mean queue time × this + queueMarginMs.")
    queue_margin_ms: float = Field(_THRESHOLDS.queue_margin_ms, ge=0, le=3600000,
                                   description="Added to the stable mean queue time × queueFactor.")
    max_pending: float | None = Field(
        _THRESHOLDS.max_pending, ge=0,
        description="Most pending requests on a canary pod; absent: not judged.")
    min_requests: int = Field(
        _THRESHOLDS.min_requests, ge=1, le=1000000,
        description="Fewer canary requests in the interval is inconclusive.")
    min_stable_requests: int = Field(
        _THRESHOLDS.min_stable_requests, ge=0, le=1000000,
        description="Fewer stable requests is inconclusive (no baseline for the relative rules).")
    inconclusive: InconclusivePolicy = Field(
        _THRESHOLDS.inconclusive,
        description=("What an inconclusive analysis becomes: wait (measure again, up to "
                     "inconclusiveTimeoutSeconds), pass or fail."))

    def thresholds(self) -> Thresholds:
        return Thresholds(
            max_error_ratio=self.max_error_ratio, error_ratio_factor=self.error_ratio_factor,
            error_ratio_margin=self.error_ratio_margin, latency_factor=self.latency_factor,
            latency_margin_ms=self.latency_margin_ms, queue_factor=self.queue_factor,
            queue_margin_ms=self.queue_margin_ms, max_pending=self.max_pending, min_requests=self.min_requests,
            min_stable_requests=self.min_stable_requests, inconclusive=self.inconclusive)


class PromoteSpec(ApiModel):
    """Promote a Canary or BlueGreen rollout through the spec (GitOps): it acts only on the rollout it names, so
    one left in the spec never promotes the next rollout."""

    target: str = Field(
        ..., pattern=ROLLOUT_TARGET_PATTERN,
        description=("The rollout this is for: the model version it rolls out, or, for a change that keeps the "
                     "version (an image change), its pod template fingerprint (status.rollout.targetTemplate)."))
    through_step: int | None = Field(
        None, ge=0, le=MAX_CANARY_STEPS - 1,
        description=("Canary only: release the pauses up to and including this step index, and run the steps as "
                     "usual. Absent: promote at once, skipping every remaining step."))


class AbortSpec(ApiModel):
    """Abort a Canary or BlueGreen rollout through the spec: the stable version serves everything while this
    names the rollout; removing it starts the rollout again from its first step."""

    target: str = Field(
        ..., pattern=ROLLOUT_TARGET_PATTERN,
        description=("The rollout to abort: its model version or its pod template fingerprint "
                     "(status.rollout.targetTemplate)."))


class RolloutSpec(ApiModel):
    """How a change of model version or image reaches the pods."""

    strategy: Literal["RollingUpdate", "Canary", "BlueGreen"] = Field(
        "RollingUpdate",
        description=("RollingUpdate replaces pods a few at a time, never dropping below the desired count. Canary "
                     "runs the new version beside the stable one and moves traffic in steps (rollout.canary). "
                     "BlueGreen brings the new version up in full behind a preview Service and switches to it "
                     "(rollout.blueGreen); both run two Deployments, and neither is served with autoscaling yet."))
    max_surge: IntOrPercent = Field(
        1, description=("Extra pods during a rolling update (needs spare GPUs); for Canary, also how far above the "
                        "desired count a step may go while it moves pods."),
        json_schema_extra={"x-kubernetes-int-or-string": True})
    max_unavailable: IntOrPercent = Field(
        0, description=("Pods that may be unavailable during a rolling update; for Canary, also while a step moves "
                        "pods."),
        json_schema_extra={"x-kubernetes-int-or-string": True})
    progress_deadline_seconds: int = Field(
        600, ge=30, le=86400,
        description=("A rollout that makes no progress for this long has failed (ProgressDeadlineExceeded); a "
                     "canary step or a preview that is not Ready this long after it began is aborted."))
    auto_rollback: bool = Field(
        True, description=("Roll back to the last pod template that served (its version, image, args and "
                           "resources) when a rollout fails; for Canary and BlueGreen, abort (the stable version "
                           "serves everything). False: a failed rollout stays where it stopped (Failed)."))
    fail_after_restarts: int = Field(
        3, ge=1, le=1000,
        description="A new pod template fails once a container of one of its pods has restarted this many times.")
    fail_after_unhealthy_seconds: int = Field(
        120, ge=0, le=86400,
        description=("A new pod template fails once one of its pods has stayed in CrashLoopBackOff, "
                     "ImagePullBackOff, CreateContainerConfigError or CreateContainerError this long."))
    canary: CanarySpec | None = Field(None, description="The canary's steps; required with strategy Canary.")
    blue_green: BlueGreenSpec | None = Field(None, description="Blue-green settings; only with strategy BlueGreen.")
    analysis: AnalysisSpec | None = Field(
        None, description="Thresholds of the canary's and the preview's analysis; absent: the defaults.")
    promote: PromoteSpec | None = Field(None, description="Manual promotion of a Canary or BlueGreen rollout.")
    abort: AbortSpec | None = Field(None, description="Manual abort of a Canary or BlueGreen rollout.")

    rules = (
        Rule(cel="!(string(self.maxSurge) in ['0', '0%'] && string(self.maxUnavailable) in ['0', '0%'])",
             message="rollout.maxSurge and rollout.maxUnavailable must not both be 0",
             holds=lambda r: not (str(r.max_surge) in ("0", "0%") and str(r.max_unavailable) in ("0", "0%"))),
        Rule(cel="self.strategy != 'Canary' || has(self.canary)",
             message="rollout.canary (its steps) is required when rollout.strategy is Canary",
             holds=lambda r: r.strategy != "Canary" or r.canary is not None),
        Rule(cel="!has(self.canary) || self.strategy == 'Canary'",
             message="rollout.canary applies only when rollout.strategy is Canary",
             holds=lambda r: r.canary is None or r.strategy == "Canary"),
        Rule(cel="!has(self.blueGreen) || self.strategy == 'BlueGreen'",
             message="rollout.blueGreen applies only when rollout.strategy is BlueGreen",
             holds=lambda r: r.blue_green is None or r.strategy == "BlueGreen"),
        Rule(cel="self.strategy != 'RollingUpdate' || !(has(self.analysis) || has(self.promote) || has(self.abort))",
             message="rollout.analysis, rollout.promote and rollout.abort apply only to strategy Canary or BlueGreen",
             holds=lambda r: r.strategy != "RollingUpdate" or (r.analysis is None and r.promote is None
                                                                and r.abort is None)),
        Rule(cel=("!has(self.promote) || !has(self.promote.throughStep) || "
                  "(has(self.canary) && self.promote.throughStep < size(self.canary.steps))"),
             message="rollout.promote.throughStep must be the index of one of rollout.canary.steps (Canary only)",
             holds=lambda r: (r.promote is None or r.promote.through_step is None
                              or (r.canary is not None and r.promote.through_step < len(r.canary.steps)))),
        Rule(cel="!has(self.promote) || !has(self.abort) || self.promote.target != self.abort.target",
             message="rollout.promote and rollout.abort must not name the same rollout",
             holds=lambda r: r.promote is None or r.abort is None or r.promote.target != r.abort.target),
    )

    @property
    def analysis_or_default(self) -> AnalysisSpec:
        return self.analysis if self.analysis is not None else AnalysisSpec()


class ServiceSpec(ApiModel):
    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = Field("ClusterIP", description="Service type.")
    annotations: dict[str, str] = Field(default_factory=dict, max_length=64, description="Service annotations.")


class DisruptionBudgetSpec(ApiModel):
    """A PodDisruptionBudget (policy/v1); give exactly one of the two."""

    max_unavailable: IntOrPercent | None = Field(
        None, description="Pods that may be evicted at once (number or percent).",
        json_schema_extra={"x-kubernetes-int-or-string": True})
    min_available: IntOrPercent | None = Field(
        None, description="Pods that must stay (number or percent).",
        json_schema_extra={"x-kubernetes-int-or-string": True})

    rules = (
        Rule(cel="has(self.maxUnavailable) != has(self.minAvailable)",
             message="disruptionBudget needs exactly one of maxUnavailable and minAvailable",
             holds=lambda d: (d.max_unavailable is None) != (d.min_available is None)),
    )


class MonitoringSpec(ApiModel):
    service_monitor: bool = Field(
        False, description="Create a Prometheus Operator ServiceMonitor for Triton's metrics port.")
    interval: str = Field("30s", pattern=r"^[0-9]+(ms|s|m|h)$", description="Scrape interval.")


# Canary and BlueGreen are served, but not yet with an HPA deciding the total (it would scale only one of the two
# Deployments): refused rather than run as something else.
AUTOSCALING_NOT_WITH_PROGRESSIVE = Rule(
    cel="!has(self.autoscaling) || !has(self.rollout) || !has(self.rollout.strategy) || "
        "self.rollout.strategy == 'RollingUpdate'",
    message=("autoscaling with rollout.strategy Canary or BlueGreen is not served yet (the HPA would scale only one "
             "of the two Deployments); use spec.replicas, or RollingUpdate with autoscaling"),
    holds=lambda s: s.autoscaling is None or s.rollout.strategy == "RollingUpdate")


class ModelDeploymentSpec(ApiModel):
    """What to serve and how."""

    model: ModelSource = Field(..., description="The model to serve.")
    triton: TritonSpec = Field(default_factory=TritonSpec, description="The Triton server.")
    replicas: int = Field(
        1, ge=0, le=1000,
        description="Desired pods (the scale subresource's spec path). Ignored while autoscaling owns replicas.")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="Compute per pod.")
    placement: PlacementSpec = Field(default_factory=PlacementSpec, description="Scheduling.")
    autoscaling: AutoscalingSpec | None = Field(None, description="Absent: no HPA; spec.replicas decides.")
    rollout: RolloutSpec = Field(default_factory=RolloutSpec, description="Version rollout policy.")
    service: ServiceSpec = Field(default_factory=ServiceSpec, description="The Service in front of Triton.")
    disruption_budget: DisruptionBudgetSpec | None = Field(None, description="Absent: no PodDisruptionBudget.")
    monitoring: MonitoringSpec = Field(default_factory=MonitoringSpec, description="Prometheus integration.")

    rules = (
        AUTOSCALING_NOT_WITH_PROGRESSIVE,
        Rule(cel=("!has(self.autoscaling) || !has(self.autoscaling.targetCPUUtilization) || "
                  "(has(self.resources) && has(self.resources.requests) && 'cpu' in self.resources.requests)"),
             message="autoscaling.targetCPUUtilization needs resources.requests.cpu (utilization is a share of it)",
             holds=lambda s: (s.autoscaling is None or s.autoscaling.target_cpu_utilization is None
                              or "cpu" in s.resources.requests)),
    )


class ObjectMeta(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(..., min_length=1)
    namespace: str = "default"
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class ModelDeployment(BaseModel):
    """A whole ModelDeployment object, as read from YAML or from the API server."""

    model_config = ConfigDict(extra="ignore")
    api_version: Literal["modeldeploy.dev/v1alpha1"] = Field(API_VERSION, alias="apiVersion")
    kind: Literal["ModelDeployment"] = KIND
    metadata: ObjectMeta
    spec: ModelDeploymentSpec
    status: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check_root_rules(self) -> ModelDeployment:
        enforce(ROOT_RULES, self)
        return self

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace

    @property
    def model_name(self) -> str:
        return self.spec.model.name or self.metadata.name

    def with_model_version(self, version: str) -> ModelDeployment:
        """The same object serving another version (what a rollback renders)."""
        if version == self.spec.model.version:
            return self
        model = self.spec.model.model_copy(update={"version": version})
        return self.model_copy(update={"spec": self.spec.model_copy(update={"model": model})})


# Rules on the whole object: the CRD's root schema sees metadata.name.
ROOT_RULES = (
    Rule(cel=f"self.metadata.name.matches(r'{DNS_LABEL_PATTERN}') && size(self.metadata.name) <= 63",
         message=("metadata.name must be a DNS label (lower-case letters, digits and '-', starting with a letter, "
                  "at most 63 characters): it names the Service"),
         holds=lambda md: re.fullmatch(DNS_LABEL_PATTERN, md.metadata.name) is not None and len(md.metadata.name) <= 63),
    Rule(cel=("!has(self.spec.rollout) || !has(self.spec.rollout.strategy) || self.spec.rollout.strategy == "
              f"'RollingUpdate' || size(self.metadata.name) <= {63 - len('-preview')}"),
         message=(f"metadata.name must be at most {63 - len('-preview')} characters with rollout.strategy Canary or "
                  "BlueGreen: it also names the second Deployment and the preview Service (<name>-b, <name>-preview)"),
         holds=lambda md: md.spec.rollout.strategy == "RollingUpdate" or len(md.metadata.name) <= 63 - len("-preview")),
)


# --- status --------------------------------------------------------------------------------

class StatusModel(CamelModel):
    """Status objects, written by the operator only."""

    model_config = ConfigDict(extra="ignore")


# Reconciling and Stalled are kstatus's conditions, so Flux (and kpt, cli-utils) read us right.
CONDITION_TYPES = ("Ready", "Available", "ModelReady", "Progressing", "Degraded", "Reconciling", "Stalled")


class Condition(StatusModel):
    """A metav1.Condition."""

    type: str = Field(..., max_length=316,
                      description="Ready, Available, ModelReady, Progressing, Degraded, Reconciling or Stalled.")
    status: Literal["True", "False", "Unknown"] = Field(..., description="True, False or Unknown.")
    reason: str = Field(..., max_length=1024, description="CamelCase reason for the last change.")
    message: str = Field("", max_length=32768, description="Human-readable detail.")
    last_transition_time: str = Field(..., description="When status last changed (RFC 3339).",
                                      json_schema_extra={"format": "date-time"})
    observed_generation: int | None = Field(None, description="metadata.generation this condition describes.")


class AnalysisSideStatus(StatusModel):
    """What one side (the canary's pods, or the stable pods) did over an analysis' interval."""

    pods: int = Field(0, description="Pods measured.")
    requests: float = Field(0, description="Requests that succeeded or failed (cancelled ones left out).")
    failures: float = Field(0, description="Failed requests (cancelled ones left out).")
    error_ratio: float | None = Field(None, description="failures / requests; absent without requests.")
    mean_latency_ms: float | None = Field(None, description="Mean duration of a successful request, ms.")
    mean_queue_ms: float | None = Field(None, description="Mean queue time of a successful request, ms.")


class AnalysisStatus(StatusModel):
    """The analysis of a canary step (or of a blue-green preview): the one running, and its last verdict."""

    step: int = Field(0, description="The step it belongs to (rollout.canary.steps index; 0 for BlueGreen).")
    started_at: str | None = Field(None, description="When the baseline was scraped (the interval's start).",
                                   json_schema_extra={"format": "date-time"})
    checked_at: str | None = Field(None, description="When the last verdict was taken.",
                                   json_schema_extra={"format": "date-time"})
    verdict: Literal["Pass", "Fail", "Inconclusive"] | None = Field(None, description="Pass, Fail or Inconclusive.")
    message: str | None = Field(None, description="The verdict, with every number it rests on.")
    canary: AnalysisSideStatus | None = Field(None, description="The canary's (or preview's) pods.")
    stable: AnalysisSideStatus | None = Field(None, description="The stable pods.")


class RolloutStatus(StatusModel):
    phase: Literal["Idle", "Progressing", "Paused", "Failed", "RolledBack", "Aborted"] = Field(
        "Idle", description=("Idle, Progressing (a rolling update, canary or blue-green rollout is under way), Paused "
                             "(a canary or preview waits for rollout.promote), Failed, RolledBack, or Aborted (a "
                             "canary or preview was stopped: the stable version serves everything)."))
    updated_replicas: int = Field(0, description="Pods running the target pod template.")
    desired_replicas: int = Field(0, description="Pods the rollout aims for.")
    target_template: str = Field("", description="Fingerprint of the pod template the spec asks for (on each "
                                 "pod as the modeldeploy.dev/pod-template annotation).")
    stable_template: str = Field("", description="Fingerprint of the last pod template that served on every pod "
                                 "with Triton reporting its version ready: what a rollback restores.")
    stable_version: str = Field("", description="The model version of stableTemplate.")
    stable_spec: dict[str, Any] | None = Field(
        None, description="spec.model, triton, resources and placement of stableTemplate, as they were.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})
    failed_version: str = Field("", description="The model version of a pod template whose rollout failed (and "
                                "was rolled back, if enabled).")
    failure_message: str = Field("", description="Why failedTemplate failed: Triton's error, the crash, or the "
                                 "progress deadline.")
    failed_template: str = Field("", description="Fingerprint of the pod template that failed. The failed state "
                                 "holds until the spec changes what the pods run; scaling or a metadata edit "
                                 "does not retry it.")
    unhealthy_since: str | None = Field(None, description="Since when a pod of targetTemplate has been waiting "
                                        "in CrashLoopBackOff, ImagePullBackOff or a container config error.",
                                        json_schema_extra={"format": "date-time"})
    message: str = Field("", description="What the rollout is doing or why it stopped.")
    # Canary and BlueGreen only (absent for RollingUpdate): the step machine's memory, see canary.py.
    canary_template: str | None = Field(None, description="Fingerprint of the pod template the canary (or preview) "
                                        "runs: the target's, which the step fields below belong to.")
    canary_version: str | None = Field(None, description="The model version of canaryTemplate.")
    step: int | None = Field(None, description=("Canary: index of the current step in rollout.canary.steps (their "
                                                "number once every step is done and the canary is being promoted). "
                                                "BlueGreen: 0 until the switch, 1 after it."))
    step_started_at: str | None = Field(None, description="When the current step began.",
                                        json_schema_extra={"format": "date-time"})
    weight: int | None = Field(None, description=("Percent of traffic the canary has (BlueGreen: 0 before the "
                                                  "switch, 100 after)."))
    abort_reason: str | None = Field(None, description=("Why the canary or preview was aborted: AnalysisFailed, "
                                                         "AnalysisInconclusive, CanaryFailed, ProgressDeadlineExceeded "
                                                         "or AbortedBySpec."))
    analysis: AnalysisStatus | None = Field(None, description="The current or last analysis.")


class VersionStatus(StatusModel):
    version: str = Field(..., description="Model version.")
    replicas: int = Field(0, description="Pods of this version.")
    ready_replicas: int = Field(0, description="Pods of this version that Kubernetes reports Ready.")
    model_ready: int = Field(0, description="Pods on which Triton reports this version loaded and ready.")


class Endpoints(StatusModel):
    http: str = Field("", description="In-cluster HTTP/REST endpoint (KServe v2 protocol).")
    grpc: str = Field("", description="In-cluster gRPC endpoint.")
    metrics: str = Field("", description="Triton's Prometheus metrics URL.")


class TensorStatus(StatusModel):
    name: str = Field(..., description="Tensor name.")
    datatype: str = Field(..., description="Triton datatype, e.g. FP32.")
    shape: list[int] = Field(default_factory=list, description="Shape; -1 is a variable dimension.")


class ServedModelStatus(StatusModel):
    name: str = Field("", description="Triton model name.")
    platform: str = Field("", description="Platform as Triton reports it (e.g. onnxruntime_onnx).")
    backend: str = Field("", description="Backend as Triton reports it (e.g. onnxruntime, python).")
    max_batch_size: int = Field(0, description="Max batch size from the model configuration (0: no batching).")
    inputs: list[TensorStatus] = Field(default_factory=list, description="Inputs.")
    outputs: list[TensorStatus] = Field(default_factory=list, description="Outputs.")


class ModelDeploymentStatus(StatusModel):
    """What the operator observed; every field is derived, nothing is remembered but the rollout history."""

    observed_generation: int | None = Field(None, description="metadata.generation that this status describes.")
    conditions: list[Condition] = Field(
        default_factory=list, description="Ready, Available, ModelReady, Progressing, Degraded, Reconciling, Stalled.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]})
    replicas: int = Field(0, description="Pods that exist (the scale subresource's status path).")
    ready_replicas: int = Field(0, description="Pods Kubernetes reports Ready.")
    updated_replicas: int = Field(0, description="Pods running the current pod template.")
    available_replicas: int = Field(0, description="Pods Ready for at least minReadySeconds.")
    replica_summary: str = Field("", description="ready/desired, for `kubectl get`.")
    selector: str = Field("", description="Label selector of the pods (for the scale subresource and the HPA).")
    current_version: str = Field("", description="The model version that serves now on every pod.")
    target_version: str = Field("", description="The model version spec asks for.")
    rollout: RolloutStatus = Field(default_factory=RolloutStatus, description="Version rollout progress.")
    versions: list[VersionStatus] = Field(default_factory=list, description="Pods per model version.")
    endpoints: Endpoints = Field(default_factory=Endpoints, description="Where clients reach the model.")
    model: ServedModelStatus | None = Field(None, description="The served model, as Triton reports it.")
