"""mosaic's two mesh problems on tmcore: SIMP heat conduction and SIMP linear elasticity.

Both live on a HEX8 mesh given the way mosaic gives it (``mosaic_shared.schema_types``):
``hex_mesh`` = {points (N, 3), faces (M, 8), n_points, n_faces} with the active slices
points[:n_points], faces[:n_faces] (VTK node order: bottom face counter-clockwise, then the
top one), and ``boundary_conditions`` = {dirichlet, neumann}, each a per-node group index
``mask`` (0: none, k >= 1: group k) and ``values`` (n_groups, c) per group.

Heat conduction (``components=1``), mosaic's ``thermal_mesh``:

    -div(k grad T) = s   in the cells,  T = g  on the Dirichlet nodes,  k dT/dn = q  on the Neumann facets,
    k(rho) = k_max (k_min_ratio + (1 - k_min_ratio) clamp(rho, 0, 1)^p),   k_min_ratio = 1e-3,
    thermal_compliance  C = int_{Gamma_N} q T ds = f_N . T,
    identification_error E = sum_nodes (T - T_target)^2.

Linear elasticity (``components=3``), mosaic's ``structural_mesh``:

    -div sigma(u) = 0,  u = g on the Dirichlet nodes,  sigma n = t on the Neumann facets,
    E(rho) = E_max (xmin + (1 - xmin) clamp(rho, 0, 1)^p),  nu = 0.3,
    compliance  C = int_{Gamma_N} t . u ds = f_N . u.

The Neumann facets are the boundary facets whose nodes all carry a Neumann group; the
flux or traction is integrated over them exactly (a uniform traction F / (Ly Lz) on a face
of n x n quads puts F / (4 n^2) on each quad corner, not F / (n + 1)^2 on each node).
Dirichlet values are per group (``values=None``: zero).

Everything that depends only on the mesh and the boundary conditions (the mesh, the
element matrices of a unit coefficient, the Neumann load, the condenser, the solver's
symbolic analysis) is built once per distinct mesh + boundary and kept in a small cache
(:func:`setup_for`); a call scales the unit element matrices by k(rho) or E(rho),
scatters, condenses and solves. The solve is tmcore's factored solve, whose backward is one
adjoint solve with the same factorisation: ``torch.autograd.grad`` of an output gives the
exact discrete gradient in rho and the source.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tmcore import Condenser, Mesh, dof_mask
from tmcore.forms import BoundaryFlux, Diffusion, LinearElasticity, Source, Traction

__all__ = [
    "HexSetup",
    "K_MIN_RATIO",
    "digest_into",
    "parse_mesh",
    "setup_for",
    "structural_outputs",
    "thermal_outputs",
]

logger = logging.getLogger(__name__)

K_MIN_RATIO = 1e-3  # k_min / k_max of mosaic's thermal problem (fixed there, not an input)
DTYPE = torch.float64
SETUP_CACHE_SIZE = 4  # distinct meshes + boundaries kept; the cost sweeps visit one size at a time


def parse_mesh(hex_mesh: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Active points (n, 3) float64 and cells (m, 8) int64 of a mosaic ``HexMesh`` dict."""
    for key in ("points", "faces"):
        if key not in hex_mesh:
            raise ValueError(f"hex_mesh must have {key!r}, got keys {sorted(hex_mesh)}")
    points = np.asarray(hex_mesh["points"], dtype=np.float64)
    cells = np.asarray(hex_mesh["faces"], dtype=np.int64)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"hex_mesh['points'] must have shape (N, 3), got {points.shape}")
    if cells.ndim != 2 or cells.shape[1] != 8:
        raise ValueError(f"hex_mesh['faces'] must have shape (M, 8), got {cells.shape}")
    n = int(hex_mesh.get("n_points") or points.shape[0])
    m = int(hex_mesh.get("n_faces") or cells.shape[0])
    if not (0 < n <= points.shape[0] and 0 < m <= cells.shape[0]):
        raise ValueError(
            f"hex_mesh n_points={n}, n_faces={m} must be positive and within points {points.shape[0]}, "
            f"faces {cells.shape[0]}"
        )
    return np.ascontiguousarray(points[:n]), np.ascontiguousarray(cells[:m])


