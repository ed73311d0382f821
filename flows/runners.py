"""The task runner of the flows: a thread pool by default, Dask given a scheduler address.

    TMCORE_DASK_ADDRESS=tcp://scheduler:8786   the same flows, tasks on a dask.distributed cluster
    TMCORE_DASK_ADDRESS=local                  a LocalCluster started for the run (tests, trials)

The flows read the variable when they are imported; ``task_runner(address)`` builds a
runner for ``flow.with_options(task_runner=...)``. Torch work on one machine runs best
on the thread pool (measured: a LocalCluster costs seconds to start); Dask earns its place
across machines. A cluster's workers need the artifact store at the same path (a shared
file system) and ``PREFECT_API_URL`` pointing at the server the flow reports to.
"""

from __future__ import annotations

import os
from typing import Any

ENV_DASK_ADDRESS = "TMCORE_DASK_ADDRESS"
ENV_MAX_WORKERS = "TMCORE_MAX_WORKERS"
LOCAL_HOST = "127.0.0.1"  # what a cluster started here listens on


def task_runner(address: str | None = None, max_workers: int | None = None) -> Any:
    """``ThreadPoolTaskRunner(max_workers)`` (default: the CPU count, or ``$TMCORE_MAX_WORKERS``)
    without an address; ``DaskTaskRunner`` with one (``"local"``: a LocalCluster of
    ``max_workers`` single-threaded workers, threads of this process so they share its Prefect API). None reads ``$TMCORE_DASK_ADDRESS``."""
    address = os.environ.get(ENV_DASK_ADDRESS) if address is None else address
    if max_workers is None and os.environ.get(ENV_MAX_WORKERS):
        max_workers = int(os.environ[ENV_MAX_WORKERS])
    if max_workers is not None and (isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1):
        raise ValueError(f"max_workers must be a positive int, got {max_workers!r}")
    if not address:
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=max_workers or os.cpu_count() or 1)
    from prefect_dask import DaskTaskRunner

    if address == "local":
        workers = max_workers or min(2, os.cpu_count() or 1)
        # the dashboard on the loopback interface only (":0" would listen on every interface)
        return DaskTaskRunner(
            cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": False, "dashboard_address": f"{LOCAL_HOST}:0"}
        )
    return DaskTaskRunner(address=address)
