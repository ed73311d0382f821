"""Serve every deployment from one process (``make serve``), as a well-behaved service.

    python -m flows.serve [--host 127.0.0.1] [--port 4200] [--cron "0 3 * * *"] [--name NAME] [--only FLOW/NAME ...]

Uses the Prefect server at ``$PREFECT_API_URL`` if one answers there, otherwise starts
``prefect server start`` on ``--host``/``--port`` (loopback only; stopped on exit), then serves

    differentiability-figures/default    the figures (parameters overridable per run)
    coefficient-identification/default   the identification study alone
    thermal-topology/default             the topology study alone
    operator-dataset/default             (kappa, u) pairs for operator learning (flows.datagen)
    validation-benchmark/nightly         the benchmark on a cron schedule, use_cache=False
    mosaic-benchmark/weekly              mosaic's harness on tmcore (docs/mosaic.md), Sundays 04:00, use_cache=False

until Ctrl-C. In another shell, with the same ``PREFECT_API_URL``::

    prefect deployment run 'differentiability-figures/default' --watch
    prefect deployment run 'differentiability-figures/default' --param identification_steps=300 --watch

As a service:

- **Ctrl-C** (SIGINT to the whole process group, as a terminal sends it) or SIGTERM: the
  runner stops polling, cancels runs in flight, pauses the deployments *this process*
  registered (still its own: see below), stops the server it started and prints one line.
  The server runs in a session of its own, so the terminal's SIGINT never reaches it while
  the deployments are being paused. A second Ctrl-C exits at once.
- **One owner per deployment.** Each deployment's description ends with its owner
  (``[served by <pid>@<host> from <checkout>]``) and its tags name the checkout
  (``checkout:<dir>-<hash>``). Before registering anything, ``flows.serve`` refuses, with a
  message naming the other process, to take over a deployment that another live process
  serves (same host: its pid is alive; another host: it polled within a minute), from
  another checkout or the same one; ``--name`` serves this checkout under other names. On
  exit it pauses only deployments whose owner is still itself: another process's schedule
  is never switched off.

Runs execute in the directory ``make serve`` was started from (the checkout): the
deployments' ``store`` and ``out`` parameters are that directory's ``data/artifacts`` (or
``$TMCORE_ARTIFACTS``) and ``reports/...`` as absolute paths, shown in the UI.

Prefect is imported only after ``PREFECT_API_URL`` is set, so the served runs report to
that server.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .runners import api_healthy as healthy
from .runners import run_tags

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 4200
DEFAULT_NAME = "default"
DEFAULT_CRON = "0 3 * * *"  # 03:00 every night (the server's time zone: UTC unless configured)
MOSAIC_CRON = "0 4 * * 0"  # Sundays 04:00: a full mosaic run takes ~30 min on 2 cores
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
# a deployment whose runner polled within this many seconds is being served (the runner polls
# every PREFECT_RUNNER_POLL_FREQUENCY seconds, 10 by default)
LIVE_POLL_SECONDS = 60.0
OWNER = re.compile(r" \[served by (?P<pid>\d+)@(?P<host>[^ \]]+) from (?P<checkout>[^\]]+)\]$")

__all__ = ["Owner", "deployments", "healthy", "main", "start_server", "stop"]


@dataclass(frozen=True)
class Owner:
    """Who serves a deployment: a process on a host, running in a checkout (its working directory)."""

    pid: int
    host: str
    checkout: str

    @classmethod
    def here(cls) -> Owner:
        return cls(os.getpid(), platform.node() or "localhost", str(Path.cwd().resolve()))

    def mark(self) -> str:
        """The suffix of a deployment description that records this owner."""
        return f" [served by {self.pid}@{self.host} from {self.checkout}]"

    @classmethod
    def of(cls, description: str | None) -> Owner | None:
        """The owner recorded in a deployment description, or None."""
        match = OWNER.search(description or "")
        return cls(int(match["pid"]), match["host"], match["checkout"]) if match else None

    def alive(self, last_polled: _dt.datetime | None) -> bool:
        """Whether this owner still serves: on this host, its pid exists; elsewhere, its runner polled lately."""
        if self.host == (platform.node() or "localhost"):
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:  # someone else's process: it exists
                return True
            return True
        return _recently(last_polled)


def _recently(when: _dt.datetime | None) -> bool:
    if when is None:
        return False
    now = _dt.datetime.now(_dt.timezone.utc)
    when = when if when.tzinfo else when.replace(tzinfo=_dt.timezone.utc)
    return (now - when).total_seconds() < LIVE_POLL_SECONDS


def _prefect_executable() -> str:
    beside = Path(sys.executable).with_name("prefect")
    return str(beside) if beside.exists() else (shutil.which("prefect") or "prefect")


def start_server(host: str, port: int, timeout: float = 180.0, log: Path | None = None) -> subprocess.Popen:
    """``prefect server start`` in a subprocess of its own session (a terminal's Ctrl-C does
    not reach it: :func:`main` stops it last); returns once its API answers (or raises)."""
    if host not in LOCAL_HOSTS:
        raise ValueError(f"host must be a loopback address {LOCAL_HOSTS}, got {host!r}")
    api_url = f"http://{host}:{port}/api"
    output = open(log, "ab") if log else subprocess.DEVNULL
    process = subprocess.Popen(
        [_prefect_executable(), "server", "start", "--host", host, "--port", str(port)],
        stdout=output,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"prefect server start exited with code {process.returncode}" + (f"; see {log}" if log else "")
            )
        if healthy(api_url, timeout=1.0):
            return process
        time.sleep(0.5)
    stop(process)
    raise TimeoutError(f"the Prefect server on {api_url} did not answer within {timeout:.0f} s")


def stop(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """Terminate a subprocess, killing it if it does not exit within ``timeout``."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _defaults(flow: Any, **overrides: Any) -> dict[str, Any]:
    """Every parameter of ``flow`` that has a default, as the deployment's parameters (so the UI
    shows them, not ``{}``), with ``overrides`` for the ones the flow has."""
    properties = flow.parameters.model_dump()["properties"]
    values = {name: spec["default"] for name, spec in properties.items() if spec.get("default") is not None}
    values.update({name: value for name, value in overrides.items() if name in properties})
    return values


