"""Minimum compliance with MMA: the 88-line MBB beam against OC, TensorMesh's MMA cantilever benchmark,
and a beam with two volume constraints on two regions.

    python examples/mma_topology.py mbb [nelx nely]          # MMA vs OC, density filter r = 1.5
    python examples/mma_topology.py cantilever [nelx nely]   # TensorMesh's set-up: 51 MMA steps, move 0.1, r = 1.5
    python examples/mma_topology.py regions [nelx nely]      # left half <= 0.6, right half <= 0.4
    ... [--png PATH]

Each case prints its final compliance, volume(s), the KKT residual of MMA's last step and the
median time per step; ``--png`` draws the final design(s).
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass

import torch
from torch import Tensor

from tmcore.topology import (
    ComplianceProblem,
    ConeFilter,
    DensityDesign,
    OCOptimizer,
    cantilever,
    mbb_beam,
    optimise,
    point_load,
)
from tmcore.topology.mma import MMA


@dataclass
class Run:
    """What one run leaves: final physical densities, compliance history, last constraints, MMA diagnostics."""

    rho: Tensor
    compliance: list[float]
    constraints: Tensor
    kkt_residual: float
    seconds: list[float]

    @property
    def steps(self) -> int:
        return len(self.compliance)

    @property
    def ms_per_step(self) -> float:
        return 1e3 * statistics.median(self.seconds)


class RegionVolumes:
    """Compliance with one volume constraint per region: mean(rho over region k) <= limits[k]."""

    def __init__(self, design: DensityDesign, regions: list[Tensor], limits: list[float]):
        self.design, self.regions, self.limits = design, regions, limits

    def physical(self, x: Tensor) -> Tensor:
        return self.design.physical(x)

    def objective(self, x: Tensor) -> Tensor:
        return self.design.objective(x)

    def constraints(self, x: Tensor) -> Tensor:
        rho = self.physical(x)
        return torch.stack([rho[region].mean() - limit for region, limit in zip(self.regions, self.limits)])


def averaged_sensitivities(x: Tensor, filt: ConeFilter) -> Tensor:
    """x itself, with the gradient that flows back through it averaged by ``filt`` (dc/dx -> H dc / H 1).
    Use it on the objective's path only: the volume gradient reaches MMA unfiltered."""
    through = x * 1.0
    if through.requires_grad:
        through.register_hook(filt)
    return through


def run_mma(design, x: Tensor, optimizer: MMA, steps: int, tol: float | None) -> Run:
    compliance, seconds = [], []
    for record in optimise(design, x, optimizer, steps, tol=tol):
        compliance.append(record.objective)
        seconds.append(record.seconds)
    with torch.no_grad():
        rho = design.physical(x)
        constraints = design.constraints(x)
        compliance.append(float(design.objective(x)))
    return Run(rho, compliance, constraints, optimizer.state[x]["kkt_residual"], seconds)


def mbb(nelx: int = 60, nely: int = 20, vf: float = 0.5, move: float = 0.2, tol: float = 0.01) -> tuple[Run, Run]:
    """The 88-line MBB beam (p 3, density filter r 1.5) by MMA and by OC, both stopped at change <= tol."""
    problem = mbb_beam(nelx, nely)
    filt = ConeFilter(problem.mesh, 1.5)
    design = DensityDesign(problem, penal=3.0, density_filter=filt, vf=vf)
    x = torch.full((problem.mesh.n_cells,), vf, dtype=torch.float64, requires_grad=True)
    mma = run_mma(design, x, MMA([x], n_constraints=1, lower=0.0, upper=1.0, move_limit=move), 1000, tol)
    x = torch.full((problem.mesh.n_cells,), vf, dtype=torch.float64, requires_grad=True)
    oc = OCOptimizer(
        [x], vf=vf, move_limit=0.2, damping=0.5, rho_min=0.0, rho_max=1.0, volume_weights=filt.volume_weights
    )
    compliance, seconds = [], []
    for record in optimise(design, x, oc, 1000, tol=tol):
        compliance.append(record.objective)
        seconds.append(record.seconds)
    with torch.no_grad():
        rho = design.physical(x)
        compliance.append(float(design.objective(x)))
        constraints = design.constraints(x)
    return mma, Run(rho, compliance, constraints, float("nan"), seconds)


def tensormesh_cantilever(nelx: int = 60, nely: int = 30) -> ComplianceProblem:
    """TensorMesh's MMA cantilever (examples/inverse_design/compliance_topology.py in its repository): a
    nelx x nely domain of unit Q1 cells, left edge clamped, a downward traction of 100 over the lowest tenth
    of the right edge (consistent nodal forces: 50, 100, 100, 50 at 60 x 30), E 70e3 with Emin 70 (SIMP
    E = Emin + rho^3 (E - Emin)), nu 0.3, plane stress."""
    base = cantilever(nelx, nely)
    points = base.mesh.points
    loaded = torch.nonzero((points[:, 0] == nelx) & (points[:, 1] <= 0.1 * nely + 1e-9)).flatten()
    loaded = loaded[points[loaded, 1].argsort()]
    y = points[loaded, 1]
    # each node carries the traction halfway to its neighbours
    ends = torch.cat([y[:1], 0.5 * (y[1:] + y[:-1]), y[-1:]])
    load = sum(
        point_load(base.mesh, int(node), (0.0, -100.0 * float(ends[i + 1] - ends[i]))) for i, node in enumerate(loaded)
    )
    return ComplianceProblem(
        "tensormesh cantilever", base.mesh, base.assembler, load, base.fixed, e_min=70.0, e0=70e3, shape=(nelx, nely)
    )


