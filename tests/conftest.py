"""Shared fixtures: one real tritonserver for the whole session (tier 3)."""

from tests.support.triton_fixtures import triton_repo, tritonserver  # noqa: F401
