"""tmcore as a structural-mesh solver in mosaic: SIMP linear elasticity on HEX8, adjoint gradients.

Canonical mosaic schemas (``mosaic_shared.problems.structural_mesh``) plus the material
parameters the other FEM solvers take (``E_max``, ``nu``, ``xmin``; E(rho) = E_max (xmin +
(1 - xmin) rho^penal)); the Neumann values are a surface traction, integrated over the
facets. Differentiable in ``rho``. Physics and endpoints: :mod:`integrations.mosaic.solver`,
:mod:`integrations.mosaic.endpoints`.
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

_Inputs, _Outputs, make_differentiable = canonical_schemas("structural_mesh")


class InputSchema(make_differentiable(_Inputs, list(endpoints.STRUCTURAL.inputs))):
    """Canonical structural-mesh inputs plus the SIMP material parameters."""

    E_max: float = Field(default=70_000.0, description="Young's modulus of solid material (rho = 1), MPa.")
    nu: float = Field(default=0.3, description="Poisson's ratio.")
    xmin: float = Field(default=1e-3, description="Void stiffness ratio E_min / E_max.")
    penal: float = Field(default=3.0, description="SIMP exponent p: E(rho) = E_max (xmin + (1 - xmin) rho^p).")


class OutputSchema(make_differentiable(_Outputs, list(endpoints.STRUCTURAL.outputs))):
    """Canonical structural-mesh output: the compliance (float32 scalar)."""


apply, vector_jacobian_product, abstract_eval = endpoints.tesseract_endpoints(endpoints.STRUCTURAL, OutputSchema)
