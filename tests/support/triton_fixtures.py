"""Session-scoped pytest fixtures for a real tritonserver. Import them from tests/conftest.py:

    from tests.support.triton_fixtures import triton_repo, tritonserver  # noqa: F401
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modeldeploy.triton import PodModelReport, TritonProbe, VersionState
from tests.support.tritonserver import TritonServer, start_tritonserver, write_model_repository


@pytest.fixture(scope="session")
def triton_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test model repository (simple v1+v2, broken, slow); see write_model_repository."""
    return write_model_repository(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def tritonserver(triton_repo: Path) -> Iterator[TritonServer]:
    """One tritonserver for the session, started with the operator's flags on free ports, with
    `simple` (versions 1 and 2) loaded and `broken` failed to load. Tests must leave it that way."""
    with start_tritonserver(triton_repo, load_models=("simple", "broken")) as server:
        yield server


class SharedServerProbe(TritonProbe):
    """The real probe, for fake pods that all stand for one real tritonserver: in a cluster each pod's
    Triton takes that pod's UID as the key of its model-repository API; here every pod is the one
    server, so every probe carries the server's key (nothing else about Triton is changed)."""

    def __init__(self, server: TritonServer, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.server_pod_uid = server.pod_uid

    async def probe(self, host: str, port: int, model: str, version: str, *, pod_uid: str = "") -> PodModelReport:
        return await super().probe(host, port, model, version, pod_uid=self.server_pod_uid)

    async def repository_index(self, host: str, port: int, *, pod_uid: str = "") -> tuple[VersionState, ...]:
        return await super().repository_index(host, port, pod_uid=self.server_pod_uid)
