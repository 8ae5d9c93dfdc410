"""Validate rendered manifests against the real Kubernetes OpenAPI schemas (kubernetes-validate)."""

from __future__ import annotations

from typing import Any

import kubernetes_validate

# The oldest Kubernetes we support and the newest the validator ships.
KUBERNETES_VERSIONS = ("1.27.0", kubernetes_validate.latest_version())

# Kinds that are not part of Kubernetes itself have no schema there.
NOT_IN_KUBERNETES = {"ServiceMonitor"}


def validate_all(manifests: list[dict[str, Any]]) -> None:
    for manifest in manifests:
        if manifest["kind"] in NOT_IN_KUBERNETES:
            continue
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(manifest, version, strict=True)


def by_kind(manifests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {m["kind"]: m for m in manifests}
