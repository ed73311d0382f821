"""Every weak form of the library, once, under one name each.

Each form is an integrand for one quadrature point and one basis pair (scalar forms) or one
basis pair of vector basis functions (the elasticity forms); its coefficients come by
argument name from the data (``point_data``, ``element_data`` or ``scalar_data`` alike).
Bind a form to a mesh with ``Form.from_mesh(mesh)`` and call it with the data.

Scalar forms: :class:`Laplace` (grad u . grad v), :class:`Diffusion` (kappa grad u . grad v),
:class:`Mass` (rho u v), :class:`Source` (f v), and on boundary facets :class:`BoundaryFlux`
(q v, a prescribed normal flux).

Linear elasticity, as plain functions of one point (so they drop into any integrand):

    eps(u)   = (grad u + grad u^T) / 2                                 :func:`strain`
    sigma(u) = lam tr(eps) I + 2 mu eps                                :func:`stress`
    a(u, v)  = lam tr(eps(u)) tr(eps(v)) + 2 mu eps(u) : eps(v)        :func:`strain_energy`

with the Lamé parameters of Young's modulus E and Poisson's ratio nu for plane stress,
plane strain or 3-D (:func:`lame_parameters`); the vector forms :class:`LinearElasticity`
(E(x) a(u, v)), :class:`BodyForce` (f . v) and :class:`Traction` (t . v on facets). Vector
dofs are node-major (dof ``dim * a + i`` is component i of node a); Dirichlet conditions on
components go through :func:`tmcore.dof_mask`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from tmcore.core.assembly import (
    ElementAssembler,
    FacetAssembler,
    NodeAssembler,
    VectorElementAssembler,
    VectorFacetAssembler,
    VectorNodeAssembler,
)
from tmcore.core.checks import check_real
from tmcore.core.mesh import Mesh, check_mesh_type

__all__ = [
    "BodyForce",
    "BoundaryFlux",
    "Diffusion",
    "Laplace",
    "LinearElasticity",
    "Mass",
    "Source",
    "Traction",
    "lame_parameters",
    "strain",
    "strain_energy",
    "stress",
]

PLANES = ("stress", "strain", None)


# -- scalar forms -------------------------------------------------------------------------------


class Laplace(ElementAssembler):
    """grad u . grad v: the stiffness matrix of -lap(u), unit coefficient."""

    def forward(self, gradu, gradv):
        return gradu @ gradv


class Diffusion(ElementAssembler):
    """kappa grad u . grad v: the stiffness matrix of -div(kappa grad u); kappa per node, per cell or one number."""

    def forward(self, gradu, gradv, kappa):
        return kappa * (gradu @ gradv)


class Mass(ElementAssembler):
    """rho u v: the (weighted) mass matrix."""

    def forward(self, u, v, rho):
        return rho * u * v


class Source(NodeAssembler):
    """f v: the load vector of a source f."""

    def forward(self, v, f):
        return f * v


class BoundaryFlux(FacetAssembler):
    """q v on the chosen facets: the load vector (n,) of a prescribed normal flux q (the Neumann
    term of -div(kappa grad u) = f with kappa du/dn = q; heat: q in W/m^2 entering the body).

    Bind with ``from_mesh(mesh, facets=...)`` (a facet-set name, a node mask, a predicate on
    facet centroids or a facet tensor); q as point_data (n,), element_data of the owner cells
    (m,) or scalar_data. A uniform q on a facet set of area A puts q A into the load's sum.
    """

    def forward(self, v, q):
        return q * v


# -- linear elasticity ----------------------------------------------------------------------------


def lame_parameters(E: float | Tensor, nu: float, plane: str | None = "stress") -> tuple[Any, Any]:
    """(lam, mu) of Young's modulus E and Poisson's ratio nu.

    plane: "stress" (2-D, thin plate: lam = E nu / (1 - nu^2)), "strain" (2-D, long
    body) or None (3-D); both of the latter give lam = E nu / ((1 + nu)(1 - 2 nu)).
    mu = E / (2 (1 + nu)) in every case.
    """
    if plane not in PLANES:
        raise ValueError(f"plane must be 'stress', 'strain' or None (3-D), got {plane!r}")
    # plane stress stays well defined at nu = 1/2; plane strain and 3-D lock there
    nu = check_real("nu", nu, -1.0, 0.5, high_open=plane != "stress")
    if plane == "stress":
        lam = E * nu / (1.0 - nu**2)
    else:
        lam = E * nu / ((1.0 + nu) * (1.0 - 2.0 * nu))
    return lam, E / (2.0 * (1.0 + nu))


def strain(gradu: Tensor) -> Tensor:
    """The symmetric gradient (dim, dim) of a displacement gradient ``gradu[i, j] = du_i/dx_j``."""
    return 0.5 * (gradu + gradu.transpose(-1, -2))


def _trace(matrix: Tensor) -> Tensor:
    return matrix.diagonal(dim1=-2, dim2=-1).sum(-1)


def stress(gradu: Tensor, lam: Any, mu: Any) -> Tensor:
    """Cauchy stress (dim, dim) of isotropic linear elasticity: lam tr(eps) I + 2 mu eps."""
    eps = strain(gradu)
    eye = torch.eye(gradu.shape[-1], dtype=gradu.dtype, device=gradu.device)
    return lam * _trace(eps)[..., None, None] * eye + 2.0 * mu * eps


def strain_energy(gradu: Tensor, gradv: Tensor, lam: Any, mu: Any) -> Tensor:
    """The bilinear strain-energy density sigma(u) : eps(v) = lam tr(eps(u)) tr(eps(v)) + 2 mu eps(u) : eps(v).

    Written for one pair of (dim, dim) gradients, so it is the integrand of the stiffness
    matrix (with basis gradients) and the energy density of a field (with grad u twice).
    """
    # sigma(u) : eps(v) = sigma(u) : grad v (sigma is symmetric). Written as one dot product of
    # the flattened matrices: under the assemblers' vmap that is a single batched matrix
    # product over all basis pairs, and the stress is formed once per trial function.
    sigma, grad = stress(gradu, lam, mu).flatten(-2), gradv.flatten(-2)
    return sigma @ grad if sigma.ndim == 1 else (sigma * grad).sum(-1)


class LinearElasticity(VectorElementAssembler):
    """Stiffness int E(x) [lam1 tr eps(u) tr eps(v) + 2 mu1 eps(u) : eps(v)] dx, (n dim, n dim).

    lam1, mu1 are the Lamé parameters of a unit modulus (:func:`lame_parameters`), so the
    data ``E`` (element_data per cell, point_data per node, or a scalar) scales the
    material: SIMP passes E(rho) per cell. ``from_mesh(mesh, nu=0.3, plane="stress")``;
    plane is "stress" or "strain" on 2-D meshes and None on 3-D ones.
    """

    def __init__(self, nu: float = 0.3, plane: str | None = "stress"):
        super().__init__()
        self.nu = nu
        self.plane = plane
        self.lam1, self.mu1 = lame_parameters(1.0, nu, plane)

    @classmethod
    def from_mesh(cls, mesh: Mesh, quadrature_order: int | None = None, nu: float = 0.3, plane: str | None = "default"):
        check_mesh_type(mesh)
        if plane == "default":
            plane = "stress" if mesh.dim == 2 else None
        if mesh.dim == 3 and plane is not None:
            raise ValueError(f"plane={plane!r} applies to 2-D meshes; a 3-D mesh needs plane=None")
        if mesh.dim == 2 and plane is None:
            raise ValueError("a 2-D mesh needs plane='stress' or plane='strain'")
        return super().from_mesh(mesh, quadrature_order, nu=nu, plane=plane)

    def forward(self, gradu, gradv, E):
        return strain_energy(gradu, gradv, E * self.lam1, E * self.mu1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, nu={self.nu}, plane={self.plane!r}"


class BodyForce(VectorNodeAssembler):
    """Load vector (n dim,) of a body force ``f`` (point_data (n, dim) or element_data (m, dim))."""

    def forward(self, v, f):
        return v @ f


class Traction(VectorFacetAssembler):
    """Load vector (n dim,) of a surface traction ``t`` on the chosen facets
    (``from_mesh(mesh, facets="right")``; t as point_data (n, dim) or per owner cell)."""

    def forward(self, v, t):
        return v @ t
