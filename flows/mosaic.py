"""The external benchmark: mosaic's harness on tmcore's Tesseracts, as a Prefect flow.

    python -m flows.mosaic [--quick] [--problems thermal-mesh structural-mesh] [--no-cache]
                           [--python PATH] [--store DIR] [--out DIR]

``mosaic-benchmark`` runs, for each problem, the cached stage ``mosaic_problem``: mosaic's
forward, gradient, cost and optimisation suites on tmcore plus the endpoint timings
(:mod:`integrations.mosaic`), in a subprocess of the interpreter that has ``mosaic-bench``
and ``tesseract-core`` installed (``python``: default ``$TMCORE_MOSAIC_PYTHON``, else
``.venv-mosaic/bin/python`` when it exists, else this interpreter; mosaic's pins would
change packages of the main environment, docs/mosaic.md). The stage stores the problem's
report Dataset (kind ``benchmark``) and mosaic's plots (kind ``figure``) and returns their
references. The flow body then publishes, every run, ``<out>/<quick|full>/mosaic.{md,nc}``
and the plots, a table and the report in the Prefect UI, and fails (:class:`MosaicFailure`)
when a mosaic status cell is not ok; the report is written first.

Keyed on the problem, the mode, the limits and the code of tmcore and of the integration;
the interpreter and the time limit are not part of the key. ``use_cache=False`` reruns
everything (fresh timings), as the scheduled deployment does.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from prefect import flow

from integrations.mosaic import report

from .artifacts import Store
from .caching import Bound, cached_task
from .cli import add_run_arguments, run_to_exit_code
from .reports import ui_markdown, ui_table
from .runners import task_runner

DEFAULT_OUT = Path("reports") / "mosaic"
PROBLEMS = ("thermal-mesh", "structural-mesh")
ENV_PYTHON = "TMCORE_MOSAIC_PYTHON"
ROOT = Path(__file__).resolve().parents[1]  # the checkout: integrations/ is importable from here
MOSAIC_VENV_PYTHON = Path(".venv-mosaic") / "bin" / "python"  # relative to ROOT
STAGE_TIMEOUT_S = 3600  # one problem's full run took ~15 min on 2 shared cores
INTEGRATION = (
    "integrations.mosaic.solver",
    "integrations.mosaic.endpoints",
    "integrations.mosaic.harness",
    "integrations.mosaic.report",
    "integrations.mosaic.run",
    "integrations.mosaic.published",
    "integrations.mosaic.compat",
    "integrations.mosaic.recovery",
)


class MosaicFailure(RuntimeError):
    """One or more of mosaic's status cells for tmcore is not ok."""


def mosaic_python(python: str | None = None) -> str:
    """The interpreter that runs mosaic: ``python``, ``$TMCORE_MOSAIC_PYTHON``, ``.venv-mosaic``, or this one."""
    if python:
        return python
    if os.environ.get(ENV_PYTHON):
        return os.environ[ENV_PYTHON]
    venv = ROOT / MOSAIC_VENV_PYTHON  # not resolved: the venv's python is a symlink to the base interpreter
    return str(venv) if venv.exists() else sys.executable