def deployments(cron: str = DEFAULT_CRON, name: str = DEFAULT_NAME, owner: Owner | None = None) -> list:
    """The deployments served by ``make serve``: named ``<flow>/<name>`` (the benchmark
    ``nightly``, or ``<name>-nightly``), tagged with the project, the checkout and the study,
    the owner recorded in the description, every parameter shown with its default."""
    from .artifacts import default_root
    from .datagen import operator_dataset
    from .differentiability import DEFAULT_OUT, differentiability_figures, identification_study, topology_study
    from .mosaic import DEFAULT_OUT as MOSAIC_OUT
    from .mosaic import mosaic_benchmark
    from .validation import DEFAULT_OUT as BENCHMARK_OUT
    from .validation import validation_benchmark

    owner = owner or Owner.here()
    checkout = Path(owner.checkout)
    store = str((checkout / default_root()).resolve())
    nightly = "nightly" if name == DEFAULT_NAME else f"{name}-nightly"
    weekly = "weekly" if name == DEFAULT_NAME else f"{name}-weekly"
    specs = [
        (
            differentiability_figures,
            name,
            "figures",
            "the differentiability figures (make figures)",
            {"store": store, "out": str(checkout / DEFAULT_OUT)},
            None,
        ),
        (identification_study, name, "identification", "coefficient identification study", {"store": store}, None),
        (topology_study, name, "topology", "thermal topology optimisation study", {"store": store}, None),
        (
            operator_dataset,
            name,
            "datagen",
            "operator-learning data set: N (kappa, u) pairs, one netCDF file",
            {"store": store},
            None,
        ),
        (
            validation_benchmark,
            nightly,
            "validation",
            "validation benchmark, every night, fresh timings; fails on a tolerance miss",
            {"store": store, "out": str(checkout / BENCHMARK_OUT), "use_cache": False},
            cron,
        ),
        (
            mosaic_benchmark,
            weekly,
            "mosaic",
            "mosaic's harness on tmcore (docs/mosaic.md), weekly, fresh timings; fails when a mosaic check is not ok",
            {"store": store, "out": str(checkout / MOSAIC_OUT), "use_cache": False},
            MOSAIC_CRON,
        ),
    ]
    return [
        flow.to_deployment(
            name=deployment_name,
            description=description + owner.mark(),
            cron=schedule,
            parameters=_defaults(flow, **overrides),
            tags=run_tags(study, directory=checkout),
        )
        for flow, deployment_name, study, description, overrides, schedule in specs
    ]


