"""The performance suite behind ``make bench``: tmcore against scikit-fem and SciPy, one process.

For unit-square P1 triangles and unit-cube P1 tetrahedra at a ladder of sizes it times
mesh generation (gmsh and structured), assembler set-up, matrix and vector assembly,
condensation, the forward solve and its backward (each from scratch: no analysis carried
over), and a full identification step as an optimisation loop runs it (assemble K and b,
condense, solve reusing the pattern's analysis, loss, backward), next to comparators run on the same
mesh or matrix in the same repetition: scikit-fem's assembly of the same form, SciPy's
``splu`` and ``spsolve``, pyamg Ruge-Stuben-preconditioned CG and CHOLMOD (when
scikit-sparse is installed). Repetitions go round-robin over all timers of a size so
that machine noise hits ours and the comparators alike; the report gives medians,
min-max, ratios and elements per second, and the peak resident memory each stage added.

    python -m benchmarks.suite [--quick] [--cases 2d-1e5 ...] [--out reports/benchmarks]

writes ``<out>/<date>.nc`` (one row per timer, dim ``case``) and ``<out>/<date>.md``
(``<date>-quick`` for ``--quick``, ``<date>-partial`` for chosen ``--cases``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import logging
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse
import scipy.sparse.linalg
import torch

import tmcore
from flows.artifacts import atomic_write_bytes, atomic_write_text, dataset_bytes
from tmcore import Condenser, Mesh, SparseMatrix, solvers
from tmcore.core.linalg.sparse import SparsityPattern
from tmcore.forms import Diffusion, Source

logger = logging.getLogger(__name__)

# target nodes -> structured cells per side (2-D: (n+1)^2 nodes; 3-D: (n+1)^3 nodes)
SIZES_2D = {"1e3": 31, "1e4": 99, "1e5": 315, "4e5": 631, "1e6": 999}
SIZES_3D = {"1e3": 9, "1e4": 21, "1e5": 46, "3e5": 66}
QUICK_2D, QUICK_3D = ("1e3", "1e4", "1e5"), ("1e3", "1e4")
# gmsh: chara_length and uniform refinements per 2-D size, and chara_length per 3-D size
GMSH_2D = {"1e3": (0.035, 0), "1e4": (0.011, 0), "1e5": (0.007, 1), "4e5": (0.0035, 1), "1e6": (0.004, 2)}
GMSH_3D = {"1e3": 0.12, "1e4": 0.05, "1e5": 0.022}
# SuperLU comparators only up to these node counts: beyond, one factorisation takes
# minutes (3-D fill-in) or tens of seconds per repetition (2-D 1e6) and the fastest
# comparators (AMG, CHOLMOD) are measured anyway
SUPERLU_LIMIT = {2: 500_000, 3: 20_000}


Load = Source


# -- measuring ---------------------------------------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak resident memory above the level at entry, sampled every 2 ms by a thread."""

    def __enter__(self):
        gc.collect()
        self.start = self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss_bytes())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())

    @property
    def added_mib(self) -> float:
        return (self.peak - self.start) / 2**20


@dataclass
class Timer:
    """One thing to time: ``run()`` does the work once; ``setup()`` (untimed) prepares it."""

    case: str  # e.g. "2d-1e5"
    stage: str  # e.g. "matrix assembly"
    implementation: str  # "tmcore", "scikit-fem", "scipy splu", ...
    run: Callable[[], object]
    setup: Callable[[], object] | None = None
    n_nodes: int = 0
    n_cells: int = 0
    times: list[float] = field(default_factory=list)
    peak_mib: float = 0.0

    def measure(self) -> None:
        """One timed run (no memory sampler running: it would cost the timing)."""
        if self.setup is not None:
            self.setup()
        start = time.perf_counter()
        self.run()
        self.times.append(time.perf_counter() - start)

    def measure_memory(self) -> None:
        """One untimed run under the peak-memory sampler."""
        if self.setup is not None:
            self.setup()
        with PeakMemory() as memory:
            self.run()
        self.peak_mib = memory.added_mib


# -- the problems ------------------------------------------------------------------------------


def _condensed(mesh: Mesh):
    kappa = 1.0 + mesh.points[:, 0] * mesh.points[:, 1]
    K = Diffusion.from_mesh(mesh)(point_data={"kappa": kappa})
    b = Load.from_mesh(mesh)(point_data={"f": torch.ones(mesh.n_points, dtype=torch.float64)})
    cond = Condenser(mesh.boundary_mask)
    K_, b_ = cond(K, b)
    return kappa, cond, K_, b_


