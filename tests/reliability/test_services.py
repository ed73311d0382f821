"""Services listen on the loopback interface by default, telemetry is off, results are JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PROBE = textwrap.dedent(
    """
    import json, os
    import flows  # what every entry point imports first
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    print(json.dumps({
        "do_not_track": os.environ.get("DO_NOT_TRACK"),
        "analytics": settings.server.analytics_enabled,
        "api_host": settings.server.api.host,
        "api_url": settings.api.url,
    }))
    """
)


def test_defaults_in_a_clean_environment_are_local_and_untracked():
    """A fresh process with no Prefect or tracking variables, started where `make` runs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "DO_NOT_TRACK"}
    output = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert output.returncode == 0, output.stderr[-3000:]
    settings = json.loads(output.stdout.strip().splitlines()[-1])
    assert settings["do_not_track"] == "1"
    assert settings["analytics"] is False
    assert settings["api_host"] == "127.0.0.1"  # what `prefect server start` binds to without --host
    assert settings["api_url"] is None  # no remote API unless configured: ephemeral, local


def test_make_serve_starts_its_server_on_the_loopback_interface(monkeypatch):
    from flows import serve

    started = {}

    class Stop(Exception):
        pass

    def start_server(host, port, timeout=180.0, log=None):
        started.update(host=host, port=port)
        raise Stop

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setattr(serve, "healthy", lambda url, timeout=2.0: False)
    monkeypatch.setattr(serve, "start_server", start_server)
    with pytest.raises(Stop):
        serve.main(["--server-log", os.devnull])
    assert started == {"host": "127.0.0.1", "port": 4200}
    assert serve.DEFAULT_HOST == "127.0.0.1"


def test_a_local_dask_cluster_listens_on_the_loopback_interface_only():
    from flows.runners import task_runner

    kwargs = task_runner("local", max_workers=1).cluster_kwargs
    assert kwargs["dashboard_address"].startswith("127.0.0.1:")
    assert kwargs["processes"] is False  # workers are threads of this process: no worker ports at all


def test_every_cached_stage_persists_json_results_never_pickles():
    from flows import tasks

    stages = [value for value in vars(tasks).values() if hasattr(getattr(value, "fn", None), "__stage__")]
    assert {task.name for task in stages} >= {
        "generate_mesh",
        "assemble",
        "solve",
        "identify_coefficient",
        "optimise_topology",
        "gradient_check",
        "render_figures",
    }
    for task in stages:
        assert task.result_serializer == "json", task.name
        assert task.persist_result is True
