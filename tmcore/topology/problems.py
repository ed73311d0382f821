"""Linear elasticity, and minimum-compliance topology optimisation on it (and on heat conduction).

The physics, as plain functions of one quadrature point (so they drop into any
integrand):

    eps(u)   = (grad u + grad u^T) / 2                                 :func:`strain`
    sigma(u) = lam tr(eps) I + 2 mu eps                                :func:`stress`
    a(u, v)  = lam tr(eps(u)) tr(eps(v)) + 2 mu eps(u) : eps(v)        :func:`strain_energy`

with the Lamé parameters of Young's modulus E and Poisson's ratio nu for plane stress,
plane strain or 3-D (:func:`lame_parameters`). :class:`LinearElasticity` is the
vector-valued assembler of E(x) a(u, v) (E per cell, per node or one number), on any
mesh and element the assemblers support; dofs are node-major (dof ``dim * a + i`` is
component i of node a), Dirichlet conditions go through :func:`~tmcore.core.assembly.dof_mask`.

The second half is the density-based compliance problem of the 88-line code (Andreassen,
Clausen, Schevenels, Lazarov and Sigmund, Struct Multidisc Optim 43, 2011), written
from its equations on tmcore's pipeline:

    min_x  c = f . u   s.t.   K(E(x~)) u = f,   mean(x~) = vf,   0 <= x <= 1,
    E(x~)  = Emin + x~^p (E0 - Emin)     (modified SIMP, p = 3),
    x~     = H x / H 1,   H_ij = max(0, r - |c_i - c_j|)   (the density filter, :class:`ConeFilter`),

solved by the Optimality Criteria update (:class:`~tmcore.topology.optimizers.OCOptimizer`, move
0.2, damping 1/2) until no density moves by more than 0.01. The gradient dc/dx comes
from autograd: one adjoint solve through the factorisation of the forward, then the
filter's transpose. The volume of the filtered densities is linear in x with weights
``ConeFilter.volume_weights`` = H^T (1 / H 1), which the OC step holds exactly.
The benchmark problems: :func:`mbb_beam`, :func:`cantilever` and the heat-conduction
variant :func:`heat_conduction` (scalar, conductivity kmin + (1 - kmin) x~^p).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from tmcore.core.assembly import ElementAssembler, VectorElementAssembler, VectorFacetAssembler, VectorNodeAssembler, dof_mask
from tmcore.core.condense import Condenser
from tmcore.core.mesh import Mesh
from tmcore.topology.optimizers import OCOptimizer
from tmcore.core.linalg.solvers import cholmod_available
from tmcore.core.linalg.sparse import SparseMatrix, SparsityPattern
from tmcore.core.checks import check_callback, check_count, check_real

__all__ = [
    "BodyForce",
    "ComplianceProblem",
    "ComplianceResult",
    "ConeFilter",
    "LinearElasticity",
    "SIMPConduction",
    "Traction",
    "cantilever",
    "compliance_topology",
    "heat_conduction",
    "lame_parameters",
    "mbb_beam",
    "nearest_node",
    "point_load",
    "simp",
    "strain",
    "strain_energy",
    "stress",
]

logger = logging.getLogger(__name__)

PLANES = ("stress", "strain", None)


# -- the physics at one point ---------------------------------------------------------------


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


# -- assemblers -------------------------------------------------------------------------------


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
        if not isinstance(mesh, Mesh):
            raise TypeError(f"mesh must be a tmcore Mesh, got {type(mesh).__name__}")
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


class SIMPConduction(ElementAssembler):
    """Conductivity matrix int E(x) grad u . grad v dx of the heat-conduction variant (E: conductivity per cell)."""

    def forward(self, gradu, gradv, E):
        return E * (gradu @ gradv)


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


# -- the density filter ------------------------------------------------------------------------


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
        if not isinstance(mesh, Mesh):
            raise TypeError(f"mesh must be a tmcore Mesh, got {type(mesh).__name__}")
        self.radius = check_real("radius", radius, 0.0)
        from scipy.spatial import cKDTree

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


# -- the compliance problem -----------------------------------------------------------------


def simp(rho: Tensor, penal: float, e_min: float, e0: float = 1.0) -> Tensor:
    """The modified SIMP interpolation Emin + rho^p (E0 - Emin)."""
    return e_min + rho**penal * (e0 - e_min)


@dataclass
class ComplianceProblem:
    """A minimum-compliance problem: mesh, stiffness assembler, load and supports.

    ``assembler`` takes the per-cell modulus as ``element_data={"E": ...}`` and is linear
    in it (:meth:`stiffness` relies on that); ``load``
    (n_dofs,) and ``fixed`` (n_dofs,) bool (zero displacement / temperature there) are in
    its dof numbering. ``e_min``/``e0``: the SIMP moduli of void and solid.
    """

    name: str
    mesh: Mesh
    assembler: ElementAssembler
    load: Tensor
    fixed: Tensor
    e_min: float = 1e-9
    e0: float = 1.0
    shape: tuple[int, ...] | None = None  # cells per axis of a structured grid, for pictures
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
                self._unit_local = self.assembler.local(element_data={"E": ones})
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
    return ComplianceProblem("mbb", mesh, LinearElasticity.from_mesh(mesh, nu=nu, plane="stress"), load, fixed, shape=(nelx, nely))


def cantilever(nelx: int = 80, nely: int = 50, nu: float = 0.3) -> ComplianceProblem:
    """The cantilever of the 88-line code's "other boundary conditions": left edge clamped,
    a unit downward force at the bottom-right corner."""
    mesh = _unit_grid(nelx, nely)
    fixed = dof_mask(_near(mesh.points[:, 0], 0), 2)
    load = point_load(mesh, nearest_node(mesh, (float(nelx), 0.0)), (0.0, -1.0))
    return ComplianceProblem("cantilever", mesh, LinearElasticity.from_mesh(mesh, nu=nu, plane="stress"), load, fixed, shape=(nelx, nely))


def heat_conduction(nelx: int = 40, nely: int = 40, heat: float = 0.01, kmin: float = 1e-3) -> ComplianceProblem:
    """The heat-conduction variant: a square plate with heat ``heat`` injected at every node,
    held at u = 0 on a sink spanning the middle tenth of its left edge; conductivity
    kmin + (1 - kmin) x~^p. The compliance f . u is the thermal compliance."""
    mesh = _unit_grid(nelx, nely)
    x, y = mesh.points[:, 0], mesh.points[:, 1]
    fixed = _near(x, 0) & ((y - nely / 2).abs() <= nely / 20 + 1e-9)
    load = torch.full((mesh.n_points,), float(heat), dtype=mesh.dtype)
    return ComplianceProblem("heat", mesh, SIMPConduction.from_mesh(mesh), load, fixed, e_min=kmin, e0=1.0, shape=(nelx, nely))


# -- the optimisation loop --------------------------------------------------------------------


@dataclass
class ComplianceResult:
    """History and final design of one run of :func:`compliance_topology`.

    Per iteration (iterations,): ``compliance`` (of the physical densities the iteration
    started from, as the 88-line code prints it), ``volume`` (mean physical density after
    the update), ``change`` (largest |x_new - x|), ``seconds`` (wall time of the
    iteration: filter, assembly, solve, adjoint, OC update). ``rho``: the final physical
    densities (m,); ``x``: the final design variables.
    """

    compliance: Tensor
    volume: Tensor
    change: Tensor
    seconds: Tensor
    rho: Tensor
    x: Tensor
    converged: bool
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def iterations(self) -> int:
        return int(self.compliance.shape[0])

    @property
    def final_compliance(self) -> float:
        return float(self.compliance[-1])

    @property
    def seconds_per_iteration(self) -> float:
        """Median wall time of one iteration."""
        return float(self.seconds.median())


def compliance_topology(
    problem: ComplianceProblem,
    vf: float = 0.5,
    penal: float = 3.0,
    radius: float = 1.5,
    move: float = 0.2,
    tol: float = 0.01,
    max_iterations: int = 1000,
    backend: str = "direct",
    callback: Callable[[int, float, float], Any] | None = None,
) -> ComplianceResult:
    """Minimise ``problem``'s compliance from the uniform x = vf (the 88-line code's algorithm).

    Each iteration filters x (:class:`ConeFilter` of ``radius``), evaluates the compliance
    with SIMP exponent ``penal``, back-propagates dc/dx (one adjoint solve) and takes one
    OC step with move limit ``move``; it stops once the largest change of x is <= ``tol``
    or after ``max_iterations``. ``callback(iteration, compliance, change)`` runs after
    each step. ``backend``: the linear solver, "direct" (CHOLMOD, else SuperLU) by default.
    """
    if not isinstance(problem, ComplianceProblem):
        raise TypeError(f"problem must be a ComplianceProblem, got {type(problem).__name__}")
    vf = check_real("vf", vf, 0.0, 1.0)
    penal = check_real("penal", penal, 0.0)
    move = check_real("move", move, 0.0, 1.0, high_open=False)
    tol = check_real("tol", tol, 0.0)
    check_count("max_iterations", max_iterations)
    check_callback(callback)
    mesh = problem.mesh
    filt = ConeFilter(mesh, radius)
    x = torch.full((mesh.n_cells,), vf, dtype=torch.float64, device=mesh.device, requires_grad=True)
    optimizer = OCOptimizer([x], vf=vf, move_limit=move, damping=0.5, rho_min=0.0, rho_max=1.0, volume_weights=filt.volume_weights)
    history: dict[str, list[float]] = {"compliance": [], "volume": [], "change": [], "seconds": []}
    converged = False
    for iteration in range(max_iterations):
        start = time.perf_counter()
        optimizer.zero_grad()
        c = problem.compliance(filt(x), penal, backend)
        c.backward()
        optimizer.step()
        state = optimizer.state[x]
        history["seconds"].append(time.perf_counter() - start)
        history["compliance"].append(float(c.detach()))
        history["volume"].append(state["volume"])
        history["change"].append(state["change"])
        if callback is not None:
            callback(iteration, float(c.detach()), state["change"])
        if state["change"] <= tol:
            converged = True
            break
    if not converged:
        logger.warning("compliance_topology: %s not converged after %d iterations (change %.3g > %g)", problem.name, max_iterations, history["change"][-1], tol)
    with torch.no_grad():
        rho = filt(x.detach())
    as_tensor = lambda name: torch.tensor(history[name], dtype=torch.float64)  # noqa: E731
    return ComplianceResult(
        compliance=as_tensor("compliance"),
        volume=as_tensor("volume"),
        change=as_tensor("change"),
        seconds=as_tensor("seconds"),
        rho=rho,
        x=x.detach().clone(),
        converged=converged,
        parameters=dict(problem=problem.name, vf=vf, penal=penal, radius=float(radius), move=move, tol=tol, n_cells=mesh.n_cells),
    )