def conflicts(served: Sequence[Any], owner: Owner) -> list[str]:
    """The deployments among ``served`` that another live process serves, as readable lines."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    found = []
    with get_client(sync_client=True) as client:
        for deployment in served:
            full = f"{deployment.flow_name}/{deployment.name}"
            try:
                existing = client.read_deployment_by_name(full)
            except ObjectNotFound:
                continue
            other = Owner.of(existing.description)
            if other == owner:
                continue
            if other is None:
                if _recently(existing.last_polled):
                    found.append(f"{full} (served by an unknown process, polled {existing.last_polled:%H:%M:%S} UTC)")
                continue
            if other.alive(existing.last_polled):
                where = "this checkout" if other.checkout == owner.checkout else other.checkout
                found.append(f"{full} (pid {other.pid} on {other.host}, from {where})")
    return found


class _Stopper:
    """SIGINT/SIGTERM handler: the first signal stops serving (:func:`_run_until_stopped` sees
    it; before any deployment is registered it unwinds ``main``), a second one exits at once."""

    def __init__(self) -> None:
        self.runner: Any = None
        self.signal: str | None = None
        self.since = 0.0  # when the first signal came (time.monotonic)
        self.message = ""  # the line printed on the way out

    def __call__(self, signum: int, frame: Any) -> None:
        if self.signal is not None:  # a second Ctrl-C: leave now
            os._exit(130)
        self.signal, self.since = signal.Signals(signum).name, time.monotonic()
        if self.runner is None:
            raise KeyboardInterrupt  # nothing registered yet: unwind main()


async def _run_until_stopped(runner: Any, stopper: _Stopper) -> None:
    """``runner.start()`` until a signal: then ``runner.astop()`` (once the runner has started,
    so a Ctrl-C during its start-up is not lost), which cancels runs in flight and its loops."""

    async def watch() -> None:
        while stopper.signal is None or not runner.started:
            await asyncio.sleep(0.1)
        await runner.astop()

    watcher = asyncio.create_task(watch())
    try:
        await runner.start()
    finally:
        watcher.cancel()


def _pause_own(ids: dict[str, Any], owner: Owner) -> tuple[list[str], list[str]]:
    """Pause the deployments (name -> id) whose recorded owner is still ``owner``; returns (paused, left alone)."""
    from prefect import get_client

    paused, left = [], []
    with get_client(sync_client=True) as client:
        for name, deployment_id in ids.items():
            try:
                current = client.read_deployment(deployment_id)
            except Exception:  # deleted meanwhile: nothing to pause
                continue
            if Owner.of(current.description) == owner:
                client.pause_deployment(deployment_id)
                paused.append(name)
            else:
                left.append(name)
    return paused, left


def _quiet_shutdown_logs() -> None:
    """Prefect's loggers at WARNING from here on: the shutdown says one line, ours."""
    import logging

    for name in ("prefect", "prefect.runner", "prefect.flow_runs.runner", "prefect.events.clients", "httpx"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.serve", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--host", default=DEFAULT_HOST, help="host of a server started here (loopback; default 127.0.0.1)"
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port of a server started here (default 4200)")
    parser.add_argument(
        "--cron", default=DEFAULT_CRON, help=f"schedule of validation-benchmark/nightly (default {DEFAULT_CRON!r})"
    )
    parser.add_argument(
        "--name",
        default=DEFAULT_NAME,
        help="deployment name, e.g. one per checkout on a shared server (default 'default')",
    )
    parser.add_argument("--only", nargs="+", default=None, metavar="FLOW/NAME", help="serve only these deployments")
    parser.add_argument(
        "--server-log", type=Path, default=Path(".prefect") / "server.log", help="where a started server logs"
    )
    args = parser.parse_args(argv)
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", args.name):
        parser.error(f"--name must be lowercase letters, digits, '-' or '_', got {args.name!r}")

    stopper = _Stopper()
    signal.signal(signal.SIGINT, stopper)
    signal.signal(signal.SIGTERM, stopper)
    api_url = os.environ.get("PREFECT_API_URL") or f"http://{args.host}:{args.port}/api"
    server = None
    code = 0
    try:
        if healthy(api_url):
            print(f"using the Prefect server at {api_url}", flush=True)
        else:
            parsed = urlparse(api_url)
            if parsed.hostname not in LOCAL_HOSTS:
                print(f"no Prefect server answers at {api_url}, and it is not local: start it first", file=sys.stderr)
                return 1
            host, port = parsed.hostname, parsed.port or args.port
            args.server_log.parent.mkdir(parents=True, exist_ok=True)
            print(f"starting a Prefect server on http://{host}:{port} (log: {args.server_log}) ...", flush=True)
            server = start_server(host, port, log=args.server_log)
            print(f"Prefect server up: UI at http://{host}:{port}", flush=True)
        os.environ["PREFECT_API_URL"] = api_url
        code = _serve(args, api_url, stopper)
    except KeyboardInterrupt:
        stopper.message = f"stopped ({stopper.signal or 'SIGINT'}) before serving anything"
        code = 130
    finally:
        if server is not None:
            stop(server)
            if stopper.message:
                stopper.message += "; stopped the Prefect server it started"
    if stopper.message:
        print(
            f"{stopper.message} ({time.monotonic() - stopper.since:.1f} s after the signal)"
            if stopper.signal
            else stopper.message,
            flush=True,
        )
    return code


def _serve(args: argparse.Namespace, api_url: str, stopper: _Stopper) -> int:
    from prefect.runner import Runner

    owner = Owner.here()
    served = deployments(args.cron, args.name, owner)
    if args.only:
        names = {f"{d.flow_name}/{d.name}" for d in served}
        missing = sorted(set(args.only) - names)
        if missing:
            print(f"unknown deployments {missing}; available: {sorted(names)}", file=sys.stderr)
            return 1
        served = [d for d in served if f"{d.flow_name}/{d.name}" in args.only]
    taken = conflicts(served, owner)
    if taken:
        print(
            f"refusing to serve: {len(taken)} deployment(s) are served by another live process on {api_url}: "
            + "; ".join(taken)
            + ". Stop that process, or serve this checkout under other names: python -m flows.serve --name <name>",
            file=sys.stderr,
            flush=True,
        )
        return 1

    runner = Runner(name=f"tmcore-{args.name}-{owner.pid}", pause_on_shutdown=False)
    stopper.runner = runner  # from here a signal is recorded, and what was registered gets paused
    ids = {}
    for deployment in served:
        ids[f"{deployment.flow_name}/{deployment.name}"] = runner.add_deployment(deployment)
        if stopper.signal:
            break
    print(
        "serving " + ", ".join(ids) + f" from {owner.checkout}; Ctrl-C stops.\n"
        f"run one from another shell:\n  PREFECT_API_URL={api_url} {_prefect_executable()} deployment run "
        f"'differentiability-figures/{args.name}' --watch",
        flush=True,
    )
    if stopper.signal is None:
        asyncio.run(_run_until_stopped(runner, stopper))
    _quiet_shutdown_logs()
    paused, left = _pause_own(ids, owner)
    note = f", left {', '.join(left)} alone (now another process's)" if left else ""
    reason = stopper.signal or "the runner exited"
    stopper.message = f"stopped ({reason}): paused the {len(paused)} deployment(s) this process served{note}"
    return 0


if __name__ == "__main__":
    from .runners import exit_now

    exit_now(main())
