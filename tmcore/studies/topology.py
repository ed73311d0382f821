"""Thermal-compliance topology optimisation with the Optimality Criteria update.

A Gaussian heat source f = exp(-|x - c|^2 / (2 sigma^2)) centred on the mesh's bounding
box sits in a plate held at u = 0 on its boundary. Each cell carries a density rho in
[rho_min, 1] and the SIMP conductivity kappa = kmin + (1 - kmin) rho^p. The compliance
J = b . u (b the load vector) is minimised under mean(rho) = vf by
:class:`~tmcore.topology.optimizers.OCOptimizer`, whose step reads dJ/drho from one adjoint solve.
Optionally a density or sensitivity filter (:mod:`tmcore.topology.filters`) sets a length scale,
which removes the checkerboards an unfiltered run builds on a quad grid.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import torch

from tmcore.core.checks import DTYPE, check_callback, check_choice, check_count, check_real, is_int
from tmcore.core.mesh import Mesh, check_mesh_type
from tmcore.studies.checkpoint import (
    check_checkpointing,
    check_resume,
    checkpoint_state,
    due,
    history_lists,
    restore,
)
from tmcore.topology.driver import TopologyResult, optimise
from tmcore.topology.filters import ConeFilter, HelmholtzFilter, default_filter_radius, sensitivity_filter
from tmcore.topology.optimizers import OCOptimizer
from tmcore.topology.problems import ComplianceProblem, DensityDesign, thermal_plate

__all__ = ["TopologyResult", "compliance_topology", "thermal_topology"]

logger = logging.getLogger(__name__)


def _snapshot_set(snapshot_steps: Any, steps: int) -> set[int]:
    """Steps to keep, negative ones counted from the end; those beyond the run are dropped."""
    if snapshot_steps is None:
        return set()
    if is_int(snapshot_steps):
        snapshot_steps = (snapshot_steps,)
    if not isinstance(snapshot_steps, Iterable):
        raise ValueError(f"snapshot_steps must be an iterable of ints, got {type(snapshot_steps).__name__}")
    keep = set()
    for s in snapshot_steps:
        if not is_int(s):
            raise ValueError(f"snapshot_steps must hold ints, got {s!r}")
        index = s + steps if s < 0 else s
        if 0 <= index < steps:
            keep.add(index)
        else:
            logger.warning("snapshot step %d lies outside a run of %d steps; skipped", s, steps)
    return keep


STUDY = "thermal_topology"
HISTORY = ("compliance", "volume", "weighted_volume", "seconds_per_step")  # per-step series a checkpoint carries
FILTERS = (None, "density", "sensitivity")
VOLUME_WEIGHTINGS = ("mean", "measure")


def thermal_topology(
    mesh: Mesh,
    vf: float = 0.4,
    p: float = 3.0,
    kmin: float = 1e-3,
    sigma: float = 0.08,
    steps: int = 60,
    move_limit: float = 0.15,
    callback: Callable[[int, float], Any] | None = None,
    snapshot_steps: Iterable[int] | None = (0, 5, 59),
    filter: str | None = None,  # noqa: A002 - the option's natural name
    filter_radius: float | None = None,
    volume_weighting: str = "mean",
    checkpoint_every: int | None = None,
    checkpoint: Callable[[dict[str, Any]], Any] | None = None,
    resume_from: dict[str, Any] | None = None,
) -> TopologyResult:
    """Minimise the thermal compliance over cell densities starting from the uniform rho = vf.

    Args:
        mesh: the mesh; u = 0 on ``mesh.boundary_mask``.
        vf: volume fraction held by every step, in (0, 1).
        p: SIMP exponent (> 0). kmin: conductivity of void, in (0, 1).
        sigma: width of the Gaussian source (> 0), in the mesh's length unit (a sigma
            much larger than the domain gives a nearly uniform source).
        steps: OC steps. move_limit: largest density change per step, in (0, 1].
        callback: called as ``callback(step, compliance)`` after every step.
        snapshot_steps: steps whose densities to keep (negative: from the end; steps
            past the end of the run are skipped with a warning).
        filter: None (the chapter's unfiltered run), ``"density"`` (the solve sees the
            Helmholtz-filtered densities, :class:`~tmcore.topology.filters.HelmholtzFilter`, and
            the gradient flows back through the filter) or ``"sensitivity"`` (the
            gradient is smoothed by :func:`~tmcore.topology.filters.sensitivity_filter` before
            each OC step).
        filter_radius: the Helmholtz length r (> 0); None for
            :func:`~tmcore.topology.filters.default_filter_radius` (one cell size).
        volume_weighting: ``"mean"`` (the OC constraint is the plain mean of the
            design variables, the chapter's) or ``"measure"`` (weighted by cell
            measure). The Helmholtz filter keeps the measure-weighted volume exactly, so
            with ``filter="density"`` the ``"measure"`` constraint holds for the physical
            densities as well; the plain mean of the physical densities drifts from vf
            on a non-uniform mesh (``result.volume`` reports it).
        checkpoint_every, checkpoint: call ``checkpoint(state)`` after every
            ``checkpoint_every``-th step (not after the last); ``state`` is a dict of
            tensors and Python scalars (the design, the OC optimiser's ``state_dict()``,
            the step, the histories; :mod:`tmcore.studies.checkpoint`).
        resume_from: such a state: continue from its step. The final result is bitwise
            that of an uninterrupted run; every option but ``steps``, ``snapshot_steps``
            and ``callback`` must match.
    """
    check_mesh_type(mesh)
    vf = check_real("vf", vf, low=0.0, high=1.0)
    p = check_real("p", p, low=0.0)
    kmin = check_real("kmin", kmin, low=0.0, high=1.0)
    sigma = check_real("sigma", sigma, low=0.0)
    check_count("steps", steps)
    move_limit = check_real("move_limit", move_limit, low=0.0, high=1.0, high_open=False)
    check_callback(callback)
    keep = _snapshot_set(snapshot_steps, steps)
    check_choice("filter", filter, FILTERS)
    check_choice("volume_weighting", volume_weighting, VOLUME_WEIGHTINGS)
    if filter_radius is not None:
        filter_radius = check_real("filter_radius", filter_radius, low=0.0)
        if filter is None:
            raise ValueError("filter_radius was given but filter is None; pass filter='density' or 'sensitivity'")
    checkpoint_every = check_checkpointing(checkpoint_every, checkpoint)

    design_problem = DensityDesign(thermal_plate(mesh, kmin, sigma), penal=p, backend="auto")
    measures = mesh.cell_measures().to(DTYPE)
    radius = None
    helmholtz = None
    if filter is not None:
        radius = default_filter_radius(mesh) if filter_radius is None else filter_radius
        helmholtz = HelmholtzFilter(mesh, radius)
    if filter == "density":
        design_problem.density_filter = helmholtz

    parameters = {
        "vf": vf,
        "p": p,
        "kmin": kmin,
        "sigma": sigma,
        "steps": steps,
        "move_limit": move_limit,
        "filter": filter,
        "filter_radius": radius,
        "volume_weighting": volume_weighting,
    }
    # what a checkpoint must share with this run to be resumed by it (the step count may differ)
    keyed = {name: value for name, value in parameters.items() if name != "steps"} | {"n_cells": mesh.n_cells}
    if resume_from is not None:
        check_resume(resume_from, STUDY, keyed, steps, "design", mesh.n_cells, HISTORY)
    design = torch.full((mesh.n_cells,), vf, dtype=DTYPE, device=mesh.device, requires_grad=True)
    if filter == "sensitivity":
        design.register_hook(lambda grad: sensitivity_filter(helmholtz, design.detach(), grad))
    weights = measures if volume_weighting == "measure" else None
    optimizer = OCOptimizer(design, vf=vf, move_limit=move_limit, volume_weights=weights)
    history = history_lists(resume_from, HISTORY)
    first, snapshots = restore(resume_from, "design", design, optimizer)
    if resume_from is not None:
        logger.info("thermal topology: resuming at step %d of %d", first, steps)
    logger.info(
        "thermal topology: %d cells, %d steps, vf %g, p %g, kmin %g, filter %s (r %s), volume %s",
        mesh.n_cells,
        steps,
        vf,
        p,
        kmin,
        filter,
        "-" if radius is None else f"{radius:.4g}",
        volume_weighting,
    )

    compliances, volumes, weighted, seconds = (history[name] for name in HISTORY)
    for record in optimise(design_problem, design, optimizer, steps, first_step=first):
        if record.step in keep:
            snapshots[record.step] = design_problem.last_physical
        with torch.no_grad():
            after = design_problem.physical(design)
            volumes.append(float(after.mean()))
            weighted.append(float((measures * after).sum() / measures.sum()))
        compliances.append(record.objective)
        seconds.append(record.seconds)
        if due(record.step, steps, checkpoint_every):
            checkpoint(checkpoint_state(STUDY, record.step + 1, keyed, "design", design, optimizer, history, snapshots))
        if callback is not None:
            callback(record.step, record.objective)

    with torch.no_grad():
        final = design_problem.physical(design).detach().clone()
    result = TopologyResult(
        compliance=torch.tensor(compliances, dtype=DTYPE),
        volume=torch.tensor(volumes, dtype=DTYPE),
        seconds_per_step=torch.tensor(seconds, dtype=DTYPE),
        rho=final,
        snapshots=snapshots,
        parameters=parameters,
        weighted_volume=torch.tensor(weighted, dtype=DTYPE),
        design=design.detach().clone() if filter == "density" else None,
        study=STUDY,
    )
    logger.info(
        "thermal topology done: compliance %.4e -> %.4e, volume %.12f (measure-weighted %.12f), median %.1f ms/step",
        compliances[0],
        compliances[-1],
        volumes[-1],
        weighted[-1],
        1e3 * result.median_seconds_per_step,
    )
    return result


def compliance_topology(
    problem: ComplianceProblem,
    vf: float = 0.5,
    penal: float = 3.0,
    radius: float = 1.5,
    move: float = 0.2,
    tol: float = 0.01,
    max_iterations: int = 1000,
    backend: str = "direct",
    callback: Callable[[int, float, float], Any] | None = None,
) -> TopologyResult:
    """Minimise ``problem``'s compliance from the uniform x = vf (the 88-line code's algorithm).

    Each iteration filters x (:class:`~tmcore.topology.filters.ConeFilter` of ``radius``),
    evaluates the compliance with SIMP exponent ``penal``, back-propagates dc/dx (one adjoint
    solve) and takes one OC step with move limit ``move`` (damping 1/2), holding the volume of
    the filtered densities; it stops once the largest change of x is <= ``tol`` or after
    ``max_iterations``. ``callback(iteration, compliance, change)`` runs after each step.
    ``backend``: the linear solver, "direct" (CHOLMOD, else SuperLU) by default.
    """
    if not isinstance(problem, ComplianceProblem):
        raise TypeError(f"problem must be a ComplianceProblem, got {type(problem).__name__}")
    vf = check_real("vf", vf, 0.0, 1.0)
    penal = check_real("penal", penal, 0.0)
    move = check_real("move", move, 0.0, 1.0, high_open=False)
    tol = check_real("tol", tol, 0.0)
    check_count("max_iterations", max_iterations)
    check_callback(callback)
    mesh = problem.mesh
    cone = ConeFilter(mesh, radius)
    design_problem = DensityDesign(problem, penal=penal, density_filter=cone, backend=backend)
    x = torch.full((mesh.n_cells,), vf, dtype=DTYPE, device=mesh.device, requires_grad=True)
    optimizer = OCOptimizer(
        [x], vf=vf, move_limit=move, damping=0.5, rho_min=0.0, rho_max=1.0, volume_weights=cone.volume_weights
    )
    history: dict[str, list[float]] = {"compliance": [], "volume": [], "change": [], "seconds": []}
    converged = False
    for record in optimise(design_problem, x, optimizer, max_iterations, tol=tol):
        history["compliance"].append(record.objective)
        history["volume"].append(optimizer.state[x]["volume"])
        history["change"].append(record.change)
        history["seconds"].append(record.seconds)
        converged = record.change <= tol
        if callback is not None:
            callback(record.step, record.objective, record.change)
    if not converged:
        logger.warning(
            "compliance_topology: %s not converged after %d iterations (change %.3g > %g)",
            problem.name,
            max_iterations,
            history["change"][-1],
            tol,
        )
    with torch.no_grad():
        rho = cone(x.detach())
    return TopologyResult(
        compliance=torch.tensor(history["compliance"], dtype=DTYPE),
        volume=torch.tensor(history["volume"], dtype=DTYPE),
        seconds_per_step=torch.tensor(history["seconds"], dtype=DTYPE),
        rho=rho,
        change=torch.tensor(history["change"], dtype=DTYPE),
        design=x.detach().clone(),
        converged=converged,
        parameters=dict(
            problem=problem.name, vf=vf, penal=penal, radius=float(radius), move=move, tol=tol, n_cells=mesh.n_cells
        ),
        study="compliance_topology",
    )
