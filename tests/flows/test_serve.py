"""Deployments: ``python -m flows.serve`` in a subprocess, a run triggered through the API."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from flows.serve import healthy

from .conftest import TINY

ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENT = "differentiability-figures/default"


def _wait_for_deployment(name: str, process: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            assert process.poll() is None, f"flows.serve exited early:\n{log.read_text()[-3000:]}"
            try:
                client.read_deployment_by_name(name)
                return
            except ObjectNotFound:
                time.sleep(1.0)
    raise AssertionError(f"deployment {name} not registered within {timeout} s:\n{log.read_text()[-3000:]}")


def test_healthy_is_false_without_a_server():
    assert not healthy("http://127.0.0.1:9/api", timeout=0.5)


def test_served_deployment_runs_through_the_api(prefect_api, tmp_path):
    from prefect.deployments import run_deployment

    assert healthy(prefect_api)
    log = tmp_path / "serve.log"
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "flows.serve"], cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait_for_deployment(DEPLOYMENT, process, log)
        _wait_for_deployment("validation-benchmark/nightly", process, log)
        parameters = {**TINY, "store": str(tmp_path / "store"), "out": str(tmp_path / "out")}
        run = run_deployment(DEPLOYMENT, parameters=parameters, timeout=240)
        assert run.state.is_completed(), f"{run.state}\n{log.read_text()[-3000:]}"
        for name in ("param_id_loss.png", "param_id_fields.png", "topology_thermal.png", "gradient_check.md", "gradient_check.nc"):
            assert (tmp_path / "out" / name).stat().st_size > 0, name
        assert any((tmp_path / "store" / "objects").rglob("*.nc"))
    finally:
        process.send_signal(signal.SIGINT)  # what Ctrl-C sends
        try:
            assert process.wait(timeout=60) == 0, log.read_text()[-3000:]
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
