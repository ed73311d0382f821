"""The chapter's two optimisation steps, written once for any library with the chapter's API.

tmcore runs the chapter's code with only ``tensormesh`` replaced by ``tmcore``, so one
definition of the steps serves both sides of the speed comparison:
:func:`flows.benchmarks.steps.tmcore_step` passes tmcore's classes, ``benchmarks/peers.py``
(run in TensorMesh's own environment) passes TensorMesh's. This module therefore imports
only torch: the peers' worker loads it by file path, without the ``flows`` package.

- ``identification``: kappa = 1 + tanh(theta) per node, K and b assembled every step with
  the assemblers and the Condenser built once, condense, solve, squared misfit to u_obs,
  backward, Adam (lr 3e-2).
- ``topology``: SIMP kappa per cell, the assemblers built inside ``fem_solve`` as the chapter
  writes it, a fresh Condenser every step (``fresh_condenser=False``: the chapter's one
  Condenser, which TensorMesh cannot run), compliance b . u, backward, one OC step (vf 0.4,
  move limit 0.15).

``lap(phase)`` is called after each group of statements (see
:class:`flows.benchmarks.steps.PhaseClock`); the default does nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import torch

# the chapter's constants
ADAM_LR = 3e-2
VF, P_SIMP, KMIN, SIGMA, MOVE_LIMIT = 0.4, 3.0, 1e-3, 0.08, 0.15

Step = Callable[[], float]  # one optimisation step; returns the loss (identification) or compliance (topology)
Lap = Callable[[str], None]  # called with a phase's name when that phase of a step ends


def no_lap(phase: str) -> None:
    return None


def chapter_forms(library: SimpleNamespace) -> tuple[type, type]:
    """The chapter's integrands, verbatim (a user's code, not a library's forms), on ``library``'s
    ``ElementAssembler`` and ``NodeAssembler``."""

    class WeightedLaplace(library.ElementAssembler):
        def forward(self, gradu, gradv, kappa):
            return kappa * (gradu @ gradv)

    class Source(library.NodeAssembler):
        def forward(self, v, f):
            return v * f

    return WeightedLaplace, Source


def optimisation_step(optim, objective: Callable[[], torch.Tensor], lap: Lap) -> Step:
    """The chapter's loop body around ``objective()`` (a 0-d tensor): zero the gradients, evaluate,
    back-propagate, ``optim.step()``; returns the objective as a float. The phases: ``optimiser``
    (zeroing and the update), whatever ``objective`` laps, ``backward``."""

    def step() -> float:
        optim.zero_grad()
        lap("optimiser")
        value = objective()
        value.backward()
        lap("backward")
        optim.step()
        lap("optimiser")
        return value.item()

    return step


def chapter_step(library: SimpleNamespace, problem: str, mesh, fresh_condenser: bool = True, lap: Lap | None = None):
    """The chapter's ``problem`` step on ``mesh`` (a ``library.Mesh`` of P1 triangles), its set-up done.

    ``library`` names the classes the chapter imports: ``ElementAssembler``, ``NodeAssembler``,
    ``Condenser`` and ``OCOptimizer``. Returns a callable that runs one step and returns the loss
    (identification) or the compliance (topology) as a float.
    """
    lap = lap or no_lap
    WeightedLaplace, Source = chapter_forms(library)
    x, y = mesh.points[:, 0], mesh.points[:, 1]

    if problem == "identification":
        cond = library.Condenser(mesh.boundary_mask)
        laplace, source = WeightedLaplace.from_mesh(mesh), Source.from_mesh(mesh)

        def fem_solve(kappa, f_vals):
            K = laplace(point_data={"kappa": kappa}).double()
            lap("assemble K")
            b = source(point_data={"f": f_vals}).double()
            lap("assemble b")
            K_, b_ = cond(K, b)
            lap("condense")
            u = cond.recover(K_.solve(b_))
            lap("factor+solve")
            return u

        kappa_true = 1.0 + 0.6 * torch.sin(2 * torch.pi * x) * torch.cos(2 * torch.pi * y)
        f_vals = torch.ones(mesh.n_points, dtype=torch.float64)
        with torch.no_grad():
            u_obs = fem_solve(kappa_true, f_vals)
        theta = torch.zeros(mesh.n_points, dtype=torch.float64, requires_grad=True)
        optim = torch.optim.Adam([theta], lr=ADAM_LR)

        def loss() -> torch.Tensor:
            kappa = 1.0 + torch.tanh(theta)
            lap("rest")
            u = fem_solve(kappa, f_vals)
            return ((u - u_obs) ** 2).sum()

        return optimisation_step(optim, loss, lap)

    if problem == "topology":
        f_field = torch.exp(-((x - 0.5) ** 2 + (y - 0.5) ** 2) / (2 * SIGMA**2))
        n_cells = mesh.cells["triangle"].shape[0]
        rho = torch.full((n_cells,), VF, dtype=torch.float64, requires_grad=True)
        optim = library.OCOptimizer(rho, vf=VF, move_limit=MOVE_LIMIT)
        chapter_cond = library.Condenser(mesh.boundary_mask)

        def fem_solve(rho):
            kappa = KMIN + (1.0 - KMIN) * rho**P_SIMP
            lap("rest")
            K = WeightedLaplace.from_mesh(mesh)(element_data={"kappa": kappa}).double()
            lap("assemble K")
            b = Source.from_mesh(mesh)(point_data={"f": f_field}).double()
            lap("assemble b")
            cond = library.Condenser(mesh.boundary_mask) if fresh_condenser else chapter_cond
            K_, b_ = cond(K, b)
            lap("condense")
            u = cond.recover(K_.solve(b_))
            lap("factor+solve")
            return u, b

        def compliance() -> torch.Tensor:
            u, b = fem_solve(rho)
            return (b * u).sum()

        return optimisation_step(optim, compliance, lap)

    raise ValueError(f"problem must be 'identification' or 'topology', got {problem!r}")
