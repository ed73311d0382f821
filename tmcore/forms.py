"""Weak forms that most problems start from, as assemblers ready to bind with ``from_mesh``.

Each is a plain integrand for one quadrature point and one basis pair; the coefficient
comes by name from the data (point, element or scalar data alike).
"""

from __future__ import annotations

from tmcore.core.assembly import ElementAssembler, NodeAssembler

__all__ = ["Diffusion", "Laplace", "Mass", "Source"]


class Diffusion(ElementAssembler):
    """kappa grad u . grad v: the stiffness matrix of -div(kappa grad u)."""

    def forward(self, gradu, gradv, kappa):
        return kappa * (gradu @ gradv)


class Laplace(ElementAssembler):
    """grad u . grad v: the stiffness matrix of -lap(u), unit coefficient."""

    def forward(self, gradu, gradv):
        return gradu @ gradv


class Mass(ElementAssembler):
    """rho u v: the (weighted) mass matrix."""

    def forward(self, u, v, rho):
        return rho * u * v


class Source(NodeAssembler):
    """f v: the load vector of a source f."""

    def forward(self, v, f):
        return f * v
