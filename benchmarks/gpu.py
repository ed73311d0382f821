"""The GPU check behind ``make gpu-check``: the pipeline on a CUDA device at 1e5 and 1e6 nodes.

Times, on the device, matrix and vector assembly, condensation, the forward solve (the
backend ``auto`` picks there: ``torch-cg`` for large SPD systems) and the backward, and
checks the solution against a CPU solve of the same system. Writes ``gpu-<date>.md`` and
``gpu-<date>.nc`` to ``$GPU_REPORT_DIR`` (default ``reports/gpu``).

    python -m benchmarks.gpu [--device cuda] [--sizes 315 999]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from pathlib import Path

import torch

from tmcore import Condenser, Mesh, solvers

from .suite import Diffusion, Load, machine, write_report

logger = logging.getLogger(__name__)


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        _synchronise(device)
        start = time.perf_counter()
        fn()
        _synchronise(device)
        times.append(time.perf_counter() - start)
    return times


def run(device: torch.device, cells_per_side: list[int], repeats: int = 3) -> list[dict]:
    """Rows like the CPU suite's (case, stage, implementation, timings) plus the CPU check."""
    rows = []
    for n in cells_per_side:
        mesh = Mesh.gen_grid((n, n)).to(device)
        case = f"2d-{mesh.n_points:.0e}".replace("e+0", "e")
        kappa = 1.0 + mesh.points[:, 0] * mesh.points[:, 1]
        f = torch.ones(mesh.n_points, dtype=torch.float64, device=device)
        laplace, load, cond = Diffusion.from_mesh(mesh), Load.from_mesh(mesh), Condenser(mesh.boundary_mask)
        K, b = laplace(point_data={"kappa": kappa}), load(point_data={"f": f})
        K_, b_ = cond(K, b)
        backend = solvers.choose_backend(K_.pattern, K_.values)
        state = {}

        def forward():
            values = K_.values.detach().clone().requires_grad_(True)
            state["values"] = values
            state["u"] = type(K_).from_pattern(K_.pattern, values).solve(b_)

        def backward():
            state["u"].sum().backward()

        timers = {
            # mul_(1.0): new versions, so the assemblers compute instead of serving unchanged data from a store
            "matrix assembly": lambda: laplace(point_data={"kappa": kappa.mul_(1.0)}),
            "vector assembly": lambda: load(point_data={"f": f.mul_(1.0)}),
            "condensation": lambda: cond(K, b),
            "forward solve": forward,
        }
        for stage, fn in timers.items():
            fn()  # warm-up
            times = _time(fn, device, repeats)
            rows.append(_row(case, stage, f"tmcore ({backend})" if "solve" in stage else "tmcore", times, mesh))
        backward_times = []
        for _ in range(repeats):
            forward()
            backward_times += _time(backward, device, 1)
        rows.append(_row(case, "backward", f"tmcore ({backend})", backward_times, mesh))
        reference = K_.cpu().solve(b_.cpu(), backend="splu")
        error = float((state["u"].detach().cpu() - reference).norm() / reference.norm())
        rows.append(_row(case, "relative error vs CPU SuperLU", "tmcore", [error], mesh))
        logger.info("%s: %s, relative error %.2e", case, backend, error)
    return rows


def _row(case, stage, implementation, times, mesh) -> dict:
    median = statistics.median(times)
    return {
        "case": case,
        "stage": stage,
        "implementation": implementation,
        "median_s": median,
        "min_s": min(times),
        "max_s": max(times),
        "n_nodes": mesh.n_points,
        "n_cells": mesh.n_cells,
        "cells_per_s": mesh.n_cells / median if median > 0 else float("nan"),
        "peak_mib": float("nan"),
        "repeats": len(times),
        "ratio": float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[315, 999], help="cells per side (315: 1e5 nodes, 999: 1e6)"
    )
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("GPU_REPORT_DIR", "reports/gpu")))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: the GPU benchmark is skipped")
        return 0
    info = machine()
    info["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    rows = run(device, args.sizes)
    netcdf, markdown = write_report(rows, info, args.out, name=f"gpu-{info['date'][:10]}")
    print(markdown.read_text())
    print(f"wrote {netcdf} and {markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