def _timers_for(label: str, dim: int, n: int) -> list[Timer]:
    """Every timer of one size; the mesh and matrices are built once, outside the timings."""
    element = "triangle" if dim == 2 else "tetra"
    mesh = Mesh.gen_grid((n,) * dim, element_type=element)
    case = f"{dim}d-{label}"
    sizes = dict(n_nodes=mesh.n_points, n_cells=mesh.n_cells)
    kappa, cond, K_, b_ = _condensed(mesh)
    f = torch.ones(mesh.n_points, dtype=torch.float64)
    timers = [
        Timer(case, "structured mesh", "tmcore", lambda: Mesh.gen_grid((n,) * dim, element_type=element), **sizes)
    ]

    gmsh_args = GMSH_2D.get(label) if dim == 2 else GMSH_3D.get(label)
    if gmsh_args is not None:
        if dim == 2:
            h, refine = gmsh_args
            timers.append(
                Timer(case, "gmsh mesh", "tmcore", lambda: Mesh.gen_rectangle(chara_length=h, refine=refine), **sizes)
            )
        else:
            timers.append(Timer(case, "gmsh mesh", "tmcore", lambda: Mesh.gen_box(chara_length=gmsh_args), **sizes))

    def fresh_setup():
        fresh = Mesh(mesh.points.clone(), {element: mesh.elements.clone()}, check=False)
        Diffusion.from_mesh(fresh)(point_data={"kappa": kappa})

    laplace, load = Diffusion.from_mesh(mesh), Load.from_mesh(mesh)
    # mul_(1.0) changes nothing but the tensors' versions: the assemblers then compute, as for a
    # coefficient that changes every step, instead of serving an unchanged call from the mesh's store
    timers += [
        Timer(case, "assembler setup + first assembly", "tmcore", fresh_setup, **sizes),
        Timer(case, "matrix assembly", "tmcore", lambda: laplace(point_data={"kappa": kappa.mul_(1.0)}), **sizes),
        Timer(case, "vector assembly", "tmcore", lambda: load(point_data={"f": f.mul_(1.0)}), **sizes),
    ]
    K = laplace(point_data={"kappa": kappa})
    b = load(point_data={"f": f})
    timers.append(Timer(case, "condensation", "tmcore", lambda: cond(K, b), **sizes))
    timers += _skfem_timers(case, mesh, kappa, sizes)

    # forward and backward through our autograd Function on a pattern of their own whose
    # solver cache is cleared first, so no AMG hierarchy or symbolic analysis carries over
    # between repetitions; the identification step keeps the condensed pattern's cache, as
    # an optimisation loop does (the "in a loop" gain)
    state: dict[str, object] = {}
    own_pattern = SparsityPattern(K_.pattern.rows, K_.pattern.cols, K_.pattern.shape)

    def forward_setup():
        values = K_.values.detach().clone().requires_grad_(True)
        own_pattern.solver_cache.clear()
        state["values"] = values
        state["matrix"] = SparseMatrix.from_pattern(own_pattern, values)

    def forward():
        state["u"] = state["matrix"].solve(b_)

    def backward_setup():
        forward_setup()
        forward()

    def backward():
        state["u"].sum().backward()

    backend = solvers.choose_backend(K_.pattern, K_.values)
    timers += [
        Timer(case, "forward solve", f"tmcore ({backend})", forward, setup=forward_setup, **sizes),
        Timer(case, "backward", f"tmcore ({backend})", backward, setup=backward_setup, **sizes),
    ]
    timers += _solver_timers(case, K_, b_, sizes, include_splu=mesh.n_points <= SUPERLU_LIMIT[dim])

    theta = torch.zeros(mesh.n_points, dtype=torch.float64, requires_grad=True)
    u_obs = cond.recover(K_.solve(b_)).detach()

    def identification_step():
        theta.grad = None
        K_t = laplace(point_data={"kappa": 1.0 + torch.tanh(theta)})
        Kc, bc = cond(K_t, load(point_data={"f": f}))
        u = cond.recover(Kc.solve(bc))
        ((u - u_obs) ** 2).sum().backward()

    timers.append(Timer(case, "identification step", "tmcore", identification_step, **sizes))
    return timers