def _node_groups(part: Mapping[str, Any] | None, n: int, components: int, label: str) -> tuple[np.ndarray, np.ndarray]:
    """(mask (n,) bool, value per node (n, components)) of a Dirichlet or Neumann block."""
    mask = np.zeros(n, dtype=bool)
    values = np.zeros((n, components))
    if not part:
        return mask, values
    groups = np.zeros(n, dtype=np.int64)
    raw = np.asarray(part.get("mask", []), dtype=np.int64).reshape(-1)[:n]
    groups[: raw.size] = raw
    if (groups < 0).any():
        raise ValueError(f"{label}.mask must be >= 0 (0: no condition, k: group k), got {int(groups.min())}")
    mask = groups > 0
    table = part.get("values")
    if table is None:
        return mask, values
    table = np.asarray(table, dtype=np.float64)
    if table.ndim != 2 or table.shape[1] != components:
        raise ValueError(f"{label}.values must have shape (n_groups, {components}), got {table.shape}")
    if mask.any() and int(groups.max()) > table.shape[0]:
        raise ValueError(f"{label}.mask names group {int(groups.max())} but values has {table.shape[0]} rows")
    values[mask] = table[groups[mask] - 1]
    return mask, values


def digest_into(h: Any, value: Any) -> None:
    """Feed a nested structure of mappings, arrays, numbers and strings into the hash ``h``
    (arrays by dtype, shape and bytes, read in place: no copy of a contiguous array)."""
    if isinstance(value, Mapping):
        for key in sorted(value):
            h.update(repr(key).encode())
            digest_into(h, value[key])
    elif isinstance(value, (list, tuple, np.ndarray)) or hasattr(value, "__array__"):
        array = np.ascontiguousarray(np.asarray(value))
        h.update(f"{array.dtype.str}{array.shape}".encode())
        h.update(array if array.dtype != object else repr(array.tolist()).encode())
    else:
        h.update(repr(value).encode())


class HexSetup:
    """The mesh- and boundary-only part of one problem, built once.

    Args:
        points: (n, 3) node coordinates (float64).
        cells: (m, 8) HEX8 connectivity, VTK order.
        boundary_conditions: mosaic ``MeshBC`` as a dict (``model_dump()``).
        components: 1 (heat conduction) or 3 (linear elasticity).
        nu: Poisson's ratio (elasticity only).
        backend: the linear solver (``SparseMatrix.solve``'s ``backend``).

    Attributes: ``mesh``, ``load`` (n c,) the Neumann load f_N, ``condenser``, ``unit``
    (m, K, K) the element matrices of a unit conductivity / modulus, ``key`` (the digest of
    the inputs it was built from, set by :func:`setup_for`; "" otherwise).
    """

    def __init__(
        self,
        points: np.ndarray,
        cells: np.ndarray,
        boundary_conditions: Mapping[str, Any],
        components: int,
        nu: float = 0.3,
        backend: str = "auto",
    ):
        if components not in (1, 3):
            raise ValueError(f"components must be 1 (heat) or 3 (elasticity), got {components!r}")
        self.components = components
        self.backend = backend
        self.key = ""
        n = points.shape[0]
        self.mesh = Mesh(torch.as_tensor(points, dtype=DTYPE), {"hexahedron": torch.as_tensor(cells)})
        m = self.mesh.n_cells
        bc = boundary_conditions or {}
        d_mask, d_values = _node_groups(bc.get("dirichlet"), n, components, "dirichlet")
        n_mask, n_values = _node_groups(bc.get("neumann"), n, components, "neumann")
        if not d_mask.any():
            raise ValueError("boundary_conditions.dirichlet marks no node: the problem is singular")
        ones = torch.ones(m, dtype=DTYPE)
        facets = torch.as_tensor(n_mask)
        if components == 1:
            self.stiffness = Diffusion.from_mesh(self.mesh)
            self.unit = self.stiffness.local(element_data={"kappa": ones})
            flux = BoundaryFlux.from_mesh(self.mesh, facets=facets)
            self.load = flux(point_data={"q": torch.as_tensor(n_values[:, 0], dtype=DTYPE)})
            self.source = Source.from_mesh(self.mesh)
            fixed = torch.as_tensor(d_mask)
            g = torch.as_tensor(d_values[:, 0], dtype=DTYPE)
        else:
            self.stiffness = LinearElasticity.from_mesh(self.mesh, nu=nu)
            self.unit = self.stiffness.local(element_data={"E": ones})
            traction = Traction.from_mesh(self.mesh, facets=facets)
            self.load = traction(point_data={"t": torch.as_tensor(n_values, dtype=DTYPE)})
            self.source = None
            fixed = dof_mask(torch.as_tensor(d_mask), 3)
            g = torch.as_tensor(d_values, dtype=DTYPE).reshape(-1)
        if n_mask.any() and not bool(self.load.abs().sum() > 0) and np.abs(n_values).sum() > 0:
            logger.warning(
                "the Neumann mask marks %d nodes but no whole boundary facet: no load is applied", n_mask.sum()
            )
        self.condenser = Condenser(fixed, dirichlet_value=g if bool(g.abs().sum() > 0) else None)

    def solve(self, coefficient: Tensor, extra_load: Tensor | None = None) -> Tensor:
        """Nodal solution (n c,) for a per-cell conductivity or modulus (m,), load f_N (+ extra_load)."""
        K = self.stiffness.scatter(coefficient[:, None, None] * self.unit)
        b = self.load if extra_load is None else self.load + extra_load
        K_free, b_free = self.condenser(K, b)
        return self.condenser.recover(K_free.solve(b_free, backend=self.backend))


