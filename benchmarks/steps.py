"""The chapter's two optimisation steps as users write them: tmcore, TensorMesh 0.2.1, scikit-fem + SciPy.

    python -m benchmarks.steps [--quick] [--rounds 3] [--peers .venv-peers] [--no-ladder] [--out reports/benchmarks]

Times one step of each of the chapter's worked examples (coefficient identification with Adam;
thermal topology optimisation with OC; the step code is :mod:`flows.benchmarks.steps`, shared
with the nightly speed guard) for

- ``tmcore``: this repository, in ``.venv`` (the interpreter running this command);
- ``TensorMesh 0.2.1``: ``benchmarks/peers.py`` in the peers' environment (``--peers``, made
  by ``benchmarks/peers_setup.sh`` / ``make bench-peers``); left out when that is missing;
- ``scikit-fem+scipy``: the same step written by hand (scikit-fem assembly, ``splu``, the
  adjoint by hand), in ``.venv``;
- ``tmcore (one Condenser)``: the topology step exactly as the chapter writes it, Condenser
  built once (TensorMesh cannot run that; the others build a fresh one every step), at the
  chapter's size only;

at the chapter's sizes (gmsh rectangle, chara_length 0.04: 790 nodes; 0.025: 1935 nodes) and on a
ladder of structured unit squares (1e3 .. 1e5 nodes). Each measurement is a fresh process on one
thread (OMP/MKL/OpenBLAS and torch), all on the same mesh (one ``.npz`` per size): warm-up steps,
then timed steps. Processes alternate: round after round, every size, every implementation in
a rotating order, so load changes on a shared machine hit all of them alike. Reported: the
median over all timed steps of all rounds, the range of the per-round medians, ratios to tmcore,
and ``/proc/loadavg`` before and after every round.

Per-phase times (assemble K, assemble b, condense, factor+solve, backward, optimiser, rest) come
from separate, instrumented runs of the same step code: the step calls ``lap(phase)`` after each
group of statements and :class:`flows.benchmarks.steps.PhaseClock` charges the wall time since
the previous lap to that phase (one thread, CPU: each statement has finished when the next
starts). The report shows the phases' sum next to the uninstrumented median.

Writes ``<out>/<date>-steps.md`` (tables, method, load), ``<date>-steps.nc`` (the rows),
``<date>-steps.png`` (ms per step vs unknowns, log-log) and ``<date>-phases.png`` (stacked bars);
``<date>-quick-*`` for ``--quick``, ``<date>-chapter-*`` for ``--no-ladder``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flows.artifacts import atomic_write_bytes, atomic_write_text, dataset_bytes
from flows.benchmarks.steps import CHAPTER_CHARA_LENGTH, PHASES, PROBLEMS, PhaseClock, StepMesh, build_step, time_steps

logger = logging.getLogger(__name__)

ROOT = Path(__file__).absolute().parent.parent  # the repository (not resolved: a linked checkout stays itself)
PEERS_SCRIPT = ROOT / "benchmarks" / "peers.py"
DEFAULT_PEERS = ROOT / ".venv-peers"
TENSORMESH = "TensorMesh 0.2.1"
OURS, SKFEM, OURS_ONE_CONDENSER = "tmcore", "scikit-fem+scipy", "tmcore (one Condenser)"
TENSORMESH_ONE_CONDENSER = "TensorMesh 0.2.1 (one Condenser)"
ONE_CONDENSER = (OURS_ONE_CONDENSER, TENSORMESH_ONE_CONDENSER)
# target nodes -> structured cells per side ((n + 1)^2 nodes)
LADDER = {"1e3": 31, "3e3": 54, "1e4": 99, "3e4": 172, "1e5": 315}
QUICK_LADDER = ("1e3", "3e3", "1e4")
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


@dataclass
class Case:
    """One problem on one mesh, and how many steps a process times there."""

    problem: str
    mesh_name: str  # "chapter (h=0.04)" or "grid 1e4"
    mesh_path: Path
    n_nodes: int
    n_cells: int
    n_unknowns: int
    steps: int
    warmup: int

    @property
    def key(self) -> str:
        return f"{self.problem}/{self.mesh_name}"

    @property
    def chapter(self) -> bool:
        return self.mesh_name.startswith("chapter")


@dataclass
class Result:
    """Every timed step of one implementation on one case, over all rounds."""

    case: Case
    implementation: str
    seconds: list[float] = field(default_factory=list)
    round_medians: list[float] = field(default_factory=list)
    first_values: list[float] = field(default_factory=list)  # the first step's loss/compliance, per process
    error: str = ""

    @property
    def median_ms(self) -> float:
        return 1e3 * statistics.median(self.seconds) if self.seconds else float("nan")


def _steps_for(n_nodes: int) -> tuple[int, int]:
    """(timed steps, warm-up steps) per process: about a second of timed work, at least 3 steps."""
    if n_nodes <= 2_000:
        return 30, 3
    if n_nodes <= 5_000:
        return 15, 2
    if n_nodes <= 20_000:
        return 8, 2
    if n_nodes <= 50_000:
        return 5, 1
    return 3, 1


def plan(workdir: Path, ladder: tuple[str, ...], chapter: bool = True) -> list[Case]:
    """The cases, their meshes written once to ``workdir`` (every process reads the same arrays)."""
    meshes: dict[str, StepMesh] = {}
    cases = []
    for problem in PROBLEMS:
        names = []
        if chapter:
            h = CHAPTER_CHARA_LENGTH[problem]
            names.append((f"chapter (h={h})", lambda h=h: StepMesh.rectangle(h)))
        names += [(f"grid {label}", lambda n=LADDER[label]: StepMesh.grid(n)) for label in ladder]
        for name, make in names:
            path = workdir / (re.sub(r"[^A-Za-z0-9.]+", "_", name) + ".npz")
            if name not in meshes:
                meshes[name] = make()
                meshes[name].save(path)
            mesh = meshes[name]
            steps, warmup = _steps_for(mesh.n_nodes)
            cases.append(Case(problem, name, path, mesh.n_nodes, mesh.n_cells, mesh.n_unknowns, steps, warmup))
    return cases


# -- one process per measurement -------------------------------------------------------------


def _worker_argv(implementation: str, case: Case, peers: Path | None, phases: bool = False) -> list[str]:
    common = [
        "--problem",
        case.problem,
        "--mesh",
        str(case.mesh_path),
        "--steps",
        str(case.steps),
        "--warmup",
        str(case.warmup),
    ]
    if implementation in (TENSORMESH, TENSORMESH_ONE_CONDENSER):
        one = ["--one-condenser"] if implementation == TENSORMESH_ONE_CONDENSER else []
        return [str(peers / "bin" / "python"), str(PEERS_SCRIPT), *common, *one]
    worker = {OURS: "tmcore", SKFEM: "scikit-fem+scipy", OURS_ONE_CONDENSER: "tmcore"}[implementation]
    argv = [sys.executable, "-m", "benchmarks.steps", "--worker", worker, *common]
    if implementation == OURS_ONE_CONDENSER:
        argv.append("--one-condenser")
    if phases:
        argv.append("--phases")
    return argv


def run_process(argv: list[str], timeout: float = 900.0) -> dict:
    """Run one worker on one thread; its last stdout line is a JSON object (or ``{"error": ...}``)."""
    env = {**os.environ, **ONE_THREAD}
    try:
        done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {done.returncode}: {tail}"}
    return json.loads(lines[-1])


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages."""
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "unknown"


