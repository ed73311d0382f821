"""Newton's method for nonlinear diffusion, differentiated by the implicit-function theorem.

The problem: find u with u = g on the Dirichlet nodes and

    R(u; c, f)_i = int kappa(u, c) grad u . grad N_i dx - int f N_i dx = 0

at the free nodes, for a conductivity kappa(u, c) that depends on the solution and on a
coefficient field c (e.g. kappa = c (1 + u^2)). Newton's method solves it with the
tangent J = dR/du,

    J_ij = int kappa grad N_j . grad N_i + (d kappa / d u) N_j grad u . grad N_i dx,

assembled by an ElementAssembler (d kappa / d u by autodiff of kappa at each quadrature point).

Gradients do not go through the Newton iterations. At the converged u* the implicit
function theorem gives, for a loss L(u*),

    J^T lam = dL/du   (free nodes, one linear adjoint solve),
    dL/dtheta = -lam^T dR/dtheta   for theta = c, f and the Dirichlet values g,

the last product by one reverse-mode pass through the residual assembly. So the
backward costs one factorisation of J(u*) and one solve, whatever the number of Newton
steps; :class:`NonlinearDiffusion` counts them in ``stats``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from tmcore.core.assembly import ElementAssembler, NodeAssembler
from tmcore.core.checks import check_callable
from tmcore.core.condense import Condenser
from tmcore.core.errors import SolverError
from tmcore.core.linalg.factored import factored_solve
from tmcore.core.linalg.solvers import SolveOptions, factorize
from tmcore.core.linalg.sparse import SparseMatrix
from tmcore.core.mesh import Mesh, check_mesh_type

__all__ = ["NewtonStats", "NonlinearDiffusion"]

logger = logging.getLogger(__name__)

Kappa = Callable[[Tensor, Tensor], Tensor]


class _Residual(NodeAssembler):
    """int kappa(w, c) grad w . grad v - f v: the residual at the state w."""

    def __init__(self, kappa: Kappa):
        super().__init__()
        self.kappa = kappa

    def forward(self, v, gradv, w, grad_w, c, f):
        return self.kappa(w, c) * (grad_w @ gradv) - f * v


class _Tangent(ElementAssembler):
    """dR/dw: int kappa grad u . grad v + kappa'(w) u grad w . grad v."""

    def __init__(self, kappa: Kappa):
        super().__init__()
        self.kappa = kappa

    def forward(self, u, v, gradu, gradv, w, grad_w, c):
        dk, k = torch.func.grad_and_value(lambda s: self.kappa(s, c))(w)
        return k * (gradu @ gradv) + dk * u * (grad_w @ gradv)


@dataclass
class NewtonStats:
    """Counters: Newton solves and their iterations, and what the backward passes cost."""

    solves: int = 0
    newton_iterations: int = 0
    last_iterations: int = 0
    last_residual: float = float("nan")
    adjoint_factorizations: int = 0
    adjoint_solves: int = 0


def equilibrium_vjp(
    residual: Callable[..., Tensor],
    u: Tensor,
    lam: Tensor,
    grad_u: Tensor,
    free: Tensor,
    fixed: Tensor,
    inputs: tuple[Tensor, ...],
    prescribed: int,
) -> list[Tensor]:
    """The implicit-function gradients of an equilibrium R(u, inputs) = 0 on the free dofs.

    With lam the adjoint (J_ff^T lam = dL/du_f, J the converged tangent), returns
    dL/d(input) = -lam^T dR_f/d(input) for each of ``inputs``, by one reverse pass through
    ``residual(state, *inputs)`` (n,) at the equilibrium u (n,); ``inputs[prescribed]`` holds the
    values of the fixed dofs (state = u with them inserted), whose gradient also collects
    dL/du on the fixed dofs. The one adjoint step shared by every nonlinear solve of tmcore.
    """
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(True) for t in inputs]
        state = u.detach().index_copy(0, fixed, leaves[prescribed]) if fixed.numel() else u.detach()
        grads = torch.autograd.grad(residual(state, *leaves)[free], leaves, grad_outputs=-lam, allow_unused=True)
    grads = [torch.zeros_like(t) if gr is None else gr for gr, t in zip(grads, inputs)]
    grads[prescribed] = grads[prescribed] + grad_u[fixed]  # u = the prescribed values on the fixed dofs
    return grads


