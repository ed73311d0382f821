"""Coefficient-field identification: recover a nodal conductivity from one observed solution.

The forward map solves  -div(kappa grad u) = f  on the mesh with u = 0 on the boundary
(P1 or whatever element the mesh carries). The unknown is a nodal field theta with
kappa = 1 + tanh(theta), which keeps kappa in (0, 2) so the stiffness matrix stays SPD
for every theta. The objective is the squared Euclidean misfit of the nodal solution,

    J(theta) = sum_i (u_i(theta) - u_obs_i)^2  +  smoothness * int |grad theta|^2 dx,

minimised with Adam; its gradient comes from one adjoint solve per step.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from tmcore.core.assembly import Functional
from tmcore.core.checks import DTYPE, check_callback, check_count, check_real, is_number
from tmcore.core.condense import Condenser
from tmcore.core.datasets import result_dataset
from tmcore.core.mesh import Mesh, check_mesh_type
from tmcore.forms import Diffusion, Source
from tmcore.studies.checkpoint import (
    check_checkpointing,
    check_resume,
    checkpoint_state,
    due,
    history_lists,
    restore,
)

__all__ = ["IdentificationProblem", "IdentificationResult", "KappaErrorReport", "coefficient_identification"]

logger = logging.getLogger(__name__)

STUDY = "coefficient_identification"
HISTORY = ("loss", "misfit", "u_rel_max_error", "seconds_per_step")  # per-step series a checkpoint carries


# -- fields ---------------------------------------------------------------------------------


def nodal_field(name: str, value: Any, mesh: Mesh, default: Callable[[Tensor], Tensor]) -> Tensor:
    """A (n,) float64 field on the mesh's device from None (``default(points)``), a float,
    a (n,) tensor or a callable mapping the points (n, dim) to (n,)."""
    points = mesh.points.to(DTYPE)
    if value is None:
        value = default(points)
    elif callable(value) and not isinstance(value, Tensor):
        value = value(points)
    if is_number(value):
        value = torch.full((mesh.n_points,), float(value), dtype=DTYPE, device=mesh.device)
    if not isinstance(value, Tensor) or not value.is_floating_point():
        raise ValueError(
            f"{name} must be None, a float, a floating-point (n,) tensor or a callable of the points, got "
            f"{type(value).__name__}"
        )
    if value.shape != (mesh.n_points,):
        raise ValueError(f"{name} must have one value per node ({mesh.n_points}), got shape {tuple(value.shape)}")
    if not torch.isfinite(value).all():
        raise ValueError(f"{name} contains NaN or inf")
    return value.detach().to(device=mesh.device, dtype=DTYPE)


def default_kappa_true(points: Tensor) -> Tensor:
    """1 + 0.6 sin(2 pi x) cos(2 pi y): the chapter's four-lobe ground truth."""
    x, y = points[:, 0], points[:, 1]
    return 1.0 + 0.6 * torch.sin(2 * torch.pi * x) * torch.cos(2 * torch.pi * y)


# -- the forms --------------------------------------------------------------------------------


class GradientPenalty(Functional):
    """int |grad theta|^2 dx of a nodal field theta."""

    def forward(self, grad_theta):
        return grad_theta @ grad_theta


# -- the problem ------------------------------------------------------------------------------


