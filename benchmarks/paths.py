"""The general path against the special ones, threads beside a busy process, assembly among other work, batches.

    python -m benchmarks.paths [--repeats 30] [--out reports/benchmarks]

Each case is timed as users write it, medians over ``--repeats`` repetitions, one thread unless said:

- ``hex8``: the structural compliance of mosaic's benchmark (16x2x8 HEX8 cantilever, SIMP), forward +
  backward, written the obvious way (``LinearElasticity.from_mesh`` and a fresh ``Condenser`` each step,
  autograd through the integrand) against ``ComplianceProblem.compliance`` (unit element matrices
  scaled, the 88-line code's trick);
- ``mbb150``: the same pair on the 88-line MBB beam at 150x50;
- ``assembly``: P1 assembly with a per-node coefficient on ~1.45e5 triangles, each call preceded by
  scikit-fem's assembly of the same form (the allocations of other work in a loop), against
  scikit-fem's own, in elements per second; and the backward of that assembly against its forward;
- ``threads``: the chapter's 790-node assembly, condensation and solve on torch's default two threads
  while another process keeps a core busy, against one thread;
- ``batch``: a (256, 790) batch of coefficient fields (assemble, condense, solve) against a loop of
  single solves, per sample, on one thread and on the defaults (torch's threads and the solver's batch
  workers, which factorise banded batches side by side with MKL installed).

Writes ``<out>/<date>-paths.md`` (atomically).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks import write_report
from tmcore import Condenser, Mesh, dof_mask
from tmcore.forms import Diffusion, LinearElasticity, Source
from tmcore.topology import ComplianceProblem, mbb_beam, point_load, simp

DEFAULT_THREADS = torch.get_num_threads()  # torch's default, read before report() sets one thread

ROOT = Path(__file__).absolute().parent.parent


def median_ms(run, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _hex8_problem() -> ComplianceProblem:
    mesh = Mesh.gen_grid((16, 2, 8), upper=(2.0, 0.25, 1.0), element_type="hexahedron")
    x = mesh.points
    fixed = dof_mask((x[:, 0] - 0.0).abs() < 1e-9, 3)
    tip = ((x[:, 0] - 2.0).abs() < 1e-9) & ((x[:, 2] - 0.0).abs() < 1e-9)
    load = point_load(mesh, tip, (0.0, 0.0, -1.0 / int(tip.sum())))
    return ComplianceProblem("hex8", mesh, LinearElasticity.from_mesh(mesh, plane=None), load, fixed)


def general_against_special(problem: ComplianceProblem, repeats: int) -> tuple[float, float]:
    """(obvious path ms, ComplianceProblem.compliance ms) for one forward + backward."""
    mesh = problem.mesh
    rho = torch.full((mesh.n_cells,), 0.5, dtype=torch.float64, requires_grad=True)
    plane = None if mesh.dim == 3 else "stress"

    def obvious():
        E = simp(rho, 3.0, problem.e_min, problem.e0)
        K = LinearElasticity.from_mesh(mesh, plane=plane)(element_data={"E": E})
        K_free, f_free = Condenser(problem.fixed)(K, problem.load)
        compliance = f_free @ K_free.solve(f_free)
        rho.grad = None
        compliance.backward()

    def special():
        compliance = problem.compliance(rho)
        rho.grad = None
        compliance.backward()

    return median_ms(obvious, repeats), median_ms(special, repeats)


def assembly_among_other_work(repeats: int) -> dict[str, float]:
    import skfem
    from skfem.helpers import dot, grad

    mesh = Mesh.gen_grid((270, 270))  # 145 800 triangles
    m = skfem.MeshTri(mesh.points.T.numpy(), mesh.elements.T.numpy())
    basis = skfem.Basis(m, skfem.ElementTriP1())
    kappa = torch.rand(mesh.n_points, dtype=torch.float64) + 1.0
    kappa_q = basis.interpolate(kappa.numpy())

    @skfem.BilinearForm
    def weighted(u, v, w):
        return w["kappa"] * dot(grad(u), grad(v))

    assembler = Diffusion.from_mesh(mesh)
    assembler(point_data={"kappa": kappa})  # the first call on a pattern builds the operator

    def ours_among():
        weighted.assemble(basis, kappa=kappa_q)
        kappa.mul_(
            1.0
        )  # a new version (same numbers): computed, as a changing coefficient is, not served from the store
        start = time.perf_counter()
        assembler(point_data={"kappa": kappa})
        return time.perf_counter() - start

    ours = []
    for _ in range(repeats):
        ours.append(ours_among())
    skfem_ms = median_ms(lambda: weighted.assemble(basis, kappa=kappa_q), repeats)
    ours_ms = 1e3 * statistics.median(ours)
    theta = kappa.clone().requires_grad_(True)
    weights = torch.rand(assembler(point_data={"kappa": kappa}).values.shape[0], dtype=torch.float64)

    def backward_only():
        values = assembler(point_data={"kappa": theta}).values
        start = time.perf_counter()
        values.backward(weights)  # the assembly's vector-Jacobian product alone (no loss op's backward)
        return time.perf_counter() - start

    backward = [backward_only() for _ in range(repeats)]
    cells = mesh.n_cells
    return {
        "cells": cells,
        "ours_ms": ours_ms,
        "skfem_ms": skfem_ms,
        "ours_per_s": cells / ours_ms * 1e3,
        "skfem_per_s": cells / skfem_ms * 1e3,
        "backward_ms": 1e3 * statistics.median(backward),
    }


def chapter_calls(repeats: int) -> dict[str, float]:
    """Median ms of the chapter's 790-node assembly, condensation and solve on the current thread count."""
    mesh = Mesh.gen_rectangle(chara_length=0.04)
    kappa = torch.rand(mesh.n_points, dtype=torch.float64) + 1.0
    f = torch.ones(mesh.n_points, dtype=torch.float64)
    stiffness, load = Diffusion.from_mesh(mesh), Source.from_mesh(mesh)
    condenser = Condenser(mesh.boundary_mask)
    K, b = stiffness(point_data={"kappa": kappa}), load(point_data={"f": f})
    K_free, b_free = condenser(K, b)
    return {
        # mul_(1.0): a new version each call, so the assembler computes (unchanged data is served from a store)
        "assembly": median_ms(lambda: stiffness(point_data={"kappa": kappa.mul_(1.0)}), repeats),
        "condensation": median_ms(lambda: condenser(K, b), repeats),
        "solve": median_ms(lambda: K_free.solve(b_free), repeats),
    }


