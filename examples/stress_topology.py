"""Minimum volume under a von Mises limit: the L-bracket of Le et al. 2010 (Struct Multidisc Optim 41:605).

    python examples/stress_topology.py [n] [--limit S] [--steps N] [--radius R] [--x0 X] [--move M]
                                       [--beta B] [--beta-max B] [--beta-every K] [--beta-from K]
                                       [--p-norm P] [--backend NAME] [--png PATH]

The L-bracket (tmcore.topology.stress.l_bracket): [0, 1]^2 without its upper-right 0.6 x 0.6
block, n x n grid cells (6400 quads for n = 100), top edge clamped, a unit downward force spread
over the top tenth of the right arm's end. qp-relaxed centroid von Mises stress (q = 0.5),
p-norm aggregation (P = ``--p-norm``, 12) with Le's adaptive scaling, SIMP p = 3, density (cone) filter of
radius ``--radius`` cells followed by a Heaviside projection (eta 1/2) whose sharpness beta starts
at ``--beta`` and doubles every ``--beta-every`` steps after step ``--beta-from`` (0) up to
``--beta-max`` (``--beta 0``: no projection), MMA (move ``--move``, 0.05) from the uniform design
x = 0.5 (``--x0``), ``--steps`` steps (400).

Why these settings (measured, docs/optimisation.md): from x = 1 with move 0.1 a loose limit
(80-100) let MMA thin the whole design in ten steps into the region where rho^3 ~ Emin, where a
lower density lowers rho^q sigma_vm: the design collapsed. Starting from x = 0.5 with move 0.05
it does not; the projection removes the gray cells whose solid-material stress is above the
relaxed one. beta stops at 8: at 16 a move of 0.05 in x moves a projected density by up to 0.4,
and two of three full-size runs collapsed there (volume down 25 % in a few steps, the constraint
at +30, then a solve failed its residual check). The solves use the banded Cholesky (SuperLU's
failed the residual check on gray designs).

With these defaults the design goes around the re-entrant corner on this grid (nearest cell with rho > 0.5
3.54 cells from the corner point; at n = 60 and 80 the corner fills, and neighbouring settings end 1.6-3.8
cells away with the solid-material stress of gray cells up to 1.23 of the limit: docs/optimisation.md).
With P = 8 every neighbouring setting meets the limit, but the corner cell stays solid:

    python examples/stress_topology.py 100 --p-norm 8 --steps 300

Grown from near void on a finer grid it goes around the corner with P = 8 too:

    python examples/stress_topology.py 200 --x0 0.01 --move 0.1 --radius 4 --beta-from 200 --steps 600 --p-norm 8 \
        --backend splu

Prints the final volume fraction, the largest von Mises stress over cells with rho > 0.5 (no
aggregation) over the limit, relaxed (rho^q sigma_vm, the measure the constraint holds) and of
the solid material (sigma_vm), how far the first solid cell (rho > 0.5) lies from the re-entrant
corner, and the median time per step. ``--png`` draws the design and the relaxed stress.
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from tmcore.topology import ConeFilter, optimise
from tmcore.topology.filters import HeavisideProjection
from tmcore.topology.mma import MMA
from tmcore.topology.stress import StressDesign, l_bracket


@dataclass
class Run:
    """The final design of one L-bracket run and what the report needs."""

    design: StressDesign
    x: Tensor
    rho: Tensor
    volume: list[float]
    constraint: list[float]
    seconds: list[float]
    n: int
    arm: float

    @property
    def steps(self) -> int:
        return len(self.volume)

    @property
    def ms_per_step(self) -> float:
        return 1e3 * statistics.median(self.seconds)

    def max_stress(self, threshold: float = 0.5) -> tuple[float, float]:
        """(relaxed, solid) max von Mises / limit over cells with rho > threshold."""
        return self.design.max_stress(self.x, threshold)

    def corner_clearance(self, threshold: float = 0.5) -> float:
        """Distance, in cells, from the re-entrant corner point to the nearest centroid of a cell with rho > threshold.

        A corner filled with material gives sqrt(1/2) ~ 0.71 (a cell touching the corner point); material that
        follows an arc of radius R cells around the corner gives about R."""
        mesh = self.design.problem.mesh
        centroids = mesh.points[mesh.elements].mean(dim=1)
        corner = torch.tensor([self.arm, self.arm], dtype=centroids.dtype)
        distance = (centroids - corner).norm(dim=1)[self.rho > threshold]
        return float(distance.min()) * self.n


@dataclass
class Settings:
    """One run's settings; each is a command-line option of the same name (``n`` positional, the others
    ``--name``, underscores as dashes), with these defaults."""

    n: int = 100  # grid cells per side
    limit: float = 65.0  # von Mises limit
    steps: int = 400  # MMA steps (the solid-material stress of gray cells settles below 1.04 of the limit after ~325)
    radius: float = 2.0  # of the cone filter, in cells
    move: float = 0.05  # MMA's move limit
    x0: float = 0.5  # the uniform start
    beta: float = 1.0  # the projection's first sharpness (0: no projection)
    beta_max: float = 8.0  # beta doubles every beta_every steps after step beta_from, up to beta_max
    beta_every: int = 40
    # the linear solves: the banded Cholesky (SuperLU's solves failed the residual check, relative residual
    # 1.4e-8 > 1e-8, on gray designs at n = 50 and 100 where the banded Cholesky's passed)
    backend: str = "banded"
    beta_from: int = 0
    p_norm: float = 12.0  # the aggregation exponent P (8 fills the re-entrant corner: docs/optimisation.md)


def run(settings: Settings) -> Run:
    """Optimise the L-bracket of ``settings.n`` x ``settings.n`` grid cells."""
    n, arm = settings.n, 0.4
    problem = l_bracket(n, arm=arm)
    projection = HeavisideProjection(settings.beta) if settings.beta > 0 else None
    design = StressDesign(
        problem,
        limit=settings.limit,
        density_filter=ConeFilter(problem.mesh, settings.radius / n),
        projection=projection,
        backend=settings.backend,
        p_norm=settings.p_norm,
    )
    x = torch.full((problem.mesh.n_cells,), settings.x0, dtype=torch.float64, requires_grad=True)
    optimizer = MMA([x], n_constraints=1, lower=0.0, upper=1.0, move_limit=settings.move)
    volume, constraint, seconds = [], [], []
    for record in optimise(design, x, optimizer, settings.steps):
        volume.append(record.objective)
        constraint.append(float(record.constraints[0]))
        seconds.append(record.seconds)
        later = record.step + 1 - settings.beta_from
        if projection is not None and later > 0 and later % settings.beta_every == 0:
            projection.beta = min(settings.beta_max, 2.0 * projection.beta)
    with torch.no_grad():
        rho = design.physical(x).detach()
    return Run(design, x.detach(), rho, volume, constraint, seconds, n, arm)


def picture(values: Tensor, run: Run):
    """An (n, n) array of cell values for imshow (top row = top of the bracket), NaN in the removed block."""
    mesh = run.design.problem.mesh
    index = (mesh.points[mesh.elements].mean(dim=1) * run.n).floor().long()
    image = torch.full((run.n, run.n), float("nan"), dtype=torch.float64)
    image[index[:, 1], index[:, 0]] = values.detach().to(torch.float64)
    return image.flip(0).numpy()


def parse(argv=None) -> tuple[Settings, str | None]:
    """The :class:`Settings` and the ``--png`` path from the command line (one option per field)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for option in fields(Settings):
        kind = type(option.default)
        if option.name == "n":
            parser.add_argument("n", nargs="?", type=kind, default=option.default)
        else:
            parser.add_argument("--" + option.name.replace("_", "-"), type=kind, default=option.default)
    parser.add_argument("--png")
    options = vars(parser.parse_args(argv))
    png = options.pop("png")
    return Settings(**options), png


