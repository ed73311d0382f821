"""The cost of the mesh checks (tmcore.core.mesh.validate) beside the cost of reading the file.

    OMP_NUM_THREADS=1 python -m benchmarks.mesh_checks [--sizes 1e5 1e6] [--cells triangle tetra]
        [--order shuffled natural] [--repeats 5] [--baseline GIT_REVISION] [--out reports/benchmarks]

For each cell type, size (nodes) and node order: a structured grid (``Mesh.gen_grid``) written as a
binary gmsh 4.1 ``.msh`` into a temporary directory; ``Mesh.read(path, check=False)`` (meshio's
reader and the Mesh built from it, no checks) against ``validate.check_mesh`` on the same arrays,
with the seconds of each check from its ``timings``, and ``topology.boundary_facets`` (what
``Mesh.boundary_mask`` and boundary conditions cost once per mesh). ``shuffled`` renumbers the nodes and reorders
the cells at random (the worst case for the coordinate gathers: every node a cache miss);
``natural`` keeps the grid's numbering (nodes near in space near in number, as gmsh writes them).
Medians over ``--repeats`` runs after one warm-up (reads and checks alternating), on one thread.
``--baseline REV`` also times ``check_mesh`` of ``tmcore/core/mesh/validate.py`` as it was at
that git revision (its total only), in the same alternation.

Writes ``<out>/<date>-mesh-checks.md`` (atomically).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch

from benchmarks import write_report
from tmcore import Mesh
from tmcore.core.mesh import topology, validate

ROOT = Path(__file__).absolute().parent.parent


def grid_mesh(cell_type: str, nodes: float, order: str, seed: int = 0) -> Mesh:
    """A unit square (triangles) or cube (tetrahedra) grid of about ``nodes`` nodes, numbered
    ``order`` ("natural" or "shuffled")."""
    dim = 2 if cell_type == "triangle" else 3
    per_axis = max(1, round(nodes ** (1 / dim)) - 1)
    mesh = Mesh.gen_grid((per_axis,) * dim, element_type=cell_type)
    if order == "natural":
        return mesh
    rng = np.random.default_rng(seed)
    new_of_old = torch.from_numpy(rng.permutation(mesh.n_points))
    points = torch.empty_like(mesh.points)
    points[new_of_old] = mesh.points
    cells = new_of_old[mesh.elements][torch.from_numpy(rng.permutation(mesh.n_cells))]
    return Mesh(points, {cell_type: cells}, check=False)


def baseline_module(revision: str) -> types.ModuleType:
    """tmcore/core/mesh/validate.py as it was at a git revision, as a module (on today's package)."""
    path = "tmcore/core/mesh/validate.py"
    source = subprocess.run(
        ["git", "show", f"{revision}:{path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    module = types.ModuleType(f"validate_at_{revision}")
    exec(compile(source, f"{revision}:{path}", "exec"), module.__dict__)
    return module


def measure(
    cell_type: str, nodes: float, order: str, repeats: int, tmp: Path, baseline: types.ModuleType | None = None
) -> dict:
    """Read and check seconds of one mesh (medians): the read, the checks in all, each check.
    Reads and checks alternate, so that a shared machine's load falls on both alike."""
    mesh = grid_mesh(cell_type, nodes, order)
    path = tmp / f"{cell_type}-{nodes:g}-{order}.msh"
    mesh.write(path, binary=True)
    reads, totals, runs, before, boundary = [], [], [], [], []
    for repeat in range(repeats + 1):  # the first is a warm-up
        start = time.perf_counter()
        Mesh.read(path, check=False)
        read = time.perf_counter() - start
        if baseline is not None:
            start = time.perf_counter()
            baseline.check_mesh(mesh.points, mesh.elements, mesh.cell_type)
            if repeat:
                before.append(time.perf_counter() - start)
        timings = {}
        start = time.perf_counter()
        validate.check_mesh(mesh.points, mesh.elements, mesh.cell_type, timings=timings)
        total = time.perf_counter() - start
        start = time.perf_counter()
        topology.boundary_facets(mesh.elements, mesh.cell_type)
        if repeat:
            boundary.append(time.perf_counter() - start)
            reads.append(read)
            totals.append(total)
            runs.append(timings)
    path.unlink()
    row = {
        "cells": cell_type,
        "nodes": mesh.n_points,
        "n_cells": mesh.n_cells,
        "order": order,
        "read": statistics.median(reads),
        "checks": statistics.median(totals),
    }
    if before:
        row["baseline"] = statistics.median(before)
    row.update({name: statistics.median(run[name] for run in runs) for name in runs[0]})
    row["boundary facets"] = statistics.median(boundary)
    return row


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def report(rows: list[dict], argv: list[str]) -> str:
    names = [k for k in rows[0] if k not in ("cells", "nodes", "n_cells", "order", "read", "checks", "baseline")]
    baseline = "baseline" in rows[0]
    load = os.getloadavg()
    lines = [
        f"# Mesh checks against reading the file ({dt.date.today().isoformat()})",
        "",
        f"`OMP_NUM_THREADS=1 python -m benchmarks.mesh_checks {' '.join(argv)}`; {_cpu()} "
        f"({os.cpu_count()} cores), numpy {np.__version__}, torch {torch.__version__}, one thread; load average "
        f"{load[0]:.1f} at the end (a shared machine: medians, and the ratios mean more than the seconds).",
        "",
        "| cells | nodes | cells | numbering | read .msh (s) | "
        + ("baseline checks (s) | baseline / read | " if baseline else "")
        + "checks (s) | checks / read | "
        + " | ".join(names)
        + " |",
        "|---|---:|---:|---|---:|" + ("---:|---:|" if baseline else "") + "---:|---:|" + "---:|" * len(names),
    ]
    for r in rows:
        lines.append(
            f"| {r['cells']} | {r['nodes']:.3g} | {r['n_cells']:.3g} | {r['order']} | {r['read']:.3f} | "
            + (f"{r['baseline']:.3f} | {r['baseline'] / r['read']:.2f} | " if baseline else "")
            + f"{r['checks']:.3f} | {r['checks'] / r['read']:.2f} | "
            + " | ".join(f"{r[k]:.3f}" for k in names)
            + " |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e5, 1e6])
    parser.add_argument("--cells", nargs="+", default=["triangle", "tetra"], choices=["triangle", "tetra"])
    parser.add_argument("--order", nargs="+", default=["shuffled", "natural"], choices=["shuffled", "natural"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline", help="a git revision whose validate.py is timed too")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "benchmarks")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    baseline = baseline_module(args.baseline) if args.baseline else None
    rows = []
    with tempfile.TemporaryDirectory(prefix="mesh-checks-") as tmp:
        for cell_type in args.cells:
            for nodes in args.sizes:
                for order in args.order:
                    rows.append(measure(cell_type, nodes, order, args.repeats, Path(tmp), baseline))
                    sys.stderr.write(f"{rows[-1]}\n")
    text = report(rows, argv)
    write_report(args.out, "mesh-checks", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