class Equilibrium(torch.autograd.Function):
    """u* = ``solve(start, *inputs)``, a converged nonlinear equilibrium, as one node of the graph.

    The forward runs ``solve`` on detached tensors (no graph through the iterations); the
    backward is the implicit function theorem, ``adjoint(u, grad_u, inputs)`` -> one gradient
    per input (an adjoint solve with the converged tangent, then :func:`equilibrium_vjp`).
    ``start`` gets no gradient. Used as ``Equilibrium.apply(solve, adjoint, start, *inputs)``.
    """

    @staticmethod
    def forward(ctx, solve: Callable[..., Tensor], adjoint: Callable[..., tuple], start: Tensor, *inputs: Tensor):
        u = solve(start.detach(), *(t.detach() for t in inputs))
        ctx.adjoint = adjoint
        ctx.save_for_backward(u, *inputs)
        return u

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_u: Tensor):
        u, *inputs = ctx.saved_tensors
        return None, None, None, *ctx.adjoint(u, grad_u, tuple(inputs))


class NonlinearDiffusion(nn.Module):
    """-div(kappa(u, c) grad u) = f with u = g on the nodes of ``mask``, solved by Newton's method.

    Args:
        mesh: the mesh (any element the assemblers support).
        kappa: callable (u, c) -> conductivity, elementwise torch code (it is evaluated at
            one quadrature point, u and c scalars), e.g. ``lambda u, c: c * (1 + u**2)``;
            it must be differentiable in u.
        mask: (n,) bool Dirichlet nodes (default: the boundary).
        rtol, atol: Newton stops when |R_free| <= max(atol, rtol |R_free(u0)|); being
            quadratically convergent, its last step then usually lands at round-off.
        max_iterations: Newton updates before :class:`~tmcore.core.errors.SolverError`.
        quadrature_order: passed to the assemblers (default: estimated from the arguments,
            exact for polynomial kappa of the degree of u).
        backend: linear solver backend of the Newton steps and the adjoint solve.

    ``forward(c, f, g=0, u0=None)`` takes the coefficient and the source as nodal fields
    (n,) and the Dirichlet values (a float or (n,) with the masked entries used) and
    returns u* (n,), differentiable in c, f and g by the implicit function theorem.
    """

    def __init__(
        self,
        mesh: Mesh,
        kappa: Kappa,
        mask: Tensor | None = None,
        rtol: float = 1e-10,
        atol: float = 1e-14,
        max_iterations: int = 50,
        quadrature_order: int | None = None,
        backend: str = "auto",
    ):
        super().__init__()
        check_mesh_type(mesh)
        check_callable("kappa", kappa, "(u, c) -> conductivity")
        mask = mesh.boundary_mask if mask is None else mask
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape != (mesh.n_points,):
            raise ValueError(f"mask must be an ({mesh.n_points},) bool tensor")
        self.mesh, self.kappa, self.backend = mesh, kappa, backend
        self.rtol, self.atol, self.max_iterations = float(rtol), float(atol), int(max_iterations)
        self.register_buffer("mask", mask)
        self.register_buffer("free_index", torch.nonzero(~mask).flatten())
        self.register_buffer("dirichlet_index", torch.nonzero(mask).flatten())
        self._residual = _Residual.from_mesh(mesh, quadrature_order, kappa=kappa)
        self._tangent = _Tangent.from_mesh(mesh, quadrature_order, kappa=kappa)
        self.stats = NewtonStats()
        self._condenser = Condenser(mask)

    # -- the discrete problem ---------------------------------------------------------

    def residual(self, u: Tensor, c: Tensor, f: Tensor) -> Tensor:
        """R(u; c, f) (n,), all nodes (the Dirichlet rows are not used)."""
        return self._residual(point_data={"w": u, "c": c, "f": f})

    def tangent(self, u: Tensor, c: Tensor) -> SparseMatrix:
        """J = dR/du (n, n) at u."""
        return self._tangent(point_data={"w": u, "c": c})

    def _split(self, J: SparseMatrix) -> tuple[SparseMatrix, None]:
        """J_ff, the free-free block (the Dirichlet columns multiply fixed values)."""
        J_free, _ = self._condenser(J, J.values.new_zeros(self.mesh.n_points))
        return J_free, None

    def _newton(self, u: Tensor, c: Tensor, f: Tensor, g: Tensor) -> Tensor:
        free, dirichlet = self.free_index, self.dirichlet_index
        u = u.clone()
        if dirichlet.numel():
            u[dirichlet] = g
        norm0 = None
        for iteration in range(self.max_iterations + 1):
            residual = self.residual(u, c, f)[free]
            norm = float(residual.norm())
            norm0 = norm if norm0 is None else norm0
            if norm <= max(self.atol, self.rtol * norm0):
                break
            if iteration == self.max_iterations:
                raise SolverError(
                    f"Newton did not converge in {self.max_iterations} iterations: |R| = {norm:.3e} "
                    f"(start {norm0:.3e}, rtol {self.rtol:g}); try a better u0, a smaller load or more iterations"
                )
            J_free, _ = self._split(self.tangent(u, c))
            factor = factorize(J_free.pattern, J_free.values.unsqueeze(0), SolveOptions(backend=self.backend))
            u[free] -= factored_solve(factor, residual)
        self.stats.solves += 1
        self.stats.newton_iterations += iteration
        self.stats.last_iterations = iteration
        self.stats.last_residual = norm
        return u

    def forward(self, c: Tensor, f: Tensor, g: Tensor | float = 0.0, u0: Tensor | None = None) -> Tensor:
        """u* (n,) for the coefficient c (n,), source f (n,) and Dirichlet values g."""
        n = self.mesh.n_points
        for name, value in (("c", c), ("f", f)):
            if not isinstance(value, Tensor) or value.shape != (n,) or not value.is_floating_point():
                got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(f"{name} must be a floating-point ({n},) nodal field, got {got}")
        if not isinstance(g, Tensor):
            g = torch.full((n,), float(g), dtype=c.dtype, device=c.device)
        if g.shape == (n,):
            g = g[self.dirichlet_index]
        if g.shape != (self.dirichlet_index.numel(),):
            raise ValueError(
                f"g must be a float, ({n},) or ({self.dirichlet_index.numel()},) Dirichlet values, got {tuple(g.shape)}"
            )
        u0 = torch.zeros(n, dtype=c.dtype, device=c.device) if u0 is None else u0
        return Equilibrium.apply(self._newton, self._adjoint, u0, c, f, g)

    def _adjoint(self, u: Tensor, grad_u: Tensor, inputs: tuple[Tensor, Tensor, Tensor]) -> list[Tensor]:
        """dL/dc, dL/df, dL/dg at the converged u: J(u)^T lam = dL/du on the free nodes (a
        factorisation of the tangent and one transposed solve), then :func:`equilibrium_vjp`."""
        c, f, g = inputs
        J_free, _ = self._split(self.tangent(u, c))
        factor = factorize(J_free.pattern, J_free.values.detach().unsqueeze(0), SolveOptions(backend=self.backend))
        self.stats.adjoint_factorizations += 1
        lam = factored_solve(factor, grad_u[self.free_index], transpose=True)
        self.stats.adjoint_solves += 1
        return equilibrium_vjp(
            lambda state, c_, f_, g_: self.residual(state, c_, f_),
            u,
            lam,
            grad_u,
            self.free_index,
            self.dirichlet_index,
            inputs,
            2,
        )
