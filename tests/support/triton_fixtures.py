"""Session-scoped pytest fixtures for a real tritonserver. Import them from tests/conftest.py:

    from tests.support.triton_fixtures import triton_repo, tritonserver  # noqa: F401
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

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
