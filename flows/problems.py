"""Boundary-value problems the ``assemble`` and ``solve`` stages know by name.

A problem turns a mesh into a linear system (stiffness, load, Dirichlet nodes and
values) and, when it has an exact solution, measures the error of a discrete one.
Register a new problem by adding a :class:`Problem` to ``PROBLEMS``.

- ``poisson-mms``: -lap u = f on the mesh's box with u = 0 on its boundary and the
  manufactured solution u = prod_i sin(pi x_i) (so f = d pi^2 u).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from tmcore import ElementAssembler, Functional, Mesh, NodeAssembler, SparseMatrix


def sine_product(x: Tensor) -> Tensor:
    """prod_i sin(pi x_i), at points (..., dim)."""
    return torch.prod(torch.sin(math.pi * x), dim=-1)


def sine_product_gradient(x: Tensor) -> Tensor:
    """Gradient (..., dim) of :func:`sine_product`."""
    sines, cosines = torch.sin(math.pi * x), torch.cos(math.pi * x)
    parts = []
    for i in range(x.shape[-1]):
        others = torch.prod(torch.cat([sines[..., :i], sines[..., i + 1 :]], dim=-1), dim=-1)
        parts.append(math.pi * cosines[..., i] * others)
    return torch.stack(parts, dim=-1)


class Stiffness(ElementAssembler):
    """grad u . grad v."""

    def forward(self, gradu, gradv):
        return gradu @ gradv


class SineSource(NodeAssembler):
    """f v with f = d pi^2 prod sin(pi x_i)."""

    def forward(self, v, x):
        return x.shape[-1] * math.pi**2 * sine_product(x) * v


class SineL2Error(Functional):
    """(u_h - u)^2 for the sine-product solution."""

    def forward(self, x, uh):
        return (uh - sine_product(x)) ** 2


class SineH1Error(Functional):
    """|grad u_h - grad u|^2 for the sine-product solution."""

    def forward(self, x, grad_uh):
        diff = grad_uh - sine_product_gradient(x)
        return diff @ diff


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


def _rich_order(mesh: Mesh) -> int:
    """A quadrature degree that integrates the smooth data well beyond the element's rate."""
    return 2 * mesh.element.order + 4


def _assemble_sine(mesh: Mesh) -> System:
    K = Stiffness.from_mesh(mesh)().double()
    b = SineSource.from_mesh(mesh, quadrature_order=_rich_order(mesh))().to(torch.float64)
    mask = mesh.boundary_mask
    return System(K, b, mask, torch.zeros(mesh.n_points, dtype=torch.float64, device=b.device))


def _sine_errors(mesh: Mesh, u: Tensor) -> dict[str, float]:
    order = _rich_order(mesh)
    l2 = SineL2Error.from_mesh(mesh, quadrature_order=order)(point_data={"uh": u})
    h1 = SineH1Error.from_mesh(mesh, quadrature_order=order)(point_data={"uh": u})
    return {"l2_error": float(l2.sqrt()), "h1_error": float(h1.sqrt())}


PROBLEMS: dict[str, Problem] = {
    "poisson-mms": Problem("poisson-mms", _assemble_sine, exact=sine_product, errors=_sine_errors),
}


def get_problem(name: str) -> Problem:
    if name not in PROBLEMS:
        raise ValueError(f"problem must be one of {sorted(PROBLEMS)}, got {name!r}")
    return PROBLEMS[name]
