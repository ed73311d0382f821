"""The chapter's two worked examples as library functions.

- :func:`coefficient_identification`: recover a nodal conductivity from one observed
  Poisson solution by Adam on kappa = 1 + tanh(theta), optionally with a smoothness
  penalty on theta.
- :func:`thermal_topology`: thermal-compliance topology optimisation with SIMP and the
  Optimality Criteria update, optionally with a density or sensitivity filter.
- :func:`compliance_topology`: the 88-line code's minimum-compliance loop (cone filter, OC)
  on any :class:`~tmcore.topology.ComplianceProblem` (MBB beam, cantilever, heat conduction).

Both return small dataclasses of tensors (histories per step, final fields); they log
through :mod:`logging` and never print or plot.
"""

from tmcore.studies.identification import (
    IdentificationProblem,
    IdentificationResult,
    KappaErrorReport,
    coefficient_identification,
)
from tmcore.studies.topology import TopologyResult, compliance_topology, thermal_topology

__all__ = [
    "IdentificationProblem",
    "IdentificationResult",
    "KappaErrorReport",
    "TopologyResult",
    "coefficient_identification",
    "compliance_topology",
    "thermal_topology",
]
