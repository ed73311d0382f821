"""Homogenisation on a periodic cell: the cell problems and the effective tensor, differentiable.

For a macroscopic gradient G (a unit temperature gradient, or a unit strain in Voigt
notation), the field in the cell is the affine part plus a periodic fluctuation,
u = G X + w, with w the periodic solution of

    int k (G + grad w) . grad v dX = 0   for every periodic v     (one node of w pinned),

and the effective tensor is the energy average over the cell Y,

    K*_ij = (1 / |Y|) int (G_i + grad w_i) . k (G_j + grad w_j) dX = (1 / |Y|) u_i^T K u_j,

with K the (non-periodic) stiffness of the mesh. Every step (element matrices from the
assembler's ``local``, periodic scatter, solve, energy) is a torch operation on tensors, so
K* is differentiable in whatever fed the element matrices: a density per cell of the
microstructure, say; its backward costs one adjoint solve (with the forward's factors) for
all the load cases together.

Voigt order: 2-D (11, 22, 12), 3-D (11, 22, 33, 23, 13, 12), shear strains engineering
(gamma_12 = 2 eps_12), so sigma = C* eps in that notation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor

from tmcore.core.assembly import ElementAssembler
from tmcore.core.condense import Condenser
from tmcore.methods.periodic import PeriodicCell

__all__ = [
    "CellSolution",
    "effective_tensor",
    "hashin_shtrikman_conductivity",
    "laminate_elasticity",
    "poisson_ratio",
    "unit_gradients",
]

logger = logging.getLogger(__name__)

_VOIGT = {2: ((0, 0), (1, 1), (0, 1)), 3: ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))}


def unit_gradients(dim: int, vector: bool, dtype=torch.float64) -> Tensor:
    """The macroscopic load cases (L, dim[, dim]): the unit vectors e_j (scalar fields, L = dim) or the
    unit Voigt strains (vector fields, L = 3 in 2-D, 6 in 3-D; a shear case is eps_ij = eps_ji = 1/2)."""
    if dim not in (2, 3):
        raise ValueError(f"dim must be 2 or 3, got {dim!r}")
    if not vector:
        return torch.eye(dim, dtype=dtype)
    cases = []
    for i, j in _VOIGT[dim]:
        G = torch.zeros(dim, dim, dtype=dtype)
        G[i, j] += 0.5
        G[j, i] += 0.5
        cases.append(G)
    return torch.stack(cases)


@dataclass
class CellSolution:
    """The effective tensor (L, L) and the full cell fields (L, n[ * dim]) u_j = G_j X + w_j of each load case."""

    tensor: Tensor
    fields: Tensor


def effective_tensor(
    cell: PeriodicCell,
    assembler: ElementAssembler,
    point_data=None,
    element_data=None,
    scalar_data=None,
    backend: str = "auto",
) -> CellSolution:
    """The homogenised tensor of the bilinear form ``assembler`` (bound to ``cell.mesh``) with the given data.

    A scalar form (Diffusion: conductivity) gives the (dim, dim) effective conductivity, a
    vector form (LinearElasticity) the Voigt stiffness (3, 3) in 2-D or (6, 6) in 3-D.
    Differentiable in the data through the element matrices (``assembler.local``).
    """
    if not isinstance(cell, PeriodicCell):
        raise TypeError(f"cell must be a PeriodicCell, got {type(cell).__name__}")
    if not isinstance(assembler, ElementAssembler) or assembler.mesh is not cell.mesh:
        raise ValueError("assembler must be an ElementAssembler bound to cell.mesh (Form.from_mesh(cell.mesh))")
    mesh, dim = cell.mesh, cell.dim
    components = assembler.n_components
    if components not in (None, dim):
        raise ValueError(f"the form must be scalar or have one component per coordinate ({dim}), got {components}")
    local = assembler.local(point_data=point_data, element_data=element_data, scalar_data=scalar_data)  # (m, K, K)
    if local.ndim != 3:
        raise ValueError("effective_tensor takes one set of data, not a batch")
    cases = unit_gradients(dim, components is not None).to(device=local.device, dtype=local.dtype)
    X = (mesh.points.detach() - cell.lower.to(mesh.points)).to(local.dtype)  # (n, dim)
    affine = (X @ cases.T).T if components is None else torch.einsum("lij,nj->lni", cases, X).flatten(1)  # (L, n[ c])
    dofs, periodic = cell.element_dofs(components)
    # load of each case: -sum_e K_e u_e, summed into the periodic dofs
    local_affine = torch.einsum("mab,lmb->lma", local, affine[:, dofs])  # (L, m, K)
    size = cell.n_classes * (components or 1)
    load = -local_affine.new_zeros(len(cases), size).index_add(1, periodic.reshape(-1), local_affine.flatten(1))
    K = cell.scatter(local, components)
    # pin the first periodic node (all components): the fluctuation is defined up to a constant
    pinned = torch.zeros(size, dtype=torch.bool, device=local.device)
    pinned[: components or 1] = True
    condenser = Condenser(pinned)
    K_free, load_free = condenser(K, load)
    w_free = K_free.solve(load_free.T.contiguous(), backend=backend).T  # (L, n_free)
    w = condenser.recover(w_free)  # (L, size)
    fields = affine + cell.expand(w, components)
    u_e = fields[:, dofs]  # (L, m, K)
    tensor = torch.einsum("ima,mab,jmb->ij", u_e, local, u_e) / cell.volume
    return CellSolution(0.5 * (tensor + tensor.T), fields)


def poisson_ratio(C: Tensor, i: int = 0, j: int = 1) -> Tensor:
    """nu_ij = -S_ji / S_ii of a Voigt stiffness C (S = C^-1): the contraction along j under
    uniaxial stress along i (in-plane, for a 2-D cell: the effective ratio of the plane model)."""
    S = torch.linalg.inv(C)
    return -S[j, i] / S[i, i]


def hashin_shtrikman_conductivity(k1: float, k2: float, f2: float, dim: int) -> tuple[float, float]:
    """(lower, upper) Hashin-Shtrikman bounds of an isotropic two-phase conductivity, phase 2 of volume
    fraction f2: k_a + f_b / (1 / (k_b - k_a) + f_a / (dim k_a)) with (a, b) = (low, high) for the lower bound."""
    (ka, fa), (kb, fb) = sorted([(float(k1), 1.0 - f2), (float(k2), float(f2))])
    lower = ka + fb / (1.0 / (kb - ka) + fa / (dim * ka))
    upper = kb + fa / (1.0 / (ka - kb) + fb / (dim * kb))
    return lower, upper


def laminate_elasticity(C: Tensor, fractions: Tensor, normal_axis: int = 1) -> Tensor:
    """Exact effective Voigt stiffness (3, 3) of a 2-D laminate of layers normal to ``normal_axis``
    (0: x, 1: y), layer stiffnesses C (L, 3, 3) with volume fractions (L,).

    Across the layers the traction components (sigma_nn, sigma_tn) are continuous, along
    them the strain eps_tt; eliminating the rest exactly (Backus' averaging) gives
    C* from averages of the layers' partial inverses. The shear modulus across the layers is
    the Reuss (harmonic) mean, the in-plane stiffness at fixed traction the Voigt one.
    """
    a = [0] if normal_axis == 1 else [1]  # eps_tt: continuous
    b = [1, 2] if normal_axis == 1 else [0, 2]  # sigma_nn, sigma_tn: continuous
    f = fractions.to(C)[:, None, None]
    Caa, Cab, Cba, Cbb = (C[:, r][:, :, c] for r, c in ((a, a), (a, b), (b, a), (b, b)))
    Cbb_inv = torch.linalg.inv(Cbb)
    avg = lambda X: (f * X).sum(0)  # noqa: E731
    Mbb = torch.linalg.inv(avg(Cbb_inv))  # s_b = Mbb (<e_b> + <Cbb^-1 Cba> e_a)
    N = avg(Cbb_inv @ Cba)
    star_bb = Mbb
    star_ba = Mbb @ N
    star_aa = avg(Caa - Cab @ Cbb_inv @ Cba) + avg(Cab @ Cbb_inv) @ Mbb @ N
    star_ab = avg(Cab @ Cbb_inv) @ Mbb
    out = C.new_zeros(3, 3)
    index = a + b
    block = torch.cat([torch.cat([star_aa, star_ab], 1), torch.cat([star_ba, star_bb], 1)], 0)
    out[torch.tensor(index)[:, None], torch.tensor(index)[None, :]] = block
    return out
