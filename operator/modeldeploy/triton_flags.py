"""The tritonserver flags and health endpoints the operator uses. Pure; no tritonclient here.

The launcher in tests/support/tritonserver.py starts the real server with these same flags,
so the tests run what the Deployment runs. docs/triton-flags.md records what the real
tritonserver (2.51) does with them.
"""

from __future__ import annotations

HTTP_PORT = 8000
GRPC_PORT = 8001
METRICS_PORT = 8002
EXIT_TIMEOUT_SECONDS = 30

# Answers 200 as long as the server process is serving HTTP, whatever state its models are in,
# so a failed model load does not make the kubelet restart the container.
LIVENESS_PATH = "/v2/health/live"

# What the startup probe should ask. In explicit mode, Triton serves no HTTP until the startup
# load of --load-model has finished, successfully or not, so "live" here means "startup loading
# is over". If the startup probe asked the per-version endpoint instead, a failed load would fail
# the startup probe until its budget ran out and the kubelet would restart the container over and
# over (CrashLoopBackOff) instead of leaving it up, not ready, with Triton's reason in its index.
STARTUP_PATH = LIVENESS_PATH

# Server-wide readiness. With --strict-readiness=true it is 200 only when every model Triton
# knows of is ready; it is 200 with no model loaded at all (a --load-model name that is not in
# the repository), so it is never used as the pod's readiness: see readiness_path.
SERVER_READY_PATH = "/v2/health/ready"

# The model-repository API (load, unload, the repository index) answers only requests carrying this
# header with the pod's own UID as its value: clients of the Service cannot load or unload models,
# while the operator (which knows each pod's UID) and the pod's own pin-loaded sidecar can. Triton
# 2.51 refuses a request without it with HTTP 403 ("This API is restricted, expecting header
# 'modeldeploy-pod-uid'") and gRPC UNAVAILABLE; the header name is case-insensitive, the value is not.
REPOSITORY_API_HEADER = "modeldeploy-pod-uid"
# On gRPC, Triton expects the header under this prefix: triton-grpc-protocol-modeldeploy-pod-uid.
GRPC_RESTRICTED_HEADER_PREFIX = "triton-grpc-protocol-"
RESTRICTED_CATEGORY = "model-repository"
# The pod's UID, given to the Triton container (and the sidecar) by the downward API; the args name it
# as $(MODELDEPLOY_POD_UID), which the kubelet expands.
POD_UID_ENV = "MODELDEPLOY_POD_UID"


def repository_api_headers(pod_uid: str) -> dict[str, str]:
    """The HTTP headers that open the model-repository API of the pod whose UID is pod_uid ({} when unknown)."""
    return {REPOSITORY_API_HEADER: pod_uid} if pod_uid else {}


def readiness_path(model: str, version: str) -> str:
    """200 only when this model version is loaded and ready: a pod whose load failed gets no traffic."""
    return f"/v2/models/{model}/versions/{version}/ready"


def tritonserver_args(*, model_repository: str, model_name: str, http_port: int = HTTP_PORT,
                      grpc_port: int = GRPC_PORT, metrics_port: int = METRICS_PORT,
                      exit_timeout_seconds: int = EXIT_TIMEOUT_SECONDS,
                      repository_api_key: str = f"$({POD_UID_ENV})") -> list[str]:
    """The arguments of the Deployment's `tritonserver` command, in order. `repository_api_key` is the
    value the model-repository API asks for: the pod's UID, through the kubelet's $(VAR) expansion;
    the test launcher gives a value of its own. It must not be empty (Triton refuses `...=` at startup)."""
    if not repository_api_key:
        raise ValueError("repository_api_key must not be empty: tritonserver refuses to start with an empty value")
    restricted = f"{RESTRICTED_CATEGORY}:{REPOSITORY_API_HEADER}={repository_api_key}"
    return [
        f"--model-repository={model_repository}",
        # Explicit mode: Triton loads exactly this model (and an ensemble's parts), nothing else in
        # the repository, and nothing polls the repository behind the operator's back.
        "--model-control-mode=explicit",
        f"--load-model={model_name}",
        # A failed load must not kill the server (with the default, true, tritonserver exits 1 with
        # "load failed for model ..."): it stays up and live, the failure and Triton's own error
        # text stay readable in its repository index (the operator copies them into status), and
        # the per-version readiness probe keeps the pod out of the Service.
        "--exit-on-error=false",
        # /v2/health/ready is 400 while any loaded model failed or is loading, instead of 200
        # whenever the process answers, so the server-wide answer never claims a broken pod is ready.
        "--strict-readiness=true",
        # Shorter than the pod's terminationGracePeriodSeconds, so in-flight requests finish first.
        f"--exit-timeout-secs={exit_timeout_seconds}",
        f"--http-port={http_port}",
        f"--grpc-port={grpc_port}",
        f"--metrics-port={metrics_port}",
        "--allow-metrics=true",
        "--log-verbose=0",
        # Only requests carrying the pod's UID may load, unload or list models (see REPOSITORY_API_HEADER).
        # The syntax is <categories>:<header>=<value>; a category restricted twice (e.g. again in
        # triton.args) makes tritonserver refuse to start.
        f"--http-restricted-api={restricted}",
        f"--grpc-restricted-protocol={restricted}",
    ]
