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
from collections.abc import Iterable
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


def _spawn_api_server() -> tuple[Any, int] | None:
    """Start Prefect's API server at once, before this process has imported Prefect: the command
    Prefect's own temporary server runs (``SubprocessASGIServer``: uvicorn on
    ``prefect.server.api.server:create_app``, UI off, ephemeral), on a free loopback port.

    Prefect's client starts that server only after importing its server module (about 2 s here),
    and the server then needs about 3 s to answer: started first, the server comes up while this
    process imports Prefect, torch and tmcore. Returns (process, port), or None without Prefect.
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
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
    }
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


def _adopt(spawned: tuple[Any, int], timeout: float) -> str | None:
    """Wait for the spawned server to answer and make it the temporary server Prefect's client
    uses (and stops at exit); its API URL, or None if it exits or stays silent."""
    import atexit
    import time

    from prefect.server.api.server import SubprocessASGIServer

    process, port = spawned
    url = f"http://{LOCAL_HOST}:{port}/api"
    deadline = time.monotonic() + timeout
    while not api_healthy(url, timeout=1.0):
        if process.poll() is not None or time.monotonic() > deadline:
            return None
        time.sleep(0.05)
    server = SubprocessASGIServer()  # the instance Prefect's client asks for when no API URL is set
    if server.running:  # Prefect started one meanwhile: use that
        return None
    server.port, server.server_process, server.running = port, process, True
    atexit.register(server.stop)
    return url


def _choose_api(spawned: tuple[Any, int] | None = None) -> tuple[str, str | None]:
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    url = settings.api.url
    if url and api_healthy(url):
        _stop_spawned(spawned)
        return "server", url
    if spawned is not None and not url:
        try:
            adopted = _adopt(spawned, settings.server.ephemeral.startup_timeout_seconds)
        except Exception as error:  # noqa: BLE001  (Prefect's internals moved: let Prefect start its own)
            import logging

            logging.getLogger(__name__).warning("the early Prefect server could not be used (%s)", error)
            adopted = None
        if adopted is not None:
            return "temporary", adopted
    _stop_spawned(spawned)
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # Prefect's own temporary server: the one its client starts and reuses
    server.start()
    return ("unreachable", url) if url else ("temporary", server.api_url)


def prepare_api() -> Any:
    """Choose the Prefect API of a command-line run, in a background thread; returns a
    future of ``(kind, url)``:

    - ``("server", url)``: ``PREFECT_API_URL`` is set and a server answers there (``make
      serve``'s, say): the run reports to it, and no temporary server is started;
    - ``("temporary", url)``: no URL set: a temporary server, Prefect's own command started
      here at once (:func:`_spawn_api_server`), so that its start-up (several seconds)
      overlaps the import of Prefect, torch and tmcore, and handed to Prefect's client;
    - ``("unreachable", url)``: a URL is set and nothing answers: a temporary server is
      started all the same, and the caller runs with the URL unset (:func:`api_settings`)
      and says so.

    Call it before the heavy imports; ``.result()`` before the first flow runs.
    """
    import concurrent.futures

    # a URL in the environment is (almost always) a running server: nothing to start
    spawned = None if os.environ.get("PREFECT_API_URL") else _spawn_api_server()
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefect-api")
    future = executor.submit(_choose_api, spawned)
    executor.shutdown(wait=False)
    return future


def api_settings(kind: str) -> Any:
    """The settings context a run uses for the API ``kind`` chosen by :func:`prepare_api`
    (unreachable: the URL unset, so Prefect starts its temporary server)."""
    import contextlib

    if kind != "unreachable":
        return contextlib.nullcontext()
    from prefect.settings import PREFECT_API_URL, temporary_settings

    return temporary_settings(restore_defaults={PREFECT_API_URL})


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
