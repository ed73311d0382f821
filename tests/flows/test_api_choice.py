"""A command-line run's Prefect API (flows.runners.prepare_api): without PREFECT_API_URL the
temporary server is started before Prefect is imported, handed to Prefect's client, and stopped
when the process ends, however it ends."""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent(
    """
    import json, sys
    from flows.runners import prepare_api
    future = prepare_api()
    kind, url = future.result(timeout=180)
    from prefect.server.api.server import SubprocessASGIServer
    from prefect import get_client
    with get_client(sync_client=True) as client:  # Prefect's client finds the same server
        healthy = client.api_healthcheck() is None
        client_url = str(client.api_url)
    print(json.dumps({"kind": kind, "url": url, "client_url": client_url, "healthy": healthy,
                      "adopted": SubprocessASGIServer().running}))
    sys.stdout.flush()
    if len(sys.argv) > 1:
        raise SystemExit(3)  # an early exit: the server must stop all the same
    """
)


def _run_child(tmp_path, *args) -> tuple[dict, int]:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(tmp_path / "home"), DO_NOT_TRACK="1", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    result = subprocess.run(
        [sys.executable, "-c", CHILD, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines, result.stdout + result.stderr
    return json.loads(lines[-1]), result.returncode


def _port_open(url: str) -> bool:
    host, port = url.split("//")[1].split("/")[0].split(":")
    with socket.socket() as probe:
        probe.settimeout(1.0)
        return probe.connect_ex((host, int(port))) == 0


def test_without_an_api_url_the_early_server_is_prefects_temporary_server_and_stops_at_exit(tmp_path):
    answer, code = _run_child(tmp_path)
    assert code == 0
    assert answer["kind"] == "temporary" and answer["healthy"] and answer["adopted"]
    assert answer["client_url"].rstrip("/") == answer["url"].rstrip("/")
    assert not _port_open(answer["url"])  # stopped with the process


def test_the_early_server_stops_when_the_run_exits_early(tmp_path):
    answer, code = _run_child(tmp_path, "exit-early")
    assert code == 3
    assert not _port_open(answer["url"])
