"""tmcore as a structural-mesh solver in mosaic: SIMP linear elasticity on HEX8, adjoint gradients.

Canonical mosaic schemas (``mosaic_shared.problems.structural_mesh``) plus the material
parameters the other FEM solvers take (``E_max``, ``nu``, ``xmin``; E(rho) = E_max (xmin +
(1 - xmin) rho^penal)); the Neumann values are a surface traction, integrated over the
facets. Differentiable in ``rho``. Physics, endpoints and schemas: :mod:`integrations.mosaic.solver`,
:mod:`integrations.mosaic.endpoints`, :mod:`integrations.mosaic.schemas`.
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
from integrations.mosaic.schemas import STRUCTURAL_SCHEMAS  # noqa: E402

InputSchema, OutputSchema = STRUCTURAL_SCHEMAS

# the names the Tesseract runtime looks up in this module
__all__ = ["InputSchema", "OutputSchema", "apply", "vector_jacobian_product", "abstract_eval"]

apply, vector_jacobian_product, abstract_eval = endpoints.tesseract_endpoints(endpoints.STRUCTURAL, OutputSchema)