def measure(
    cases: list[Case], implementations: list[str], rounds: int, peers: Path | None, loads: list[str]
) -> list[Result]:
    """Every (case, implementation) in fresh processes, round-robin over rounds, cases and a rotating order."""
    results = {
        (case.key, impl): Result(case, impl) for case in cases for impl in implementations if _applies(impl, case)
    }
    for r in range(rounds):
        loads.append(f"round {r + 1} start: {loadavg()}")
        for case in cases:
            order = [impl for impl in implementations if (case.key, impl) in results]
            shift = r % len(order)
            for impl in order[shift:] + order[:shift]:
                result = results[(case.key, impl)]
                if result.error:
                    continue
                out = run_process(_worker_argv(impl, case, peers))
                if "error" in out:
                    result.error = out["error"]
                    logger.warning("%s on %s: %s", impl, case.key, out["error"])
                    continue
                result.seconds += out["seconds"]
                result.round_medians.append(statistics.median(out["seconds"]))
                result.first_values.append((out["first_values"] or out["values"])[0])
                logger.info("round %d %-26s %-22s %8.2f ms", r + 1, case.key, impl, 1e3 * result.round_medians[-1])
        loads.append(f"round {r + 1} end: {loadavg()}")
    return list(results.values())


def _applies(implementation: str, case: Case) -> bool:
    return implementation not in ONE_CONDENSER or (case.problem == "topology" and case.chapter)


