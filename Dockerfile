# syntax=docker/dockerfile:1
# The modeldeploy operator image.   docker build -t modeldeploy:0.1.0 .
# (The final stage mounts the first stage's wheels with RUN --mount, so BuildKit is needed: the
# default builder of Docker 23+ and of buildx, podman and buildah all support it.)

# --- Stage 1: wheels of the project and of its runtime dependencies, never of the test extra ---
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
# `.` is the project's own wheel (built from this source, never fetched); without --no-deps pip
# also puts a wheel of every runtime dependency (pyproject's [project.dependencies]) in /wheels.
RUN pip wheel --wheel-dir /wheels .

# --- Stage 2: those wheels only, installed offline, run as a non-root user ---
FROM python:3.11-slim
LABEL org.opencontainers.image.title="modeldeploy" \
      org.opencontainers.image.description="Kubernetes operator serving models with NVIDIA Triton Inference Server" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.url="https://modeldeploy.dev" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# The wheels are mounted, not copied: they leave no layer behind.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels modeldeploy
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin modeldeploy
USER 10001:10001
# /healthz (liveness) and /metrics: modeldeploy run --health-port, 8080 by default.
EXPOSE 8080
ENTRYPOINT ["modeldeploy", "run"]