def tensormesh_benchmark(nelx: int = 60, nely: int = 30, vf: float = 0.5, move: float = 0.1, steps: int = 51) -> Run:
    """TensorMesh's MMA cantilever benchmark as its script runs it: densities x in [1e-3, 1] from x = vf, no
    density filter, the volume constraint mean(x) / vf - 1 <= 0, the compliance gradient averaged over a
    radius of 1.5 cells (its "sensitivity filter" H (x dc) / (Hs max(x, 1e-3)) is H dc / Hs, since x >= 1e-3),
    MMA with move 0.1, c = 1e4 and the raw objective (no scaling), ``steps`` steps."""
    problem = tensormesh_cantilever(nelx, nely)
    filt = ConeFilter(problem.mesh, 1.5)

    class Design(DensityDesign):
        def objective(self, x):
            return super().objective(averaged_sensitivities(x, filt))

        def constraints(self, x):
            return (self.physical(x).mean() / vf - 1.0).reshape(1)

    design = Design(problem, penal=3.0, vf=vf)
    x = torch.full((problem.mesh.n_cells,), vf, dtype=torch.float64, requires_grad=True)
    optimizer = MMA([x], n_constraints=1, lower=1e-3, upper=1.0, move_limit=move, c=1e4, objective_scale=1.0)
    return run_mma(design, x, optimizer, steps, None)


def regions(
    nelx: int = 60,
    nely: int = 20,
    limits: tuple[float, float] = (0.6, 0.4),
    move: float = 0.2,
    steps: int = 300,
    tol: float = 0.01,
) -> Run:
    """MBB beam with two volume constraints: mean density of the left half <= limits[0], of the right
    half <= limits[1]."""
    problem = mbb_beam(nelx, nely)
    filt = ConeFilter(problem.mesh, 1.5)
    centres = problem.mesh.points[problem.mesh.elements].mean(dim=1)
    left = centres[:, 0] < nelx / 2
    design = RegionVolumes(DensityDesign(problem, penal=3.0, density_filter=filt), [left, ~left], list(limits))
    x = torch.full((problem.mesh.n_cells,), 0.5 * sum(limits), dtype=torch.float64, requires_grad=True)
    return run_mma(design, x, MMA([x], n_constraints=2, lower=0.0, upper=1.0, move_limit=move), steps, tol)


def _picture(rho: Tensor, nelx: int, nely: int):
    return rho.detach().reshape(nely, nelx).flip(0).cpu().numpy()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", choices=["mbb", "cantilever", "regions"])
    parser.add_argument("size", nargs="*", type=int)
    parser.add_argument("--png")
    options = parser.parse_args(argv)
    default = {"mbb": (60, 20), "cantilever": (60, 30), "regions": (60, 20)}[options.case]
    nelx, nely = options.size or default
    pictures = {}
    if options.case == "mbb":
        mma, oc = mbb(nelx, nely)
        print(
            f"MBB {nelx} x {nely}: MMA {mma.compliance[-1]:.4f} in {mma.steps - 1} steps "
            f"({mma.ms_per_step:.1f} ms/step), "
            f"OC {oc.compliance[-1]:.4f} in {oc.steps - 1} steps ({oc.ms_per_step:.1f} ms/step), "
            f"difference {100 * (mma.compliance[-1] / oc.compliance[-1] - 1):+.2f} %"
        )
        print(
            f"volume MMA {float(mma.rho.mean()):.6f}, OC {float(oc.rho.mean()):.6f}; "
            f"MMA KKT residual {mma.kkt_residual:.2e}"
        )
        pictures = {f"MMA, c = {mma.compliance[-1]:.2f}": mma.rho, f"OC, c = {oc.compliance[-1]:.2f}": oc.rho}
        result = {"mma": mma, "oc": oc}
    elif options.case == "cantilever":
        run = tensormesh_benchmark(nelx, nely)
        print(
            f"cantilever {nelx} x {nely}, {run.steps - 1} MMA steps: compliance {run.compliance[-1]:.4f}, "
            f"volume {float(run.rho.detach().mean()):.6f}, KKT residual {run.kkt_residual:.2e}, "
            f"{run.ms_per_step:.1f} ms/step"
        )
        pictures = {f"MMA, c = {run.compliance[-1]:.2f}": run.rho}
        result = {"run": run}
    else:
        run = regions(nelx, nely)
        g = run.constraints.tolist()
        print(
            f"two regions {nelx} x {nely}: compliance {run.compliance[-1]:.4f} in {run.steps - 1} steps, "
            f"constraints {g[0]:+.2e} {g[1]:+.2e}, KKT residual {run.kkt_residual:.2e}, {run.ms_per_step:.1f} ms/step"
        )
        pictures = {f"two volume constraints, c = {run.compliance[-1]:.2f}": run.rho}
        result = {"run": run}
    if options.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(len(pictures), 1, figsize=(6, 2.2 * len(pictures) * nely / nelx * 3), squeeze=False)
        for ax, (title, rho) in zip(axes[:, 0], pictures.items()):
            ax.imshow(_picture(rho, nelx, nely), cmap="gray_r", vmin=0, vmax=1)
            ax.set_title(title)
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(options.png, dpi=100)
    return result


if __name__ == "__main__":
    torch.set_default_dtype(torch.float64)
    results = main()
