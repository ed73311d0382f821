"""Boundary-value problems the ``assemble`` and ``solve`` stages know by name.

A problem turns a mesh into a linear system (stiffness, load, Dirichlet nodes and
values) and, when it has an exact solution, measures the error of a discrete one.
Register a new problem by adding a :class:`Problem` to ``PROBLEMS``.

- ``poisson-mms``: -lap u = f on the mesh's box with u = 0 on its boundary and the
  manufactured solution u = prod_i sin(pi x_i) (so f = d pi^2 u): :mod:`tmcore.methods.manufactured`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from tmcore import Mesh, SparseMatrix
from tmcore.forms import Laplace
from tmcore.methods import manufactured


@dataclass(frozen=True)
class System:
    """A linear system on a mesh: K u = b with u = dirichlet_value on dirichlet_mask."""

    matrix: SparseMatrix
    load: Tensor  # (n,)
    dirichlet_mask: Tensor  # (n,) bool
    dirichlet_value: Tensor  # (n,), used where the mask is set


@dataclass(frozen=True)
class Problem:
    name: str
    assemble: Callable[[Mesh], System]
    exact: Callable[[Tensor], Tensor] | None = None  # points (n, dim) -> (n,)
    errors: Callable[[Mesh, Tensor], dict[str, float]] | None = None  # (mesh, u) -> {"l2_error": ...}


def _assemble_sine(mesh: Mesh) -> System:
    K = Laplace.from_mesh(mesh)().double()
    b = manufactured.SineSource.from_mesh(mesh, quadrature_order=manufactured.quadrature_order(mesh))().to(
        torch.float64
    )
    mask = mesh.boundary_mask
    return System(K, b, mask, torch.zeros(mesh.n_points, dtype=torch.float64, device=b.device))


PROBLEMS: dict[str, Problem] = {
    "poisson-mms": Problem("poisson-mms", _assemble_sine, exact=manufactured.sine_product, errors=manufactured.errors),
}


def get_problem(name: str) -> Problem:
    if name not in PROBLEMS:
        raise ValueError(f"problem must be one of {sorted(PROBLEMS)}, got {name!r}")
    return PROBLEMS[name]
