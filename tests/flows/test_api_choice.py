"""A command-line run's Prefect API (flows.runners.prepare_api): without PREFECT_API_URL the
temporary server is started before Prefect is imported, made Prefect's API URL for the whole
process (so that Prefect never imports its server code here), and stopped when the process
ends, however it ends."""

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
    import threading
    from prefect import get_client
    from prefect.settings import get_current_settings
    with get_client(sync_client=True) as client:  # Prefect's client finds the same server
        healthy = client.api_healthcheck() is None
        client_url = str(client.api_url)
    seen = []  # what a thread without the caller's context (Prefect's log and event workers) sees
    thread = threading.Thread(target=lambda: seen.append(get_current_settings().api.url))
    thread.start(); thread.join()
    print(json.dumps({"kind": kind, "url": url, "client_url": client_url, "healthy": healthy,
                      "thread_url": seen[0], "server_code": "prefect.server.api.server" in sys.modules}))
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
    assert answer["kind"] == "temporary" and answer["healthy"]
    assert answer["client_url"].rstrip("/") == answer["url"].rstrip("/") == answer["thread_url"].rstrip("/")
    assert not answer["server_code"]  # Prefect's client never started (nor imported) a server of its own
    assert not _port_open(answer["url"])  # stopped with the process


def test_the_early_server_stops_when_the_run_exits_early(tmp_path):
    answer, code = _run_child(tmp_path, "exit-early")
    assert code == 3
    assert not _port_open(answer["url"])


def test_runs_on_a_temporary_server_send_no_heartbeats():
    from prefect.settings import get_current_settings

    from flows.runners import api_settings

    default = get_current_settings().flows.heartbeat_frequency
    assert default is not None
    for kind in ("temporary", "unreachable"):
        with api_settings(kind):
            assert get_current_settings().flows.heartbeat_frequency is None
    with api_settings("server"):  # a lasting server's automations may watch them
        assert get_current_settings().flows.heartbeat_frequency == default


def test_a_temporary_server_starts_without_automations_and_on_a_used_database_without_block_registration(tmp_path):
    from flows.runners import KNOWN_DATABASE_SETTINGS, TEMPORARY_SERVER_SETTINGS, temporary_server_settings

    home = tmp_path / "home"
    home.mkdir()
    assert temporary_server_settings({"PREFECT_HOME": str(home)}) == TEMPORARY_SERVER_SETTINGS  # a new database
    (home / "prefect.db").write_bytes(b"")
    used = temporary_server_settings({"PREFECT_HOME": str(home)})
    assert used == {**TEMPORARY_SERVER_SETTINGS, **KNOWN_DATABASE_SETTINGS}
    assert used["PREFECT_SERVER_REGISTER_BLOCKS_ON_START"] == "false"
    # another database configured: its blocks are not known; the environment's choices win
    other = {"PREFECT_HOME": str(home), "PREFECT_SERVER_DATABASE_CONNECTION_URL": "postgresql+asyncpg://db/prefect"}
    assert temporary_server_settings(other) == TEMPORARY_SERVER_SETTINGS
    mine = {"PREFECT_HOME": str(home), "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED": "true"}
    assert temporary_server_settings(mine)["PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED"] == "true"
