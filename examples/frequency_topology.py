"""Maximise the fundamental eigenvalue lambda_1 = omega_1^2 of a plane-stress cantilever under a
volume constraint, with MMA.

    python examples/frequency_topology.py [nelx nely] [--steps N] [--png PATH]

The cantilever of nelx x nely unit quads is clamped on its left edge and carries a lumped
non-structural mass at the middle of its right edge (``tip_mass`` times the allowed structural
mass vf nelx nely; without it the optimum is a stub that sheds the free end). Stiffness: modified SIMP,
E = Emin + x~^3 (1 - Emin); mass: consistent, with the usual low-density fix (Du and Olhoff,
Struct Multidisc Optim 34, 2007): m(x~) = x~ for x~ > 0.1 and 1e5 x~^6 below (continuous at
0.1), so that void cells, whose stiffness falls as x~^3, cannot carry spurious local modes with
vanishing eigenvalues. x~ is the density filter (r = 1.5) of x; mean(x~) <= vf. The objective
is -lambda_1 from :func:`tmcore.methods.eigen.eigsh` (the three lowest pairs, so lambda_2 and
lambda_3 are watched too: a lambda_1 that meets lambda_2 would need a symmetric aggregate).
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch import Tensor

from tmcore.core.assembly import VectorElementAssembler
from tmcore.core.linalg.sparse import SparseMatrix
from tmcore.methods.eigen import eigsh
from tmcore.topology import ConeFilter, DensityDesign, cantilever, nearest_node, optimise, simp
from tmcore.topology.mma import MMA


class VectorMass(VectorElementAssembler):
    """rho u . v: the consistent mass matrix of a vector field."""

    def forward(self, u, v, rho):
        return rho * (u @ v)


def mass_interpolation(rho: Tensor, threshold: float = 0.1, power: float = 6.0) -> Tensor:
    """rho above ``threshold``, threshold^(1-power) rho^power below (continuous, tiny for void)."""
    return torch.where(rho > threshold, rho, threshold ** (1.0 - power) * rho**power)


class FrequencyDesign:
    """Design problem: objective -lambda_1(x~), constraint mean(x~) - vf <= 0.

    ``density`` (a :class:`~tmcore.topology.DensityDesign` of the cantilever) gives the physical
    densities x~ (its density filter), the SIMP exponent and the volume constraint; ``k``
    eigenpairs are computed; the tip carries ``tip_mass`` times the allowed structural mass.
    """

    def __init__(self, density: DensityDesign, k: int = 3, tip_mass: float = 0.1):
        self.density, self.problem, self.k = density, density.problem, k
        nelx, nely = self.problem.shape
        mass = VectorMass.from_mesh(self.problem.mesh)
        ones = torch.ones(self.problem.mesh.n_cells, dtype=torch.float64)
        with torch.no_grad():
            self._unit_mass = mass.local(element_data={"rho": ones})
        self._mass = mass
        pattern = mass.scatter(self._unit_mass).pattern
        tip = nearest_node(self.problem.mesh, (float(nelx), nely / 2.0))
        slots = pattern.slots(torch.tensor([2 * tip, 2 * tip + 1]), torch.tensor([2 * tip, 2 * tip + 1]))
        self._tip = torch.zeros(pattern.nnz, dtype=torch.float64).index_add(
            0, slots, torch.full((2,), tip_mass * density.vf * nelx * nely, dtype=torch.float64)
        )
        self._zero = torch.zeros_like(self.problem.load)
        self.eigenvalues: list[Tensor] = []

    def physical(self, x: Tensor) -> Tensor:
        return self.density.physical(x)

    def eigen(self, x: Tensor) -> tuple[Tensor, Tensor]:
        rho = self.physical(x)
        cond = self.problem.condenser
        K, _ = cond(self.problem.stiffness(simp(rho, self.density.penal, self.problem.e_min)), self._zero)
        M = self._mass.scatter(mass_interpolation(rho)[:, None, None] * self._unit_mass)
        M, _ = cond(SparseMatrix.from_pattern(M.pattern, M.values + self._tip), self._zero)
        return eigsh(K, M, k=self.k, backend="splu")

    def objective(self, x: Tensor) -> Tensor:
        lam, _ = self.eigen(x)
        self.eigenvalues.append(lam.detach().clone())
        return -lam[0]

    def constraints(self, x: Tensor) -> Tensor:
        return self.density.constraints(x)


def run(nelx: int = 40, nely: int = 20, steps: int = 100, vf: float = 0.5, move: float = 0.1):
    """Returns (design, x, lambda history (steps, k), seconds per step)."""
    problem = cantilever(nelx, nely)
    design = FrequencyDesign(DensityDesign(problem, penal=3.0, density_filter=ConeFilter(problem.mesh, 1.5), vf=vf))
    x = torch.full((design.problem.mesh.n_cells,), vf, dtype=torch.float64, requires_grad=True)
    optimizer = MMA([x], n_constraints=1, lower=0.0, upper=1.0, move_limit=move)
    seconds = [record.seconds for record in optimise(design, x, optimizer, steps)]
    with torch.no_grad():
        final, _ = design.eigen(x)
    history = torch.stack(design.eigenvalues + [final])
    return design, x, history, seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("size", nargs="*", type=int)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--png")
    options = parser.parse_args(argv)
    nelx, nely = options.size or (40, 20)
    design, x, history, seconds = run(nelx, nely, options.steps)
    rho = design.physical(x.detach())
    print(
        f"cantilever {nelx} x {nely}, {options.steps} MMA steps: lambda_1 {float(history[0, 0]):.6g} -> "
        f"{float(history[-1, 0]):.6g} ({float(history[-1, 0] / history[0, 0]):.2f}x), "
        f"lambda_2 {float(history[-1, 1]):.6g}, "
        f"volume {float(rho.mean()):.6f}, {1e3 * statistics.median(seconds):.1f} ms/step"
    )
    if options.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 6))
        top.imshow(rho.reshape(nely, nelx).flip(0).numpy(), cmap="gray_r", vmin=0, vmax=1)
        top.set_title(f"max lambda_1, vf {design.density.vf}: lambda_1 = {float(history[-1, 0]):.4g}")
        top.axis("off")
        for i in range(history.shape[1]):
            bottom.plot(history[:, i].numpy(), label=f"lambda_{i + 1}")
        bottom.set_xlabel("MMA step")
        bottom.set_ylabel("eigenvalue (omega^2)")
        bottom.legend()
        fig.tight_layout()
        fig.savefig(options.png, dpi=100)
    return {"design": design, "x": x, "history": history, "seconds": seconds}


if __name__ == "__main__":
    torch.set_default_dtype(torch.float64)
    results = main()
