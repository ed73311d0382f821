"""The one optimisation loop of the topology layer, and the result type of a run.

:func:`optimise` runs any optimiser over any design problem (the protocol of
:mod:`tmcore.topology.problems`: ``objective(x)``, ``constraints(x)``), one step at a time,
and yields a :class:`StepRecord` after each step, so that a study adds its own bookkeeping
(snapshots, checkpoints, callbacks) around the loop instead of writing the loop again.

Each step hands the optimiser an ``evaluate`` closure, ``optimizer.step(evaluate)``:
``evaluate()`` zeroes the gradients and returns ``(objective, constraints)``, on the autograd
graph of x. The optimiser back-propagates what it needs: :class:`~tmcore.topology.optimizers.OCOptimizer`
the objective (it holds its own volume constraint), MMA the objective and every constraint.
Gradient transforms such as the sensitivity filter are tensor hooks on x
(``x.register_hook``), so they apply whichever optimiser runs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from tmcore.core.datasets import result_dataset
from tmcore.topology.problems import DesignProblem

__all__ = ["StepRecord", "TopologyResult", "optimise"]


@dataclass
class StepRecord:
    """One step of :func:`optimise`: the objective and constraints (m,) at the design the step
    started from, the largest change of x the step made, and its wall time in seconds."""

    step: int
    objective: float
    constraints: Tensor
    change: float
    seconds: float


def optimise(
    problem: DesignProblem,
    x: Tensor,
    optimizer: torch.optim.Optimizer,
    steps: int,
    first_step: int = 0,
    tol: float | None = None,
) -> Iterator[StepRecord]:
    """Step ``optimizer`` over ``problem`` from x (updated in place), yielding after every step.

    Runs steps ``first_step .. steps - 1``; stops early after a step whose largest change of
    x is <= ``tol`` (when given). Raises FloatingPointError when the objective is not finite.
    """
    for step in range(first_step, steps):
        start = time.perf_counter()
        before = x.detach().clone()

        def evaluate() -> tuple[Tensor, Tensor]:
            optimizer.zero_grad()
            return problem.objective(x), problem.constraints(x)

        objective, constraints = optimizer.step(evaluate)
        value = float(objective.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"the objective became {value} at step {step}")
        change = float((x.detach() - before).abs().max())
        yield StepRecord(step, value, constraints.detach(), change, time.perf_counter() - start)
        if tol is not None and change <= tol:
            return


@dataclass
class TopologyResult:
    """History and final design of one topology run.

    Per step (steps,): ``compliance`` (for the densities the step started from), ``volume``
    (plain mean of the physical densities after the step's update), ``seconds_per_step``
    (wall time of the step: filter, assembly, solve, adjoint, update), and where recorded
    ``weighted_volume`` (the same densities weighted by cell measure) and ``change`` (largest
    |x_new - x|). ``rho``: the final physical densities (m,), those the solve sees;
    ``design``: the final design variables when they differ from ``rho`` (a density filter),
    else None. ``snapshots`` maps a step to the physical densities (m,) its solve used.
    ``converged``: the run stopped on its tolerance (always True for a fixed step count).
    """

    compliance: Tensor
    volume: Tensor
    seconds_per_step: Tensor
    rho: Tensor
    snapshots: dict[int, Tensor] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)
    weighted_volume: Tensor | None = None
    design: Tensor | None = None
    change: Tensor | None = None
    converged: bool = True
    study: str = "topology"

    @property
    def steps(self) -> int:
        return int(self.compliance.shape[0])

    iterations = steps  # the 88-line code's word for a step

    @property
    def final_compliance(self) -> float:
        return float(self.compliance[-1])

    @property
    def median_seconds_per_step(self) -> float:
        return float(self.seconds_per_step.median())

    seconds_per_iteration = median_seconds_per_step

    def to_xarray(self):
        """An ``xarray.Dataset`` with dimensions ``step``, ``cell`` and ``snapshot_step`` (needs xarray)."""
        names = ("compliance", "volume", "seconds_per_step", "weighted_volume", "change")
        return result_dataset(
            "TopologyResult",
            {name: getattr(self, name) for name in names},
            {"rho": self.rho, "design": self.design},
            "cell",
            self.snapshots,
            "rho_snapshot",
            {"study": self.study, **self.parameters},
        )
