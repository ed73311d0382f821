"""The 88-line code's benchmarks on tmcore against an independent NumPy/SciPy reference.

    python -m benchmarks.topology88 [--cases mbb:60x20,mbb:150x50,cantilever:80x50,heat:40x40]
                                    [--out reports/benchmarks]

For each case: iterations to convergence (max change <= 0.01), final compliance, the
difference to the reference (written from the paper's equations, tests/tmcore/topopt_reference.py)
and the median time per iteration of each (CPU, float64, one process).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from flows.artifacts import atomic_write_text
from flows.reports import markdown_table
from tests.tmcore import topopt_reference as reference
from tmcore.studies import compliance_topology
from tmcore.topology import cantilever, heat_conduction, mbb_beam

BUILD = {"mbb": (mbb_beam, 0.5), "cantilever": (cantilever, 0.4), "heat": (heat_conduction, 0.4)}


def run_case(name: str, nelx: int, nely: int) -> dict:
    build, vf = BUILD[name]
    ours = compliance_topology(build(nelx, nely), vf=vf, penal=3.0, radius=1.5)
    ref = reference.run(name, nelx, nely, vf, penal=3.0, rmin=1.5)
    order = (np.floor(ref.centroids[:, 0]) + nelx * np.floor(ref.centroids[:, 1])).astype(int)
    return {
        "case": f"{name} {nelx}x{nely}",
        "iterations": ours.iterations,
        "compliance": ours.final_compliance,
        "ms_per_iteration": 1e3 * ours.seconds_per_iteration,
        "ref_iterations": ref.iterations,
        "ref_compliance": ref.compliance[-1],
        "ref_ms_per_iteration": 1e3 * ref.seconds / ref.iterations,
        "difference": ours.final_compliance / ref.compliance[-1] - 1,
        "design_difference": float(np.abs(ours.rho.numpy()[order] - ref.x_phys).mean()),
    }


def table_row(r: dict) -> dict[str, str]:
    """One case's row of the report, keyed by the column titles."""
    return {
        "case": r["case"],
        "iterations": str(r["iterations"]),
        "compliance": f"{r['compliance']:.4f}",
        "ms/iteration": f"{r['ms_per_iteration']:.1f}",
        "reference iterations": str(r["ref_iterations"]),
        "reference compliance": f"{r['ref_compliance']:.4f}",
        "reference ms/iteration": f"{r['ref_ms_per_iteration']:.1f}",
        "difference": f"{100 * r['difference']:+.3f}%",
        "mean |rho - rho_ref|": f"{r['design_difference']:.2e}",
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="mbb:60x20,mbb:150x50,cantilever:80x50,heat:40x40")
    parser.add_argument("--out", type=Path, default=Path("reports/benchmarks"))
    args = parser.parse_args(argv)
    torch.set_default_dtype(torch.float64)
    rows = []
    for case in args.cases.split(","):
        name, size = case.split(":")
        nelx, nely = (int(v) for v in size.split("x"))
        rows.append(run_case(name, nelx, nely))
        print(rows[-1], flush=True)
    text = markdown_table([table_row(r) for r in rows])
    print(text, end="")
    atomic_write_text(args.out / "topology88.md", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
