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


def _choose_api() -> tuple[str, str | None]:
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if url and api_healthy(url):
        return "server", url
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # Prefect's own temporary server: the one its client starts and reuses
    server.start()
    return ("unreachable", url) if url else ("temporary", server.api_url)


def prepare_api() -> Any:
    """Choose the Prefect API of a command-line run, in a background thread; returns a
    future of ``(kind, url)``:

    - ``("server", url)``: ``PREFECT_API_URL`` is set and a server answers there (``make
      serve``'s, say): the run reports to it, and no temporary server is started;
    - ``("temporary", url)``: no URL set: Prefect's temporary server, started now, so that
      its start-up (several seconds) overlaps the import of torch and tmcore;
    - ``("unreachable", url)``: a URL is set and nothing answers: a temporary server is
      started all the same, and the caller runs with the URL unset (:func:`api_settings`)
      and says so.

    Call it before the heavy imports; ``.result()`` before the first flow runs.
    """
    import concurrent.futures

    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefect-api")
    future = executor.submit(_choose_api)
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
