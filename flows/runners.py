"""Where and how the flows run: the task runner (a thread pool, or Dask given a scheduler
address) and the labels that tell runs apart in the UI (tags naming the project, the
checkout, the study and quick/full).

    TMCORE_DASK_ADDRESS=tcp://scheduler:8786   the same flows, tasks on a dask.distributed cluster
    TMCORE_DASK_ADDRESS=local                  a LocalCluster started for the run (tests, trials)

The flows read the variable when they are imported; ``task_runner(address)`` builds a
runner for ``flow.with_options(task_runner=...)``. Torch work on one machine runs best
on the thread pool (measured: a LocalCluster costs seconds to start); Dask earns its place
across machines. A cluster's workers need the artifact store at the same path (a shared
file system) and ``PREFECT_API_URL`` pointing at the server the flow reports to.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

ENV_DASK_ADDRESS = "TMCORE_DASK_ADDRESS"
ENV_MAX_WORKERS = "TMCORE_MAX_WORKERS"
LOCAL_HOST = "127.0.0.1"  # what a cluster started here listens on
PROJECT_TAG = "tmcore"


def checkout_label(directory: str | os.PathLike | None = None) -> str:
    """A short, stable name for the checkout a run belongs to: the working directory's name
    and 6 hex digits of its absolute path (``main-3fa2c1``), so that two checkouts with the
    same folder name still differ. Runs execute in, and write their default store under,
    the directory ``make figures`` / ``make serve`` were started from: that directory is the
    checkout."""
    path = Path(directory or os.getcwd()).resolve()
    name = re.sub(r"[^a-z0-9_.-]+", "-", path.name.lower()).strip("-") or "root"
    return f"{name[:40]}-{hashlib.sha256(str(path).encode()).hexdigest()[:6]}"


def run_tags(study: str, quick: bool | None = None, directory: str | os.PathLike | None = None) -> list[str]:
    """The tags of a run: ``tmcore``, ``checkout:<label>``, ``study:<study>`` and, when
    known, ``quick`` or ``full`` (fewer steps than the chapter's, or the chapter's)."""
    tags = [PROJECT_TAG, f"checkout:{checkout_label(directory)}", f"study:{study}"]
    if quick is not None:
        tags.append("quick" if quick else "full")
    return tags


def tag_flow_run(tags: Iterable[str]) -> list[str]:
    """Add ``tags`` to the flow run in progress (a deployment run starts with the
    deployment's tags; quick/full is known only from the parameters). Returns the run's
    tags; outside a flow run, or if the API refuses, just ``tags``."""
    tags = list(dict.fromkeys(tags))
    try:
        from prefect import get_client
        from prefect.context import FlowRunContext

        context = FlowRunContext.get()
        if context is None or context.flow_run is None:
            return tags
        current = list(context.flow_run.tags or [])
        merged = current + [tag for tag in tags if tag not in current]
        if merged != current:
            with get_client(sync_client=True) as client:
                client.update_flow_run(context.flow_run.id, tags=merged)
            context.flow_run.tags = merged
        return merged
    except Exception as error:  # tags are a label, never a reason to fail a run
        import logging

        logging.getLogger(__name__).warning("could not tag the flow run with %s: %s", tags, error)
        return tags


def task_runner(address: str | None = None, max_workers: int | None = None) -> Any:
    """``ThreadPoolTaskRunner(max_workers)`` (default: the CPU count, or ``$TMCORE_MAX_WORKERS``)
    without an address; ``DaskTaskRunner`` with one (``"local"``: a LocalCluster of
    ``max_workers`` single-threaded workers, threads of this process so they share its
    Prefect API). None reads ``$TMCORE_DASK_ADDRESS``."""
    address = os.environ.get(ENV_DASK_ADDRESS) if address is None else address
    if max_workers is None and os.environ.get(ENV_MAX_WORKERS):
        max_workers = int(os.environ[ENV_MAX_WORKERS])
    # tmcore.core.checks.check_count's test, written out: importing tmcore (and torch) here
    # would cost every cached run, which keys its stages without them
    if max_workers is not None and (
        isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1
    ):
        raise ValueError(f"max_workers must be a positive int, got {max_workers!r}")
    if not address:
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=max_workers or os.cpu_count() or 1)
    from prefect_dask import DaskTaskRunner

    if address == "local":
        workers = max_workers or min(2, os.cpu_count() or 1)
        # the dashboard on the loopback interface only (":0" would listen on every interface)
        return DaskTaskRunner(
            cluster_kwargs={
                "n_workers": workers,
                "threads_per_worker": 1,
                "processes": False,
                "dashboard_address": f"{LOCAL_HOST}:0",
            }
        )
    return DaskTaskRunner(address=address)


# -- which Prefect API a command-line run reports to ----------------------------------------------


def api_healthy(api_url: str, timeout: float = 2.0) -> bool:
    """True if a Prefect API answers ``GET <api_url>/health`` with 200."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(api_url.rstrip("/") + "/health", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


# What a temporary server (one command's lifetime) is started without, unless the environment
# says otherwise: automations (the triggers service and the actions it runs, whose start builds a
# second copy of the API app: 0.3-0.4 s before the server answered).
TEMPORARY_SERVER_SETTINGS = {"PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED": "false"}
# ... and, on a database that a server has used before, the block-type registration: even when
# it has nothing to do, deciding so imports every installed Prefect collection (prefect-dask and
# dask.distributed: 0.2-0.3 s before the server answered). `make serve`'s server still registers.
KNOWN_DATABASE_SETTINGS = {
    "PREFECT_SERVER_REGISTER_BLOCKS_ON_START": "false",
    "PREFECT_SERVER_MEMOIZE_BLOCK_AUTO_REGISTRATION": "false",
}
DATABASE_URL_VARIABLES = ("PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_SERVER_DATABASE_CONNECTION_URL")


def temporary_server_settings(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The settings a temporary server is started with (:data:`TEMPORARY_SERVER_SETTINGS`, and
    :data:`KNOWN_DATABASE_SETTINGS` when ``$PREFECT_HOME/prefect.db`` exists and no other
    database is configured); variables in ``environ`` (default ``os.environ``) win."""
    environ = os.environ if environ is None else environ
    settings = dict(TEMPORARY_SERVER_SETTINGS)
    home = environ.get("PREFECT_HOME")
    if home and not any(environ.get(name) for name in DATABASE_URL_VARIABLES):
        if (Path(home).expanduser() / "prefect.db").is_file():
            settings.update(KNOWN_DATABASE_SETTINGS)
    return {**settings, **{k: v for k, v in environ.items() if k in settings}}


def _spawn_api_server() -> tuple[Any, int] | None:
    """Start Prefect's API server at once, before this process has imported Prefect: the command
    Prefect's own temporary server runs (``SubprocessASGIServer``: uvicorn on
    ``prefect.server.api.server:create_app``, UI off, ephemeral), on a free loopback port, without
    what a temporary server does not need (:func:`temporary_server_settings`).

    The server needs about 3 s to answer (2 s of it importing its own modules): started first,
    it comes up while this process imports Prefect, torch and tmcore. It is stopped when this
    process exits, however it ends. Returns (process, port), or None without Prefect.
    """
    import atexit
    import importlib.util
    import socket
    import subprocess
    import sys

    spec = importlib.util.find_spec("prefect")
    if spec is None or not spec.submodule_search_locations:
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOCAL_HOST, 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "--app-dir",
        str(Path(next(iter(spec.submodule_search_locations))).parent),
    ]
    command += ["--factory", "prefect.server.api.server:create_app", "--host", LOCAL_HOST, "--port", str(port)]
    command += ["--log-level", "error", "--lifespan", "on"]
    environment = {
        **os.environ,
        **temporary_server_settings(),
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
    }
    environment.pop("PREFECT_API_URL", None)
    process = subprocess.Popen(command, env=environment)
    atexit.register(_stop_spawned, (process, port))  # whatever way this process ends (an early exit included)
    return process, port


def _stop_spawned(spawned: tuple[Any, int] | None) -> None:
    """Stop a server started by :func:`_spawn_api_server` (nothing if it has exited)."""
    if spawned is not None and spawned[0].poll() is None:
        spawned[0].terminate()
        try:
            spawned[0].wait(timeout=10)
        except Exception:  # noqa: BLE001  (it will not stop: kill it)
            spawned[0].kill()


def _set_api_url(url: str | None) -> bool:
    """Make ``url`` Prefect's API URL for the whole process (None: unset it): the environment
    variable, and Prefect's process-wide settings rebuilt from it
    (``prefect.context.refresh_global_settings_context``, what Prefect itself calls after its
    plugins set variables), so every thread, Prefect's log and event workers included, reports
    there. False if Prefect's settings do not follow (its internals moved)."""
    if url is None:
        os.environ.pop("PREFECT_API_URL", None)
    else:
        os.environ["PREFECT_API_URL"] = url
    try:
        from prefect.context import refresh_global_settings_context
        from prefect.settings import get_current_settings

        refresh_global_settings_context()
        return get_current_settings().api.url == url
    except Exception:  # noqa: BLE001
        return False


def _hand_over(spawned: tuple[Any, int]) -> str | None:
    """Make the spawned server Prefect's API (:func:`_set_api_url`) unless an API URL is
    configured otherwise (a profile, ``prefect.toml``); its URL, or None."""
    from prefect.settings import get_current_settings

    if get_current_settings().api.url:
        return None
    url = f"http://{LOCAL_HOST}:{spawned[1]}/api"
    if _set_api_url(url):
        return url
    _set_api_url(None)
    return None


def _wait_healthy(spawned: tuple[Any, int], url: str, timeout: float) -> bool:
    """Wait until the spawned server answers at ``url``; False if it exits or stays silent."""
    import time

    process = spawned[0]
    deadline = time.monotonic() + timeout
    while not api_healthy(url, timeout=1.0):
        if process.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _first_request(url: str) -> None:
    """Send the request Prefect's client sends first (the API version). The server builds its
    routes on the first request it routes (0.2-0.4 s here, ``/health`` excepted): done now, it
    overlaps whatever this process still has to import."""
    import urllib.request

    try:
        with urllib.request.urlopen(url.rstrip("/") + "/admin/version", timeout=10) as response:
            response.read()
    except OSError:  # the client will find out and say so
        pass


def preload(modules: Iterable[str]) -> Any:
    """Import ``modules`` in a background thread (those not installed are skipped); returns the
    started thread. For the idle wait while the API server starts: ``join()`` it before the
    work that needs them (and before importing anything else, so the two threads never import
    into each other)."""
    import importlib
    import threading

    def run() -> None:
        for name in modules:
            try:
                importlib.import_module(name)
            except ImportError:
                pass

    thread = threading.Thread(target=run, name="preload", daemon=True)
    thread.start()
    return thread


def _choose_api(spawned: tuple[Any, int] | None = None, handed: str | None = None) -> tuple[str, str | None]:
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if spawned is not None and handed is not None:
        if _wait_healthy(spawned, handed, settings.server.ephemeral.startup_timeout_seconds):
            _first_request(handed)
            return "temporary", handed
        import logging

        logging.getLogger(__name__).warning("the early Prefect server did not answer; Prefect starts its own")
        _stop_spawned(spawned)
        _set_api_url(None)
        return "temporary", None  # Prefect's client starts its temporary server when it first needs one
    url = settings.api.url
    if url and api_healthy(url):
        _stop_spawned(spawned)
        return "server", url
    _stop_spawned(spawned)
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # Prefect's own temporary server: the one its client starts and reuses
    server.start()
    return ("unreachable", url) if url else ("temporary", server.api_url)


def prepare_api(preflight: Callable[[], Any] | None = None) -> Any:
    """Choose the Prefect API of a command-line run, in a background thread; returns a
    future of ``(kind, url)``:

    - ``("server", url)``: ``PREFECT_API_URL`` is set and a server answers there (``make
      serve``'s, say): the run reports to it, and no temporary server is started;
    - ``("temporary", url)``: no URL set: a temporary server, Prefect's own server command
      started here at once (:func:`_spawn_api_server`), so that its start-up (about 3 s)
      overlaps the import of Prefect, torch and tmcore, and made Prefect's API URL for this
      process (:func:`_set_api_url`): Prefect's client never imports its server code (2 s of
      this process's time, beside the server's own start, on two cores);
    - ``("unreachable", url)``: a URL is set and nothing answers: a temporary server is
      started all the same, and the caller runs with the URL unset (:func:`api_settings`)
      and says so.

    Call it before the heavy imports (it imports Prefect's settings); ``.result()`` before the
    first flow runs. ``preflight``: the command's checks, run once the server's process is
    started (they import numpy: 0.06-0.1 s earlier start); an exit there stops the server.
    """
    import concurrent.futures

    # a URL in the environment is (almost always) a running server: nothing to start
    spawned = None if os.environ.get("PREFECT_API_URL") else _spawn_api_server()
    if preflight is not None:
        preflight()
    handed = _hand_over(spawned) if spawned is not None else None
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefect-api")
    future = executor.submit(_choose_api, spawned, handed)
    executor.shutdown(wait=False)
    return future


def api_settings(kind: str) -> Any:
    """The settings context a run uses for the API ``kind`` chosen by :func:`prepare_api`.

    Unreachable: the URL unset, so Prefect starts its temporary server. Temporary (and
    unreachable): no flow-run heartbeats. They let a server's automations find crashed runs;
    a temporary server runs none and ends with the command, and the heartbeat thread, which
    sleeps in one-second steps, held the end of every run for up to 1 s (0.5 s on average).
    """
    import contextlib

    if kind not in ("temporary", "unreachable"):
        return contextlib.nullcontext()
    from prefect.settings import PREFECT_API_URL, temporary_settings

    updates = {"flows.heartbeat_frequency": None}
    return temporary_settings(updates=updates, restore_defaults={PREFECT_API_URL} if kind == "unreachable" else None)


def exit_now(code: int = 0) -> None:
    """End a command-line run once its work is done: run the ``atexit`` handlers (Prefect's
    log and event workers drain, its temporary server stops), flush, and leave without the
    interpreter's own teardown, which took 2-6 s here after torch, Prefect and their threads
    were loaded (measured: ``make serve`` exited 5-6 s after its last line, 0.8 s without)."""
    import atexit
    import sys

    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)
