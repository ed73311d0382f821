"""Stress-constrained topology optimisation: minimum volume under a von Mises limit.

The physics is a :class:`~tmcore.topology.problems.ComplianceProblem` (mesh, linear-elasticity
form, load, supports) with modified SIMP stiffness E(rho) = Emin + rho^p (E0 - Emin). What
this module adds, all differentiable in the design variables x by autograd:

**Element stress.** The solid-material stress of each cell at its centroid,
sigma_e = sigma(grad u(c_e)) with the modulus E0 (:func:`tmcore.forms.stress`), and its von
Mises value (:func:`von_mises_squared`; plane stress: sigma_zz = 0,
sigma_vm^2 = s_xx^2 + s_yy^2 - s_xx s_yy + 3 s_xy^2).

**qp relaxation** (Bruggi 2008; Le, Norato, Bruns, Ha and Tortorelli 2010): the stress measure
of a cell is s_e = rho_e^q sigma_vm,e with q < p (q = 0.5). A void cell then carries no
stress measure, which removes the "singular optimum" that the plain SIMP stress rho^p sigma
would have, and a solid cell (rho = 1) carries its true stress.

**Normalised p-norm aggregation with adaptive scaling** (Le et al. 2010, section 3.3). One
constraint replaces m local ones:

    sigma_PN = (sum_e (s_e / limit)^P)^(1/P)             (P = 8; in units of the limit)
    g(x) = c_I sigma_PN(x) - 1 <= 0,
    c_I = alpha (max_e s_e / sigma_PN)|_{I-1} + (1 - alpha) c_{I-1},   c_0 = (max s / sigma_PN)|_0.

sigma_PN over-estimates the maximum by up to m^(1/P); the scale c, updated between iterations
from the true maximum of the previous iterate (alpha = 1/2 damps its oscillation), brings the
constraint to the maximum itself at convergence. Within an iteration c is a constant: the
gradient is c d sigma_PN / dx. (s_e / limit)^P is formed as rho^(qP) (sigma_vm^2 / limit^2)^(P/2),
which is smooth at rho = 0 and at zero stress where rho^q and sigma_vm are not.

:class:`StressDesign` is the design problem (the protocol of :mod:`tmcore.topology.problems`):
objective = volume fraction of the physical densities, constraints = [c sigma_PN - 1], so that
``optimise(design, x, MMA([x], n_constraints=1), steps)`` runs it. :func:`l_bracket` builds the
L-bracket of Le et al. 2010 on unit square cells. A
:class:`~tmcore.topology.filters.HeavisideProjection` (after the density filter, ``projection=``;
re-exported here) sharpens the design; raise its ``beta`` between steps for a continuation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from tmcore.core.assembly import dof_mask
from tmcore.core.checks import check_count, check_real
from tmcore.core.linalg.sparse import SparseMatrix
from tmcore.core.mesh import Mesh
from tmcore.core.mesh.geometry import cell_nodes, jacobians
from tmcore.forms import LinearElasticity, stress
from tmcore.topology.filters import HeavisideProjection
from tmcore.topology.problems import ComplianceProblem, _backend, point_load, simp

__all__ = ["HeavisideProjection", "StressDesign", "centroid_gradients", "l_bracket", "von_mises_squared"]

logger = logging.getLogger(__name__)


def centroid_gradients(mesh: Mesh) -> Tensor:
    """Physical shape-function gradients (m, k, dim) of every cell at its reference centroid.

    grad u at the centroid of cell e is ``einsum("mki,mkj->mij", u[conn], G)`` with u the nodal
    field (n, dim): ``[e, i, j] = du_i/dx_j``. The centroid is the mean of the reference nodes
    (xi = 0 on the quad [-1, 1]^2, (1/3, 1/3) on the unit triangle).
    """
    element = mesh.element
    xi = element.reference_nodes.to(mesh.points).mean(dim=0, keepdim=True)  # (1, ref_dim)
    jac = jacobians(cell_nodes(mesh.points, mesh.elements), element, xi)[:, 0]  # (m, dim, ref_dim)
    return torch.einsum("kr,mrd->mkd", element.basis_gradients(xi)[0], torch.linalg.inv(jac))


def von_mises_squared(sigma: Tensor, plane: str | None = "stress", nu: float | None = None) -> Tensor:
    """Squared von Mises stress (...) of Cauchy stresses sigma (..., dim, dim).

    3-D (plane None): 1/2 [(s11 - s22)^2 + (s22 - s33)^2 + (s33 - s11)^2] + 3 (s12^2 + s23^2 + s13^2).
    2-D: the same with s33 = 0 (plane "stress") or s33 = nu (s11 + s22) (plane "strain", needs ``nu``).
    Squared so that powers of it are smooth where the stress vanishes.
    """
    dim = sigma.shape[-1]
    if sigma.ndim < 2 or sigma.shape[-2] != dim or dim not in (2, 3):
        raise ValueError(f"sigma must have shape (..., 2, 2) or (..., 3, 3), got {tuple(sigma.shape)}")
    if dim == 3:
        if plane is not None:
            raise ValueError(f"a 3-D stress needs plane=None, got plane={plane!r}")
        s11, s22, s33 = sigma[..., 0, 0], sigma[..., 1, 1], sigma[..., 2, 2]
        shear = sigma[..., 0, 1] ** 2 + sigma[..., 1, 2] ** 2 + sigma[..., 0, 2] ** 2
    else:
        s11, s22 = sigma[..., 0, 0], sigma[..., 1, 1]
        if plane == "stress":
            s33 = torch.zeros_like(s11)
        elif plane == "strain":
            if nu is None:
                raise ValueError("plane strain needs Poisson's ratio nu for sigma_zz = nu (s11 + s22)")
            s33 = nu * (s11 + s22)
        else:
            raise ValueError(f"a 2-D stress needs plane='stress' or 'strain', got plane={plane!r}")
        shear = sigma[..., 0, 1] ** 2
    return 0.5 * ((s11 - s22) ** 2 + (s22 - s33) ** 2 + (s33 - s11) ** 2) + 3.0 * shear


@dataclass
class StressDesign:
    """Minimum volume subject to an aggregated von Mises limit, as a design problem over x (n_cells,).

    Args:
        problem: the physics; its ``assembler`` must be a
            :class:`~tmcore.forms.LinearElasticity` (its nu and plane give the stress).
        limit: the von Mises stress limit (> 0), in the units of the stresses (E0 times strain).
        penal: SIMP exponent p of the stiffness (3).
        relaxation: the qp exponent q of the stress measure rho^q sigma_vm (0.5; 0 < q <= p).
        p_norm: the aggregation exponent P (8).
        density_filter: x -> rho (e.g. a :class:`~tmcore.topology.filters.ConeFilter`), or None.
        projection: rho -> rho_bar applied after the filter (a
            :class:`~tmcore.topology.filters.HeavisideProjection`), or None.
        adaptive: update the scale c between iterations (module docstring); False keeps c = 1,
            the plain p-norm, which over-estimates the maximum.
        damping: alpha of the scale update, in (0, 1] (1/2).
        backend: the linear solver ("direct": CHOLMOD when installed, else SuperLU).

    ``objective(x)``: the volume fraction sum |e| rho_e / sum |e| (0-d). ``constraints(x)``:
    [c sigma_PN(x) - 1] (1,); each call is one iteration of the scale update (the driver
    evaluates the constraints once per step), and leaves ``last_stress`` (relaxed von Mises
    per cell, detached) and ``last_physical``. :meth:`aggregated_stress` is the same measure
    without touching the scale, for gradient checks. ``scale`` is c (None before the first call).
    """

    problem: ComplianceProblem
    limit: float
    penal: float = 3.0
    relaxation: float = 0.5
    p_norm: float = 8.0
    density_filter: Callable[[Tensor], Tensor] | None = None
    projection: Callable[[Tensor], Tensor] | None = None
    adaptive: bool = True
    damping: float = 0.5
    backend: str = "direct"
    scale: float | None = field(default=None, init=False)
    last_stress: Tensor | None = field(default=None, init=False)
    last_physical: Tensor | None = field(default=None, init=False)
    _ratio: float | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        if not isinstance(self.problem, ComplianceProblem):
            raise TypeError(f"problem must be a ComplianceProblem, got {type(self.problem).__name__}")
        form = self.problem.assembler
        if not isinstance(form, LinearElasticity):
            raise TypeError(f"problem.assembler must be a LinearElasticity form, got {type(form).__name__}")
        self.limit = check_real("limit", self.limit, 0.0)
        self.penal = check_real("penal", self.penal, 0.0)
        self.relaxation = check_real("relaxation", self.relaxation, 0.0, self.penal, high_open=False)
        self.p_norm = check_real("p_norm", self.p_norm, 1.0, low_open=False)
        self.damping = check_real("damping", self.damping, 0.0, 1.0, high_open=False)
        mesh = self.problem.mesh
        self._gradients = centroid_gradients(mesh).to(self.problem.load.dtype)
        self._measures = mesh.cell_measures().detach().to(self.problem.load.dtype)
        e0 = self.problem.e0
        self._lame = (e0 * form.lam1, e0 * form.mu1)
        self._plane, self._nu = form.plane, form.nu

    # -- the pieces ------------------------------------------------------------------------

    def physical(self, x: Tensor) -> Tensor:
        """Physical densities (n_cells,): x, filtered (``density_filter``), then projected (``projection``)."""
        rho = x if self.density_filter is None else self.density_filter(x)
        return rho if self.projection is None else self.projection(rho)

    def displacement(self, rho: Tensor) -> Tensor:
        """Nodal displacements (n_points, dim) of the SIMP structure with densities rho (m,).

        The condensed system K u = f is solved with symmetric diagonal (Jacobi) scaling,
        (S K S) y = S f, u = S y with S = diag(K)^(-1/2) held constant: the same u and, S being a
        constant, the same derivatives, but the scaled matrix has a unit diagonal, so the stiffness
        contrast E0 / Emin of a 0/1 design no longer enters its conditioning through the diagonal.
        Unscaled, the solves of gray L-bracket designs failed the solver's residual check (relative
        residual 1.1e-8 to 2.4e-8 > 1e-8, SuperLU and the banded Cholesky alike).
        """
        problem = self.problem
        E = simp(rho, self.penal, problem.e_min, problem.e0)
        K_free, f_free = problem.condenser(problem.stiffness(E), problem.load)
        pattern = K_free.pattern
        on_diagonal = pattern.rows == pattern.cols
        diagonal = K_free.values.new_zeros(f_free.shape[0]).index_add(
            0, pattern.rows[on_diagonal], K_free.values[on_diagonal]
        )
        scale = diagonal.detach().rsqrt()
        scaled = SparseMatrix.from_pattern(pattern, K_free.values * scale[pattern.rows] * scale[pattern.cols])
        u_free = scale * scaled.solve(scale * f_free, backend=_backend(self.backend))
        return problem.condenser.recover(u_free).reshape(problem.mesh.n_points, problem.mesh.dim)

    def solid_von_mises_squared(self, rho: Tensor) -> Tensor:
        """Squared von Mises stress (m,) of the solid material (modulus E0) at each cell centroid,
        under the displacements of the SIMP structure with densities rho."""
        u = self.displacement(rho)
        gradu = torch.einsum("mki,mkj->mij", u[self.problem.mesh.elements], self._gradients)
        return von_mises_squared(stress(gradu, *self._lame), self._plane, self._nu)

    def element_stress(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(relaxed rho^q sigma_vm, solid sigma_vm), both (m,), at the centroids for design x."""
        rho = self.physical(x)
        solid = self.solid_von_mises_squared(rho).clamp_min(0.0).sqrt()
        return rho.clamp_min(0.0) ** self.relaxation * solid, solid

    def _aggregate(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """sigma_PN / limit (0-d), the relaxed stresses / limit (m,) detached, rho (m,)."""
        rho = self.physical(x)
        vm2 = self.solid_von_mises_squared(rho) / self.limit**2
        P = self.p_norm
        powered = rho.clamp_min(0.0) ** (self.relaxation * P) * vm2.clamp_min(0.0) ** (P / 2)  # (s_e / limit)^P
        peak = powered.detach().max().clamp_min(torch.finfo(powered.dtype).tiny)
        pn = peak ** (1 / P) * (powered / peak).sum() ** (1 / P)  # scaled against overflow
        relaxed = (rho.detach().clamp_min(0.0) ** self.relaxation) * vm2.detach().clamp_min(0.0).sqrt()
        return pn, relaxed, rho

    def aggregated_stress(self, x: Tensor) -> Tensor:
        """c sigma_PN(x) / limit (0-d) with the current scale c (1 before the first constraints call)."""
        pn, _, _ = self._aggregate(x)
        return (1.0 if self.scale is None else self.scale) * pn

    # -- the design-problem protocol --------------------------------------------------------

    def volume(self, x: Tensor) -> Tensor:
        """Volume fraction (0-d) of the physical densities, weighted by cell measure."""
        rho = self.physical(x)
        return (self._measures * rho).sum() / self._measures.sum()

    def objective(self, x: Tensor) -> Tensor:
        return self.volume(x)

    def constraints(self, x: Tensor) -> Tensor:
        pn, relaxed, rho = self._aggregate(x)
        ratio = float(relaxed.max()) / max(float(pn.detach()), 1e-300)
        if not self.adaptive:
            self.scale = 1.0
        elif self.scale is None:
            self.scale = ratio
        else:  # Le et al. 2010: from the previous iterate's true maximum, damped
            self.scale = self.damping * self._ratio + (1.0 - self.damping) * self.scale
        self._ratio = ratio
        self.last_stress = relaxed * self.limit
        self.last_physical = rho.detach().clone()
        return (self.scale * pn - 1.0).reshape(1)

    def max_stress(self, x: Tensor, threshold: float = 0.5) -> tuple[float, float]:
        """(max relaxed, max solid) von Mises / limit over cells with rho > threshold, no aggregation."""
        with torch.no_grad():
            rho = self.physical(x)
            relaxed, solid = self.element_stress(x)
            keep = rho > threshold
            if not bool(keep.any()):
                raise ValueError(f"no cell has a density above threshold={threshold}")
            return float(relaxed[keep].max()) / self.limit, float(solid[keep].max()) / self.limit


# -- the L-bracket ------------------------------------------------------------------------------


def l_bracket(
    n: int = 100,
    length: float = 1.0,
    arm: float = 0.4,
    load_span: float = 0.1,
    force: float = 1.0,
    nu: float = 0.3,
    e_min: float = 1e-6,
) -> ComplianceProblem:
    """The L-bracket of Le et al. 2010 on n x n square quads minus a block (plane stress, E0 = 1).

    ``e_min`` is the void modulus (1e-6: with 1e-9, designs with floating islands of material
    made SuperLU's solves fail the residual check, relative residual ~1e-7).

    The square [0, L]^2 (L = ``length``) without its upper-right block (arm L, L] x (arm L, L]:
    two arms of width ``arm`` L, n^2 - ((1 - arm) n)^2 cells of size h = L / n (6400 for n = 100).
    The top edge of the vertical arm (y = L) is clamped; a downward force of total ``force``
    (per unit thickness) is spread evenly over the nodes of the right end (x = L) within
    ``load_span`` L below the arm's top edge (y in [(arm - load_span) L, arm L]), so that the
    load carries no point singularity. Stresses are in force / length units and, away from the
    re-entrant corner's singularity, do not depend on n. The cell order is the grid's
    (x fastest, then y) with the removed cells left out.
    """
    n = check_count("n", n, 2)
    length = check_real("length", length, 0.0)
    arm = check_real("arm", arm, 0.0, 1.0)
    load_span = check_real("load_span", load_span, 0.0, arm, high_open=False)
    cells = arm * n
    if abs(cells - round(cells)) > 1e-9 or round(cells) < 1:
        raise ValueError(f"arm * n must be a whole number of cells >= 1, got {cells:g} (n={n}, arm={arm})")
    grid = Mesh.gen_grid((n, n), lower=(0.0, 0.0), upper=(length, length), element_type="quad")
    corner = arm * length
    centroids = grid.points[grid.elements].mean(dim=1)
    keep = (centroids[:, 0] < corner) | (centroids[:, 1] < corner)
    mesh = Mesh(grid.points, {"quad": grid.elements[keep]}, unused="drop")
    x, y = mesh.points[:, 0], mesh.points[:, 1]
    tol = 1e-9 * length
    fixed = dof_mask((y - length).abs() <= tol, 2)
    loaded = ((x - length).abs() <= tol) & (y >= corner - load_span * length - tol)
    load = point_load(mesh, loaded, (0.0, -force / int(loaded.sum())))
    stiffness = LinearElasticity.from_mesh(mesh, nu=nu, plane="stress")
    return ComplianceProblem("l_bracket", mesh, stiffness, load, fixed, e_min=check_real("e_min", e_min, 0.0, 1.0))
