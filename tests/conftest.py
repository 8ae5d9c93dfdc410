"""Shared fixtures: one real tritonserver for the whole session (tier 3)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.tritonserver import TritonServer, start_tritonserver, write_model_repository


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model_repository(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def tritonserver(model_repository: Path) -> Iterator[TritonServer]:
    server = start_tritonserver(model_repository)
    try:
        yield server
    finally:
        server.stop()
