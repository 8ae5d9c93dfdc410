"""modeldeploy: a Kubernetes operator that serves models with NVIDIA Triton Inference Server."""

GROUP = "modeldeploy.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"
SINGULAR = "modeldeployment"
SHORT_NAMES = ("md",)
FIELD_MANAGER = "modeldeploy"

__version__ = "0.1.0"
