"""mosaic's own harness, run in-process on the tmcore Tesseracts: the thin adapter.

Each problem's registered experiments run through mosaic's ``run_suite`` exactly as
``mosaic run`` would run them, with three differences, all made here rather than in a fork:

1. The solver list is tmcore alone, discovered by mosaic's own ``discover_solvers`` from
   ``tesseracts/<problem>/tmcore/tesseract_config.yaml``, and its tag is
   ``inprocess:<tesseract_api.py>`` (mosaic's runner then calls
   ``Tesseract.from_tesseract_api``: no Docker). The forward suites score against mosaic's
   checked-in references (float32 trimmed means over its solvers), so no peer has to run.
2. structural-mesh: mosaic's ``make_inputs`` passes a surface traction F / area to the
   solvers in a hard-coded set (its FEM solvers) and a nodal force F / n_nodes to the rest
   (TopOpt.jl). tmcore integrates a traction over the facets like the FEM solvers, so its
   inputs are built as theirs are (upstream fix: add "tmcore" to ``_traction_solvers`` in
   ``problems/structural_mesh/physics.py``).
3. Limits (:class:`Limits`): the cost sweeps can be capped at a mesh size and the
   optimisations at an iteration count, by passing the experiment closure a copy of its
   run configuration (its ``_kw`` argument) with the sweep values / ``max_iters`` cut.
   Everything else about the experiments (ICs, physics, FD steps, optimisers, status
   checks) is mosaic's.

Plots are drawn by mosaic's plot functions with this problem configuration (so the tmcore
curves are in them); results land under ``results_dir`` in mosaic's layout
(``<problem>/<suite>/<experiment>/result.json`` + npz + png).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import compat

__all__ = [
    "Limits",
    "PROBLEMS",
    "SUITES",
    "TESSERACTS",
    "endpoint_timings",
    "limit_notes",
    "problem_config",
    "run_problem",
    "status_of",
]

logger = logging.getLogger(__name__)

TESSERACTS = Path(__file__).resolve().parent / "tesseracts"
PROBLEMS = ("thermal-mesh", "structural-mesh")
SUITES = ("forward", "gradient", "cost", "optimization")
SOLVER = "tmcore"
COLOR = "#d62728"  # the tmcore curves in mosaic's plots
# a solver key mosaic's structural make_inputs hands a surface traction to (point 2 above)
TRACTION_PEER = "jax-fem"
# mosaic's SIMP material constants, as its problem configs pass them to the FEM solvers
INPUT_OVERRIDES = {
    "thermal-mesh": {"k_max": 1.0, "p_exp": 3.0},
    "structural-mesh": {"E_max": 70_000.0, "nu": 0.3, "xmin": 1e-3},
}


@dataclass(frozen=True)
class Limits:
    """Caps on mosaic's experiment sizes (None: mosaic's own).

    max_cost_n: largest mesh size (the sweep's nx / N) of the cost suite.
    max_iters: iteration cap of the optimisation experiments.
    experiments: only these experiment keys ("<suite>/<name>"), or None for all.
    """

    max_cost_n: int | None = None
    max_iters: int | None = None
    experiments: tuple[str, ...] | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)


def tesseract_api(problem: str) -> Path:
    """The ``tesseract_api.py`` of tmcore's backend for ``problem``."""
    return TESSERACTS / problem / SOLVER / "tesseract_api.py"


def problem_config(problem: str) -> Any:
    """mosaic's Problem for ``problem`` with tmcore as its only solver (see the module docstring)."""
    if problem not in PROBLEMS:
        raise ValueError(f"problem must be one of {PROBLEMS}, got {problem!r}")
    compat.ensure_mosaic_shared()
    from mosaic.benchmarks.core.config import discover_solvers
    from mosaic.benchmarks.problems import get_config

    cfg = get_config(problem)
    spec = discover_solvers(TESSERACTS / problem)[SOLVER]
    spec.input_overrides = dict(INPUT_OVERRIDES[problem])
    spec.color, spec.linestyle, spec.marker = COLOR, "-", "o"
    raw_make_inputs = cfg.make_inputs._mosaic_raw  # the problem's own make_inputs(spec, ic, **physics)
    if problem == "structural-mesh":

        def make_inputs(spec: Any, ic: Any, **physics: Any) -> dict:
            return raw_make_inputs(dataclasses.replace(spec, dir=TRACTION_PEER), ic, **physics)

    else:
        make_inputs = raw_make_inputs
    return dataclasses.replace(cfg, solvers=[spec], make_inputs=make_inputs, tesseract_dir=TESSERACTS / problem)


def limit_notes(problem: str, limits: Limits) -> list[str]:
    """What ``limits`` leave out of mosaic's own configuration for ``problem``, one line each."""
    cfg = problem_config(problem)
    notes = []
    for key, experiment in cfg.experiments.items():
        parameters = inspect.signature(experiment.fn).parameters
        if key.startswith("ics/") or "_kw" not in parameters:  # IC pictures, not benchmark experiments
            continue
        if limits.experiments is not None and key not in limits.experiments:
            notes.append(f"{problem} {key}: not run")
            continue
        for run in parameters["_kw"].default.get("runs", []):
            sweep, optim = run.get("sweep", {}), run.get("optim")
            if limits.max_cost_n is not None and "cost" in run and sweep.get("key") in ("nx", "N"):
                cut = [v for v in sweep["values"] if v > limits.max_cost_n]
                if cut:
                    notes.append(f"{problem} {key}: sizes {cut} left out (run up to {limits.max_cost_n})")
            if limits.max_iters is not None and optim and int(optim.get("max_iters", 0)) > limits.max_iters:
                notes.append(f"{problem} {key}: {limits.max_iters} of mosaic's {optim['max_iters']} iterations")
    return notes + list(limits.notes)


def _limited(fn: Any, limits: Limits) -> Any:
    """The experiment closure ``fn`` with its run configuration cut to ``limits``."""
    kw = inspect.signature(fn).parameters["_kw"].default
    if limits.max_cost_n is None and limits.max_iters is None:
        return fn
    kw = copy.deepcopy(kw)
    for run in kw.get("runs", []):
        sweep = run.get("sweep", {})
        if limits.max_cost_n is not None and sweep.get("key") in ("nx", "N") and "cost" in run:
            sweep["values"] = [v for v in sweep["values"] if v <= limits.max_cost_n]
        optim = run.get("optim")
        if limits.max_iters is not None and optim is not None:
            optim["max_iters"] = min(int(optim.get("max_iters", limits.max_iters)), limits.max_iters)

    def limited(cfg: Any, tags: dict, **overrides: Any) -> dict:
        return fn(cfg, tags, _kw=kw, **overrides)

    return limited


@contextlib.contextmanager
def _results_in(results_dir: Path) -> Iterator[None]:
    from mosaic.benchmarks.core.io import RESULTS_DIR_ENV

    previous = os.environ.get(RESULTS_DIR_ENV)
    os.environ[RESULTS_DIR_ENV] = str(Path(results_dir).resolve())
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(RESULTS_DIR_ENV, None)
        else:
            os.environ[RESULTS_DIR_ENV] = previous


def run_problem(
    problem: str, results_dir: Path, limits: Limits = Limits(), suites: Sequence[str] = SUITES, plots: bool = True
) -> dict[str, float]:
    """Run mosaic's suites on tmcore for ``problem``; results under ``results_dir``.

    Returns the wall time (s) of each experiment that ran, keyed "<suite>/<name>"; an
    experiment that raised is logged by mosaic's runner and has no entry.
    """
    from mosaic.benchmarks.cli._helpers import _suite_components
    from mosaic.benchmarks.core.runner import run_suite

    cfg = problem_config(problem)
    tags = {SOLVER: f"inprocess:{tesseract_api(problem)}"}
    seconds: dict[str, float] = {}
    with _results_in(results_dir):
        for suite in suites:
            experiments, plot_fns = _suite_components(suite, cfg=cfg)
            chosen = [
                name for name in experiments if limits.experiments is None or f"{suite}/{name}" in limits.experiments
            ]
            for name in chosen:
                start = time.perf_counter()
                done = run_suite(cfg, tags, {name: _limited(experiments[name], limits)}, suite_name=suite, plots=False)
                if name in done:
                    seconds[f"{suite}/{name}"] = time.perf_counter() - start
                    logger.info("%s %s/%s: %.1f s", problem, suite, name, seconds[f"{suite}/{name}"])
            if plots:
                _plot(cfg, plot_fns(), [name for name in chosen if f"{suite}/{name}" in seconds])
    return seconds


def _plot(cfg: Any, plot_fns: dict, names: list[str]) -> None:
    """mosaic's plots of the experiments ``names`` (and the suite's extras), drawn with ``cfg``."""
    for key, fn in plot_fns.items():
        if key in names or key.startswith("_extra/"):
            try:
                fn(cfg) if key.startswith("_extra/") else fn(cfg, suffix="")
            except Exception as exc:  # a plot that fails is reported, the run goes on (as in mosaic)
                logger.warning("mosaic plot %s failed: %s", key, exc)
    import matplotlib.pyplot as plt

    plt.close("all")


def status_of(problem: str, results_dir: Path) -> Any:
    """mosaic's status table (``collect_status``) of the results under ``results_dir``."""
    from mosaic.benchmarks.core.status import collect_status

    with _results_in(results_dir):
        return collect_status(problem_config(problem))


def _cost_physics(cfg: Any) -> tuple[dict, str, list]:
    """(base physics, sweep key, sweep values) of the problem's ``cost/spatial_cost`` experiment."""
    run = inspect.signature(cfg.experiments["cost/spatial_cost"].fn).parameters["_kw"].default["runs"][0]
    sweep = run["sweep"]
    return dict(run.get("physics", {})), sweep["key"], list(sweep["values"])


def endpoint_timings(problem: str, max_n: int | None = None, repeats: int = 3) -> dict[int, dict[str, float]]:
    """Median wall time (s) of the Tesseract endpoints at the cost suite's mesh sizes.

    {N: {"apply", "vjp_after_apply", "vjp_alone", "jax_grad"}}: an ``apply``; a VJP of the
    problem's output in rho right after an ``apply`` at the same inputs (the adjoint solve
    only, the forward's factorisation kept); a VJP called alone (its own forward + the
    adjoint); mosaic's VJP measurement (its ``_vjp_grad``: ``jax.grad`` through the Tesseract,
    un-jitted, so an apply, a VJP and JAX's tracing and dispatch around them). The
    inputs are the cost suite's (mosaic's ``make_inputs`` with its physics at each N up to
    ``max_n``); one warm-up of each call first (the mesh set-up is cached, as in mosaic's
    warm-up call); ``repeats`` timed rounds up to N = 128, one above.
    """
    import numpy as np
    from mosaic.benchmarks.problems.shared.gradient import _vjp_grad
    from tesseract_core import Tesseract

    cfg = problem_config(problem)
    physics, key, values = _cost_physics(cfg)
    tesseract = Tesseract.from_tesseract_api(tesseract_api(problem))
    output, wrt = cfg.output_key, cfg.ic_key
    timings: dict[int, dict[str, float]] = {}
    for n in [v for v in values if max_n is None or v <= max_n]:
        point = {**physics, key: n}
        ic = cfg.make_ic["uniform"](L=cfg.domain_extent, seed=0, **point)
        inputs = cfg.make_inputs(SOLVER, ic, **point)

        def vjp() -> Any:
            return tesseract.vector_jacobian_product(inputs, {wrt}, {output}, {output: np.float32(1.0)})

        calls = {"apply": [], "vjp_after_apply": [], "vjp_alone": [], "jax_grad": []}
        for _ in range((repeats if n <= 128 else 1) + 1):  # the first round is the warm-up
            for name, before, call in (
                ("apply", None, lambda: tesseract.apply(inputs)),
                ("vjp_after_apply", lambda: tesseract.apply(inputs), vjp),
                ("vjp_alone", vjp, vjp),  # the VJP before consumed any kept forward
                ("jax_grad", None, lambda: _vjp_grad(tesseract, inputs, output, wrt)),
            ):
                if before is not None:
                    before()
                start = time.perf_counter()
                call()
                calls[name].append(time.perf_counter() - start)
        timings[int(n)] = {name: float(np.median(t[1:])) for name, t in calls.items()}
        logger.info("%s endpoints at N=%d: %s", problem, n, timings[int(n)])
    return timings
