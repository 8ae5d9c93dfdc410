"""The tritonserver flags and health endpoints the operator uses. Pure; no tritonclient here.

The launcher in tests/support/tritonserver.py starts the real server with these same flags,
so tests exercise exactly what the Deployment runs.
"""

from __future__ import annotations

HTTP_PORT = 8000
GRPC_PORT = 8001
METRICS_PORT = 8002
EXIT_TIMEOUT_SECONDS = 30
LIVENESS_PATH = "/v2/health/live"


def readiness_path(model: str, version: str) -> str:
    """Ready only when this model version is loaded: a pod whose load failed gets no traffic."""
    return f"/v2/models/{model}/versions/{version}/ready"


def tritonserver_args(*, model_repository: str, model_name: str, http_port: int = HTTP_PORT,
                      grpc_port: int = GRPC_PORT, metrics_port: int = METRICS_PORT,
                      exit_timeout_seconds: int = EXIT_TIMEOUT_SECONDS) -> list[str]:
    return [
        f"--model-repository={model_repository}",
        # Explicit mode: Triton loads exactly this model (and an ensemble's parts), nothing else in the repository.
        "--model-control-mode=explicit",
        f"--load-model={model_name}",
        # A failed load must not kill the server: it stays up, reports the failure in its repository
        # index (which the operator reads into status), and the per-version readiness probe keeps the
        # pod out of the Service.
        "--exit-on-error=false",
        "--strict-readiness=true",
        f"--exit-timeout-secs={exit_timeout_seconds}",
        f"--http-port={http_port}",
        f"--grpc-port={grpc_port}",
        f"--metrics-port={metrics_port}",
        "--allow-metrics=true",
        "--log-verbose=0",
    ]