def measure_phases(cases: list[Case], rounds: int) -> dict[tuple[str, str], dict]:
    """Per-phase medians (ms) of tmcore and scikit-fem+scipy on ``cases``, instrumented runs in fresh processes."""
    phases: dict[tuple[str, str], dict] = {}
    for r in range(rounds):
        for case in cases:
            for impl in (OURS, SKFEM) if r % 2 == 0 else (SKFEM, OURS):
                out = run_process(_worker_argv(impl, case, None, phases=True))
                if "error" in out:
                    logger.warning("phases of %s on %s: %s", impl, case.key, out["error"])
                    continue
                entry = phases.setdefault(
                    (case.key, impl), {"case": case, "seconds": [], "phases": {p: [] for p in PHASES}}
                )
                entry["seconds"] += out["seconds"]
                for phase in PHASES:
                    entry["phases"][phase] += out["phases"][phase]
    return phases


def worker(
    implementation: str, problem: str, mesh_path: str, steps: int, warmup: int, one_condenser: bool, phases: bool
) -> dict:
    """One process's measurement (``--worker``): set up the step, warm up, time; a JSON-able dict."""
    import torch

    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    mesh = StepMesh.load(mesh_path)
    clock = PhaseClock() if phases else None
    options = {"fresh_condenser": False} if one_condenser else {}
    step = build_step(implementation, problem, mesh, lap=clock.lap if clock else None, **options)
    first_values = [step() for _ in range(warmup)]
    seconds, values = time_steps(step, steps, warmup=0, clock=clock)
    out = {
        "implementation": implementation,
        "problem": problem,
        "n_nodes": mesh.n_nodes,
        "seconds": seconds,
        "values": values,
        "first_values": first_values,
        "threads": torch.get_num_threads(),
    }
    if clock is not None:
        out["phases"] = clock.seconds
    return out


# -- the report ------------------------------------------------------------------------------


def rows_of(results: list[Result]) -> list[dict]:
    """One row per (case, implementation): medians, round range, ratio to tmcore on the same case."""
    ours = {r.case.key: r.median_ms for r in results if r.implementation == OURS}
    rows = []
    for r in results:
        c = r.case
        rows.append(
            {
                "problem": c.problem,
                "mesh": c.mesh_name,
                "implementation": r.implementation,
                "n_nodes": c.n_nodes,
                "n_cells": c.n_cells,
                "n_unknowns": c.n_unknowns,
                "median_ms": r.median_ms,
                "round_min_ms": 1e3 * min(r.round_medians) if r.round_medians else float("nan"),
                "round_max_ms": 1e3 * max(r.round_medians) if r.round_medians else float("nan"),
                "steps_timed": len(r.seconds),
                "processes": len(r.round_medians),
                "ratio_to_tmcore": r.median_ms / ours.get(c.key, float("nan")),
                "first_value": r.first_values[0] if r.first_values else float("nan"),
                "error": r.error,
            }
        )
    return rows


def phase_rows(phases: dict[tuple[str, str], dict]) -> list[dict]:
    rows = []
    for (key, impl), entry in phases.items():
        c = entry["case"]
        row = {
            "problem": c.problem,
            "mesh": c.mesh_name,
            "implementation": impl,
            "n_unknowns": c.n_unknowns,
            "step_median_ms": 1e3 * statistics.median(entry["seconds"]),
        }
        for phase in PHASES:
            row[phase] = 1e3 * statistics.median(entry["phases"][phase])
        row["sum_ms"] = sum(row[phase] for phase in PHASES)
        rows.append(row)
    return rows


def _fmt(x: float, digits: int = 3) -> str:
    return "-" if not np.isfinite(x) else f"{x:.{digits}g}"


