"""What the flows' command lines share: the store/cache/report arguments, the Dask address and the exit status.

parser = argparse.ArgumentParser(...)
...                                             # the flow's own arguments
add_run_arguments(parser, DEFAULT_OUT, "rerun every stage (fresh timings)")
args = parser.parse_args(argv)
return run_to_exit_code(flow, args, suites=args.suites)
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .runners import task_runner

__all__ = ["add_dask_argument", "add_run_arguments", "on_dask", "run_to_exit_code"]


def add_run_arguments(parser: argparse.ArgumentParser, default_out: str | Path, no_cache_help: str) -> None:
    """``--no-cache`` (help ``no_cache_help``), ``--store`` (the artifact store) and ``--out`` (the report folder)."""
    parser.add_argument("--no-cache", action="store_true", help=no_cache_help)
    parser.add_argument("--store", default=None, help="artifact store (default $TMCORE_ARTIFACTS or data/artifacts)")
    parser.add_argument("--out", default=str(default_out), help=f"report folder (default {default_out})")


def run_to_exit_code(flow: Any, args: argparse.Namespace, **parameters: Any) -> int:
    """Run ``flow(**parameters)`` with the arguments of :func:`add_run_arguments`; 0 when it completed, else 1."""
    state = flow(**parameters, use_cache=not args.no_cache, store=args.store, out=args.out, return_state=True)
    return 0 if state.is_completed() else 1


def add_dask_argument(parser: argparse.ArgumentParser) -> None:
    """``--dask-address``: run the flow's tasks on a dask.distributed scheduler (see :func:`on_dask`)."""
    parser.add_argument(
        "--dask-address",
        default=None,
        help="run the tasks on this dask.distributed scheduler ('local': a LocalCluster)",
    )


def on_dask(flow: Any, address: str | None) -> Any:
    """``flow`` with its tasks on the scheduler at ``address`` (``"local"``: a LocalCluster); ``flow``
    itself when ``address`` is empty, so its own runner (``$TMCORE_DASK_ADDRESS`` included) applies."""
    if not address:
        return flow
    return flow.with_options(task_runner=task_runner(address))
