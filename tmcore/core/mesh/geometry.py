"""Geometry of mapped cells: Jacobians, their determinants and physical coordinates.

Every cell is the image of the reference cell under x(xi) = sum_a X_a N_a(xi), with X_a
the coordinates of its nodes. These functions evaluate that map and its derivative at
given reference points for all cells at once.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tmcore.core.elements import Element


def physical_points(nodes: Tensor, element: Element, xi: Tensor) -> Tensor:
    """Physical coordinates (m, q, dim) of reference points xi (q, ref_dim) in cells with node coordinates
    (m, k, dim)."""
    return torch.einsum("qk,mkd->mqd", element.basis(xi), nodes)


def jacobians(nodes: Tensor, element: Element, xi: Tensor) -> Tensor:
    """Jacobians dx/dxi (m, q, dim, ref_dim) at reference points xi (q, ref_dim)."""
    return torch.einsum("qkr,mkd->mqdr", element.basis_gradients(xi), nodes)


def measure_density(jac: Tensor) -> Tensor:
    """Signed volume factor per point (m, q) for square Jacobians, the unsigned one for facets.

    For a cell (dim == ref_dim) this is det J, negative for an inverted cell; for a
    facet (ref_dim == dim - 1) it is sqrt(det(J^T J)), the surface measure density.
    """
    if jac.shape[-1] == jac.shape[-2]:
        return torch.linalg.det(jac)
    return torch.sqrt(torch.linalg.det(jac.transpose(-1, -2) @ jac))


def cell_nodes(points: Tensor, cells: Tensor) -> Tensor:
    """Node coordinates per cell (m, k, dim)."""
    return points[cells]
