"""Fixtures of the flow tests: one Prefect test server for the whole session, tiny studies.

``prefect_test_harness`` starts a temporary API server (10-30 s here), so every test that
runs a flow shares the ``prefect_api`` fixture. It is scoped to this package: the server
stops once the flow tests are done, and the tmcore tests never run under its settings.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

# parameters that keep a figures run to a few seconds: small meshes, a handful of steps
TINY = {
    "identification_steps": 3,
    "topology_steps": 2,
    "identification_mesh": 0.1,
    "topology_mesh": 0.12,
    "gradcheck_mesh": 0.2,
    "n_probes": 3,
}


@pytest.fixture(scope="package")
def prefect_api():
    """The URL of a temporary Prefect API (its settings active for the session)."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield PREFECT_API_URL.value()


@pytest.fixture
def store(tmp_path):
    """An empty artifact store."""
    from flows.artifacts import Store

    return Store(tmp_path / "store")
