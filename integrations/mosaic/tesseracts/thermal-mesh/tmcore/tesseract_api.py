"""tmcore as a thermal-mesh solver in mosaic: SIMP heat conduction on HEX8, adjoint gradients.

Canonical mosaic schemas (``mosaic_shared.problems.thermal_mesh``) plus the SIMP
parameters ``k_max`` and ``p_exp`` (k(rho) = k_min + (k_max - k_min) rho^p, k_min =
1e-3 k_max); differentiable in ``rho`` and ``source``, for both outputs. The physics and
the endpoints are :mod:`integrations.mosaic.solver` and :mod:`integrations.mosaic.endpoints`.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Tesseract.from_tesseract_api loads this file by path, outside any package: put the
# repository root (five levels up) on sys.path so that ``integrations`` imports.
_ROOT = Path(__file__).resolve().parents[5]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from pydantic import Field  # noqa: E402

from integrations.mosaic import endpoints  # noqa: E402
from integrations.mosaic.compat import canonical_schemas  # noqa: E402

_Inputs, _Outputs, make_differentiable = canonical_schemas("thermal_mesh")


class InputSchema(make_differentiable(_Inputs, list(endpoints.THERMAL.inputs))):
    """Canonical thermal-mesh inputs plus the SIMP conductivity parameters."""

    k_max: float = Field(default=1.0, description="Conductivity of solid material (rho = 1).")
    p_exp: float = Field(default=3.0, description="SIMP exponent p: k(rho) = k_min + (k_max - k_min) rho^p.")


class OutputSchema(make_differentiable(_Outputs, list(endpoints.THERMAL.outputs))):
    """Canonical thermal-mesh outputs: thermal_compliance and identification_error (float32 scalars)."""


apply, vector_jacobian_product, abstract_eval = endpoints.tesseract_endpoints(endpoints.THERMAL, OutputSchema)