def to_markdown(
    rows: list[dict],
    prows: list[dict],
    info: dict,
    loads: list[str],
    stem: str,
    implementations: list[str],
    peers_note: str,
) -> str:
    impls = [i for i in (OURS, TENSORMESH, SKFEM, OURS_ONE_CONDENSER, TENSORMESH_ONE_CONDENSER) if i in implementations]
    by = {(r["problem"], r["mesh"], r["implementation"]): r for r in rows}
    cases = list(dict.fromkeys((r["problem"], r["mesh"]) for r in rows))
    lines = [
        f"# The chapter's steps: tmcore, TensorMesh 0.2.1, scikit-fem + SciPy ({info['date']})",
        "",
        f"Machine: {info['cpu']}, {info['cpu_count']} CPUs, shared with other work (load averages below), "
        f"torch {info['torch_version']}, one thread everywhere, CHOLMOD "
        f"{'available' if info.get('cholmod') == 'True' else 'not installed'}, tmcore at "
        f"{info.get('tmcore_commit', 'unknown')}. {peers_note}",
        "",
        "Method: each measurement is a fresh process on one thread (torch, OMP, MKL, OpenBLAS); warm-up "
        "steps (the first call on a new pattern) are not timed. Processes alternate: round after round, "
        "every size, every implementation in a rotating order. *median*: over all timed steps of all rounds; "
        "*rounds*: the range of the per-process medians. Ratios: the implementation's median over tmcore's "
        "(above 1: tmcore is faster). All implementations solve on the same mesh arrays; their first-step "
        "loss/compliance agree (the second table). Step code: `flows/benchmarks/steps.py` (tmcore and "
        "scikit-fem + SciPy), `benchmarks/peers.py` (TensorMesh). Identification: assemblers and Condenser "
        "built once, K and b assembled every step, condense, solve, loss, backward, Adam. Topology: "
        "assemblers built inside `fem_solve`, a fresh Condenser every step (TensorMesh needs that), OC; "
        "the *(one Condenser)* columns run the chapter's topology code exactly, Condenser built once: TensorMesh "
        "fails there (its Condenser compares the index tensors of each matrix by memory address, and an "
        "assembler built inside `fem_solve` makes new ones), so its other column builds a fresh Condenser in "
        "`fem_solve`, its only change. The scikit-fem + SciPy loop builds its `Basis` once and calls "
        "`skfem.condense` every step.",
        "",
        f"![ms per step vs unknowns]({stem}-steps.png)",
        "",
        "## ms per step",
        "",
        "| problem | mesh | nodes | unknowns | "
        + " | ".join(f"{i} ms (rounds)" for i in impls)
        + " | "
        + " | ".join(f"{i} / tmcore" for i in impls if i != OURS)
        + " |",
        "|---|---|---:|---:|" + "---:|" * (2 * len(impls) - 1),
    ]
    for problem, mesh in cases:
        first = next(r for r in rows if r["problem"] == problem and r["mesh"] == mesh)
        cells = []
        for impl in impls:
            r = by.get((problem, mesh, impl))
            if r is None:
                cells.append("")
            elif r["error"]:
                cells.append(f"failed: {r['error'][:80]}")
            else:
                cells.append(f"{_fmt(r['median_ms'])} ({_fmt(r['round_min_ms'])}-{_fmt(r['round_max_ms'])})")
        ratios = []
        for impl in impls:
            if impl == OURS:
                continue
            r = by.get((problem, mesh, impl))
            ratios.append("" if r is None or r["error"] else f"{r['ratio_to_tmcore']:.2f}")
        lines.append(
            f"| {problem} | {mesh} | {first['n_nodes']} | {first['n_unknowns']} | "
            + " | ".join(cells)
            + " | "
            + " | ".join(ratios)
            + " |"
        )
    lines += [
        "",
        "First step's loss (identification) or compliance (topology), per implementation:",
        "",
        "| problem | mesh | " + " | ".join(impls) + " |",
        "|---|---|" + "---:|" * len(impls),
    ]
    for problem, mesh in cases:
        values = [by.get((problem, mesh, i)) for i in impls]
        lines.append(
            f"| {problem} | {mesh} | "
            + " | ".join("" if v is None else f"{v['first_value']:.10e}" for v in values)
            + " |"
        )
    if prows:
        lines += [
            "",
            "## Where a step goes (ms, medians of instrumented runs)",
            "",
            f"![phases]({stem}-phases.png)",
            "",
            "Each phase's median over the timed steps; *sum*: the phases' medians added up; *step*: the "
            "instrumented step's median (the `lap` calls cost well under a microsecond each). tmcore: *assemble K* "
            "is `K = assembler(...)` (for topology with the assembler built in `fem_solve`), *condense* `cond(K, b)` "
            "(topology: a fresh Condenser), *factor+solve* `cond.recover(K_.solve(b_))`, *backward* the loss and "
            "`loss.backward()` (adjoint solve, condensation and assembly backward), *optimiser* `zero_grad` + "
            "`step`, *rest* the parameter transform and `.item()`. scikit-fem + SciPy: the same statements by hand "
            "(*backward*: the adjoint solve with the same `splu` factor and the sensitivity assembly).",
            "",
            "| problem | mesh | implementation | " + " | ".join(PHASES) + " | sum | step |",
            "|---|---|---|" + "---:|" * (len(PHASES) + 2),
        ]
        for p in prows:
            lines.append(
                f"| {p['problem']} | {p['mesh']} | {p['implementation']} | "
                + " | ".join(f"{p[phase]:.3f}" for phase in PHASES)
                + f" | {p['sum_ms']:.3f} | {p['step_median_ms']:.3f} |"
            )
    lines += ["", "## Load average (1, 5, 15 min) on this shared machine", ""] + [f"- {line}" for line in loads]
    lines += [
        "",
        "Rerun on a quiet machine: `make bench-peers` (creates `.venv-peers`, then this benchmark), or "
        "`python -m benchmarks.steps [--quick] [--rounds N]`.",
    ]
    return "\n".join(lines) + "\n"


