"""Fixtures of the reliability tests (no Prefect server: the flow-level fault tests live in tests/flows)."""

from __future__ import annotations

import pytest


@pytest.fixture
def store(tmp_path):
    """An empty artifact store."""
    from flows.artifacts import Store

    return Store(tmp_path / "store")
