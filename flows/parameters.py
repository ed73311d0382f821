"""The flows' parameter types: ranges checked by Prefect (pydantic) at the flow boundary.

A flow annotated with these types rejects an out-of-range parameter before its body runs:
a direct call (or ``return_state=True``) ends Failed with ``ParameterTypeError`` naming
the parameter and the bound, and a deployment run with ``--param`` is refused by the
server, which checks the same bounds from the deployment's parameter schema
(``enforce_parameter_schema``, on by default). Nothing is computed, nothing is written.

Counts are strict ints (``True`` and ``"5"`` are refused); numbers are finite.

The UI's custom-run form takes each parameter's description from the flow docstring's
``Args:`` section (Prefect replaces a type's own ``description`` by it), so every flow
documents every parameter there; the descriptions here are what other schemas show.
"""

from __future__ import annotations

from typing import Annotated, Optional

from pydantic import Field

__all__ = [
    "Checkpoints",
    "Count",
    "Date",
    "Exponent",
    "LearningRate",
    "MeshSize",
    "NonNegative",
    "Probes",
    "SuiteNames",
    "Steps",
    "VolumeFraction",
]

MAX_STEPS = 1_000_000

Steps = Annotated[int, Field(strict=True, ge=1, le=MAX_STEPS, description="optimiser steps")]
Count = Annotated[int, Field(strict=True, ge=1, description="a positive count")]
Probes = Annotated[int, Field(strict=True, ge=1, le=1000, description="finite-difference probes per target")]
Checkpoints = Optional[Annotated[int, Field(strict=True, ge=1, le=MAX_STEPS, description="steps between checkpoints")]]
# gmsh edge length on the unit square: 0.002 is ~2.9e5 nodes; above 0.5 no interior node is left
MeshSize = Annotated[float, Field(strict=True, ge=0.002, le=0.5, allow_inf_nan=False, description="mesh edge length")]
LearningRate = Annotated[
    float, Field(strict=True, gt=0.0, le=10.0, allow_inf_nan=False, description="Adam learning rate")
]
NonNegative = Annotated[float, Field(strict=True, ge=0.0, allow_inf_nan=False, description="a finite number >= 0")]
VolumeFraction = Annotated[
    float, Field(strict=True, gt=0.0, lt=1.0, allow_inf_nan=False, description="volume fraction")
]
Exponent = Annotated[float, Field(strict=True, gt=0.0, le=10.0, allow_inf_nan=False, description="SIMP exponent")]
Date = Annotated[str, Field(pattern=r"^\d{4}-\d{2}-\d{2}$", description="a report date, YYYY-MM-DD")]
SuiteName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$", description="a benchmark suite name")]
SuiteNames = Annotated[list[SuiteName], Field(min_length=1, description="benchmark suites to run")]
