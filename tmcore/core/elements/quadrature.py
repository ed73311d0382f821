"""Quadrature rules on the reference cells, with positive weights and any degree.

Line, quad and hexahedron use Gauss-Legendre tensor rules; triangle and tetra use the
centroid (degree <= 1) and the classical symmetric degree-2 rules, and collapsed
(Duffy / conical product) Gauss-Jacobi rules above that. Rules are computed once in
float64 numpy per (shape, degree) and cached.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from scipy.special import roots_jacobi, roots_legendre
from torch import Tensor

from tmcore.core.checks import check_count

_SHAPES = ("line", "triangle", "quad", "tetra", "hexahedron")


def quadrature(shape: str, degree: int, dtype: torch.dtype = torch.float64, device=None) -> tuple[Tensor, Tensor]:
    """A quadrature rule on the reference cell of ``shape``.

    Returns points ``(q, dim)`` inside the cell and positive weights ``(q,)`` that sum to
    the cell's measure, in ``dtype`` on ``device``. The rule integrates exactly every
    polynomial of total degree <= ``degree`` (triangle, tetra) or of degree <=
    ``degree`` in each variable (line, quad, hexahedron).
    """
    if not isinstance(shape, str) or shape not in _SHAPES:
        raise ValueError(f"shape must be one of {', '.join(_SHAPES)}; got {shape!r}")
    check_count("degree", degree, 0)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point torch.dtype; got {dtype!r}")
    points, weights = _rule(shape, int(degree))
    return (
        torch.tensor(points, dtype=dtype, device=device),
        torch.tensor(weights, dtype=dtype, device=device),
    )


@lru_cache(maxsize=None)
def _rule(shape: str, degree: int) -> tuple[np.ndarray, np.ndarray]:
    """Float64 points (q, dim) and weights (q,), read-only so the cache stays intact."""
    n = degree // 2 + 1  # Gauss points per direction: exact to degree 2n - 1 >= degree
    if shape in ("line", "quad", "hexahedron"):
        points, weights = _tensor_gauss(n, {"line": 1, "quad": 2, "hexahedron": 3}[shape])
    elif shape == "triangle":
        points, weights = _triangle(degree, n)
    else:
        points, weights = _tetra(degree, n)
    points.setflags(write=False)
    weights.setflags(write=False)
    return points, weights


def _gauss_jacobi(n: int, alpha: int) -> tuple[np.ndarray, np.ndarray]:
    """n-point Gauss rule on [0, 1] for the weight (1 - u)^alpha."""
    t, w = roots_legendre(n) if alpha == 0 else roots_jacobi(n, alpha, 0)
    return (1 + t) / 2, w / 2 ** (alpha + 1)


def _tensor_gauss(n: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre product rule with n points per direction on [0, 1]^dim."""
    x, w = _gauss_jacobi(n, 0)
    points = np.stack(np.meshgrid(*[x] * dim, indexing="ij"), axis=-1).reshape(-1, dim)
    weights = np.prod(np.meshgrid(*[w] * dim, indexing="ij"), axis=0).reshape(-1)
    return points, weights


def _collapsed(n: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Conical product rule on the unit simplex from the cube [0, 1]^dim.

    The Duffy map x_1 = u_1, x_j = u_j * prod_{i<j} (1 - u_i) has Jacobian
    prod_i (1 - u_i)^(dim - i); each factor is absorbed into a Gauss-Jacobi weight.
    """
    rules = [_gauss_jacobi(n, dim - 1 - i) for i in range(dim)]
    u = np.stack(np.meshgrid(*[r[0] for r in rules], indexing="ij"), axis=-1).reshape(-1, dim)
    weights = np.prod(np.meshgrid(*[r[1] for r in rules], indexing="ij"), axis=0).reshape(-1)
    remaining = np.cumprod(np.hstack([np.ones((len(u), 1)), 1 - u[:, :-1]]), axis=1)
    return u * remaining, weights


def _triangle(degree: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    if degree <= 1:
        return np.array([[1 / 3, 1 / 3]]), np.array([1 / 2])
    if degree == 2:
        points = np.array([[1 / 6, 1 / 6], [2 / 3, 1 / 6], [1 / 6, 2 / 3]])
        return points, np.full(3, 1 / 6)
    return _collapsed(n, 2)


def _tetra(degree: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    if degree <= 1:
        return np.array([[1 / 4, 1 / 4, 1 / 4]]), np.array([1 / 6])
    if degree == 2:
        a, b = (5 - np.sqrt(5)) / 20, (5 + 3 * np.sqrt(5)) / 20
        points = np.array([[a, a, a], [b, a, a], [a, b, a], [a, a, b]])
        return points, np.full(4, 1 / 24)
    return _collapsed(n, 3)