def main(argv=None) -> dict:
    settings, png = parse(argv)
    result = run(settings)
    relaxed, solid = result.max_stress()
    print(
        f"L-bracket n = {settings.n} ({result.design.problem.mesh.n_cells} cells), limit {settings.limit:g}, "
        f"{result.steps} MMA steps, {result.ms_per_step:.0f} ms/step"
    )
    print(
        f"volume fraction {float(result.design.volume(result.x)):.4f}; max von Mises / limit over rho > 0.5: "
        f"relaxed {relaxed:.4f}, solid {solid:.4f}; last constraint {result.constraint[-1]:+.2e}"
    )
    print(f"re-entrant corner: nearest cell with rho > 0.5 at {result.corner_clearance():.2f} cells")
    if png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        with torch.no_grad():
            stress, _ = result.design.element_stress(result.x)
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
        axes[0].imshow(picture(result.rho, result), cmap="gray_r", vmin=0, vmax=1, extent=(0, 1, 0, 1))
        axes[0].set_title(f"density, volume {float(result.design.volume(result.x)):.3f}")
        shown = axes[1].imshow(
            picture(stress / settings.limit, result), cmap="jet", vmin=0, vmax=1.05, extent=(0, 1, 0, 1)
        )
        axes[1].set_title(f"relaxed von Mises / limit, max over rho > 0.5: {relaxed:.3f}")
        fig.colorbar(shown, ax=axes[1], fraction=0.046)
        for ax in axes:
            ax.set_xticks([0, 0.4, 1])
            ax.set_yticks([0, 0.4, 1])
        fig.tight_layout()
        fig.savefig(png, dpi=100)
    return {"run": result, "relaxed": relaxed, "solid": solid}


if __name__ == "__main__":
    torch.set_default_dtype(torch.float64)
    results = main()
