"""Density-based design problems: the minimum-compliance problem and its benchmark set-ups.

:class:`ComplianceProblem` is the physics: a mesh, a stiffness form linear in one per-cell
coefficient, a load and the fixed dofs, with the modified SIMP interpolation

    E(rho) = Emin + rho^p (E0 - Emin)

and the compliance c(rho) = f . u, K(E(rho)) u = f. The benchmark set-ups of the 88-line code
(Andreassen, Clausen, Schevenels, Lazarov and Sigmund, Struct Multidisc Optim 43, 2011) build
it on unit-cell grids: :func:`mbb_beam`, :func:`cantilever` and :func:`heat_conduction`;
:func:`thermal_plate` is the chapter's thermal study (a Gaussian heat source in a plate held
at u = 0 on its boundary).

:class:`DensityDesign` turns a compliance problem into what the optimisers and the driver loop
(:mod:`tmcore.topology.driver`) work with, the design-problem protocol:

    objective(x) -> 0-d tensor          (here c(rho(x)))
    constraints(x) -> (m,) tensor       (g_i(x) <= 0 is feasible; here the volume, when vf is set)
    physical(x) -> (n_cells,) tensor    (the densities the solve sees: x, or a filter of x)

all differentiable in the design variables x by autograd.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from tmcore.core.assembly import ElementAssembler, dof_mask
from tmcore.core.checks import DTYPE, check_count, check_real
from tmcore.core.condense import Condenser
from tmcore.core.linalg.solvers import cholmod_available
from tmcore.core.linalg.sparse import SparseMatrix
from tmcore.core.mesh import Mesh, check_mesh_type
from tmcore.forms import Diffusion, LinearElasticity, Source

__all__ = [
    "ComplianceProblem",
    "DensityDesign",
    "DesignProblem",
    "cantilever",
    "heat_conduction",
    "mbb_beam",
    "nearest_node",
    "point_load",
    "simp",
    "thermal_plate",
]


class DesignProblem(Protocol):
    """What the driver loop and the optimisers need of a design problem (module docstring)."""

    def objective(self, x: Tensor) -> Tensor: ...

    def constraints(self, x: Tensor) -> Tensor: ...

    def physical(self, x: Tensor) -> Tensor: ...


def simp(rho: Tensor, penal: float, e_min: float, e0: float = 1.0) -> Tensor:
    """The modified SIMP interpolation Emin + rho^p (E0 - Emin)."""
    return e_min + rho**penal * (e0 - e_min)


# -- loads and supports ---------------------------------------------------------------------


def nearest_node(mesh: Mesh, point: Sequence[float]) -> int:
    """Index of the node closest to ``point`` (dim,)."""
    target = torch.as_tensor(point, dtype=mesh.dtype, device=mesh.device)
    if target.shape != (mesh.dim,):
        raise ValueError(f"point must have {mesh.dim} coordinates, got {tuple(target.shape)}")
    return int((mesh.points.detach() - target).norm(dim=1).argmin())


def point_load(mesh: Mesh, nodes: int | Sequence[int] | Tensor, force: Sequence[float] | Tensor) -> Tensor:
    """Nodal load vector (n dim,), node-major, with ``force`` (dim,) at each of ``nodes``
    (an index, indices, or an (n,) bool mask)."""
    force = torch.as_tensor(force, dtype=mesh.dtype, device=mesh.device)
    if force.shape != (mesh.dim,):
        raise ValueError(f"force must have {mesh.dim} components, got shape {tuple(force.shape)}")
    nodes = torch.as_tensor(nodes, device=mesh.device)
    if nodes.dtype == torch.bool:
        if nodes.shape != (mesh.n_points,):
            raise ValueError(f"a node mask must have shape ({mesh.n_points},), got {tuple(nodes.shape)}")
        nodes = torch.nonzero(nodes).flatten()
    nodes = nodes.reshape(-1).to(torch.long)
    if nodes.numel() and (int(nodes.min()) < 0 or int(nodes.max()) >= mesh.n_points):
        raise ValueError(f"nodes must lie in [0, {mesh.n_points}), got {nodes.tolist()[:8]}")
    load = torch.zeros(mesh.n_points, mesh.dim, dtype=mesh.dtype, device=mesh.device)
    load.index_add_(0, nodes, force.expand(nodes.numel(), -1))
    return load.reshape(-1)


# -- the compliance problem -----------------------------------------------------------------


@dataclass
class ComplianceProblem:
    """A minimum-compliance problem: mesh, stiffness form, load and supports.

    ``assembler`` takes the per-cell modulus by the name ``coefficient`` as element data and
    is linear in it (:meth:`stiffness` relies on that); ``load`` (n_dofs,) and ``fixed``
    (n_dofs,) bool (zero displacement / temperature there) are in its dof numbering.
    ``e_min``/``e0``: the SIMP moduli of void and solid.
    """

    name: str
    mesh: Mesh
    assembler: ElementAssembler
    load: Tensor
    fixed: Tensor
    e_min: float = 1e-9
    e0: float = 1.0
    shape: tuple[int, ...] | None = None  # cells per axis of a structured grid, for pictures
    coefficient: str = "E"
    condenser: Condenser = field(init=False)

    def __post_init__(self):
        n = self.load.shape[0]
        if self.fixed.shape != (n,) or self.fixed.dtype != torch.bool:
            raise ValueError(f"fixed must be an ({n},) bool dof mask, got {self.fixed.dtype} {tuple(self.fixed.shape)}")
        self.condenser = Condenser(self.fixed)
        self._unit_local = None

    def stiffness(self, E: Tensor) -> SparseMatrix:
        """K(E) for the per-cell modulus E (m,), differentiable in E.

        The assembler's integrand is linear in E, so K = sum_e E_e K_e(1): the unit-modulus
        element matrices are assembled once and scaled (what the 88-line code does with its
        one element matrix), instead of evaluating the integrand again every iteration.
        """
        if self._unit_local is None:
            ones = torch.ones(self.mesh.n_cells, dtype=self.load.dtype, device=self.load.device)
            with torch.no_grad():
                self._unit_local = self.assembler.local(element_data={self.coefficient: ones})
        return self.assembler.scatter(E[:, None, None] * self._unit_local)

    def solve(self, E: Tensor, backend: str = "direct") -> Tensor:
        """Full solution (n_dofs,) for the per-cell modulus E (m,)."""
        K_free, f_free = self.condenser(self.stiffness(E), self.load)
        return self.condenser.recover(K_free.solve(f_free, backend=_backend(backend)))

    def compliance(self, rho: Tensor, penal: float = 3.0, backend: str = "direct") -> Tensor:
        """c = f . u for physical densities rho (m,) (differentiable in rho)."""
        K_free, f_free = self.condenser(self.stiffness(simp(rho, penal, self.e_min, self.e0)), self.load)
        return f_free @ K_free.solve(f_free, backend=_backend(backend))


def _backend(backend: str) -> str:
    """The solver backend; "direct" is CHOLMOD when installed, else SuperLU. SIMP stiffness spans
    Emin/E0 = 1e-9, beyond what algebraic multigrid (which "auto" picks for large systems) handles."""
    if backend == "direct":
        return "cholmod" if cholmod_available() else "splu"
    return backend


@dataclass
class DensityDesign:
    """A :class:`ComplianceProblem` as a design problem over variables x (n_cells,).

    The solve sees the physical densities ``density_filter(x)`` (x itself without a filter);
    ``objective(x)`` is their compliance with SIMP exponent ``penal``; ``constraints(x)`` is
    the volume constraint [V(rho) - vf] when ``vf`` is set (V the plain mean, or weighted by
    ``volume_weights``), else empty. ``last_physical`` holds the densities of the latest
    ``objective`` call (detached), the ones its solve used.
    """

    problem: ComplianceProblem
    penal: float = 3.0
    density_filter: Callable[[Tensor], Tensor] | None = None
    vf: float | None = None
    volume_weights: Tensor | None = None
    backend: str = "direct"
    last_physical: Tensor | None = field(default=None, init=False)

    def physical(self, x: Tensor) -> Tensor:
        return x if self.density_filter is None else self.density_filter(x)

    def objective(self, x: Tensor) -> Tensor:
        rho = self.physical(x)
        self.last_physical = rho.detach().clone()
        return self.problem.compliance(rho, self.penal, self.backend)

    def volume(self, x: Tensor) -> Tensor:
        """V of the physical densities (0-d, differentiable)."""
        rho = self.physical(x)
        if self.volume_weights is None:
            return rho.mean()
        return (self.volume_weights * rho).sum() / self.volume_weights.sum()

    def constraints(self, x: Tensor) -> Tensor:
        if self.vf is None:
            return x.new_zeros(0)
        return (self.volume(x) - self.vf).reshape(1)


# -- set-ups ----------------------------------------------------------------------------------


def _near(coordinate: Tensor, value: float) -> Tensor:
    return (coordinate - value).abs() <= 1e-9 * max(1.0, abs(value))


def _unit_grid(nelx: int, nely: int) -> Mesh:
    check_count("nelx", nelx)
    check_count("nely", nely)
    return Mesh.gen_grid((nelx, nely), lower=(0.0, 0.0), upper=(float(nelx), float(nely)), element_type="quad")


def mbb_beam(nelx: int = 60, nely: int = 20, nu: float = 0.3) -> ComplianceProblem:
    """The half MBB beam of the 88-line code on nelx x nely unit quads (plane stress, E0 = 1, Emin = 1e-9).

    Symmetry on the left edge (u_x = 0), a roller at the bottom-right corner (u_y = 0),
    a unit downward force at the top-left corner.
    """
    mesh = _unit_grid(nelx, nely)
    x, y = mesh.points[:, 0], mesh.points[:, 1]
    fixed = dof_mask(_near(x, 0), 2, which=0) | dof_mask(_near(x, nelx) & _near(y, 0), 2, which=1)
    load = point_load(mesh, nearest_node(mesh, (0.0, float(nely))), (0.0, -1.0))
    stiffness = LinearElasticity.from_mesh(mesh, nu=nu, plane="stress")
    return ComplianceProblem("mbb", mesh, stiffness, load, fixed, shape=(nelx, nely))


def cantilever(nelx: int = 80, nely: int = 50, nu: float = 0.3) -> ComplianceProblem:
    """The cantilever of the 88-line code's "other boundary conditions": left edge clamped,
    a unit downward force at the bottom-right corner."""
    mesh = _unit_grid(nelx, nely)
    fixed = dof_mask(_near(mesh.points[:, 0], 0), 2)
    load = point_load(mesh, nearest_node(mesh, (float(nelx), 0.0)), (0.0, -1.0))
    stiffness = LinearElasticity.from_mesh(mesh, nu=nu, plane="stress")
    return ComplianceProblem("cantilever", mesh, stiffness, load, fixed, shape=(nelx, nely))


def heat_conduction(nelx: int = 40, nely: int = 40, heat: float = 0.01, kmin: float = 1e-3) -> ComplianceProblem:
    """The heat-conduction variant: a square plate with heat ``heat`` injected at every node,
    held at u = 0 on a sink spanning the middle tenth of its left edge; conductivity
    kmin + (1 - kmin) x~^p. The compliance f . u is the thermal compliance."""
    mesh = _unit_grid(nelx, nely)
    x, y = mesh.points[:, 0], mesh.points[:, 1]
    fixed = _near(x, 0) & ((y - nely / 2).abs() <= nely / 20 + 1e-9)
    load = torch.full((mesh.n_points,), float(heat), dtype=mesh.dtype)
    return ComplianceProblem(
        "heat",
        mesh,
        Diffusion.from_mesh(mesh),
        load,
        fixed,
        e_min=kmin,
        e0=1.0,
        shape=(nelx, nely),
        coefficient="kappa",
    )


def thermal_plate(mesh: Mesh, kmin: float = 1e-3, sigma: float = 0.08) -> ComplianceProblem:
    """The chapter's thermal problem on ``mesh``: a Gaussian heat source
    f = exp(-|x - c|^2 / (2 sigma^2)) centred on the bounding box, u = 0 on the boundary,
    conductivity kmin + (1 - kmin) rho^p per cell. sigma in the mesh's length unit."""
    check_mesh_type(mesh)
    kmin = check_real("kmin", kmin, low=0.0, high=1.0)
    sigma = check_real("sigma", sigma, low=0.0)
    points = mesh.points.to(DTYPE)
    centre = 0.5 * (points.min(dim=0).values + points.max(dim=0).values)
    f = torch.exp(-((points - centre) ** 2).sum(dim=1) / (2 * sigma**2))
    load = Source.from_mesh(mesh)(point_data={"f": f}).to(DTYPE)
    return ComplianceProblem(
        "thermal", mesh, Diffusion.from_mesh(mesh), load, mesh.boundary_mask, e_min=kmin, e0=1.0, coefficient="kappa"
    )