class IdentificationProblem:
    """The forward map and the objective, with everything mesh-only built once.

    Args:
        mesh: the mesh; u = 0 on ``mesh.boundary_mask``.
        kappa_true: ground-truth conductivity (see :func:`coefficient_identification`).
        f: source (see :func:`coefficient_identification`).
        smoothness: weight of int |grad theta|^2 in the objective (>= 0).
    """

    def __init__(self, mesh: Mesh, kappa_true=None, f=None, smoothness: float = 0.0):
        self.mesh = check_mesh_type(mesh)
        self.smoothness = check_real("smoothness", smoothness, low=0.0, low_open=False)
        self.kappa_true = nodal_field("kappa_true", kappa_true, mesh, default_kappa_true)
        if not bool((self.kappa_true > 0).all()):
            raise ValueError(f"kappa_true must be positive everywhere, got min {float(self.kappa_true.min()):.3g}")
        self.f = nodal_field("f", f, mesh, lambda p: torch.ones(p.shape[0], dtype=DTYPE, device=p.device))
        self.condenser = Condenser(mesh.boundary_mask)
        self.stiffness = Diffusion.from_mesh(mesh)
        self.penalty = GradientPenalty.from_mesh(mesh)
        self.load = Source.from_mesh(mesh)(point_data={"f": self.f}).to(DTYPE)
        with torch.no_grad():
            self.u_obs = self.solve(self.kappa_true)
        self._u_obs_max = float(self.u_obs.abs().max())
        if self._u_obs_max == 0.0:
            raise ValueError("the observation u_obs is identically zero (f = 0?): nothing to identify")

    @staticmethod
    def kappa(theta: Tensor) -> Tensor:
        """kappa = 1 + tanh(theta), in (0, 2)."""
        return 1.0 + torch.tanh(theta)

    def solve(self, kappa: Tensor) -> Tensor:
        """Nodal solution u (n,) for a nodal conductivity kappa (n,)."""
        K = self.stiffness(point_data={"kappa": kappa}).double()
        K_free, b_free = self.condenser(K, self.load)
        return self.condenser.recover(K_free.solve(b_free))

    def misfit(self, u: Tensor) -> Tensor:
        """sum (u - u_obs)^2."""
        return ((u - self.u_obs) ** 2).sum()

    def regularisation(self, theta: Tensor) -> Tensor:
        """int |grad theta|^2 dx."""
        return self.penalty(point_data={"theta": theta})

    def rel_max_error(self, u: Tensor) -> float:
        """max |u - u_obs| / max |u_obs|."""
        return float((u.detach() - self.u_obs).abs().max()) / self._u_obs_max

    def evaluate(self, theta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(objective, misfit, u) at theta; the objective carries the graph back to theta."""
        u = self.solve(self.kappa(theta))
        misfit = self.misfit(u)
        objective = misfit + self.smoothness * self.regularisation(theta) if self.smoothness > 0 else misfit
        return objective, misfit, u

    def objective(self, theta: Tensor) -> Tensor:
        """The scalar objective J(theta) (for gradient checks)."""
        return self.evaluate(theta)[0]


# -- the study --------------------------------------------------------------------------------


@dataclass(frozen=True)
class KappaErrorReport:
    """Max |kappa - kappa_true| overall (``peak``, at ``peak_distance`` from the centre),
    within ``centre_radius`` of the centre (``near_centre``) and beyond it (``away``, at
    ``away_peak_distance``); ``away_fraction_below``: the share of the nodes beyond it
    whose error is below ``threshold``."""

    peak: float
    peak_distance: float
    centre_radius: float
    near_centre: float
    away: float
    away_peak_distance: float
    threshold: float
    away_fraction_below: float


@dataclass
class IdentificationResult:
    """History and final fields of one identification run.

    Per step (steps,), recorded at the theta the step started from: ``loss`` (the
    objective Adam minimised: the misfit plus the smoothness term), ``misfit``
    (sum (u - u_obs)^2), ``u_rel_max_error`` (max|u - u_obs| / max|u_obs|),
    ``seconds_per_step`` (wall time of the step). Final fields (n,), after the last
    update: ``kappa``, ``kappa_true``, ``u`` (the solution for the final kappa), ``u_obs``.
    ``snapshots`` maps a step to the kappa (n,) that step used (every ``snapshot_every`` steps).
    ``points`` (n, dim): the mesh's nodes, for :meth:`kappa_error_report`.
    """

    loss: Tensor
    misfit: Tensor
    u_rel_max_error: Tensor
    seconds_per_step: Tensor
    kappa: Tensor
    kappa_true: Tensor
    u: Tensor
    u_obs: Tensor
    snapshots: dict[int, Tensor] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)
    points: Tensor | None = None

    @property
    def steps(self) -> int:
        return self.loss.shape[0]

    @property
    def kappa_error(self) -> Tensor:
        """|kappa - kappa_true| per node (n,)."""
        return (self.kappa - self.kappa_true).abs()

    def kappa_error_report(self, centre_radius: float = 0.15, threshold: float = 0.01) -> "KappaErrorReport":
        """Where the coefficient error lies, by distance from the centre of the nodes' bounding box.

        The centre is where grad u vanishes for the chapter's problem (f = 1 on the
        unit square), so the data say least about kappa there; the corners are the other
        such places. ``centre_radius`` splits the nodes into near and away.
        """
        if self.points is None:
            raise ValueError(
                "this result carries no node coordinates (points=None): build it with coefficient_identification"
            )
        centre_radius = check_real("centre_radius", centre_radius, low=0.0)
        threshold = check_real("threshold", threshold, low=0.0)
        points = self.points.to(self.kappa)
        centre = 0.5 * (points.min(dim=0).values + points.max(dim=0).values)
        distance = (points - centre).norm(dim=1)
        error = self.kappa_error
        near = distance < centre_radius
        if bool(near.all()) or not bool(near.any()):
            raise ValueError(
                f"centre_radius {centre_radius:g} leaves no nodes on one side "
                f"(distances from the centre run from {float(distance.min()):.3g} to {float(distance.max()):.3g})"
            )
        peak = int(error.argmax())
        away_error = torch.where(near, torch.zeros_like(error), error)
        away_peak = int(away_error.argmax())
        return KappaErrorReport(
            peak=float(error[peak]),
            peak_distance=float(distance[peak]),
            centre_radius=centre_radius,
            near_centre=float(error[near].max()),
            away=float(error[~near].max()),
            away_peak_distance=float(distance[away_peak]),
            threshold=threshold,
            away_fraction_below=float((error[~near] < threshold).to(DTYPE).mean()),
        )

    @property
    def final_u_rel_max_error(self) -> float:
        """max|u - u_obs| / max|u_obs| for the final kappa."""
        return float((self.u - self.u_obs).abs().max() / self.u_obs.abs().max())

    @property
    def median_seconds_per_step(self) -> float:
        return float(self.seconds_per_step.median())

    def to_xarray(self):
        """An ``xarray.Dataset`` with dimensions ``step``, ``node`` and ``snapshot_step`` (needs xarray)."""
        return result_dataset(
            "IdentificationResult",
            {name: getattr(self, name) for name in ("loss", "misfit", "u_rel_max_error", "seconds_per_step")},
            {name: getattr(self, name) for name in ("kappa", "kappa_true", "u", "u_obs")},
            "node",
            self.snapshots,
            "kappa_snapshot",
            {"study": STUDY, **self.parameters},
        )


def coefficient_identification(
    mesh: Mesh,
    kappa_true: Tensor | float | Callable[[Tensor], Tensor] | None = None,
    f: Tensor | float | Callable[[Tensor], Tensor] | None = None,
    steps: int = 5000,
    lr: float = 3e-2,
    smoothness: float = 0.0,
    callback: Callable[[int, float], Any] | None = None,
    snapshot_every: int | None = None,
    checkpoint_every: int | None = None,
    checkpoint: Callable[[dict[str, Any]], Any] | None = None,
    resume_from: dict[str, Any] | None = None,
) -> IdentificationResult:
    """Recover kappa = 1 + tanh(theta) from u_obs = u(kappa_true) by Adam on theta (from theta = 0).

    Args:
        mesh: the mesh; u = 0 on ``mesh.boundary_mask``.
        kappa_true: ground truth per node: a (n,) tensor, a float, a callable of the
            points (n, dim) -> (n,), or None for 1 + 0.6 sin(2 pi x) cos(2 pi y). Must be > 0.
        f: source per node, same forms; None for f = 1.
        steps: Adam steps. lr: Adam's learning rate.
        smoothness: weight of int |grad theta|^2 added to the misfit (0: none).
        callback: called as ``callback(step, loss)`` after every step (loss a float).
        snapshot_every: keep the kappa of every this many steps (None: none).
        checkpoint_every, checkpoint: call ``checkpoint(state)`` after every
            ``checkpoint_every``-th step (not after the last); ``state`` is a dict of
            tensors and Python scalars (theta, Adam's ``state_dict()``, the step, the
            histories; :mod:`tmcore.studies.checkpoint`).
        resume_from: such a state: continue from its step. The final result is bitwise
            that of an uninterrupted run; ``lr``, ``smoothness`` and the mesh size must match.
    """
    check_mesh_type(mesh)
    check_count("steps", steps)
    lr = check_real("lr", lr, low=0.0)
    smoothness = check_real("smoothness", smoothness, low=0.0, low_open=False)
    check_callback(callback)
    if snapshot_every is not None:
        check_count("snapshot_every", snapshot_every)

    checkpoint_every = check_checkpointing(checkpoint_every, checkpoint)
    keyed = {"lr": lr, "smoothness": smoothness, "n_points": mesh.n_points}
    if resume_from is not None:
        check_resume(resume_from, STUDY, keyed, steps, "theta", mesh.n_points, HISTORY)

    problem = IdentificationProblem(mesh, kappa_true=kappa_true, f=f, smoothness=smoothness)
    theta = torch.zeros(mesh.n_points, dtype=DTYPE, device=mesh.device, requires_grad=True)
    optimizer = torch.optim.Adam([theta], lr=lr)
    history = history_lists(resume_from, HISTORY)
    first, snapshots = restore(resume_from, "theta", theta, optimizer)
    if resume_from is not None:
        logger.info("coefficient identification: resuming at step %d of %d", first, steps)
    logger.info(
        "coefficient identification: %d nodes, %d steps, lr %g, smoothness %g", mesh.n_points, steps, lr, smoothness
    )

    losses, misfits, errors, seconds = (history[name] for name in HISTORY)
    for step in range(first, steps):
        start = time.perf_counter()
        optimizer.zero_grad()
        if snapshot_every is not None and step % snapshot_every == 0:
            snapshots[step] = problem.kappa(theta.detach())
        loss, misfit, u = problem.evaluate(theta)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        misfits.append(float(misfit.detach()))
        errors.append(problem.rel_max_error(u))
        seconds.append(time.perf_counter() - start)
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"the identification loss became {losses[-1]} at step {step} (lr {lr} too large?)")
        if due(step, steps, checkpoint_every):
            checkpoint(checkpoint_state(STUDY, step + 1, keyed, "theta", theta, optimizer, history, snapshots))
        if callback is not None:
            callback(step, losses[-1])

    with torch.no_grad():
        kappa = problem.kappa(theta)
        u = problem.solve(kappa)
    result = IdentificationResult(
        loss=torch.tensor(losses, dtype=DTYPE),
        misfit=torch.tensor(misfits, dtype=DTYPE),
        u_rel_max_error=torch.tensor(errors, dtype=DTYPE),
        seconds_per_step=torch.tensor(seconds, dtype=DTYPE),
        kappa=kappa.detach(),
        kappa_true=problem.kappa_true,
        u=u.detach(),
        u_obs=problem.u_obs,
        snapshots=snapshots,
        parameters={"steps": steps, **keyed},
        points=mesh.points.detach().to(DTYPE).clone(),
    )
    logger.info(
        "coefficient identification done: loss %.3e -> %.3e, rel max error of u %.2e, median %.1f ms/step",
        losses[0],
        losses[-1],
        result.final_u_rel_max_error,
        1e3 * result.median_seconds_per_step,
    )
    return result