def threads_beside_a_busy_process(repeats: int) -> dict[str, dict[str, float]]:
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        results = {}
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results[f"{threads} thread{'s' if threads > 1 else ''}"] = chapter_calls(repeats)
        return results
    finally:
        busy.kill()
        torch.set_num_threads(1)


def batch_against_loop(batch: int = 256, threads: int | None = 1) -> tuple[float, float]:
    """(ms per sample batched, ms per sample in a loop) for assemble, condense, solve of 790-node fields,
    on ``threads`` threads for torch and the solver's batch workers (None: the defaults of each)."""
    from tmcore.core.linalg import pardiso

    previous_threads, previous_workers = torch.get_num_threads(), os.environ.pop(pardiso.ENV_THREADS, None)
    torch.set_num_threads(threads or DEFAULT_THREADS)
    if threads is not None:
        os.environ[pardiso.ENV_THREADS] = str(threads)
    try:
        return _batch_against_loop(batch)
    finally:
        torch.set_num_threads(previous_threads)
        os.environ.pop(pardiso.ENV_THREADS, None)
        if previous_workers is not None:
            os.environ[pardiso.ENV_THREADS] = previous_workers


def _batch_against_loop(batch: int) -> tuple[float, float]:
    mesh = Mesh.gen_rectangle(chara_length=0.04)
    kappa = torch.rand(batch, mesh.n_points, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) + 0.5
    f = torch.ones(mesh.n_points, dtype=torch.float64)
    stiffness, condenser = Diffusion.from_mesh(mesh), Condenser(mesh.boundary_mask)
    b = Source.from_mesh(mesh)(point_data={"f": f})

    def batched():
        K_free, b_free = condenser(stiffness(point_data={"kappa": kappa.mul_(1.0)}), b)  # mul_: computed, not stored
        return K_free.solve(b_free)

    def loop():
        for i in range(batch):
            K_free, b_free = condenser(stiffness(point_data={"kappa": kappa[i]}), b)
            K_free.solve(b_free)

    return median_ms(batched, 5, 1) / batch, median_ms(loop, 3, 1) / batch


def report(repeats: int) -> str:
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    hex8 = general_against_special(_hex8_problem(), repeats)
    mbb = general_against_special(mbb_beam(150, 50), max(5, repeats // 3))
    assembly = assembly_among_other_work(max(5, repeats // 3))
    threads = threads_beside_a_busy_process(repeats)
    batches = {"one thread": batch_against_loop(threads=1), "default threads": batch_against_loop(threads=None)}
    load_after = os.getloadavg()
    lines = [
        f"# The general path, threads and batches ({dt.date.today().isoformat()})",
        "",
        f"`python -m benchmarks.paths --repeats {repeats}`; load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after; medians; one thread unless said.",
        "",
        "| case | obvious path (ms) | specialised (ms) | ratio |",
        "|---|---|---|---|",
        f"| HEX8 compliance 16x2x8, fwd+bwd | {hex8[0]:.2f} | {hex8[1]:.2f} | {hex8[0] / hex8[1]:.2f} |",
        f"| MBB 150x50 compliance, fwd+bwd | {mbb[0]:.2f} | {mbb[1]:.2f} | {mbb[0] / mbb[1]:.2f} |",
        "",
        f"Assembly among other work ({assembly['cells']} P1 triangles, per-node coefficient, each call after "
        f"scikit-fem's assembly of the same form): ours {assembly['ours_ms']:.1f} ms "
        f"({assembly['ours_per_s']:.3g} elements/s), scikit-fem {assembly['skfem_ms']:.1f} ms "
        f"({assembly['skfem_per_s']:.3g} elements/s): {assembly['ours_per_s'] / assembly['skfem_per_s']:.1f}x; "
        f"backward of the assembly {assembly['backward_ms']:.1f} ms "
        f"({assembly['backward_ms'] / assembly['ours_ms']:.2f}x the forward).",
        "",
        "The chapter's 790-node calls beside a process that keeps one core busy (ms):",
        "",
        "| threads | assembly | condensation | solve |",
        "|---|---|---|---|",
    ]
    for label, calls in threads.items():
        lines.append(f"| {label} | {calls['assembly']:.3f} | {calls['condensation']:.3f} | {calls['solve']:.3f} |")
    lines += [
        "",
        "Batch of 256 coefficient fields on 790 nodes (assemble, condense, solve), ms per sample "
        "(threads: torch's and the solver's batch workers, `$TMCORE_SOLVER_THREADS`):",
        "",
        "| threads | batched | loop | ratio |",
        "|---|---|---|---|",
    ]
    for label, (batched, looped) in batches.items():
        lines.append(f"| {label} | {batched:.3f} | {looped:.3f} | {looped / batched:.1f}x |")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "benchmarks")
    args = parser.parse_args(argv)
    text = report(args.repeats)
    write_report(args.out, "paths", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
