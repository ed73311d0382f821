"""Deployments: ``python -m flows.serve`` as a real process group against a real Prefect server
on 127.0.0.1, stopped by SIGINT to the group (what a terminal's Ctrl-C sends)."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest

from flows.serve import Owner, healthy

from .conftest import TINY
from .processes import spawn

ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENT = "differentiability-figures/default"
NAMES = ("differentiability-figures", "coefficient-identification", "thermal-topology", "operator-dataset")


class Served:
    """``python -m flows.serve`` in its own process group (a terminal's job), output to a log file."""

    def __init__(self, api: str, cwd: Path, log: Path, *args: str, env: dict | None = None):
        self.log = log
        environment = {
            **os.environ,
            "PREFECT_RUNNER_POLL_FREQUENCY": "1",
            "PYTHONPATH": os.pathsep.join(
                [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
            ),
        }
        if api:
            environment["PREFECT_API_URL"] = api
        else:
            environment.pop("PREFECT_API_URL", None)
        environment.update(env or {})
        self.process = spawn("flows.serve", args, log, cwd, environment)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, needle: str, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.text():
            assert self.process.poll() is None, f"flows.serve exited early:\n{self.text()[-3000:]}"
            assert time.monotonic() < deadline, f"{needle!r} not printed within {timeout} s:\n{self.text()[-3000:]}"
            time.sleep(0.2)

    def interrupt(self, timeout: float = 30.0) -> float:
        """SIGINT to the whole process group; the seconds until the process exited."""
        start = time.monotonic()
        os.killpg(self.process.pid, signal.SIGINT)
        try:
            self.process.wait(timeout=timeout)
        finally:
            self.kill()
        return time.monotonic() - start

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def _deployment(name: str):
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return client.read_deployment_by_name(name)


def _assert_clean_stop(served: Served, seconds: float, n: int = 6) -> str:
    text = served.text()
    assert served.process.returncode == 0, text[-3000:]
    assert seconds < 10.0, f"took {seconds:.1f} s to stop"
    for needle in ("Traceback", "ConnectionClosedError", "ConnectError"):
        assert needle not in text, text[-3000:]
    last = text.strip().splitlines()[-1]
    assert last.startswith(f"stopped (SIGINT): paused the {n} deployment(s) this process served"), last
    return last


def test_healthy_is_false_without_a_server():
    assert not healthy("http://127.0.0.1:9/api", timeout=0.5)


def test_owner_is_recorded_in_the_description_and_read_back():
    owner = Owner(1234, "host-a", "/work/checkout a")
    assert Owner.of("the figures" + owner.mark()) == owner
    assert Owner.of("the figures") is None
    assert Owner.here().alive(None)  # this process exists
    assert not Owner(2**22 + 12345, Owner.here().host, "/x").alive(None)  # no such pid


def test_served_deployment_runs_through_the_api(prefect_api, tmp_path):
    """A run through the API gets a name from its parameters, tags, named task runs and the artifacts."""
    from prefect import get_client
    from prefect.deployments import run_deployment

    assert healthy(prefect_api)
    served = Served(prefect_api, ROOT, tmp_path / "serve.log")
    try:
        served.wait_for("Ctrl-C stops")
        deployment = _deployment(DEPLOYMENT)
        assert {"tmcore", "study:figures"} <= set(deployment.tags)
        assert (
            deployment.parameters["identification_steps"] == 5000 and Path(deployment.parameters["store"]).is_absolute()
        )
        schema = deployment.parameter_openapi_schema["properties"]
        assert all(spec.get("description") for spec in schema.values()), {
            k: v.get("description") for k, v in schema.items()
        }
        parameters = {**TINY, "store": str(tmp_path / "store"), "out": str(tmp_path / "out")}
        run = run_deployment(DEPLOYMENT, parameters=parameters, timeout=240)
        assert run.state.is_completed(), f"{run.state}\n{served.text()[-3000:]}"
        assert run.name == "figures-id3-topo2"
        assert {"tmcore", "study:figures", "quick"} <= set(run.tags) and any(
            t.startswith("checkout:") for t in run.tags
        )
        with get_client(sync_client=True) as client:
            from prefect.client.schemas.filters import (
                ArtifactFilter,
                ArtifactFilterFlowRunId,
                FlowRunFilter,
                FlowRunFilterId,
            )

            task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
            artifacts = client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
            )
        names = sorted(r.name for r in task_runs)
        assert names == sorted(
            [
                "mesh(rectangle h=0.1)",
                "mesh(rectangle h=0.12)",
                "mesh(rectangle h=0.2)",
                "identify(h=0.1, 3 steps)",
                "topology(h=0.12, 2 steps)",
                "gradient_check(identification)",
                "gradient_check(topology)",
                "render_figures",
            ]
        )
        assert all("quick" in r.tags and "study:figures" in r.tags for r in task_runs)
        keys = {a.key for a in artifacts}
        assert {
            "differentiability-summary",
            "differentiability-figures",
            "gradient-check",
            "figure-param-id-loss",
            "figure-topology-thermal",
            "artifact-store",
        } <= keys, keys
        summary = next(a for a in artifacts if a.key == "differentiability-summary").data
        assert "5.924e-03" in summary and "file://" in summary and str((tmp_path / "store").resolve()) in summary
        for name in (
            "param_id_loss.png",
            "param_id_fields.png",
            "topology_thermal.png",
            "gradient_check.md",
            "gradient_check.nc",
        ):
            assert (tmp_path / "out" / name).stat().st_size > 0, name
    finally:
        seconds = served.interrupt()
    _assert_clean_stop(served, seconds)
    assert _deployment(DEPLOYMENT).paused


def test_two_checkouts_on_one_server_do_not_clobber_each_other(prefect_api, tmp_path):
    """Checkout B may not take over A's deployments while A serves them; under its own name it
    serves beside A, and its Ctrl-C pauses only its own; A's nightly schedule stays on."""
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir()
    b_dir.mkdir()
    a = Served(prefect_api, a_dir, tmp_path / "a.log", "--cron", "0 4 * * *")
    b = b_named = None
    try:
        a.wait_for("Ctrl-C stops")
        a_nightly = _deployment("validation-benchmark/nightly")
        assert Owner.of(a_nightly.description).checkout == str(a_dir.resolve())

        b = Served(prefect_api, b_dir, tmp_path / "b.log")
        assert b.process.wait(timeout=180) == 1, b.text()
        assert "refusing to serve: 6 deployment(s) are served by another live process" in b.text()
        assert f"pid {a.process.pid}" in b.text() and "--name" in b.text()
        assert _deployment("validation-benchmark/nightly").description == a_nightly.description  # untouched

        b_named = Served(prefect_api, b_dir, tmp_path / "b-named.log", "--name", "b")
        b_named.wait_for("Ctrl-C stops")
        assert "checkout:" in " ".join(_deployment("differentiability-figures/b").tags)
        seconds = b_named.interrupt()
        _assert_clean_stop(b_named, seconds)
        assert (
            _deployment("validation-benchmark/b-nightly").paused and _deployment("differentiability-figures/b").paused
        )
        for name in NAMES:
            assert not _deployment(f"{name}/default").paused, name
        nightly = _deployment("validation-benchmark/nightly")
        assert not nightly.paused and all(s.active for s in nightly.schedules)
    finally:
        for served in (b, b_named):
            if served is not None:
                served.kill()
        seconds = a.interrupt()
    _assert_clean_stop(a, seconds)
    assert _deployment("validation-benchmark/nightly").paused


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow  # starts a full `prefect server start` (25-60 s here)
def test_ctrl_c_stops_the_server_it_started(tmp_path):
    port = _free_port()
    home = {"PREFECT_HOME": str(tmp_path / "home")}
    served = Served(
        "",
        tmp_path,
        tmp_path / "serve.log",
        "--port",
        str(port),
        "--only",
        DEPLOYMENT,
        "--server-log",
        str(tmp_path / "server.log"),
        env=home,
    )
    try:
        served.wait_for("Ctrl-C stops", timeout=300)
    finally:
        seconds = served.interrupt()
    last = _assert_clean_stop(served, seconds, n=1)
    assert last.endswith(" s after the signal)") and "stopped the Prefect server it started" in last
    assert not healthy(f"http://127.0.0.1:{port}/api", timeout=1.0)
