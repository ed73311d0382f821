"""Serve every deployment from one process (``make serve``).

    python -m flows.serve [--host 127.0.0.1] [--port 4200] [--cron "0 3 * * *"] [--only FLOW/NAME ...]

Uses the Prefect server at ``$PREFECT_API_URL`` if one answers there, otherwise starts
``prefect server start`` on ``--host``/``--port`` (and stops it on exit), then serves

    differentiability-figures/default    the figures (parameters overridable per run)
    coefficient-identification/default   the identification study alone
    thermal-topology/default             the topology study alone
    operator-dataset/default             (kappa, u) pairs for operator learning (flows.datagen)
    validation-benchmark/nightly         the benchmark on a cron schedule, use_cache=False

until Ctrl-C. In another shell, with the same ``PREFECT_API_URL``::

    prefect deployment run 'differentiability-figures/default' --watch
    prefect deployment run 'differentiability-figures/default' --param identification_steps=300 --watch

Prefect is imported only after ``PREFECT_API_URL`` is set, so the served runs report to
that server.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 4200
DEFAULT_CRON = "0 3 * * *"  # 03:00 every night (the server's time zone: UTC unless configured)
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def healthy(api_url: str, timeout: float = 2.0) -> bool:
    """True if a Prefect API answers ``GET <api_url>/health`` with 200."""
    try:
        with urllib.request.urlopen(api_url.rstrip("/") + "/health", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _prefect_executable() -> str:
    beside = Path(sys.executable).with_name("prefect")
    return str(beside) if beside.exists() else (shutil.which("prefect") or "prefect")


def start_server(host: str, port: int, timeout: float = 180.0, log: Path | None = None) -> subprocess.Popen:
    """``prefect server start`` in a subprocess; returns once its API answers (or raises)."""
    api_url = f"http://{host}:{port}/api"
    output = open(log, "ab") if log else subprocess.DEVNULL
    process = subprocess.Popen(
        [_prefect_executable(), "server", "start", "--host", host, "--port", str(port)],
        stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prefect server start exited with code {process.returncode}" + (f"; see {log}" if log else ""))
        if healthy(api_url, timeout=1.0):
            return process
        time.sleep(1.0)
    stop(process)
    raise TimeoutError(f"the Prefect server on {api_url} did not answer within {timeout:.0f} s")


def stop(process: subprocess.Popen, timeout: float = 30.0) -> None:
    """Terminate a subprocess, killing it if it does not exit within ``timeout``."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def deployments(cron: str = DEFAULT_CRON) -> list:
    """The deployments served by ``make serve``."""
    from .datagen import operator_dataset
    from .differentiability import differentiability_figures, identification_study, topology_study
    from .validation import validation_benchmark

    return [
        differentiability_figures.to_deployment(name="default", description="the differentiability figures (make figures)"),
        identification_study.to_deployment(name="default", description="coefficient identification study"),
        topology_study.to_deployment(name="default", description="thermal topology optimisation study"),
        operator_dataset.to_deployment(name="default", description="operator-learning data set: N (kappa, u) pairs, one netCDF file"),
        validation_benchmark.to_deployment(
            name="nightly", cron=cron, parameters={"use_cache": False},
            description="validation benchmark, every night, fresh timings; fails on a tolerance miss",
        ),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.serve", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default=DEFAULT_HOST, help="host of a server started here (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port of a server started here (default 4200)")
    parser.add_argument("--cron", default=DEFAULT_CRON, help=f"schedule of validation-benchmark/nightly (default {DEFAULT_CRON!r})")
    parser.add_argument("--only", nargs="+", default=None, metavar="FLOW/NAME", help="serve only these deployments")
    parser.add_argument("--server-log", type=Path, default=Path(".prefect") / "server.log", help="where a started server logs")
    args = parser.parse_args(argv)

    api_url = os.environ.get("PREFECT_API_URL") or f"http://{args.host}:{args.port}/api"
    server = None
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

    try:
        from prefect import serve

        served = deployments(args.cron)
        if args.only:
            names = {f"{d.flow_name}/{d.name}" for d in served}
            missing = sorted(set(args.only) - names)
            if missing:
                print(f"unknown deployments {missing}; available: {sorted(names)}", file=sys.stderr)
                return 1
            served = [d for d in served if f"{d.flow_name}/{d.name}" in args.only]
        print(
            "serving " + ", ".join(f"{d.flow_name}/{d.name}" for d in served) + "; Ctrl-C stops.\n"
            f"run one from another shell:\n  PREFECT_API_URL={api_url} {_prefect_executable()} deployment run "
            "'differentiability-figures/default' --watch",
            flush=True,
        )
        serve(*served)
    except KeyboardInterrupt:
        pass
    finally:
        if server is not None:
            print("stopping the Prefect server", flush=True)
            stop(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