COLOURS = {OURS: "tab:blue", TENSORMESH: "tab:red", SKFEM: "tab:green", OURS_ONE_CONDENSER: "tab:cyan"}


def steps_png(rows: list[dict]) -> bytes:
    """Log-log ms per step vs unknowns, one panel per problem; chapter sizes as open markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.3))
    for ax, problem in zip(axes, PROBLEMS):
        for impl, colour in COLOURS.items():
            mine = [r for r in rows if r["problem"] == problem and r["implementation"] == impl and not r["error"]]
            ladder = sorted((r for r in mine if not r["mesh"].startswith("chapter")), key=lambda r: r["n_unknowns"])
            chapter = [r for r in mine if r["mesh"].startswith("chapter")]
            if ladder:
                x = [r["n_unknowns"] for r in ladder]
                y = [r["median_ms"] for r in ladder]
                err = [
                    [r["median_ms"] - r["round_min_ms"] for r in ladder],
                    [r["round_max_ms"] - r["median_ms"] for r in ladder],
                ]
                ax.errorbar(x, y, yerr=err, color=colour, marker="o", ms=4, capsize=2, label=f"{impl} (grids)")
            for r in chapter:
                ax.plot(
                    [r["n_unknowns"]],
                    [r["median_ms"]],
                    color=colour,
                    marker="s",
                    mfc="none",
                    ms=9,
                    ls="none",
                    label=f"{impl} ({r['mesh']})",
                )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("unknowns (free nodes)")
        ax.set_ylabel("ms per step (median, one thread)")
        ax.set_title(
            {"identification": "identification step (Adam)", "topology": "topology step (OC, fresh Condenser)"}[problem]
        )
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def phases_png(prows: list[dict]) -> bytes:
    """Stacked bars of the phases (ms), one panel per case, a bar per implementation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys((p["problem"], p["mesh"]) for p in prows))
    fig, axes = plt.subplots(1, len(cases), figsize=(2.6 * len(cases) + 1.5, 4.2), squeeze=False)
    colours = plt.get_cmap("tab10").colors
    for ax, (problem, mesh) in zip(axes[0], cases):
        bars = [p for p in prows if p["problem"] == problem and p["mesh"] == mesh]
        names = [p["implementation"].replace("+", "+\n") for p in bars]
        bottom = np.zeros(len(bars))
        for i, phase in enumerate(PHASES):
            heights = np.array([p[phase] for p in bars])
            ax.bar(names, heights, bottom=bottom, color=colours[i], label=phase)
            bottom += heights
        for x, p in enumerate(bars):
            ax.text(x, bottom[x], f"step {p['step_median_ms']:.3g} ms", ha="center", va="bottom", fontsize=8)
        ax.set_title(f"{problem}\n{mesh}, {bars[0]['n_unknowns']} unknowns", fontsize=9)
        ax.set_ylabel("ms per step")
        ax.margins(y=0.12)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return _png(fig)


def _png(fig) -> bytes:
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return buffer.getvalue()


