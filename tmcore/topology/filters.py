"""Density filters for topology optimisation (cone and Helmholtz), the Heaviside projection, and a
checkerboard diagnostic.

Unfiltered density methods on low-order elements let material connect through single
nodes: on a quad grid the optimiser then builds checkerboards (cells alternating solid
and void), an artefact of the discretisation, not a better design. A filter sets a
length scale below which the design cannot vary.

:class:`HelmholtzFilter` is the PDE (Helmholtz) filter. Given cell densities rho (m,)
it solves, on the mesh's own finite-element space with natural (zero-flux) boundary
conditions,

    -r^2 lap(phi) + phi = rho,

i.e. (r^2 K + M) phi = T rho with K the stiffness and M the mass matrix (assembled by
an :class:`~tmcore.core.assembly.ElementAssembler`) and T rho the load of the piecewise
constant rho (T_ie = int_e N_i dx); the filtered cell density is the cell mean of the
nodal field phi, (D^-1 T^T phi)_e with D = diag(|e|). The map rho -> rho_f is linear,
keeps constants (F 1 = 1) and keeps the measure-weighted volume sum |e| rho_e exactly
(test the PDE with v = 1). Its width: r = R / (2 sqrt 3) matches a cone ("hat") filter
of radius R in the sense of equal second moments of the two kernels in 1-D.

The matrix depends on the mesh and r only, so it is factorised once (lazily, per
device) and every call costs one forward and, under autograd, one transposed solve
with that factor (:func:`~tmcore.core.linalg.factored.factored_solve`).

:class:`ConeFilter` is the 88-line code's density filter, a linear cone-weighted average of
the cells within a radius, applied as a sparse matrix.

:class:`HeavisideProjection` follows a density filter: a smoothed step that pushes the filtered
densities towards 0 and 1 (Wang, Lazarov and Sigmund 2011), sharper as its ``beta`` is raised
between steps (a continuation), so that the final design has few gray cells.

:func:`sensitivity_filter` is the sensitivity variant (the classical heuristic of
filtering rho * dJ/drho and dividing by rho), with the same Helmholtz operator as its
smoothing kernel. :func:`checkerboard_indicator` measures what both are meant to remove.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import Tensor, nn

from tmcore.core.assembly import ElementAssembler
from tmcore.core.checks import check_real
from tmcore.core.elements import get_element, quadrature
from tmcore.core.linalg.factored import factored_solve
from tmcore.core.linalg.solvers import Factorization, factorize
from tmcore.core.linalg.sparse import SparseMatrix, SparsityPattern
from tmcore.core.mesh import Mesh, check_mesh_type

__all__ = [
    "ConeFilter",
    "HeavisideProjection",
    "HelmholtzFilter",
    "cell_neighbours",
    "checkerboard_indicator",
    "default_filter_radius",
    "sensitivity_filter",
]


class _HelmholtzForm(ElementAssembler):
    """r^2 grad u . grad v + u v."""

    def forward(self, u, v, gradu, gradv, r2):
        return r2 * (gradu @ gradv) + u * v


def default_filter_radius(mesh: Mesh) -> float:
    """A Helmholtz radius of one typical cell size, h = (mean cell measure)^(1/dim).

    That is a cone radius of 2 sqrt(3) h ~ 3.5 h, and wide enough for the filter matrix
    to be an M-matrix on a square grid (r > h / sqrt 3 with a consistent mass matrix),
    so filtered densities stay within the range of the unfiltered ones.
    """
    check_mesh_type(mesh)
    return float(mesh.cell_measures().mean()) ** (1.0 / mesh.dim)


class HelmholtzFilter(nn.Module):
    """The PDE density filter -r^2 lap(rho_f) + rho_f = rho on a mesh (module docstring).

    Args:
        mesh: the mesh whose cells carry the densities (any element tmcore supports).
        radius: the filter length r (> 0) in the mesh's units; a cone filter of radius
            R corresponds to r = R / (2 sqrt 3). See :func:`default_filter_radius`.
        backend: factorisation backend, as for :func:`tmcore.core.linalg.solvers.factorize`.

    ``filt(rho)`` maps cell densities (m,) or a batch (B, m) to filtered cell densities of
    the same shape, differentiably in rho. The mesh and r are fixed: no gradient reaches them.
    """

    def __init__(self, mesh: Mesh, radius: float, backend: str = "auto"):
        super().__init__()
        check_mesh_type(mesh)
        self.radius = check_real("radius", radius, 0.0, what="a positive finite length (in the mesh's units)")
        self.backend = backend
        self.n_cells, self.n_points = mesh.n_cells, mesh.n_points
        matrix = _HelmholtzForm.from_mesh(mesh)(scalar_data={"r2": self.radius**2})
        self.pattern = matrix.pattern
        self.register_buffer("values", matrix.values.detach().to(torch.float64))
        # T_local[e, k] = int_e N_k dx: the cell -> node load and the node -> cell mean
        element = mesh.element
        xi, w = quadrature(
            element.shape, 2 * element.order + int(element.tensor_product), dtype=torch.float64, device=mesh.device
        )
        det = mesh.jacobian_determinants(xi.to(mesh.dtype)).to(torch.float64).abs()  # (m, q)
        cell_load = (det * w) @ element.basis(xi)  # (m, k)
        self.register_buffer("cell_load", cell_load)
        self.register_buffer("measures", cell_load.sum(dim=1))
        self.register_buffer("conn", mesh.elements.clone())
        self._factor: Factorization | None = None

    def _apply(self, fn, recurse=True):
        self._factor = None  # refactorise on the new device / dtype
        return super()._apply(fn, recurse)

    @property
    def factor(self) -> Factorization:
        """The factorisation of r^2 K + M, computed on first use and then reused."""
        if self._factor is None:
            self._factor = factorize(self.pattern.to(self.values.device), self.values.unsqueeze(0), self.backend)
        return self._factor

    def to_nodes(self, rho: Tensor) -> Tensor:
        """T rho: the load (n,) (or (B, n)) of the piecewise-constant cell field rho (m,) (or (B, m))."""
        local = rho.unsqueeze(-1) * self.cell_load  # (B?, m, k)
        flat = local.reshape(*local.shape[:-2], -1)
        return flat.new_zeros(*flat.shape[:-1], self.n_points).index_add(-1, self.conn.reshape(-1), flat)

    def to_cells(self, phi: Tensor) -> Tensor:
        """Cell means (m,) (or (B, m)) of a nodal field phi (n,) (or (B, n))."""
        gathered = phi.index_select(-1, self.conn.reshape(-1)).reshape(*phi.shape[:-1], *self.conn.shape)
        return (gathered * self.cell_load).sum(-1) / self.measures

    def nodal(self, rho: Tensor) -> Tensor:
        """The nodal solution phi (n,) (or (B, n)) of the filter PDE for cell densities rho."""
        rho = self._check(rho)
        load = self.to_nodes(rho.to(torch.float64))
        columns = load.T if load.ndim == 2 else load  # the factor solves (n,) or (n, B)
        phi = factored_solve(self.factor, columns)
        return phi.T if load.ndim == 2 else phi

    def forward(self, rho: Tensor) -> Tensor:
        """Filtered cell densities, shape and dtype of rho."""
        return self.to_cells(self.nodal(rho)).to(rho.dtype)

    def _check(self, rho) -> Tensor:
        if not isinstance(rho, Tensor):
            raise TypeError(f"rho must be a torch.Tensor of cell densities, got {type(rho).__name__}")
        if not rho.is_floating_point():
            raise TypeError(f"rho must be a floating-point tensor, got {rho.dtype}")
        if rho.ndim not in (1, 2) or rho.shape[-1] != self.n_cells:
            raise ValueError(
                f"rho must have one value per cell ({self.n_cells},) or (B, {self.n_cells}), got shape "
                f"{tuple(rho.shape)}"
            )
        if rho.device != self.values.device:
            raise ValueError(f"rho is on {rho.device} but the filter is on {self.values.device}; move one with .to()")
        if not torch.isfinite(rho).all():
            raise ValueError("rho contains NaN or inf")
        return rho

    def extra_repr(self) -> str:
        return f"radius={self.radius:g}, cells={self.n_cells}, nodes={self.n_points}"


class ConeFilter(nn.Module):
    """The density filter of the 88-line code: x~ = H x / H 1 with H_ij = max(0, r - |c_i - c_j|).

    c_i are the cell centroids and r the radius in the mesh's length units (1.5 on a grid
    of unit cells is "1.5 elements"). The map is linear, keeps constants and is applied
    as a sparse matrix, so gradients pass through it by autograd (its transpose).
    ``volume_weights`` (m,) = H^T (1 / H 1) are the weights w with sum(x~) = w . x: give
    them to :class:`~tmcore.topology.optimizers.OCOptimizer` to hold the volume of x~.
    """

    def __init__(self, mesh: Mesh, radius: float):
        super().__init__()
        check_mesh_type(mesh)
        self.radius = check_real("radius", radius, 0.0)
        centroids = mesh.points.detach()[mesh.elements].mean(dim=1).cpu().numpy()
        pairs = cKDTree(centroids).query_pairs(self.radius, output_type="ndarray")  # i < j within r
        m = centroids.shape[0]
        diagonal = np.arange(m)
        rows = np.concatenate([diagonal, pairs[:, 0], pairs[:, 1]])
        cols = np.concatenate([diagonal, pairs[:, 1], pairs[:, 0]])
        distance = np.linalg.norm(centroids[rows] - centroids[cols], axis=1)
        weights = np.maximum(0.0, self.radius - distance)
        rows_t = torch.from_numpy(rows).to(mesh.device)
        cols_t = torch.from_numpy(cols).to(mesh.device)
        weights_t = torch.from_numpy(weights).to(device=mesh.device, dtype=torch.float64)
        pattern, slots = SparsityPattern.from_coo(rows_t, cols_t, (m, m))
        values = weights_t.new_zeros(pattern.nnz).index_add(0, slots, weights_t)
        row_sums = values.new_zeros(m).index_add(0, pattern.rows, values)
        self.pattern = pattern
        self.n_cells = m
        self.register_buffer("values", values / row_sums[pattern.rows])  # rows of H / H 1
        self.register_buffer("volume_weights", self.values.new_zeros(m).index_add(0, pattern.cols, self.values))

    @property
    def matrix(self) -> SparseMatrix:
        """The filter as an (m, m) sparse matrix, rows summing to one."""
        return SparseMatrix.from_pattern(self.pattern.to(self.values.device), self.values)

    def forward(self, x: Tensor) -> Tensor:
        """Filtered densities (m,) of x (m,)."""
        if not isinstance(x, Tensor) or x.shape != (self.n_cells,):
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must have one value per cell ({self.n_cells},), got {got}")
        return self.matrix @ x.to(self.values.dtype)

    def extra_repr(self) -> str:
        return f"radius={self.radius:g}, cells={self.n_cells}, nnz={self.pattern.nnz}"


class HeavisideProjection(nn.Module):
    """Smoothed Heaviside projection of filtered densities (Wang, Lazarov and Sigmund 2011).

    rho_bar = (tanh(beta eta) + tanh(beta (rho - eta))) / (tanh(beta eta) + tanh(beta (1 - eta)))

    maps [0, 1] onto [0, 1] (0 -> 0, 1 -> 1) and pushes densities away from the threshold eta
    (in (0, 1)), the sharper the larger beta (> 0); beta -> 0 is the identity. ``beta`` is a plain
    attribute so that a continuation raises it between steps. ``proj(rho)`` maps densities of any
    shape (typically (m,), the output of a :class:`ConeFilter` or :class:`HelmholtzFilter`) to
    projected densities of the same shape, differentiably in rho.
    """

    def __init__(self, beta: float = 1.0, eta: float = 0.5):
        super().__init__()
        self.beta = check_real("beta", beta, 0.0)
        self.eta = check_real("eta", eta, 0.0, 1.0)

    def forward(self, rho: Tensor) -> Tensor:
        """Projected densities, shape and dtype of rho."""
        if not isinstance(rho, Tensor) or not rho.is_floating_point():
            got = f"{rho.dtype} tensor" if isinstance(rho, Tensor) else type(rho).__name__
            raise TypeError(f"rho must be a floating-point tensor of densities, got {got}")
        beta, eta = check_real("beta", self.beta, 0.0), self.eta
        low, high = math.tanh(beta * eta), math.tanh(beta * (1.0 - eta))
        return (low + torch.tanh(beta * (rho - eta))) / (low + high)

    def extra_repr(self) -> str:
        return f"beta={self.beta:g}, eta={self.eta:g}"


def sensitivity_filter(filt: HelmholtzFilter, rho: Tensor, grad: Tensor, rho_floor: float = 1e-3) -> Tensor:
    """Filtered sensitivities (m,): |e| F(rho * grad / |e|) / max(rho, rho_floor).

    The classical sensitivity filter (smooth rho * dJ/drho, divide by rho) with the
    Helmholtz operator F of ``filt`` as the kernel. Sensitivities are filtered per unit
    measure (grad / |e|) and scaled back, so on a uniform mesh this is exactly
    F(rho * grad) / max(rho, rho_floor). A heuristic, not the gradient of anything:
    it runs without autograd. Use it between ``loss.backward()`` and ``optimizer.step()``::

        rho.grad = sensitivity_filter(filt, rho.detach(), rho.grad)
    """
    if not isinstance(filt, HelmholtzFilter):
        raise TypeError(f"filt must be a HelmholtzFilter, got {type(filt).__name__}")
    if not isinstance(grad, Tensor) or grad.shape != (filt.n_cells,):
        shape = tuple(grad.shape) if isinstance(grad, Tensor) else type(grad).__name__
        raise ValueError(f"grad must have one value per cell ({filt.n_cells},), got {shape}")
    if not isinstance(rho, Tensor) or rho.shape != grad.shape:
        shape = tuple(rho.shape) if isinstance(rho, Tensor) else type(rho).__name__
        raise ValueError(f"rho must have the shape of grad {tuple(grad.shape)}, got {shape}")
    check_real("rho_floor", rho_floor, 0.0, 1.0, high_open=False)
    with torch.no_grad():
        measures = filt.measures.to(grad)
        smoothed = filt(rho.to(grad) * grad / measures) * measures
        return smoothed / rho.to(grad).clamp_min(rho_floor)


def cell_neighbours(mesh: Mesh) -> Tensor:
    """Pairs (P, 2) of cells that share a facet (an edge in 2-D, a face in 3-D), each pair once."""
    check_mesh_type(mesh)
    element = mesh.element
    local = torch.tensor(element.facets, dtype=torch.long, device=mesh.device)  # (f, kf)
    n_vertices = get_element(element.facet_type).n_vertices
    cells = mesh.elements
    keys = torch.sort(cells[:, local][..., :n_vertices], dim=-1).values.reshape(-1, n_vertices)
    owners = torch.arange(cells.shape[0], device=mesh.device).repeat_interleave(local.shape[0])
    _, inverse = torch.unique(keys, dim=0, return_inverse=True)
    order = torch.argsort(inverse, stable=True)
    same = inverse[order[1:]] == inverse[order[:-1]]  # a conforming mesh shares a facet between two cells
    return torch.stack([owners[order[:-1][same]], owners[order[1:][same]]], dim=1)


def checkerboard_indicator(mesh_or_pairs: Mesh | Tensor, rho: Tensor) -> float:
    """Mean |rho_a - rho_b| over pairs of cells sharing a facet.

    0 for a uniform design, 1 for a perfect 0/1 checkerboard on a quad grid; a crisp
    design made of wide members scores about (interface facets) / (interior facets).
    Pass the mesh or precomputed pairs from :func:`cell_neighbours`.
    """
    pairs = cell_neighbours(mesh_or_pairs) if isinstance(mesh_or_pairs, Mesh) else mesh_or_pairs
    if not isinstance(pairs, Tensor) or pairs.ndim != 2 or pairs.shape[1] != 2:
        raise ValueError("mesh_or_pairs must be a Mesh or a (P, 2) tensor of neighbouring cells")
    if not isinstance(rho, Tensor) or rho.ndim != 1:
        got = tuple(rho.shape) if isinstance(rho, Tensor) else type(rho).__name__
        raise ValueError(f"rho must be a (m,) tensor of cell densities, got {got}")
    if pairs.numel() and int(pairs.max()) >= rho.shape[0]:
        raise ValueError(f"rho has {rho.shape[0]} values but the pairs index cell {int(pairs.max())}")
    if pairs.shape[0] == 0:
        return 0.0
    rho = rho.detach()
    return float((rho[pairs[:, 0]] - rho[pairs[:, 1]]).abs().mean())