_SETUPS: OrderedDict[str, HexSetup] = OrderedDict()


def setup_for(
    hex_mesh: Mapping[str, Any],
    boundary_conditions: Mapping[str, Any],
    components: int,
    nu: float = 0.3,
    backend: str = "auto",
) -> HexSetup:
    """The :class:`HexSetup` of this mesh and boundary, from the cache when seen before.

    The cache key (``setup.key``) is a SHA-256 of the arrays as given (dtype, shape, bytes) with
    ``components``, ``nu`` and ``backend``; the mesh is parsed and converted only on a miss.
    """
    h = hashlib.sha256()
    digest_into(h, {"hex_mesh": hex_mesh, "bc": boundary_conditions or {}, "setup": (components, nu, backend)})
    key = h.hexdigest()
    setup = _SETUPS.get(key)
    if setup is None:
        points, cells = parse_mesh(hex_mesh)
        setup = HexSetup(points, cells, boundary_conditions or {}, components, nu=nu, backend=backend)
        setup.key = key
        _SETUPS[key] = setup
        while len(_SETUPS) > SETUP_CACHE_SIZE:
            _SETUPS.popitem(last=False)
    else:
        _SETUPS.move_to_end(key)
    return setup


def _per_cell(name: str, value: Tensor, m: int) -> Tensor:
    if value.ndim != 1 or value.shape[0] < m:
        raise ValueError(f"{name} must have one value per cell (at least {m}), got shape {tuple(value.shape)}")
    return value[:m]


def thermal_outputs(
    setup: HexSetup,
    rho: Tensor,
    source: Tensor | None = None,
    target: Tensor | None = None,
    k_max: float = 1.0,
    p_exp: float = 3.0,
) -> dict[str, Tensor]:
    """Heat conduction: {"thermal_compliance", "identification_error", "temperature"}.

    rho: (>= m,) density per cell (the first m used); source: (>= m,) heat source per cell
    (W/m^3) or None; target: (n,) nodal target temperature, or a single value for all
    nodes, or None (zero). Differentiable in rho and source.
    """
    m, n = setup.mesh.n_cells, setup.mesh.n_points
    rho = _per_cell("rho", rho, m)
    conductivity = k_max * (K_MIN_RATIO + (1.0 - K_MIN_RATIO) * rho.clamp(0.0, 1.0) ** p_exp)
    extra = None
    if source is not None and (source.requires_grad or bool(source[:m].abs().sum() > 0)):
        extra = setup.source(element_data={"f": _per_cell("source", source, m)})
    temperature = setup.solve(conductivity, extra)
    if target is None:
        target = temperature.new_zeros(())
    elif target.numel() != 1:
        if target.ndim != 1 or target.shape[0] < n:
            raise ValueError(
                f"target_temperature must have one value per node ({n}) or be a single value, got {tuple(target.shape)}"
            )
        target = target[:n]
    else:
        target = target.reshape(())
    return {
        "thermal_compliance": setup.load @ temperature,
        "identification_error": ((temperature - target) ** 2).sum(),
        "temperature": temperature,
    }


def structural_outputs(
    setup: HexSetup, rho: Tensor, E_max: float = 70_000.0, xmin: float = 1e-3, penal: float = 3.0
) -> dict[str, Tensor]:
    """Linear elasticity: {"compliance", "displacement" (n, 3)}; differentiable in rho (>= m,)."""
    rho = _per_cell("rho", rho, setup.mesh.n_cells)
    modulus = E_max * (xmin + (1.0 - xmin) * rho.clamp(0.0, 1.0) ** penal)
    u = setup.solve(modulus)
    return {"compliance": setup.load @ u, "displacement": u.reshape(-1, 3)}
