"""Names and labels of everything the operator creates: the one place they are decided."""

from __future__ import annotations

from modeldeploy import API_VERSION, FIELD_MANAGER, GROUP, KIND

APP_NAME = "triton"
COMPONENT = "inference-server"

NAME = "app.kubernetes.io/name"
INSTANCE = "app.kubernetes.io/instance"
COMPONENT_LABEL = "app.kubernetes.io/component"
MANAGED_BY = "app.kubernetes.io/managed-by"
VERSION_LABEL = "app.kubernetes.io/version"
PART_OF = "app.kubernetes.io/part-of"

# Children carry this label so one watch per kind finds all of them.
MANAGED_SELECTOR = f"{MANAGED_BY}={FIELD_MANAGER}"

GPU_TAINT_KEY = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"

PREFIX = GROUP  # annotations and kopf bookkeeping live under modeldeploy.dev/

# On the pod template, so on every pod: the fingerprint of the template that made it. The
# rollout tells the pods of a new template from the old ones by it, even when only the image changed.
POD_TEMPLATE_ANNOTATION = f"{PREFIX}/pod-template"
# Canary and BlueGreen: the same fingerprint as a label, so a Service can select one template's pods.
POD_TEMPLATE_LABEL = POD_TEMPLATE_ANNOTATION

# Canary and BlueGreen run two Deployments, `<name>` and `<name>-b`, whose stable and canary roles swap at each
# promotion (the canary's pods become the stable ones, none restarted). The second one's pods carry this label,
# which its (immutable) selector requires; the first one's selector is the object's own, as before.
SECOND_SLOT = "-b"
SLOT_LABEL = f"{PREFIX}/slot"
# BlueGreen: the Service that selects the preview (the target's pods) while one is up.
PREVIEW_SUFFIX = "-preview"
# Canary with a Gateway API HTTPRoute: the Service that selects the canary's pods, the route's second backend.
CANARY_SUFFIX = "-canary"


def selector_labels(name: str) -> dict[str, str]:
    """Pod selector of a ModelDeployment: fixed for the object's whole life (selectors are immutable)."""
    return {NAME: APP_NAME, INSTANCE: name}


def selector_string(name: str) -> str:
    return ",".join(f"{k}={v}" for k, v in selector_labels(name).items())


def object_labels(name: str, model_version: str) -> dict[str, str]:
    """Recommended labels on every child and on the pods; `version` is the model version."""
    return {
        **selector_labels(name),
        COMPONENT_LABEL: COMPONENT,
        PART_OF: "modeldeploy",
        MANAGED_BY: FIELD_MANAGER,
        VERSION_LABEL: model_version,
    }


def child_metadata(name: str, namespace: str, model_version: str, *, suffix: str = "",
                   **extra: object) -> dict[str, object]:
    """metadata of a child: named like its ModelDeployment (plus `suffix`), with the recommended labels."""
    return {"name": name + suffix, "namespace": namespace, "labels": object_labels(name, model_version), **extra}


def slot_labels(suffix: str) -> dict[str, str]:
    """The labels that tell the second Deployment's pods from the first's ({} for the first)."""
    return {SLOT_LABEL: suffix.lstrip("-")} if suffix else {}


def owner_of(labels: dict[str, str] | None) -> str | None:
    """The ModelDeployment a child belongs to, judged by its labels (ownerReferences decide ownership)."""
    labels = labels or {}
    if labels.get(MANAGED_BY) != FIELD_MANAGER:
        return None
    return labels.get(INSTANCE)


def owner_reference(name: str, uid: str) -> dict[str, object]:
    return {"apiVersion": API_VERSION, "kind": KIND, "name": name, "uid": uid,
            "controller": True, "blockOwnerDeletion": True}


def service_host(name: str, namespace: str) -> str:
    return f"{name}.{namespace}.svc"
