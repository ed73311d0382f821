"""Run mosaic's harness on tmcore and write the report.

    python -m integrations.mosaic.run [--quick] [--problems P ...] [--suites S ...]
        [--max-cost-n N] [--max-iters N] [--no-endpoints] [--recovery-seeds K] [--out DIR] [--results DIR]

For each problem (thermal-mesh, structural-mesh): mosaic's suites in-process
(:mod:`integrations.mosaic.harness`) and the endpoint timings; then, for every problem with
results in ``--results``, ``<out>/mosaic.md``, ``<out>/mosaic.nc`` and mosaic's plots under
``<out>/<problem>/`` (so ``--suites cost`` after a run of the other suites completes it). ``--quick``: the cost
sweeps up to N = 64 (thermal) / 8 (structural) and at most 100 optimisation iterations (a
few minutes); otherwise mosaic's own sizes. With the thermal optimisation suite, the
conductivity-recovery study (:mod:`integrations.mosaic.recovery`) runs too.
Defaults: ``--out reports/mosaic/<full|quick>``,
``--results data/mosaic/<full|quick>`` (mosaic's raw result tree, git-ignored; beside the artifact store, not in it).
Exits 1 when a mosaic status cell is not ok (the report is written first).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from flows.artifacts import atomic_write_text

from . import harness, recovery, report

logger = logging.getLogger(__name__)

QUICK = {
    "thermal-mesh": harness.Limits(max_cost_n=64, max_iters=100),
    "structural-mesh": harness.Limits(max_cost_n=8, max_iters=100),
}
# mosaic's own sizes. The longest parts on the shared 2-core machine: the thermal cost sweep (to N = 1024)
# ~8 min, the structural topology optimisation (2500 Adam iterations) 8-17 min depending on the load;
# run them as separate parts (--suites) to keep each run short.
FULL = {problem: harness.Limits() for problem in harness.PROBLEMS}
ENDPOINT_MAX_N = 512  # the endpoint timings (outside the harness) stop here: 4 calls x 4 rounds per size


def _merge_json(path: Path, update: Mapping) -> dict:
    """The JSON object at ``path`` updated with ``update`` (written back atomically)."""
    current = json.loads(path.read_text()) if path.is_file() else {}
    current.update(update)
    atomic_write_text(path, json.dumps(current, indent=1, sort_keys=True) + "\n")
    return current


def run(
    problems: Sequence[str],
    limits: Mapping[str, harness.Limits],
    results: Path,
    out: Path,
    mode: str,
    suites: Sequence[str] = harness.SUITES,
    endpoints: bool = True,
    recovery_seeds: int = 5,
):
    """Run ``suites`` of ``problems``, then write the report of every problem in ``results``; the report Dataset.

    A run replaces the results of the suites it runs and keeps the others, so a long
    benchmark can be run in parts (``--suites cost`` after the rest). Beside mosaic's files,
    ``<results>/<problem>/`` keeps tmcore's own records: ``tmcore_wall_seconds.json`` (per
    experiment), ``tmcore_endpoints.json`` (endpoint timings per N), ``tmcore_notes.json``
    (what the limits left out, per suite) and, with the thermal optimisation suite,
    ``tmcore_recovery.json`` (:func:`integrations.mosaic.recovery.study`, ``recovery_seeds``
    perturbed starts per configuration; 0: not run).
    """
    for problem in problems:
        folder = Path(results) / problem
        for suite in suites:  # mosaic merges with earlier results otherwise
            shutil.rmtree(folder / suite, ignore_errors=True)
        start = time.perf_counter()
        _merge_json(folder / "tmcore_wall_seconds.json", harness.run_problem(problem, results, limits[problem], suites))
        notes = harness.limit_notes(problem, limits[problem])
        by_suite = {suite: [n for n in notes if f" {suite}/" in n] for suite in suites}
        if endpoints and "cost" in suites:
            cap = min(limits[problem].max_cost_n or ENDPOINT_MAX_N, ENDPOINT_MAX_N)
            timed = harness.endpoint_timings(problem, max_n=cap)
            _merge_json(folder / "tmcore_endpoints.json", {"timings": timed})
            _, _, sizes = harness._cost_physics(harness.problem_config(problem))
            if max(sizes) > max(timed):
                by_suite["cost"].append(
                    f"{problem} endpoint timings: up to N = {max(timed)} (larger: mosaic's cost suite only)"
                )
        if problem == "thermal-mesh" and "optimization" in suites and recovery_seeds > 0:
            study = recovery.study(seeds=range(1, recovery_seeds + 1))
            atomic_write_text(folder / "tmcore_recovery.json", json.dumps(study, indent=1, sort_keys=True) + "\n")
        _merge_json(folder / "tmcore_notes.json", by_suite)
        logger.info("%s: %.0f s", problem, time.perf_counter() - start)
    return write(results, out, mode)


def write(results: Path, out: Path, mode: str):
    """The report of every problem with results under ``results`` (mosaic's files and tmcore's
    records beside them): ``<out>/mosaic.md``, ``<out>/mosaic.nc`` and the plots; the Dataset."""
    import torch

    present = [p for p in harness.PROBLEMS if (Path(results) / p).is_dir()]
    summaries, statuses, timings, seconds, recoveries, notes = {}, {}, {}, {}, {}, []
    for problem in present:
        folder = Path(results) / problem
        summaries[problem] = report.summarize(results, problem)
        statuses[problem] = report.status_cells(harness.status_of(problem, results))
        seconds[problem] = _merge_json(folder / "tmcore_wall_seconds.json", {})
        recorded = _merge_json(folder / "tmcore_endpoints.json", {}).get("timings", {})
        timings[problem] = {int(n): t for n, t in recorded.items()}
        notes += [n for lines in _merge_json(folder / "tmcore_notes.json", {}).values() for n in lines]
        if (folder / "tmcore_recovery.json").is_file():
            recoveries[problem] = json.loads((folder / "tmcore_recovery.json").read_text())
    attrs = {
        "mode": mode,
        "date": _dt.datetime.now(_dt.timezone.utc).date().isoformat(),
        "notes": "\n".join(notes),
        "torch_threads": torch.get_num_threads(),
        "mosaic_version": _version("mosaic-bench"),
        "tesseract_core_version": _version("tesseract-core"),
    }
    dataset = report.report_dataset(summaries, statuses, timings, seconds, attrs, recoveries)
    plots = report.copy_plots(results, out, present)
    netcdf, text = report.write_report(out, dataset, plots)
    logger.info("report: %s (+ %s, %d plots)", text, netcdf.name, len(plots))
    return dataset


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "not installed"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m integrations.mosaic.run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smallest sizes only (a few minutes)")
    parser.add_argument("--problems", nargs="+", default=list(harness.PROBLEMS), choices=harness.PROBLEMS)
    parser.add_argument("--suites", nargs="+", default=list(harness.SUITES), choices=harness.SUITES)
    parser.add_argument(
        "--max-cost-n", type=int, default=None, help="largest cost-suite mesh size (overrides the mode)"
    )
    parser.add_argument("--max-iters", type=int, default=None, help="optimisation iteration cap (overrides the mode)")
    parser.add_argument("--no-endpoints", action="store_true", help="skip the endpoint timings")
    parser.add_argument(
        "--recovery-seeds",
        type=int,
        default=None,
        help="perturbed starts of the conductivity-recovery study per configuration (default 5, quick 3; 0: skip)",
    )
    parser.add_argument("--report-only", action="store_true", help="run nothing: write the report of --results again")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default reports/mosaic/<mode>)")
    parser.add_argument("--results", type=Path, default=None, help="mosaic's result tree (default data/mosaic/<mode>)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    mode = "quick" if args.quick else "full"
    limits = dict(QUICK if args.quick else FULL)
    for problem, limit in limits.items():
        changes = {k: v for k, v in (("max_cost_n", args.max_cost_n), ("max_iters", args.max_iters)) if v is not None}
        limits[problem] = harness.Limits(**{**limit.__dict__, **changes})
    out = args.out or Path("reports") / "mosaic" / mode
    results = args.results or Path("data") / "mosaic" / mode
    if args.report_only:
        dataset = write(results, out, mode)
    else:
        seeds = args.recovery_seeds if args.recovery_seeds is not None else (3 if args.quick else 5)
        dataset = run(
            args.problems,
            limits,
            results,
            out,
            mode,
            args.suites,
            endpoints=not args.no_endpoints,
            recovery_seeds=seeds,
        )
    failed = report.failed_checks(dataset)
    print(f"mosaic ({mode}): {len(failed)} status cell(s) not ok; report {out / 'mosaic.md'}")
    for line in failed:
        print("  " + line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
