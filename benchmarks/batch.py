"""Batched pipeline against a Python loop of single solves: B = 1, 16, 64 samples at 1e4 nodes.

Both compute the same thing for B coefficient fields kappa_i (log-normal random fields,
tmcore.methods.batch.random_fields) on the unit square (structured P1 triangles, 99 x 99 cells,
10 000 nodes): assemble K(kappa_i), condense u = 0 on the boundary, solve, recover, and in
mode ``forward+backward`` back-propagate sum_i |u_i - u_ref|^2 to every kappa_i. The loop
runs the pipeline once per sample (one graph and one backward per sample, as a training
loop over single samples would); the batched path runs it once for the whole batch. The load
vector does not depend on kappa and is assembled once for both.

Reported: time per sample (median over round-robin repetitions) and the speed-up of the
batched path, also with the batch forced to one sequential backend (``--sequential``,
CHOLMOD by default: batching without parallel factorisations) and with the loop on the
batch's library (``--loop-backend``, PARDISO by default: the library without batching),
the peak resident memory
each added, and where one sample's time goes
(assembly, condensation, the solver's checks, numeric factorisation, triangular solves,
residual check, recovery, backward) in the loop and in the batch.

    python -m benchmarks.batch [--cells 99] [--batches 1 16 64] [--repeats 5] [--backend auto]
                               [--sequential cholmod] [--out reports/benchmarks]

writes ``<out>/batch-<date>.nc`` and ``.md``.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from flows.artifacts import atomic_write_bytes, atomic_write_text, dataset_bytes
from tmcore import Condenser, Mesh, solvers
from tmcore.methods.batch import random_fields

from .suite import Diffusion, Load, PeakMemory, machine

logger = logging.getLogger(__name__)

MODES = ("forward", "forward+backward")


class Setup:
    """The mesh, the assembler, the condenser, the load and 64+ coefficient fields."""

    def __init__(self, cells: int, n_samples: int, backend: str):
        self.mesh = Mesh.gen_grid((cells, cells))
        self.stiffness = Diffusion.from_mesh(self.mesh)
        self.condenser = Condenser(self.mesh.boundary_mask)
        self.load = Load.from_mesh(self.mesh)(point_data={"f": torch.ones(self.mesh.n_points, dtype=torch.float64)})
        self.kappa = torch.exp(0.5 * random_fields(self.mesh.points, n_samples, seed=0, length_scale=0.2))
        self.backend = backend
        with torch.no_grad():
            self.u_ref = self.solve(torch.ones(self.mesh.n_points, dtype=torch.float64))

    def solve(self, kappa: torch.Tensor, backend: str | None = None) -> torch.Tensor:
        """u (n,) or (B, n) for kappa (n,) or (B, n): the whole pipeline."""
        K_free, b_free = self.condenser(self.stiffness(point_data={"kappa": kappa}), self.load)
        return self.condenser.recover(K_free.solve(b_free, backend=backend or self.backend))

    def loop(self, kappa: torch.Tensor, backward: bool, backend: str | None = None) -> None:
        for i in range(kappa.shape[0]):
            self._once(kappa[i], backward, backend)

    def batched(self, kappa: torch.Tensor, backward: bool, backend: str | None = None) -> None:
        self._once(kappa, backward, backend)

    def _once(self, kappa: torch.Tensor, backward: bool, backend: str | None = None) -> None:
        if not backward:
            with torch.no_grad():
                self.solve(kappa, backend)
            return
        leaf = kappa.detach().clone().requires_grad_(True)
        ((self.solve(leaf, backend) - self.u_ref) ** 2).sum().backward()


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compare(
    setup: Setup, batches: list[int], repeats: int, sequential: str | None = None, loop_backend: str | None = None
) -> list[dict]:
    """Per B and mode: the loop and the batched path, round-robin; time per sample and memory.

    sequential: also time the batched path forced to this backend (e.g. "cholmod": the
    batch's factorisations one after another), to separate batching from parallelism.
    loop_backend: also time the loop with this backend (e.g. "pardiso": the batch's
    library, one matrix at a time), to separate the library from the batching.
    """
    rows = []
    for mode in MODES:
        backward = mode == "forward+backward"
        for batch in batches:
            kappa = setup.kappa[:batch]
            runs = {"loop": lambda: setup.loop(kappa, backward), "batched": lambda: setup.batched(kappa, backward)}
            if loop_backend and batch > 1:
                runs[f"loop, {loop_backend}"] = lambda: setup.loop(kappa, backward, loop_backend)
            if sequential and batch > 1:
                runs[f"batched, {sequential}"] = lambda: setup.batched(kappa, backward, sequential)
            memory = {}
            for name, fn in runs.items():  # warm-up (caches, analyses) and memory, untimed
                with PeakMemory() as peak:
                    fn()
                memory[name] = peak.added_mib
            times = {name: [] for name in runs}
            for _ in range(repeats if batch > 1 else 3 * repeats):
                for name, fn in runs.items():
                    times[name].append(_timed(fn))
            for name in runs:
                median = statistics.median(times[name])
                rows.append(
                    {
                        "mode": mode,
                        "batch": batch,
                        "implementation": name,
                        "median_s": median,
                        "per_sample_ms": 1e3 * median / batch,
                        "min_s": min(times[name]),
                        "max_s": max(times[name]),
                        "peak_mib": memory[name],
                        "repeats": len(times[name]),
                    }
                )
            group = rows[-len(runs) :]
            loop = group[0]
            for row in group:
                row["speedup"] = loop["median_s"] / row["median_s"]
                row["speedup_min"] = loop["min_s"] / row["min_s"]
                logger.info(
                    "%s B=%d %s: %.2f ms/sample (%.2fx)",
                    mode,
                    batch,
                    row["implementation"],
                    row["per_sample_ms"],
                    row["speedup"],
                )
    return rows


# -- where the time goes ---------------------------------------------------------------------


def _solver_stages(pattern, values: torch.Tensor, b: torch.Tensor, backend: str, out: dict[str, float]) -> torch.Tensor:
    """The steps of solvers.solve / FactoredSolve.forward for values (B, nnz), b (B, n), timed into ``out``."""
    add = lambda key, seconds: out.__setitem__(key, out.get(key, 0.0) + seconds)  # noqa: E731
    start = time.perf_counter()
    torch.isfinite(values).all() and torch.isfinite(b).all()  # the input checks of solve()
    add("solver input checks", time.perf_counter() - start)
    start = time.perf_counter()
    factors = solvers.factorize(pattern, values, backend)
    add("symmetry check, backend choice, numeric factorisation", time.perf_counter() - start)
    b3 = b.reshape(values.shape[0], -1, 1)
    start = time.perf_counter()
    u = factors.solve(b3)
    add("triangular solves", time.perf_counter() - start)
    start = time.perf_counter()
    solvers._check_residual(values, pattern, b3, u, solvers.RESIDUAL_TOL)
    add("residual check", time.perf_counter() - start)
    return u.reshape(b.shape)


def breakdown(setup: Setup, batch: int, repeats: int = 3) -> list[dict]:
    """Seconds per sample of each stage, in the loop and in the batch (medians of ``repeats``)."""
    kappa = setup.kappa[:batch]
    cond, load = setup.condenser, setup.load

    def forward_stages(kappas: list[torch.Tensor]) -> dict[str, float]:
        out: dict[str, float] = {}
        with torch.no_grad():
            for k in kappas:
                start = time.perf_counter()
                K = setup.stiffness(point_data={"kappa": k})
                out["assembly"] = out.get("assembly", 0.0) + time.perf_counter() - start
                start = time.perf_counter()
                K_free, b_free = cond(K, load)
                out["condensation"] = out.get("condensation", 0.0) + time.perf_counter() - start
                values = K_free.values if K_free.values.ndim == 2 else K_free.values.unsqueeze(0)
                rhs = b_free.expand(values.shape[0], -1)
                u_free = _solver_stages(K_free.pattern, values, rhs, setup.backend, out)
                start = time.perf_counter()
                cond.recover(u_free if K_free.values.ndim == 2 else u_free[0])
                out["recovery"] = out.get("recovery", 0.0) + time.perf_counter() - start
        return out

    rows = []
    for name, kappas, run in (
        ("loop", [kappa[i] for i in range(batch)], lambda: setup.loop(kappa, True)),
        ("batched", [kappa], lambda: setup.batched(kappa, True)),
    ):
        forward_stages(kappas)  # warm-up
        samples = [forward_stages(kappas) for _ in range(repeats)]
        forward_only = statistics.median(
            _timed(lambda: setup.loop(kappa, False) if name == "loop" else setup.batched(kappa, False))
            for _ in range(repeats)
        )
        total = statistics.median(_timed(run) for _ in range(repeats))
        stages = {key: statistics.median(s[key] for s in samples) for key in samples[0]}
        stages["backward (adjoint solves, assembly backward)"] = max(total - forward_only, 0.0)
        stages["other (autograd graph, Python)"] = max(
            forward_only - sum(v for k, v in stages.items() if not k.startswith("backward")), 0.0
        )
        for stage, seconds in stages.items():
            rows.append(
                {"implementation": name, "batch": batch, "stage": stage, "per_sample_ms": 1e3 * seconds / batch}
            )
        rows.append(
            {
                "implementation": name,
                "batch": batch,
                "stage": "total forward+backward",
                "per_sample_ms": 1e3 * total / batch,
            }
        )
    return rows


# -- the report ------------------------------------------------------------------------------


def to_markdown(rows: list[dict], stages: list[dict], info: dict, setup: Setup) -> str:
    mesh = setup.mesh
    lines = [
        f"# Batched vs looped solves, {info['date']}",
        "",
        f"Machine: {info['cpu']}, {info['cpu_count']} CPUs, torch {info['torch_version']} with "
        f"{info['torch_threads']} threads, "
        f"CHOLMOD {'available' if info['cholmod'] == 'True' else 'not installed'}, MKL PARDISO "
        f"{'available' if solvers.pardiso_available() else 'not installed'}; backend {setup.backend!r}: single solves "
        f"{_backends(setup)[0]}, batches {_backends(setup)[1]}. Mesh: {mesh.n_points} nodes, {mesh.n_cells} "
        "P1 triangles.",
        f"1-minute load average (2 cores): {info.get('load_average', 'not recorded')}. "
        "Time per sample: median over round-robin repetitions divided by B (min: the fastest repetition). "
        "Speed-up: loop time / batched time, from the medians (from the minima in brackets). "
        "Peak MiB: resident memory added during one run.",
        "",
        "| mode | B | implementation | ms / sample (median) | ms / sample (min) | peak MiB | speed-up |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['batch']} | {r['implementation']} | {r['per_sample_ms']:.2f} | "
            f"{1e3 * r['min_s'] / r['batch']:.2f} | {r['peak_mib']:.0f} | {r['speedup']:.2f} ({r['speedup_min']:.2f}) |"
        )
    if stages:
        batch = stages[0]["batch"]
        lines += [
            "",
            f"Where one sample's time goes at B = {batch} (ms per sample):",
            "",
            "| stage | loop | batched |",
            "|---|---:|---:|",
        ]
        names = list(dict.fromkeys(r["stage"] for r in stages))
        value = {(r["implementation"], r["stage"]): r["per_sample_ms"] for r in stages}
        for stage in names:
            loop, batched = (value.get((kind, stage), float("nan")) for kind in ("loop", "batched"))
            lines.append(f"| {stage} | {loop:.2f} | {batched:.2f} |")
    return "\n".join(lines) + "\n"


def _backends(setup: Setup) -> tuple[str, str]:
    """What the benchmark's single solves and batches ran on."""
    solvers.stats.reset()
    with torch.no_grad():
        setup.solve(setup.kappa[0])
        single = ", ".join(solvers.stats.by_backend)
        solvers.stats.reset()
        setup.solve(setup.kappa[:2])
    batched = ", ".join(solvers.stats.by_backend)
    if batched == "pardiso":
        from tmcore.core.linalg import pardiso

        batched += f" on {pardiso.threads()} threads"
    return single, batched


def write_report(
    rows: list[dict], stages: list[dict], info: dict, setup: Setup, out: Path, name: str | None = None
) -> tuple[Path, Path]:
    import xarray as xr

    stamp = name or f"batch-{info['date'][:10]}"
    table = xr.Dataset(
        {key: ("case", np.array([r[key] for r in rows])) for key in rows[0] if key not in ("mode", "implementation")},
        coords={
            "case": [f"{r['mode']}/B{r['batch']}/{r['implementation']}" for r in rows],
            "mode": ("case", [r["mode"] for r in rows]),
            "implementation": ("case", [r["implementation"] for r in rows]),
        },
        attrs={**info, "n_nodes": setup.mesh.n_points, "backend": setup.backend},
    )
    if stages:
        table["stage_ms_per_sample"] = ("stage_case", np.array([r["per_sample_ms"] for r in stages]))
        table = table.assign_coords(stage_case=[f"{r['implementation']}/{r['stage']}" for r in stages])
    netcdf, markdown = out / f"{stamp}.nc", out / f"{stamp}.md"
    atomic_write_bytes(netcdf, dataset_bytes(table))
    atomic_write_text(markdown, to_markdown(rows, stages, info, setup))
    return netcdf, markdown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=99, help="cells per side (99: 10 000 nodes)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backend", default="auto", choices=solvers.BACKENDS)
    parser.add_argument("--no-breakdown", action="store_true", help="skip the stage breakdown")
    parser.add_argument(
        "--sequential",
        default="cholmod" if solvers.cholmod_available() else "splu",
        help="also time the batch forced to this backend ('' for none)",
    )
    parser.add_argument(
        "--loop-backend",
        default="pardiso" if solvers.pardiso_available() else "",
        help="also time the loop with this backend ('' for none)",
    )
    parser.add_argument(
        "--torch-threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)"
    )
    parser.add_argument("--name", default=None, help="report file name (default batch-<date>)")
    parser.add_argument("--out", type=Path, default=Path("reports/benchmarks"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_default_dtype(torch.float64)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    setup = Setup(args.cells, max(args.batches), args.backend)
    info = machine()
    info["torch_threads"] = str(torch.get_num_threads())
    load_before = os.getloadavg()[0]
    rows = compare(setup, args.batches, args.repeats, args.sequential or None, args.loop_backend or None)
    stages = [] if args.no_breakdown else breakdown(setup, max(args.batches))
    # the machine is shared: the 1-minute load average before and after says how quiet it was
    info["load_average"] = f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after"
    netcdf, markdown = write_report(rows, stages, info, setup, args.out, args.name)
    print(to_markdown(rows, stages, info, setup))
    print(f"wrote {netcdf} and {markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
