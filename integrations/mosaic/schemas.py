"""The two Tesseracts' schemas: mosaic's canonical ones, differentiable in each problem's inputs and
outputs (:data:`integrations.mosaic.endpoints.THERMAL`, :data:`~integrations.mosaic.endpoints.STRUCTURAL`),
plus the SIMP parameters tmcore takes: ``THERMAL_SCHEMAS`` and ``STRUCTURAL_SCHEMAS``, each an
``(InputSchema, OutputSchema)`` pair that a ``tesseract_api.py`` binds under those names.
Importing this module needs mosaic (``pip install -e '.[mosaic]'``).
"""

from __future__ import annotations

from pydantic import Field

from .compat import canonical_schemas
from .endpoints import STRUCTURAL, THERMAL, Problem

__all__ = ["STRUCTURAL_SCHEMAS", "THERMAL_SCHEMAS", "differentiable_schemas"]


def differentiable_schemas(problem: Problem) -> tuple[type, type]:
    """mosaic's canonical (InputSchema, OutputSchema) of ``problem``, its inputs and outputs marked differentiable."""
    inputs, outputs, make_differentiable = canonical_schemas(problem.name)
    return make_differentiable(inputs, list(problem.inputs)), make_differentiable(outputs, list(problem.outputs))


def _thermal_schemas() -> tuple[type, type]:
    inputs, outputs = differentiable_schemas(THERMAL)

    class InputSchema(inputs):
        """Canonical thermal-mesh inputs plus the SIMP conductivity parameters."""

        k_max: float = Field(default=1.0, description="Conductivity of solid material (rho = 1).")
        p_exp: float = Field(default=3.0, description="SIMP exponent p: k(rho) = k_min + (k_max - k_min) rho^p.")

    class OutputSchema(outputs):
        """Canonical thermal-mesh outputs: thermal_compliance and identification_error (float32 scalars)."""

    return InputSchema, OutputSchema


def _structural_schemas() -> tuple[type, type]:
    inputs, outputs = differentiable_schemas(STRUCTURAL)

    class InputSchema(inputs):
        """Canonical structural-mesh inputs plus the SIMP material parameters."""

        E_max: float = Field(default=70_000.0, description="Young's modulus of solid material (rho = 1), MPa.")
        nu: float = Field(default=0.3, description="Poisson's ratio.")
        xmin: float = Field(default=1e-3, description="Void stiffness ratio E_min / E_max.")
        penal: float = Field(default=3.0, description="SIMP exponent p: E(rho) = E_max (xmin + (1 - xmin) rho^p).")

    class OutputSchema(outputs):
        """Canonical structural-mesh output: the compliance (float32 scalar)."""

    return InputSchema, OutputSchema


# The classes must be named InputSchema and OutputSchema: the Tesseract runtime names its OpenAPI
# components after them (``Apply_InputSchema``), and mosaic's JAX bridge (tesseract_jax) looks
# those names up.
THERMAL_SCHEMAS = _thermal_schemas()
STRUCTURAL_SCHEMAS = _structural_schemas()
