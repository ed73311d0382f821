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
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from tmcore.forms import Diffusion, Source
from tmcore.core.condense import Condenser
from tmcore.core.mesh import Mesh
from tmcore.topology.filters import HelmholtzFilter, default_filter_radius, sensitivity_filter
from tmcore.topology.optimizers import OCOptimizer
from tmcore.core.checks import DTYPE, check_callback, check_choice, check_count, check_mesh, check_real
from tmcore.studies.checkpoint import FORMAT, check_checkpointing, check_resume, clone_state, due, history_lists, history_tensors, restore

__all__ = ["TopologyResult", "thermal_topology"]

logger = logging.getLogger(__name__)


SIMPLaplace = Diffusion  # the stiffness of -div(kappa(rho) grad u), kappa per cell


@dataclass
class TopologyResult:
    """History and final design of one topology run.

    Per step (steps,): ``compliance`` (b . u for the densities the step started from),
    ``volume`` (plain mean of the physical densities after the step's update: the
    chapter's volume fraction), ``weighted_volume`` (the same densities weighted by cell
    measure, sum |e| rho_e / sum |e|; None in results built without it),
    ``seconds_per_step``. ``rho``: the final physical densities (m,), those the solve
    sees (the filtered ones under ``filter="density"``); ``design``: the final design
    variables the optimiser updates (None when they are ``rho``). ``snapshots`` maps a
    step to the physical densities (m,) its solve used.
    """

    compliance: Tensor
    volume: Tensor
    seconds_per_step: Tensor
    rho: Tensor
    snapshots: dict[int, Tensor] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)
    weighted_volume: Tensor | None = None
    design: Tensor | None = None

    @property
    def steps(self) -> int:
        return self.compliance.shape[0]

    @property
    def median_seconds_per_step(self) -> float:
        return float(self.seconds_per_step.median())

    def to_xarray(self):
        """An ``xarray.Dataset`` with dimensions ``step``, ``cell`` and ``snapshot_step`` (needs xarray)."""
        try:
            import xarray as xr
        except ImportError as error:  # pragma: no cover - depends on the environment
            raise ImportError("TopologyResult.to_xarray needs xarray, which is not installed (pip install xarray)") from error
        names = ["compliance", "volume", "seconds_per_step"] + (["weighted_volume"] if self.weighted_volume is not None else [])
        data = {name: (("step",), getattr(self, name).cpu().numpy()) for name in names}
        data["rho"] = (("cell",), self.rho.cpu().numpy())
        if self.design is not None:
            data["design"] = (("cell",), self.design.cpu().numpy())
        coords = {}
        if self.snapshots:
            steps = sorted(self.snapshots)
            data["rho_snapshot"] = (("snapshot_step", "cell"), torch.stack([self.snapshots[s] for s in steps]).cpu().numpy())
            coords["snapshot_step"] = steps
        attrs = {key: ("none" if value is None else value) for key, value in self.parameters.items()}
        return xr.Dataset(data, coords=coords, attrs={"study": "thermal_topology", **attrs})


