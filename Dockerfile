# The modeldeploy operator image. Build: docker build -t modeldeploy:0.1.0 .
# Stage 1 builds wheels for the package and its runtime dependencies (never the test extra).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# Stage 2: only the runtime wheels, installed offline, run as a non-root user.
FROM python:3.11-slim
LABEL org.opencontainers.image.title="modeldeploy" \
      org.opencontainers.image.description="Kubernetes operator serving models with NVIDIA Triton Inference Server" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels modeldeploy \
    && rm -rf /wheels
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["modeldeploy", "run"]
