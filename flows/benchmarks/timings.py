"""Per-step times of the chapter's two worked examples, and a speed guard against a comparator.

Two kinds of rows:

- ``seed-<study>-ms-per-step`` (info): the median step time of the study stages (the library's
  own loops, short runs). Measured by the run that computed the study artifacts: the nightly
  deployment runs with ``use_cache=False`` so they are fresh; with tasks of other suites
  running beside them on the same cores they are indicative only.
- ``speed-<problem>-ratio`` (bounded, fails the flow): the chapter's step as a user writes it
  on tmcore, divided by the same step written by hand with scikit-fem + SciPy
  (:mod:`flows.benchmarks.steps`, the code ``python -m benchmarks.steps`` times too), both
  measured in this run, in this process, on one thread, in alternating blocks of steps after
  the studies have finished. Machine load slows both sides alike, so the ratio holds where an
  absolute time would not; it must stay at or below ``max_ratio`` (defaults in ``MAX_RATIO``).
  The two step times are reported beside it (``speed-<problem>-tmcore-ms``, ``-comparator-ms``).

``MAX_RATIO`` is the measured ratio times 1.5 (headroom for noise: in repeated runs at a load
average of 4-7 on 2 cores the ratios spread by +-12 % while the absolute times tripled). When tmcore gets
faster, lower it to the new measured ratio times 1.5, so that losing the gain fails the
nightly run.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from .. import tasks
from . import Check, Context, register
from .steps import CHAPTER_CHARA_LENGTH, PROBLEMS, StepMesh, build_step, skfem_available

COMPARATOR = "scikit-fem+scipy"
# tmcore / scikit-fem + SciPy per step at the chapter's sizes, times 1.5 (see the module docstring), measured
# 2026-12-02 with speed_ratio's defaults, one thread, load average 4.4-7 on 2 cores (absolute times 3-4x a
# quiet machine's): at 6a0eaf9 (banded Cholesky) identification 0.54-0.67, topology 0.42-0.57; before it
# (7226665, SuperLU) 1.12-1.33 and 0.88-0.97, which these bounds fail
MAX_RATIO = {"identification": 1.0, "topology": 0.85}


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def speed_ratio(problem: str, mesh: StepMesh, rounds: int = 7, steps: int = 10, warmup: int = 3) -> tuple[float, float]:
    """(tmcore, comparator) median seconds per step of ``problem`` on ``mesh``, measured in alternation.

    Both steps are set up and warmed up, then ``rounds`` rounds each time ``steps`` steps of one
    and ``steps`` of the other (which goes first alternates); the medians are over all timed steps.
    """
    if rounds < 1 or steps < 1 or warmup < 0:
        raise ValueError(f"need rounds >= 1, steps >= 1, warmup >= 0, got {rounds}, {steps}, {warmup}")
    implementations = ("tmcore", COMPARATOR)
    step_functions = {name: build_step(name, problem, mesh) for name in implementations}
    for step in step_functions.values():
        for _ in range(warmup):
            step()
    seconds: dict[str, list[float]] = {name: [] for name in implementations}
    for r in range(rounds):
        for name in implementations if r % 2 == 0 else implementations[::-1]:
            step = step_functions[name]
            for _ in range(steps):
                start = time.perf_counter()
                step()
                seconds[name].append(time.perf_counter() - start)
    return statistics.median(seconds["tmcore"]), statistics.median(seconds[COMPARATOR])


def speed_checks(
    chara_length: dict[str, float] | None = None,
    max_ratio: dict[str, float] | None = None,
    rounds: int = 7,
    steps: int = 10,
    threads: int = 1,
) -> list[Check]:
    """The speed rows of both problems: tmcore and comparator ms per step (info) and their ratio (bounded).

    chara_length: the gmsh rectangle per problem (default the chapter's, 0.04 and 0.025);
    max_ratio: the bound per problem (default ``MAX_RATIO``). Without scikit-fem the ratio is
    NaN and the check fails: a guard that silently disappears guards nothing.
    """
    chara_length = {**CHAPTER_CHARA_LENGTH, **(chara_length or {})}
    max_ratio = {**MAX_RATIO, **(max_ratio or {})}
    unknown = sorted((set(chara_length) | set(max_ratio)) - set(PROBLEMS))
    if unknown:
        raise ValueError(f"speed options name unknown problems {unknown}; the problems are {list(PROBLEMS)}")
    checks = []
    for problem in PROBLEMS:
        mesh = StepMesh.rectangle(chara_length[problem])
        size = f"{mesh.n_nodes} nodes, {mesh.n_unknowns} unknowns"
        if skfem_available():
            with _torch_threads(threads):
                ours, theirs = speed_ratio(problem, mesh, rounds=rounds, steps=steps)
            ratio, note = ours / theirs, f"{problem} step as written ({size}), tmcore / scikit-fem + SciPy"
        else:
            ours = theirs = ratio = float("nan")
            note = f"{problem} step ({size}): scikit-fem is not installed (pip install scikit-fem), no comparator"
        checks += [
            Check(
                f"speed-{problem}-tmcore-ms",
                "timings",
                f"median ms per {problem} step, tmcore ({size}, {threads} thread)",
                1e3 * ours,
                unit="ms",
            ),
            Check(
                f"speed-{problem}-comparator-ms",
                "timings",
                f"median ms per {problem} step, scikit-fem + SciPy by hand ({size})",
                1e3 * theirs,
                unit="ms",
            ),
            Check(
                f"speed-{problem}-ratio",
                "timings",
                note,
                ratio,
                high=max_ratio[problem],
                expected=max_ratio[problem] / 1.5,
            ),
        ]
    return checks


@register("timings")
def timings(
    context: Context,
    identification_steps: int = 20,
    topology_steps: int = 10,
    speed: dict | None = None,
) -> list[Check]:
    """The studies' step times (info) and the speed guard; ``speed``: keyword options of :func:`speed_checks`."""
    generate_mesh = context.stage(tasks.generate_mesh)
    meshes = {
        name: generate_mesh.submit(kind="rectangle", chara_length=h)
        for name, h in (("identification", 0.04), ("topology", 0.025))
    }
    studies = {
        "identification": context.stage(tasks.identify_coefficient).submit(
            mesh=meshes["identification"], steps=identification_steps
        ),
        "topology": context.stage(tasks.optimise_topology).submit(mesh=meshes["topology"], steps=topology_steps),
    }
    checks = []
    for name, future in studies.items():
        mesh = context.store.open_dataset(meshes[name].result(), "mesh")
        history = context.store.open_dataset(future.result()["history"], "history")
        size = f"{mesh.sizes['node']} nodes" if name == "identification" else f"{mesh.sizes['cell']} cells"
        ms = 1e3 * float(history.attrs.get("run_median_seconds_per_step", float("nan")))
        checks.append(
            Check(f"seed-{name}-ms-per-step", "timings", f"median time per step, {name} ({size})", ms, unit="ms")
        )
    # after the studies' results: nothing of this suite runs beside the speed measurement
    checks += speed_checks(**(speed or {}))
    return checks
