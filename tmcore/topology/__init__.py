"""Density-based topology optimisation: design problems, filters, optimisers and the one driver loop.

- :mod:`tmcore.topology.problems`: :class:`ComplianceProblem` (physics), :class:`DensityDesign`
  (the design-problem protocol: objective, constraints, physical densities), benchmark set-ups;
- :mod:`tmcore.topology.filters`: :class:`ConeFilter`, :class:`HelmholtzFilter`, :class:`HeavisideProjection`,
  the sensitivity filter;
- :mod:`tmcore.topology.optimizers`: :class:`OCOptimizer`;
- :mod:`tmcore.topology.driver`: :func:`optimise` and :class:`TopologyResult`.
"""

from tmcore.topology.driver import StepRecord, TopologyResult, optimise
from tmcore.topology.filters import (
    ConeFilter,
    HeavisideProjection,
    HelmholtzFilter,
    default_filter_radius,
    sensitivity_filter,
)
from tmcore.topology.optimizers import OCOptimizer
from tmcore.topology.problems import (
    ComplianceProblem,
    DensityDesign,
    DesignProblem,
    cantilever,
    heat_conduction,
    mbb_beam,
    nearest_node,
    point_load,
    simp,
    thermal_plate,
)

__all__ = [
    "ComplianceProblem",
    "ConeFilter",
    "DensityDesign",
    "DesignProblem",
    "HeavisideProjection",
    "HelmholtzFilter",
    "OCOptimizer",
    "StepRecord",
    "TopologyResult",
    "cantilever",
    "default_filter_radius",
    "heat_conduction",
    "mbb_beam",
    "nearest_node",
    "optimise",
    "point_load",
    "sensitivity_filter",
    "simp",
    "thermal_plate",
]