def _snapshot_set(snapshot_steps: Any, steps: int) -> set[int]:
    """Steps to keep, negative ones counted from the end; those beyond the run are dropped."""
    if snapshot_steps is None:
        return set()
    if isinstance(snapshot_steps, int) and not isinstance(snapshot_steps, bool):
        snapshot_steps = (snapshot_steps,)
    if not isinstance(snapshot_steps, Iterable):
        raise ValueError(f"snapshot_steps must be an iterable of ints, got {type(snapshot_steps).__name__}")
    keep = set()
    for s in snapshot_steps:
        if isinstance(s, bool) or not isinstance(s, int):
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
    check_mesh(mesh)
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

    # everything mesh-only, built once
    points = mesh.points.to(DTYPE)
    centre = 0.5 * (points.min(dim=0).values + points.max(dim=0).values)
    f = torch.exp(-((points - centre) ** 2).sum(dim=1) / (2 * sigma**2))
    condenser = Condenser(mesh.boundary_mask)
    stiffness = SIMPLaplace.from_mesh(mesh)
    load = Source.from_mesh(mesh)(point_data={"f": f}).to(DTYPE)
    measures = mesh.cell_measures().to(DTYPE)
    radius = None
    helmholtz = None
    if filter is not None:
        radius = default_filter_radius(mesh) if filter_radius is None else filter_radius
        helmholtz = HelmholtzFilter(mesh, radius)

    keyed = {
        "vf": vf, "p": p, "kmin": kmin, "sigma": sigma, "move_limit": move_limit, "filter": filter,
        "filter_radius": radius, "volume_weighting": volume_weighting, "n_cells": mesh.n_cells,
    }
    if resume_from is not None:
        check_resume(resume_from, STUDY, keyed, steps, "design", mesh.n_cells, HISTORY)
    design = torch.full((mesh.n_cells,), vf, dtype=DTYPE, device=mesh.device, requires_grad=True)
    optimizer = OCOptimizer(design, vf=vf, move_limit=move_limit, volume_weights=measures if volume_weighting == "measure" else None)
    history = history_lists(resume_from, HISTORY)
    first, snapshots = restore(resume_from, "design", design, optimizer)
    if resume_from is not None:
        logger.info("thermal topology: resuming at step %d of %d", first, steps)
    logger.info(
        "thermal topology: %d cells, %d steps, vf %g, p %g, kmin %g, filter %s (r %s), volume %s",
        mesh.n_cells, steps, vf, p, kmin, filter, "-" if radius is None else f"{radius:.4g}", volume_weighting,
    )

    def physical(x: Tensor) -> Tensor:
        return helmholtz(x) if filter == "density" else x

    compliances, volumes, weighted, seconds = (history[name] for name in HISTORY)
    for step in range(first, steps):
        start = time.perf_counter()
        optimizer.zero_grad()
        rho = physical(design)
        if step in keep:
            snapshots[step] = rho.detach().clone()
        kappa = kmin + (1.0 - kmin) * rho**p
        K = stiffness(element_data={"kappa": kappa}).double()
        K_free, b_free = condenser(K, load)
        u = condenser.recover(K_free.solve(b_free))
        compliance = (load * u).sum()
        compliance.backward()
        if filter == "sensitivity":
            design.grad = sensitivity_filter(helmholtz, design.detach(), design.grad)
        optimizer.step()
        with torch.no_grad():
            after = physical(design)
            volumes.append(float(after.mean()))
            weighted.append(float((measures * after).sum() / measures.sum()))
        compliances.append(float(compliance.detach()))
        seconds.append(time.perf_counter() - start)
        if not math.isfinite(compliances[-1]):
            raise FloatingPointError(f"the compliance became {compliances[-1]} at step {step}")
        if due(step, steps, checkpoint_every):
            checkpoint(clone_state({
                "format": FORMAT, "study": STUDY, "step": step + 1, "parameters": keyed, "design": design,
                "optimizer": optimizer.state_dict(), "history": history_tensors(history), "snapshots": snapshots,
            }))
        if callback is not None:
            callback(step, compliances[-1])

    with torch.no_grad():
        final = physical(design).detach().clone()
    result = TopologyResult(
        compliance=torch.tensor(compliances, dtype=DTYPE),
        volume=torch.tensor(volumes, dtype=DTYPE),
        seconds_per_step=torch.tensor(seconds, dtype=DTYPE),
        rho=final,
        snapshots=snapshots,
        parameters={
            "vf": vf, "p": p, "kmin": kmin, "sigma": sigma, "steps": steps, "move_limit": move_limit,
            "filter": filter, "filter_radius": radius, "volume_weighting": volume_weighting,
        },
        weighted_volume=torch.tensor(weighted, dtype=DTYPE),
        design=design.detach().clone() if filter == "density" else None,
    )
    logger.info(
        "thermal topology done: compliance %.4e -> %.4e, volume %.12f (measure-weighted %.12f), median %.1f ms/step",
        compliances[0], compliances[-1], volumes[-1], weighted[-1], 1e3 * result.median_seconds_per_step,
    )
    return result
