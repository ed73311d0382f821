"""tmcore as a thermal-mesh solver in mosaic: SIMP heat conduction on HEX8, adjoint gradients.

Canonical mosaic schemas (``mosaic_shared.problems.thermal_mesh``) plus the SIMP
parameters ``k_max`` and ``p_exp`` (k(rho) = k_min + (k_max - k_min) rho^p, k_min =
1e-3 k_max); differentiable in ``rho`` and ``source``, for both outputs. The physics, the
endpoints and the schemas are :mod:`integrations.mosaic.solver`, :mod:`integrations.mosaic.endpoints`
and :mod:`integrations.mosaic.schemas`.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Tesseract.from_tesseract_api loads this file by path, outside any package: put the
# repository root (five levels up) on sys.path so that ``integrations`` imports.
_ROOT = Path(__file__).resolve().parents[5]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from integrations.mosaic import endpoints  # noqa: E402
from integrations.mosaic.schemas import THERMAL_SCHEMAS  # noqa: E402

InputSchema, OutputSchema = THERMAL_SCHEMAS

# the names the Tesseract runtime looks up in this module
__all__ = ["InputSchema", "OutputSchema", "apply", "vector_jacobian_product", "abstract_eval"]

apply, vector_jacobian_product, abstract_eval = endpoints.tesseract_endpoints(endpoints.THERMAL, OutputSchema)