def _skfem_timers(case: str, mesh: Mesh, kappa: torch.Tensor, sizes: dict) -> list[Timer]:
    try:
        import skfem
        from skfem.helpers import dot, grad
    except ImportError:
        logger.warning("scikit-fem not installed: no assembly comparator")
        return []
    points = mesh.points.numpy().T.copy()
    cells = mesh.elements.numpy().T.copy()
    skmesh = skfem.MeshTri(points, cells) if mesh.dim == 2 else skfem.MeshTet(points, cells)
    element = skfem.ElementTriP1() if mesh.dim == 2 else skfem.ElementTetP1()
    basis = skfem.Basis(skmesh, element, intorder=1)
    kappa_np = kappa.numpy()

    @skfem.BilinearForm
    def diffusion(u, v, w):
        return w.kappa * dot(grad(u), grad(v))

    return [
        Timer(
            case,
            "assembler setup + first assembly",
            "scikit-fem",
            lambda: skfem.asm(diffusion, skfem.Basis(skmesh, element, intorder=1), kappa=kappa_np),
            **sizes,
        ),
        Timer(
            case,
            "matrix assembly",
            "scikit-fem",
            lambda: skfem.asm(diffusion, basis, kappa=basis.interpolate(kappa_np)),
            **sizes,
        ),
    ]


def _solver_timers(case: str, K_: SparseMatrix, b_: torch.Tensor, sizes: dict, include_splu: bool) -> list[Timer]:
    A = K_.to_scipy().tocsc()
    b = b_.numpy()
    timers = []
    if include_splu:
        timers.append(Timer(case, "forward solve", "scipy splu", lambda: scipy.sparse.linalg.splu(A).solve(b), **sizes))
        timers.append(Timer(case, "forward solve", "scipy spsolve", lambda: scipy.sparse.linalg.spsolve(A, b), **sizes))
    try:
        import pyamg

        A_csr = A.tocsr()

        def amg_cg():
            preconditioner = pyamg.ruge_stuben_solver(A_csr).aspreconditioner(cycle="V")
            x, info = scipy.sparse.linalg.cg(A_csr, b, rtol=1e-10, atol=0.0, M=preconditioner, maxiter=1000)
            return x

        timers.append(Timer(case, "forward solve", "pyamg RS-CG", amg_cg, **sizes))
    except ImportError:
        logger.warning("pyamg not installed: no AMG comparator")
    if solvers.cholmod_available():
        from sksparse.cholmod import cholesky

        A_cm = scipy.sparse.csc_matrix(A)
        timers.append(Timer(case, "forward solve", "CHOLMOD", lambda: cholesky(A_cm)(b), **sizes))
    return timers


# -- the run and its report --------------------------------------------------------------------


def machine() -> dict[str, str]:
    """CPU model, threads, versions: the attributes of every report."""
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": model,
        "cpu_count": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "torch_version": torch.__version__,
        "tmcore_version": tmcore.__version__,
        "python": platform.python_version(),
        "cholmod": str(solvers.cholmod_available()),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def run(quick: bool = False, repeats: int | None = None, cases: list[str] | None = None, on_size=None) -> list[Timer]:
    """Time every stage at every size, round-robin within a size; returns the timers.

    cases: e.g. ["2d-1e5", "3d-1e4"] to run only those sizes; on_size(timers so far) is
    called after each size (the command line writes the report there, so an interrupted
    run keeps what it measured).
    """
    torch.set_default_dtype(torch.float64)
    repeats = repeats or (3 if quick else 5)
    labels_2d = QUICK_2D if quick else tuple(SIZES_2D)
    labels_3d = QUICK_3D if quick else tuple(SIZES_3D)
    plan = [(label, 2, SIZES_2D[label]) for label in labels_2d] + [(label, 3, SIZES_3D[label]) for label in labels_3d]
    if cases:
        unknown = set(cases) - {f"2d-{label}" for label in SIZES_2D} - {f"3d-{label}" for label in SIZES_3D}
        if unknown:
            raise ValueError(
                f"unknown cases {sorted(unknown)}; choose from 2d-{list(SIZES_2D)} and 3d-{list(SIZES_3D)}"
            )
        plan = [(label, 2, SIZES_2D[label]) for label in SIZES_2D if f"2d-{label}" in cases] + [
            (label, 3, SIZES_3D[label]) for label in SIZES_3D if f"3d-{label}" in cases
        ]
    timers: list[Timer] = []
    for label, dim, n in plan:
        large = label in ("4e5", "1e6", "3e5")
        size_timers = _timers_for(label, dim, n)
        for timer in size_timers:  # warm-up (imports, caches, first-touch allocations) and memory
            timer.measure_memory()
        for _ in range(max(2, repeats - 2) if large else repeats):
            for timer in size_timers:
                timer.measure()
        timers += size_timers
        logger.info("%s-D %s done", dim, label)
        if on_size is not None:
            on_size(timers)
    return timers


