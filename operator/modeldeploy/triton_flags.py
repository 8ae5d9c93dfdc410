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


def readiness_path(model: str, version: str) -> str:
    """200 only when this model version is loaded and ready: a pod whose load failed gets no traffic."""
    return f"/v2/models/{model}/versions/{version}/ready"


def tritonserver_args(*, model_repository: str, model_name: str, http_port: int = HTTP_PORT,
                      grpc_port: int = GRPC_PORT, metrics_port: int = METRICS_PORT,
                      exit_timeout_seconds: int = EXIT_TIMEOUT_SECONDS) -> list[str]:
    """The arguments of the Deployment's `tritonserver` command, in order."""
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
    ]