def write_report(rows, prows, info, loads, out: Path, stem: str, implementations: list[str], peers_note: str) -> Path:
    """``<stem>-steps.{md,nc,png}`` and ``<stem>-phases.png`` in ``out``, each written atomically."""
    import xarray as xr

    keys = [k for k in rows[0] if k not in ("problem", "mesh", "implementation")]
    variables = {k: ("row", np.array([r[k] for r in rows], dtype=object if k == "error" else None)) for k in keys}
    coords = {"row": [f"{r['problem']}/{r['mesh']}/{r['implementation']}" for r in rows]}
    if prows:  # the phases along a dim of their own, ms
        for key in (*PHASES, "sum_ms", "step_median_ms"):
            variables[f"phase_{key.replace(' ', '_')}"] = ("phase_row", np.array([p[key] for p in prows]))
        coords["phase_row"] = [f"{p['problem']}/{p['mesh']}/{p['implementation']}" for p in prows]
    ds = xr.Dataset(variables, coords=coords, attrs={**info, "load_average": "; ".join(loads)})
    atomic_write_bytes(out / f"{stem}-steps.nc", dataset_bytes(ds))
    atomic_write_bytes(out / f"{stem}-steps.png", steps_png(rows))
    if prows:
        atomic_write_bytes(out / f"{stem}-phases.png", phases_png(prows))
    markdown = out / f"{stem}-steps.md"
    atomic_write_text(markdown, to_markdown(rows, prows, info, loads, stem, implementations, peers_note))
    return markdown


def peers_python(peers: Path | None) -> Path | None:
    """The peers' interpreter when that environment holds TensorMesh, else None."""
    if peers is None:
        return None
    python = peers / "bin" / "python"
    if not python.exists():
        return None
    check = subprocess.run([str(python), "-c", "import tensormesh"], capture_output=True, text=True)
    return python if check.returncode == 0 else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="ladder up to 1e4 nodes, 2 rounds")
    parser.add_argument(
        "--rounds", type=int, default=None, help="processes per (size, implementation); default 3 (quick: 2)"
    )
    parser.add_argument(
        "--peers", type=Path, default=DEFAULT_PEERS, help="the TensorMesh environment (default .venv-peers)"
    )
    parser.add_argument("--no-peers", action="store_true", help="leave TensorMesh out")
    parser.add_argument("--no-ladder", action="store_true", help="the chapter's sizes only")
    parser.add_argument(
        "--ladder", nargs="+", default=None, choices=list(LADDER), help="ladder sizes (default: all; quick: up to 1e4)"
    )
    parser.add_argument("--no-phases", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "benchmarks")
    parser.add_argument("--worker", choices=("tmcore", "scikit-fem+scipy"), help=argparse.SUPPRESS)
    parser.add_argument("--problem", choices=PROBLEMS, help=argparse.SUPPRESS)
    parser.add_argument("--mesh", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=20, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--one-condenser", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--phases", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:  # one measurement, in its own process
        out = worker(args.worker, args.problem, args.mesh, args.steps, args.warmup, args.one_condenser, args.phases)
        print(json.dumps(out))
        return 0

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", force=True)  # prefect configured it
    logging.getLogger("skfem").setLevel(logging.WARNING)
    from benchmarks.suite import machine

    rounds = args.rounds or (2 if args.quick else 3)
    ladder = () if args.no_ladder else tuple(args.ladder or (QUICK_LADDER if args.quick else LADDER))
    peers = None if args.no_peers else peers_python(args.peers)
    implementations = [OURS, SKFEM, OURS_ONE_CONDENSER] + ([TENSORMESH, TENSORMESH_ONE_CONDENSER] if peers else [])
    if peers:
        where = args.peers.absolute()
        peers_note = f"TensorMesh 0.2.1 from `{where.relative_to(ROOT) if where.is_relative_to(ROOT) else where}`."
    elif args.no_peers:
        peers_note = "TensorMesh left out (--no-peers)."
    else:
        peers_note = f"TensorMesh not measured: no environment with it at `{args.peers}` (run `make bench-peers`)."
    info = machine()
    info["threads"] = "1"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    info["tmcore_commit"] = commit.stdout.strip() if commit.returncode == 0 else "unknown (not a git checkout)"
    # a quick or chapter-only run must not overwrite the day's full report
    stem = info["date"][:10] + ("-quick" if args.quick else "") + ("-chapter" if args.no_ladder else "")
    loads = [f"start: {loadavg()}"]
    with tempfile.TemporaryDirectory(prefix="tmcore-steps-") as workdir:
        cases = plan(Path(workdir), ladder)
        results = measure(cases, implementations, rounds, args.peers if peers else None, loads)
        phase_cases = [c for c in cases if c.chapter or c.mesh_name == f"grid {ladder[-1]}"] if ladder else cases
        prows = [] if args.no_phases else phase_rows(measure_phases(phase_cases, rounds))
    loads.append(f"end: {loadavg()}")
    rows = rows_of(results)
    markdown = write_report(rows, prows, info, loads, args.out, stem, implementations, peers_note)
    print(markdown.read_text())
    print(f"wrote {markdown} and its .nc and .png files")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
