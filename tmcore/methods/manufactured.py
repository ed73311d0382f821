"""A manufactured solution for verifying discretisations: u = prod_i sin(pi x_i) on the unit box.

It solves -lap u = f with f = d pi^2 u and u = 0 on the boundary of [0, 1]^d. Solve it with
:func:`solve` on any mesh of the unit square or cube and measure the discrete solution's error
with :func:`errors`: the L2 error falls at the rate order + 1 and the H1 error at the rate
order of the element, which the test suite and the validation benchmark check.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from tmcore.core.assembly import Functional, NodeAssembler
from tmcore.core.checks import DTYPE
from tmcore.core.condense import Condenser
from tmcore.core.mesh import Mesh, check_mesh_type
from tmcore.forms import Laplace

__all__ = [
    "H1Error",
    "L2Error",
    "SineSource",
    "errors",
    "quadrature_order",
    "sine_product",
    "sine_product_gradient",
    "solve",
]


def sine_product(x: Tensor) -> Tensor:
    """prod_i sin(pi x_i) at points (..., dim)."""
    return torch.prod(torch.sin(math.pi * x), dim=-1)


def sine_product_gradient(x: Tensor) -> Tensor:
    """Gradient (..., dim) of :func:`sine_product`."""
    sines, cosines = torch.sin(math.pi * x), torch.cos(math.pi * x)
    parts = []
    for i in range(x.shape[-1]):
        others = torch.prod(torch.cat([sines[..., :i], sines[..., i + 1 :]], dim=-1), dim=-1)
        parts.append(math.pi * cosines[..., i] * others)
    return torch.stack(parts, dim=-1)


class SineSource(NodeAssembler):
    """f v with f = d pi^2 prod sin(pi x_i), the source of the manufactured solution."""

    def forward(self, v, x):
        return x.shape[-1] * math.pi**2 * sine_product(x) * v


class L2Error(Functional):
    """(u_h - u)^2 for the sine-product solution u."""

    def forward(self, x, uh):
        return (uh - sine_product(x)) ** 2


class H1Error(Functional):
    """|grad u_h - grad u|^2 for the sine-product solution u."""

    def forward(self, x, grad_uh):
        diff = grad_uh - sine_product_gradient(x)
        return diff @ diff


def quadrature_order(mesh: Mesh) -> int:
    """A quadrature degree that integrates the smooth data well beyond the element's rate."""
    return 2 * mesh.element.order + 4


def solve(mesh: Mesh) -> Tensor:
    """The discrete solution u_h (n,) on ``mesh`` (a mesh of the unit square or cube), u_h = 0 on its boundary."""
    check_mesh_type(mesh)
    K = Laplace.from_mesh(mesh)().to(DTYPE)
    b = SineSource.from_mesh(mesh, quadrature_order=quadrature_order(mesh))().to(DTYPE)
    condenser = Condenser(mesh.boundary_mask)
    K_free, b_free = condenser(K, b)
    return condenser.recover(K_free.solve(b_free))


def errors(mesh: Mesh, uh: Tensor) -> dict[str, float]:
    """{"l2_error": |u_h - u|_L2, "h1_error": |grad u_h - grad u|_L2} of a nodal field u_h (n,)."""
    order = quadrature_order(mesh)
    l2 = L2Error.from_mesh(mesh, quadrature_order=order)(point_data={"uh": uh})
    h1 = H1Error.from_mesh(mesh, quadrature_order=order)(point_data={"uh": uh})
    return {"l2_error": float(l2.sqrt()), "h1_error": float(h1.sqrt())}