@cached_task("mosaic_problem", sources=INTEGRATION, unkeyed=("python", "timeout_s"))
def mosaic_problem(
    store: str,
    problem: str,
    quick: bool = False,
    max_cost_n: int | None = None,
    max_iters: int | None = None,
    python: str | None = None,
    timeout_s: float = STAGE_TIMEOUT_S,
) -> dict[str, Any]:
    """mosaic's suites on tmcore for one problem -> {"report": benchmark ref, "plots": {path: figure ref}}."""
    if problem not in PROBLEMS:
        raise ValueError(f"problem must be one of {PROBLEMS}, got {problem!r}")
    store = Store(store)
    with tempfile.TemporaryDirectory(prefix="tmcore-mosaic-") as work:
        out, results = Path(work) / "out", Path(work) / "results"
        command = [mosaic_python(python), "-m", "integrations.mosaic.run", "--problems", problem]
        command += ["--out", str(out), "--results", str(results)] + (["--quick"] if quick else [])
        command += ["--max-cost-n", str(max_cost_n)] if max_cost_n is not None else []
        command += ["--max-iters", str(max_iters)] if max_iters is not None else []
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
        # exit 1: a status cell is not ok, the report is there (the flow fails after publishing)
        if done.returncode not in (0, 1) or not (out / "mosaic.nc").is_file():
            raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr[-4000:]}")
        dataset = report.dataset_from_file(out / "mosaic.nc")
        plots = {
            png.relative_to(out).as_posix(): store.put_bytes(png.read_bytes(), "figure", ".png")
            for png in sorted(out.rglob("*.png"))
        }
    return {"report": store.put_dataset(dataset, "benchmark"), "plots": plots}


@flow(name="mosaic-benchmark", task_runner=task_runner(), log_prints=True)
def mosaic_benchmark(
    problems: list[Literal["thermal-mesh", "structural-mesh"]] = list(PROBLEMS),
    quick: bool = False,
    use_cache: bool = True,
    python: str | None = None,
    store: str | None = None,
    out: str = str(DEFAULT_OUT),
) -> dict[str, Any]:
    """mosaic's suites on tmcore beside mosaic 0.2.0's published numbers; Failed when a status cell is not ok.

    Args:
        problems: mosaic problems to run (thermal-mesh, structural-mesh).
        quick: smallest sizes only (cost sweeps to N = 64 / 8, 100 optimisation iterations): a few minutes.
        use_cache: reuse a finished problem run with the same parameters and code (False: rerun, fresh timings).
        python: interpreter with mosaic-bench and tesseract-core (default $TMCORE_MOSAIC_PYTHON or .venv-mosaic).
        store: artifact store (default $TMCORE_ARTIFACTS or data/artifacts).
        out: report folder; the report goes to <out>/<quick|full>/mosaic.md and .nc, with mosaic's plots.
    """
    store_ = Store(store)
    stage = Bound(mosaic_problem, store_, refresh=not use_cache)
    # one after another: each problem's cost suite times itself on the machine's cores
    results = {problem: stage(problem=problem, quick=quick, python=python) for problem in problems}
    datasets = [store_.open_dataset(results[p]["report"], "benchmark") for p in problems]
    dataset = report.combine(datasets)
    mode = "quick" if quick else "full"
    folder = Path(out) / mode
    plots = []
    for result in results.values():
        for relative, ref in result["plots"].items():
            store_.copy_to(ref, folder / relative)
            plots.append(relative)
    netcdf, text = report.write_report(folder, dataset, plots)
    failed = report.failed_checks(dataset)
    status = "every mosaic status check ok" if not failed else f"{len(failed)} status cell(s) not ok"
    ui_table("mosaic-benchmark", report.status_rows(dataset), f"mosaic on tmcore ({mode}): {status}")
    ui_markdown("mosaic-benchmark-report", text.read_text(), f"mosaic on tmcore ({mode})")
    print(f"mosaic-benchmark ({mode}): {status}; report {text} (+ {netcdf.name}, {len(plots)} plots)")
    if failed:
        raise MosaicFailure(f"mosaic status cells not ok (report {text}):\n" + "\n".join(failed))
    return {"markdown": str(text), "netcdf": str(netcdf), "status": status}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.mosaic", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smallest sizes only (a few minutes)")
    parser.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=PROBLEMS)
    parser.add_argument(
        "--python", default=None, help=f"interpreter with mosaic (default ${ENV_PYTHON} or {MOSAIC_VENV_PYTHON})"
    )
    add_run_arguments(parser, DEFAULT_OUT, "rerun every problem (fresh timings)")
    args = parser.parse_args(argv)
    return run_to_exit_code(mosaic_benchmark, args, problems=args.problems, quick=args.quick, python=args.python)


if __name__ == "__main__":
    sys.exit(main())
