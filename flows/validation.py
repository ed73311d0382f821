"""The validation benchmark flow: run benchmark suites, write a dated report, fail on a miss.

    python -m flows.validation [--suites mms gradients timings] [--no-cache] [--out DIR] [--dask-address ADDR]

``validation-benchmark`` runs the named suites of :mod:`flows.benchmarks` (each a set of
checks: convergence rates, gradient checks, timings), gathers their rows in one table
(dim ``case``), writes ``<out>/validation-<date>.nc`` and ``.md`` (default
``reports/benchmarks``), publishes the table in the Prefect UI and then fails (flow state
Failed, :class:`BenchmarkFailure`) if any check fell outside its tolerance. Served as
``validation-benchmark/nightly`` on a cron schedule with ``use_cache=False``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from prefect import flow

from . import preflight
from .artifacts import Store, provenance
from .benchmarks import Check, Context, get_suite
from .caching import tmcore_hash
from .cli import add_dask_argument, add_run_arguments, on_dask, run_to_exit_code
from .parameters import Date, SuiteNames
from .reports import markdown_table, table_rows, ui_markdown, ui_table, write_table
from .runners import run_tags, tag_flow_run, task_runner

DEFAULT_OUT = Path("reports") / "benchmarks"
DEFAULT_SUITES = ("mms", "gradients", "timings")


class BenchmarkFailure(RuntimeError):
    """One or more benchmark checks fell outside their tolerance."""


def benchmark_table(checks: Sequence[Check], attrs: Mapping[str, Any] | None = None) -> xr.Dataset:
    """The benchmark table: one row per check along dim ``case``."""
    cases = [check.case for check in checks]
    if len(set(cases)) != len(cases):
        raise ValueError(
            f"benchmark case names must be unique, got duplicates {sorted({c for c in cases if cases.count(c) > 1})}"
        )
    rows = [check.row() for check in checks]
    columns = {}
    for name in ("suite", "quantity", "value", "unit", "expected", "low", "high", "status"):
        values = [row[name] for row in rows]
        columns[name] = (
            ("case",),
            np.asarray(values, dtype=np.float64 if name in ("value", "expected", "low", "high") else object),
        )
    return xr.Dataset(columns, coords={"case": np.asarray(cases, dtype=object)}, attrs=dict(attrs or {}))


def _run_name() -> str:
    """``validation-2026-12-02`` (``-fresh`` when nothing is taken from the cache)."""
    from prefect.runtime import flow_run

    parameters = flow_run.parameters
    date = parameters.get("date") or _dt.datetime.now(_dt.timezone.utc).date().isoformat()
    return f"validation-{date}" + ("" if parameters.get("use_cache", True) else "-fresh")


@flow(name="validation-benchmark", task_runner=task_runner(), log_prints=True, flow_run_name=_run_name)
def validation_benchmark(
    suites: SuiteNames = list(DEFAULT_SUITES),
    options: dict[str, dict[str, Any]] | None = None,
    use_cache: bool = True,
    store: str | None = None,
    out: str = str(DEFAULT_OUT),
    date: Date | None = None,
) -> dict[str, Any]:
    """Run ``suites`` (keyword ``options`` per suite name), write the dated report, fail on a miss.

    Args:
        suites: benchmark suites to run (mms: convergence rates; gradients: gradient checks; timings: step times).
        options: keyword options per suite, e.g. {"mms": {"sizes": [8, 16, 32]}} (empty: the defaults).
        use_cache: take unchanged stages from the cache; false recomputes all, so this run measures timings.
        store: artifact store folder, relative to where the run executes (empty: $TMCORE_ARTIFACTS or data/artifacts).
        out: folder of the dated report (validation-<date>.nc and .md).
        date: the report's date, YYYY-MM-DD (empty: today, UTC); it names the report files.
    """
    options = dict(options or {})
    unknown = sorted(set(options) - set(suites))
    if unknown:
        raise ValueError(f"options given for suites that are not run: {unknown}")
    suite_functions = {name: get_suite(name) for name in suites}  # unknown names fail before any work
    date = date or _dt.datetime.now(_dt.timezone.utc).date().isoformat()
    tag_flow_run(run_tags("validation"))
    context = Context(Store(store), use_cache=use_cache)
    checks: list[Check] = []
    for name, suite in suite_functions.items():
        checks += suite(context, **options.get(name, {}))

    attrs = provenance({"suites": list(suites), "options": options, "use_cache": use_cache})
    attrs.update({"date": date, "tmcore_source_sha256": tmcore_hash(), "n_checks": len(checks)})
    failed = [check for check in checks if not check.passed]
    attrs["n_failed"] = len(failed)
    table = benchmark_table(checks, attrs)
    status = (
        "all checks passed" if not failed else f"{len(failed)} check(s) FAILED: {', '.join(c.case for c in failed)}"
    )
    netcdf, markdown = write_table(
        table, "case", Path(out) / f"validation-{date}", f"Validation benchmark {date}", notes=status
    )
    rows = table_rows(table, "case")
    ui_table("validation-benchmark", rows, f"validation benchmark {date}: {status}")
    ui_markdown("validation-benchmark-report", markdown.read_text(), f"validation benchmark {date}")
    print(f"validation benchmark {date}: {len(checks)} checks, {status}; report {markdown} (+ .nc)")
    if failed:
        raise BenchmarkFailure(
            f"{len(failed)} benchmark check(s) outside tolerance (report {markdown}):\n"
            + markdown_table([check.row() for check in failed])
        )
    return {"netcdf": str(netcdf), "markdown": str(markdown), "rows": rows, "date": date}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.validation", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--suites", nargs="+", default=list(DEFAULT_SUITES), help=f"suites to run (default: {' '.join(DEFAULT_SUITES)})"
    )
    parser.add_argument(
        "--options",
        type=json.loads,
        default=None,
        help='per-suite options as JSON, e.g. \'{"mms": {"sizes": [4, 8]}}\'',
    )
    add_dask_argument(parser)
    add_run_arguments(parser, DEFAULT_OUT, "recompute every stage (fresh timings)")
    args = parser.parse_args(argv)
    preflight.run_or_exit(store=args.store, out=args.out)  # before any work: one line naming a bad path
    return run_to_exit_code(
        on_dask(validation_benchmark, args.dask_address), args, suites=args.suites, options=args.options
    )


if __name__ == "__main__":
    sys.exit(main())