def summarise(timers: list[Timer]) -> list[dict]:
    """One row per timer with median, min, max, elements/s and the ratio to its reference."""
    rows = []
    for t in timers:
        median = statistics.median(t.times)
        rows.append(
            {
                "case": t.case,
                "stage": t.stage,
                "implementation": t.implementation,
                "median_s": median,
                "min_s": min(t.times),
                "max_s": max(t.times),
                "n_nodes": t.n_nodes,
                "n_cells": t.n_cells,
                "cells_per_s": t.n_cells / median,
                "peak_mib": t.peak_mib,
                "repeats": len(t.times),
            }
        )
    by_stage: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        by_stage.setdefault((row["case"], row["stage"]), []).append(row)
    for (case, stage), group in by_stage.items():
        ours = [r for r in group if r["implementation"].startswith("tmcore")]
        others = [r for r in group if not r["implementation"].startswith("tmcore")]
        for row in group:
            # ours / fastest comparator (< 1 is faster than every comparator); for the
            # backward: backward / forward of the same backend
            if row in ours and others:
                row["ratio"] = row["median_s"] / min(r["median_s"] for r in others)
            elif stage == "backward":
                forward = [r for r in by_stage[(case, "forward solve")] if r["implementation"] == row["implementation"]]
                row["ratio"] = row["median_s"] / forward[0]["median_s"] if forward else float("nan")
            else:
                row["ratio"] = float("nan")
    return rows


def to_markdown(rows: list[dict], info: dict[str, str]) -> str:
    lines = [
        f"# Benchmark {info['date']}",
        "",
        f"Machine: {info['cpu']}, {info['cpu_count']} CPUs, torch {info['torch_version']} with "
        f"{info['torch_threads']} threads, CHOLMOD {'available' if info['cholmod'] == 'True' else 'not installed'}.",
        "Medians over round-robin repetitions. *ratio*: ours / fastest comparator in the same stage "
        "(below 1 is faster), or backward / forward for the backward.",
        "",
        "| case | stage | implementation | median s | min-max s | cells/s | peak MiB | ratio |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = "" if np.isnan(r["ratio"]) else f"{r['ratio']:.2f}"
        lines.append(
            f"| {r['case']} | {r['stage']} | {r['implementation']} | {r['median_s']:.4g} | "
            f"{r['min_s']:.3g}-{r['max_s']:.3g} | {r['cells_per_s']:.3g} | {r['peak_mib']:.0f} | {ratio} |"
        )
    return "\n".join(lines) + "\n"


def write_report(rows: list[dict], info: dict[str, str], out: Path, name: str | None = None) -> tuple[Path, Path]:
    """``<out>/<name>.nc`` (dim ``case``) and ``<out>/<name>.md``, each written atomically; name: the date."""
    import xarray as xr

    stamp = name or info["date"][:10]
    ds = xr.Dataset(
        {key: ("case", np.array([r[key] for r in rows])) for key in rows[0] if key != "case"},
        coords={"case": [f"{r['case']}/{r['stage']}/{r['implementation']}" for r in rows]},
        attrs=info,
    )
    netcdf, markdown = out / f"{stamp}.nc", out / f"{stamp}.md"
    atomic_write_bytes(netcdf, dataset_bytes(ds))
    atomic_write_text(markdown, to_markdown(rows, info))
    return netcdf, markdown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="sizes up to 1e5 (2-D) / 1e4 (3-D), 3 repetitions")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--cases", nargs="+", default=None, help="only these sizes, e.g. 2d-1e5 3d-1e4")
    parser.add_argument("--out", type=Path, default=Path("reports/benchmarks"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("skfem").setLevel(logging.WARNING)
    info = machine()
    # a quick or partial run must not overwrite the day's full report
    name = info["date"][:10] + ("-quick" if args.quick else "-partial" if args.cases else "")
    timers = run(
        quick=args.quick,
        repeats=args.repeats,
        cases=args.cases,
        on_size=lambda t: write_report(summarise(t), info, args.out, name),
    )
    rows = summarise(timers)
    netcdf, markdown = write_report(rows, info, args.out, name)
    print(to_markdown(rows, info))
    print(f"wrote {netcdf} and {markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
