"""Finite-strain hyperelasticity (total Lagrangian), Newton with line search and load cut-back,
and gradients through a whole load path by one adjoint solve per converged increment.

The material is a strain-energy density W(F, **params) written as a plain function of the
deformation gradient F = I + grad u (dim, dim) at one point, like :func:`neo_hookean`, so a
user swaps in another energy by passing another function. In 2-D, F is the in-plane block
of a plane-strain deformation (F_33 = 1), so a 3-D energy written with ``F.shape[-1]`` for
the dimension is its plane-strain form.

The discrete problem at increment n, on the reference configuration:

    R(u; p)_{a i} = int P(F) : grad(N_a e_i) dX - f_n = 0     at the free dofs,
    u = g_n                                                   at the fixed dofs,

with P = dW/dF the first Piola-Kirchhoff stress, f_n the external (dead) load vector and
g_n the prescribed displacements of increment n. Residual and tangent are assembled by the
vector assemblers; P and A = d^2 W / dF^2 come from ``torch.func`` on W, evaluated once per
quadrature point (the assemblers' vmap does not repeat unbatched work per basis function).

Gradients. A hyperelastic state depends on the load of its own increment only: the previous
increments give Newton its starting point, not the solution. So for a loss L(u_1, ..., u_N)
over the whole path the implicit function theorem at every converged u_n gives

    J(u_n)^T lam_n = dL/du_n    (free dofs; one transposed solve with the converged tangent),
    dL/dtheta     += -lam_n^T dR_n/dtheta    for theta = the material parameters, g_n, f_n,

one adjoint solve per increment the loss depends on, never through Newton's iterations.
Each increment is one node of the autograd graph (:class:`~tmcore.methods.nonlinear.Equilibrium`), so a loss built
from every state sends its gradient back through every increment.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from tmcore.core.assembly import Functional, VectorElementAssembler, VectorNodeAssembler
from tmcore.core.checks import check_callable, check_count, check_real, is_number
from tmcore.core.condense import Condenser
from tmcore.core.errors import SolverError
from tmcore.core.linalg.factored import factored_solve
from tmcore.core.linalg.solvers import SolveOptions, factorize
from tmcore.core.linalg.sparse import SparseMatrix
from tmcore.core.mesh import Mesh, check_mesh_type
from tmcore.methods.nonlinear import Equilibrium, equilibrium_vjp

__all__ = [
    "Hyperelasticity",
    "NewtonRecord",
    "det",
    "first_piola",
    "neo_hookean",
    "neo_hookean_uniaxial",
]

logger = logging.getLogger(__name__)

Energy = Callable[..., Tensor]


# -- the material at one point -----------------------------------------------------------------


def det(F: Tensor) -> Tensor:
    """det F of a (2, 2) or (3, 3) matrix, written out: cheap, and twice differentiable under
    ``torch.func`` (the Hessian of ``torch.linalg.det`` at F = I comes out NaN in torch 2.13,
    so energies should use this one)."""
    if F.shape[-1] == 2:
        return F[0, 0] * F[1, 1] - F[0, 1] * F[1, 0]
    return (
        F[0, 0] * (F[1, 1] * F[2, 2] - F[1, 2] * F[2, 1])
        - F[0, 1] * (F[1, 0] * F[2, 2] - F[1, 2] * F[2, 0])
        + F[0, 2] * (F[1, 0] * F[2, 1] - F[1, 1] * F[2, 0])
    )


def neo_hookean(F: Tensor, mu: Tensor | float, lam: Tensor | float) -> Tensor:
    """Compressible Neo-Hookean strain energy per unit reference volume (the energy's units: those of mu).

        W(F) = mu / 2 (tr(F^T F) - 3) - mu ln J + lam / 2 (ln J)^2,    J = det F,

    F (d, d) with d = 2 (plane strain: tr(F^T F) - 3 = tr of the in-plane block - 2) or 3;
    mu, lam the Lamé parameters of the small-strain limit. J <= 0 gives NaN (no energy).
    """
    J = det(F)
    log_j = torch.log(J)
    return 0.5 * mu * ((F * F).sum() - F.shape[-1]) - mu * log_j + 0.5 * lam * log_j**2


def first_piola(energy: Energy, F: Tensor, **params) -> Tensor:
    """P = dW/dF (d, d) of ``energy`` at one deformation gradient F (d, d)."""
    return torch.func.grad(lambda G: energy(G, **params))(F)


def neo_hookean_uniaxial(stretch: float, mu: float, lam: float, dim: int = 3) -> tuple[float, float]:
    """Closed form of :func:`neo_hookean` in uniaxial tension along x: (lateral stretch t, nominal stress P_xx).

    F = diag(stretch, t, t) in 3-D, diag(stretch, t) in plane strain (F_zz = 1); the lateral
    faces are free (P_yy = 0), which is mu (t^2 - 1) + lam ln J = 0 with J = stretch t^(d-1).
    That scalar equation, convex and increasing in ln t, is solved by Newton's method in ln t
    to round-off; P_xx = (mu (s^2 - 1) + lam ln J) / s.
    """
    if not (math.isfinite(stretch) and stretch > 0):
        raise ValueError(f"stretch must be a positive number, got {stretch!r}")
    s, m = float(stretch), dim - 1
    tau = 0.0  # ln t
    for _ in range(200):
        g = mu * (math.exp(2.0 * tau) - 1.0) + lam * (math.log(s) + m * tau)
        step = g / (2.0 * mu * math.exp(2.0 * tau) + lam * m)
        tau -= step
        if abs(step) <= 1e-17:
            break
    t = math.exp(tau)
    log_j = math.log(s * t**m)
    return t, (mu * (s * s - 1.0) + lam * log_j) / s


# -- assemblers --------------------------------------------------------------------------------


def _energy_of(energy: Energy, names: tuple[str, ...], params: Tensor) -> Callable[[Tensor], Tensor]:
    """W as a function of F alone, the material parameters taken from one cell's row ``params`` (P,)."""
    values = dict(zip(names, params.unbind(-1)))
    return lambda F: energy(F, **values)


class _InternalForce(VectorNodeAssembler):
    """int P(I + grad w) : grad v dX: the internal force vector at the state w."""

    def __init__(self, energy: Energy, names: tuple[str, ...]):
        super().__init__()
        self.energy, self.names = energy, names

    def forward(self, gradv, grad_w, params):
        F = grad_w + torch.eye(grad_w.shape[-1], dtype=grad_w.dtype, device=grad_w.device)
        P = torch.func.grad(_energy_of(self.energy, self.names, params))(F)
        return (P * gradv).sum()


class _Tangent(VectorElementAssembler):
    """int grad v : A(I + grad w) : grad u dX with A = d^2 W / dF^2: the consistent tangent at w."""

    def __init__(self, energy: Energy, names: tuple[str, ...]):
        super().__init__()
        self.energy, self.names = energy, names

    def forward(self, gradu, gradv, grad_w, params):
        F = grad_w + torch.eye(grad_w.shape[-1], dtype=grad_w.dtype, device=grad_w.device)
        A = torch.func.hessian(_energy_of(self.energy, self.names, params))(F)  # (d, d, d, d)
        return (gradv.reshape(-1) @ A.reshape(gradv.numel(), -1)) @ gradu.reshape(-1)


class _StoredEnergy(Functional):
    """int W(I + grad w) dX: the stored energy of the state w."""

    def __init__(self, energy: Energy, names: tuple[str, ...]):
        super().__init__()
        self.energy, self.names = energy, names

    def forward(self, grad_w, params):
        F = grad_w + torch.eye(grad_w.shape[-1], dtype=grad_w.dtype, device=grad_w.device)
        return _energy_of(self.energy, self.names, params)(F)


def default_nonlinear_quadrature(mesh: Mesh) -> int:
    """The quadrature degree shared by residual and tangent (they must agree for Newton to be
    quadratic and the adjoint exact): 2 p on boxes (2 x 2 Gauss on bilinear quads), 2 (p - 1) on
    simplices, at least 1."""
    p = mesh.element.order
    return 2 * p if mesh.element.tensor_product else max(2 * (p - 1), 1)


# -- records -----------------------------------------------------------------------------------


@dataclass
class NewtonRecord:
    """One increment's Newton solve: the free-dof residual norm before each update, the step
    lengths the line search took, cut-backs (sub-increments) and wall time."""

    increment: int
    residuals: list[float] = field(default_factory=list)
    step_lengths: list[float] = field(default_factory=list)
    cutbacks: int = 0
    seconds: float = 0.0

    @property
    def iterations(self) -> int:
        """Newton updates taken (over all sub-increments)."""
        return len(self.step_lengths)


class _NewtonFailure(SolverError):
    """Newton did not converge within the iteration cap or the line search found no decrease."""


# -- the problem -------------------------------------------------------------------------------


class Hyperelasticity(nn.Module):
    """Static finite-strain elasticity of ``energy`` on ``mesh``, solved increment by increment.

    Args:
        mesh: a 2-D (plane strain) or 3-D mesh; displacements are node-major (n dim,).
        fixed: (n dim,) bool dof mask of prescribed displacements (:func:`tmcore.dof_mask`).
        energy: W(F, **params) -> scalar, per unit reference volume (default :func:`neo_hookean`,
            params ``mu`` and ``lam``); it must be twice differentiable in F by ``torch.func``.
        rtol, atol: an increment has converged when |R_free| <= max(atol, rtol * scale), scale
            the largest of |R_free| at the increment's start and |f_free|; Newton being
            quadratic, the last update usually lands at round-off.
        max_iterations: Newton updates per (sub-)increment before it counts as failed.
        max_cutbacks: how often a failed increment may be halved (load cut-back) before
            :class:`~tmcore.core.errors.SolverError`.
        line_search: backtrack the Newton step (halving, up to 12 times) until the residual
            norm or the potential energy int W dX - f . u decreases enough (Armijo; the energy
            only where the step descends it); without it a non-admissible step triggers a
            cut-back at once.
        quadrature_order: of residual and tangent alike (default :func:`default_nonlinear_quadrature`).
        backend: linear solver of the Newton steps and the adjoint solves (``"auto"``: SuperLU or
            CHOLMOD for the tangent, which is symmetric but not always positive definite).

    ``solve(material, g, f)`` is one equilibrium, ``load_path(material, dirichlet, loads)`` the
    states of a sequence of increments; both are differentiable in the material parameters,
    the prescribed displacements and the loads. ``material`` maps the energy's parameter
    names to one value per cell (m,) or one number. ``records`` holds a :class:`NewtonRecord`
    per increment of the last call.
    """

    def __init__(
        self,
        mesh: Mesh,
        fixed: Tensor,
        energy: Energy = neo_hookean,
        rtol: float = 1e-11,
        atol: float = 1e-13,
        max_iterations: int = 25,
        max_cutbacks: int = 8,
        line_search: bool = True,
        quadrature_order: int | None = None,
        backend: str = "auto",
    ):
        super().__init__()
        check_mesh_type(mesh)
        check_callable("energy", energy, "W(F, **params)")
        size = mesh.n_points * mesh.dim
        if not isinstance(fixed, Tensor) or fixed.dtype != torch.bool or fixed.shape != (size,):
            got = f"{fixed.dtype} {tuple(fixed.shape)}" if isinstance(fixed, Tensor) else type(fixed).__name__
            raise ValueError(f"fixed must be an ({size},) bool dof mask (tmcore.dof_mask), got {got}")
        self.mesh, self.energy, self.backend = mesh, energy, backend
        self.rtol, self.atol = check_real("rtol", rtol, 0.0), check_real("atol", atol, 0.0)
        check_count("max_iterations", max_iterations, 0)
        check_count("max_cutbacks", max_cutbacks, 0)
        self.max_iterations, self.max_cutbacks, self.line_search = max_iterations, max_cutbacks, bool(line_search)
        self.quadrature_order = default_nonlinear_quadrature(mesh) if quadrature_order is None else quadrature_order
        self.register_buffer("fixed", fixed)
        self.register_buffer("free_index", torch.nonzero(~fixed).flatten())
        self.register_buffer("fixed_index", torch.nonzero(fixed).flatten())
        self._condenser = Condenser(fixed)
        self.records: list[NewtonRecord] = []
        self.adjoint_solves = 0  # transposed solves of the backward passes since the last load_path
        self._names: tuple[str, ...] | None = None
        self._assemblers: dict[tuple[str, ...], tuple] = {}

    # -- material data ------------------------------------------------------------------------

    def pack(self, material: Mapping[str, Tensor | float]) -> Tensor:
        """The material as one (m, P) tensor, a column per parameter in sorted name order
        (differentiable in every entry); sets the names the assemblers pass to the energy."""
        if not isinstance(material, Mapping) or not material:
            raise TypeError(f"material must be a non-empty dict {{name: value per cell or number}}, got {material!r}")
        m, columns = self.mesh.n_cells, []
        names = tuple(sorted(material))
        for name in names:
            value = material[name]
            if is_number(value):
                value = torch.tensor(float(value), dtype=self.mesh.dtype, device=self.mesh.device)
            if not isinstance(value, Tensor) or not value.is_floating_point() or value.shape not in ((), (m,)):
                got = f"{value.dtype} {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(
                    f"material[{name!r}] must be a number or a floating-point ({m},) tensor per cell, got {got}"
                )
            columns.append(value.expand(m))
        self._names = names
        return torch.stack(columns, dim=-1)

    def _forms(self) -> tuple:
        if self._names is None:
            raise RuntimeError("call pack(material) (or solve / load_path) first: the parameter names are not known")
        hit = self._assemblers.get(self._names)
        if hit is None:
            q = self.quadrature_order
            hit = tuple(
                form.from_mesh(self.mesh, q, energy=self.energy, names=self._names)
                for form in (_InternalForce, _Tangent, _StoredEnergy)
            )
            self._assemblers[self._names] = hit
        return hit

    # -- the discrete operators ---------------------------------------------------------------

    def _internal(self, u: Tensor, params: Tensor) -> Tensor:
        return self._forms()[0](point_data={"w": u.reshape(-1, self.mesh.dim)}, element_data={"params": params})

    def internal_force(self, u: Tensor, material: Mapping[str, Tensor | float]) -> Tensor:
        """int P : grad N dX (n dim,) at the displacement u (n dim,): the residual without loads;
        at the fixed dofs of a converged state it is the reaction."""
        return self._internal(u, self.pack(material))

    def _tangent(self, u: Tensor, params: Tensor) -> SparseMatrix:
        return self._forms()[1](point_data={"w": u.reshape(-1, self.mesh.dim)}, element_data={"params": params})

    def tangent(self, u: Tensor, material: Mapping[str, Tensor | float]) -> SparseMatrix:
        """The consistent tangent dR/du (n dim, n dim) at u (n dim,)."""
        return self._tangent(u, self.pack(material))

    def stored_energy(self, u: Tensor, material: Mapping[str, Tensor | float]) -> Tensor:
        """int W(F) dX, 0-d, at the displacement u (n dim,)."""
        return self._forms()[2](
            point_data={"w": u.reshape(-1, self.mesh.dim)}, element_data={"params": self.pack(material)}
        )

    def _factor_free(self, u: Tensor, params: Tensor):
        """(the factorisation of J_ff, the full tangent J) at u."""
        J = self._tangent(u, params).detach()
        if not bool(torch.isfinite(J.values).all()):
            raise SolverError(
                "the tangent has NaN or inf entries: the energy's second derivative is not finite here "
                "(an element inside out, or an energy built on torch.linalg.det: use tmcore.methods.hyperelastic.det)"
            )
        J_free, _ = self._condenser(J, J.values.new_zeros(J.shape[0]))
        return factorize(J_free.pattern, J_free.values.unsqueeze(0), SolveOptions(backend=self.backend)), J

    def _adjoint(self, u: Tensor, grad_u: Tensor, inputs: tuple[Tensor, Tensor, Tensor]) -> list[Tensor]:
        """dL/dparams, dL/dg, dL/df of one increment at its converged u: J_ff(u)^T lam = dL/du_f
        with the converged tangent, then :func:`equilibrium_vjp`; no solve when the loss does not
        see the increment (grad_u zero)."""
        params, g, f = inputs
        if not bool(grad_u.any()):
            return [torch.zeros_like(t) for t in inputs]
        factor, _ = self._factor_free(u.detach(), params.detach())
        self.adjoint_solves += 1
        lam = factored_solve(factor, grad_u[self.free_index].detach(), transpose=True)
        return equilibrium_vjp(
            lambda state, params_, g_, f_: self._internal(state, params_) - f_,
            u,
            lam,
            grad_u,
            self.free_index,
            self.fixed_index,
            inputs,
            1,
        )

    # -- Newton -------------------------------------------------------------------------------

    def _newton(self, u: Tensor, params: Tensor, g: Tensor, f: Tensor, record: NewtonRecord) -> Tensor:
        """Equilibrium from the admissible start u with u = g at the fixed dofs; raises _NewtonFailure.

        When g differs from the start's fixed values, the first step is Newton's step from the
        start with the jump of the fixed values included (J_ff du_f = -R_f(u) - J_fd (g - u_d)),
        not a jump of the boundary alone, which would shear the boundary cells inside out.
        """
        free, fixed = self.free_index, self.fixed_index
        u = u.clone()

        def forces_of(state: Tensor) -> tuple[Tensor, Tensor, float]:
            try:
                forces = self._internal(state, params) - f
            except ValueError:  # the assembler refuses non-finite data
                return None, None, math.inf
            r = forces[free]
            norm = float(r.norm())
            return forces, r, (norm if math.isfinite(norm) else math.inf)

        jump = g - u[fixed] if fixed.numel() else None
        if jump is not None and bool((jump != 0).any()):
            forces, r, norm = forces_of(u)
            if not math.isfinite(norm):
                raise _NewtonFailure("the start is not admissible (non-finite residual)")
            lift = torch.zeros_like(u)
            lift[fixed] = jump
            try:
                factor, J = self._factor_free(u, params)
                u[free] -= factored_solve(factor, r + (J @ lift)[free])
            except SolverError as exc:
                raise _NewtonFailure(f"the tangent could not be solved: {exc}") from None
            u[fixed] = g
        forces, r, norm = forces_of(u)
        if not math.isfinite(norm):
            raise _NewtonFailure("the predicted state is not admissible (an element turned inside out)")
        reactions = float(forces[fixed].norm()) if fixed.numel() else 0.0
        scale = max(norm, float(f[free].norm()), reactions, 1e-300)
        tolerance = max(self.atol, self.rtol * scale)
        for iteration in range(self.max_iterations + 1):
            record.residuals.append(norm)
            if norm <= tolerance:
                return u
            if iteration == self.max_iterations or not math.isfinite(norm):
                break
            try:
                du = -factored_solve(self._factor_free(u, params)[0], r)
            except SolverError as exc:
                raise _NewtonFailure(f"the tangent could not be solved: {exc}") from None
            alpha, slope = 1.0, float(r @ du)
            energy = self._potential(u, params, f) if self.line_search and slope < 0 else None
            for _ in range(13 if self.line_search else 1):
                trial = u.clone()
                trial[free] += alpha * du
                _, r_trial, norm_trial = forces_of(trial)
                if not self.line_search:
                    if math.isfinite(norm_trial):
                        break
                elif norm_trial <= (1.0 - 1e-4 * alpha) * norm:  # the residual falls: Newton near the solution
                    break
                elif energy is not None and math.isfinite(norm_trial):
                    # Armijo on the potential energy, which the step descends (an SPD tangent); far from
                    # the solution a good step may raise |R| (bending under a large rotation)
                    if self._potential(trial, params, f) <= energy + 1e-4 * alpha * slope:
                        break
                alpha *= 0.5
            else:
                raise _NewtonFailure(f"the line search found no acceptable step from |R| = {norm:.3e}")
            record.step_lengths.append(alpha)
            u, r, norm = trial, r_trial, norm_trial
        raise _NewtonFailure(f"no convergence in {self.max_iterations} iterations: |R| = {norm:.3e} > {tolerance:.3e}")

    def _potential(self, u: Tensor, params: Tensor, f: Tensor) -> float:
        """The potential energy int W dX - f . u of the state u (a number)."""
        stored = self._forms()[2](point_data={"w": u.reshape(-1, self.mesh.dim)}, element_data={"params": params})
        return float(stored) - float(f @ u)

    def _increment(
        self, previous: tuple[Tensor, Tensor], start: Tensor, params: Tensor, g: Tensor, f: Tensor
    ) -> Tensor:
        """Equilibrium at the load (g, f), from the converged state ``start`` at the load ``previous``;
        a failed attempt halves the remaining load step (cut-back), at most ``max_cutbacks`` times."""
        record = NewtonRecord(len(self.records))
        begin = time.perf_counter()
        g0, f0 = previous
        state, done, step, cutbacks = start, 0.0, 1.0, 0
        while done < 1.0:
            target = min(done + step, 1.0)
            try:
                state = self._newton(state, params, g0 + target * (g - g0), f0 + target * (f - f0), record)
                done = target
                step = min(2.0 * step, 1.0 - done) if done < 1.0 else step
            except _NewtonFailure as exc:
                cutbacks += 1
                if cutbacks > self.max_cutbacks:
                    raise SolverError(
                        f"increment {record.increment}: Newton failed after {self.max_cutbacks} cut-backs "
                        f"(last at {done:.4g} of the increment, step {step:.3g}): {exc}; take smaller increments"
                    ) from None
                logger.info("increment %d: %s; halving the load step to %.3g", record.increment, exc, step / 2)
                step *= 0.5
        record.cutbacks, record.seconds = cutbacks, time.perf_counter() - begin
        self.records.append(record)
        return state

    # -- user entry points --------------------------------------------------------------------

    def _vectors(self, g, f, count: int | None, dtype, device) -> tuple[Tensor, Tensor]:
        size, n_fixed = self.mesh.n_points * self.mesh.dim, self.fixed_index.numel()
        lead = () if count is None else (count,)
        g = torch.zeros(lead + (n_fixed,), dtype=dtype, device=device) if g is None else g
        f = torch.zeros(lead + (size,), dtype=dtype, device=device) if f is None else f
        for name, value, width in (("dirichlet values", g, n_fixed), ("loads", f, size)):
            if not isinstance(value, Tensor) or not value.is_floating_point() or tuple(value.shape) != lead + (width,):
                got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(f"{name} must be a floating-point tensor of shape {lead + (width,)}, got {got}")
        return g, f

    def solve(
        self,
        material: Mapping[str, Tensor | float],
        g: Tensor | None = None,
        f: Tensor | None = None,
        u0: Tensor | None = None,
    ) -> Tensor:
        """The equilibrium u (n dim,) at prescribed values g (n_fixed,) (dofs in ``fixed_index``
        order, default 0) and load f (n dim,) (default 0), from u0 (default 0) in one increment
        (cut back if needed); differentiable in the material, g and f."""
        states = self.load_path(material, None if g is None else g[None], None if f is None else f[None], u0)
        return states[0]

    def load_path(
        self,
        material: Mapping[str, Tensor | float],
        dirichlet: Tensor | None = None,
        loads: Tensor | None = None,
        u0: Tensor | None = None,
    ) -> Tensor:
        """The states (N, n dim) of N increments: increment k prescribes dirichlet[k] (n_fixed,)
        at the fixed dofs and applies the dead load loads[k] (n dim,); either may be None (zero).

        Increment k starts Newton from the state of increment k - 1 (u0, at zero load, before
        the first). Differentiable in the material and in every increment's dirichlet and load
        values: the backward takes one transposed solve with the converged tangent per
        increment the loss depends on.
        """
        params = self.pack(material)
        count = next((len(x) for x in (dirichlet, loads) if x is not None), None)
        if count is None:
            raise ValueError("load_path needs dirichlet values (N, n_fixed) or loads (N, n dim) for N increments")
        g, f = self._vectors(dirichlet, loads, count, params.dtype, params.device)
        size = self.mesh.n_points * self.mesh.dim
        state = torch.zeros(size, dtype=params.dtype, device=params.device) if u0 is None else u0.detach()
        if state.shape != (size,):
            raise ValueError(f"u0 must have shape ({size},), got {tuple(state.shape)}")
        previous = (state[self.fixed_index].detach(), torch.zeros_like(f[0]).detach())
        self.records = []
        self.adjoint_solves = 0
        states = []
        for k in range(count):
            increment = functools.partial(self._increment, previous)
            u = Equilibrium.apply(increment, self._adjoint, state, params, g[k], f[k])
            states.append(u)
            state, previous = u.detach(), (g[k].detach(), f[k].detach())
        return torch.stack(states)
