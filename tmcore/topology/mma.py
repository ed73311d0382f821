"""The Method of Moving Asymptotes (Svanberg 1987, 2002) as a ``torch.optim.Optimizer``.

MMA solves

    min_x f0(x)   subject to   g_i(x) <= 0  (i = 1..m),   x_min <= x <= x_max,

by a sequence of convex, separable subproblems. At the iterate x^k every function is
replaced by its approximation around moving asymptotes L_j < x_j < U_j:

    f~_i(x) = r_i + sum_j [ p_ij / (U_j - x_j) + q_ij / (x_j - L_j) ],
    p_ij = (U_j - x_j^k)^2 (1.001 max(df_i/dx_j, 0) + 0.001 max(-df_i/dx_j, 0) + raa0 / (x_max - x_min)_j),
    q_ij = (x_j^k - L_j)^2 (0.001 max(df_i/dx_j, 0) + 1.001 max(-df_i/dx_j, 0) + raa0 / (x_max - x_min)_j),

restricted to a box alpha <= x <= beta inside the asymptotes and the move limit. As in
Svanberg's "MMA and GCMMA" notes (2007), an elastic variable y_i >= 0 with the cost
c_i y_i + d_i y_i^2 / 2 relaxes each constraint (g~_i(x) - y_i <= 0), so every subproblem
is feasible; y_i = 0 at the solution when c_i is large enough (the default 1000 asks for
multipliers below 1000: scale the objective to order 1-100, e.g. by its initial value).

**The dual subproblem.** The subproblem is separable, so for multipliers lam >= 0 (m,)
its Lagrangian is minimised in closed form, per variable:

    x_j(lam) = clamp((sqrt(a_j) L_j + sqrt(b_j) U_j) / (sqrt(a_j) + sqrt(b_j)), alpha_j, beta_j),
    a_j = p_0j + lam . p_:j,   b_j = q_0j + lam . q_:j,       y_i(lam) = max(0, (lam_i - c_i) / d_i),

and the dual function W(lam) is concave with gradient g~(x(lam)) - y(lam) (the subproblem's
constraint values) and a Hessian available in closed form (m x m). We maximise W over
lam >= 0 by a projected Newton method with an Armijo line search (Bertsekas 1982): each
iteration is a few O(m n) tensor operations and one m x m solve, so the whole update
runs on the parameters' device (CPU or GPU) without a copy to NumPy. The asymptotes
adapt as in the 2007 code: they start at x +- asymptote_init (x_max - x_min), then
widen by ``asymptote_increase`` where x_j moved the same way twice and narrow by
``asymptote_decrease`` where it oscillated, kept within [0.01, 10] (x_max - x_min) of x.

**The interface.** ``optimizer.step(closure)`` where ``closure()`` evaluates the
problem at the current parameters and returns ``(objective, constraints)``: a 0-d tensor
and an (m,) tensor with g_i <= 0 meaning feasible. The optimiser takes the gradients
itself by autograd (m + 1 reverse passes through the closure's graph), so a closure
need not (and should not) call ``backward()``. Every parameter of every group is one
block of the single design vector x (the constraints couple them); a group sets the
bounds ``lower``/``upper`` (numbers or tensors shaped like its parameters) and the
``move_limit`` (a fraction of upper - lower) of its parameters.

After a step, ``optimizer.state[p]`` holds, for every parameter p, the asymptotes
``low``/``upp`` and previous iterates ``x_old1``/``x_old2`` of its block, and (the same
values in each) ``step``, ``objective`` and ``constraints`` (at the point the step
started from), ``multipliers`` (m,), ``change`` (max |x_new - x| over all blocks),
``dual_iterations``, ``elastic`` (max y_i: > 0 when the subproblem could not satisfy a
constraint) and ``kkt_residual``: the max-norm KKT residual of the original problem at
the point the step started from, with the multipliers of the previous subproblem
(Svanberg's ``kktcheck`` convention; ``nan`` at the first step). See :func:`kkt_residual`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from tmcore.core.checks import check_count, check_real
from tmcore.topology.optimizers import CheckedOptimizer

__all__ = ["MMA", "Subproblem", "kkt_residual", "solve_dual"]

logger = logging.getLogger(__name__)

Closure = Callable[[], tuple[Tensor, Tensor]]


def kkt_residual(
    x: Tensor,
    grad_objective: Tensor,
    constraints: Tensor,
    jacobian: Tensor,
    multipliers: Tensor,
    lower: Tensor,
    upper: Tensor,
    bound_tol: float = 1e-9,
) -> Tensor:
    """Max-norm KKT residual of min f0 s.t. g <= 0, lower <= x <= upper, at x (n,) with multipliers lam (m,).

    The residual collects, for the gradient of the Lagrangian r = df0 + lam . dg (n,),
    r_j where x_j is strictly inside its bounds, min(r_j, 0) at a lower bound and
    max(r_j, 0) at an upper one (the bound multipliers take up the rest); the violations
    max(g_i, 0); and the complementarity |lam_i g_i|. ``jacobian`` is dg/dx (m, n);
    ``bound_tol`` (relative to upper - lower) decides that x_j sits on a bound. Units: those
    of the gradients and constraints as given (scale them as the optimiser sees them).
    """
    r = grad_objective + multipliers @ jacobian if multipliers.numel() else grad_objective.clone()
    span = (upper - lower).clamp_min(1e-300)
    at_lower = (x - lower) <= bound_tol * span
    at_upper = (upper - x) <= bound_tol * span
    r = torch.where(at_lower, r.clamp_max(0.0), torch.where(at_upper, r.clamp_min(0.0), r))
    parts = [r.abs().max() if r.numel() else r.new_zeros(())]
    if constraints.numel():
        parts += [constraints.clamp_min(0.0).max(), (multipliers * constraints).abs().max()]
    return torch.stack(parts).max()


class Subproblem(NamedTuple):
    """MMA's convex subproblem at one iterate, in x (n,) and the elastic variables y (m,):

        min   sum_j p0_j / (U_j - x_j) + q0_j / (x_j - L_j) + sum_i (c_i y_i + d_i y_i^2 / 2)
        s.t.  sum_j P_ij / (U_j - x_j) + Q_ij / (x_j - L_j) - y_i <= rhs_i,   alpha <= x <= beta,   y >= 0,

    with L = ``low``, U = ``upp``. p0, q0, low, upp, alpha, beta: (n,); P, Q: (m, n) (all > 0
    as MMA builds them); rhs, c, d: (m,) (d > 0).
    """

    p0: Tensor
    q0: Tensor
    P: Tensor
    Q: Tensor
    rhs: Tensor
    low: Tensor
    upp: Tensor
    alpha: Tensor
    beta: Tensor
    c: Tensor
    d: Tensor

    def weights(self, lam: Tensor) -> tuple[Tensor, Tensor]:
        """The Lagrangian's weights (n,) of 1/(U - x) and 1/(x - L) at the multipliers lam (m,)."""
        return self.p0 + lam @ self.P, self.q0 + lam @ self.Q

    def primal(self, lam: Tensor) -> tuple[Tensor, Tensor]:
        """The minimisers x(lam) (n,) and y(lam) (m,) of the Lagrangian."""
        a, b = self.weights(lam)
        sa, sb = a.sqrt(), b.sqrt()
        x = ((sa * self.low + sb * self.upp) / (sa + sb)).clamp(self.alpha, self.beta)
        y = ((lam - self.c) / self.d).clamp_min(0.0)
        return x, y

    def dual_value(self, lam: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """W(lam), the Lagrangian at its minimisers x = x(lam), y = y(lam)."""
        ux, xl = 1.0 / (self.upp - x), 1.0 / (x - self.low)
        a, b = self.weights(lam)
        c, d = self.c, self.d
        return (a * ux).sum() + (b * xl).sum() - lam @ self.rhs + (c * y + 0.5 * d * y * y - lam * y).sum()


def solve_dual(
    subproblem: Subproblem, lam0: Tensor | None = None, tol: float = 1e-10, max_iterations: int = 500
) -> tuple[Tensor, Tensor, Tensor, int]:
    """Maximise the dual W(lam) of the MMA ``subproblem`` over lam >= 0 by projected Newton
    with an Armijo search, from ``lam0`` (m,) (default 0).

    Stops when the projected dual gradient (the subproblem's constraint residual, in the
    constraints' units) is <= ``tol`` in max-norm. Returns (x (n,), y (m,), lam (m,), iterations).
    """
    P, Q, rhs, low, upp = subproblem.P, subproblem.Q, subproblem.rhs, subproblem.low, subproblem.upp
    alpha, beta, d = subproblem.alpha, subproblem.beta, subproblem.d
    m = rhs.shape[0]
    lam = rhs.new_zeros(m) if lam0 is None else lam0.clone().clamp_min(0.0)

    def evaluate(lam):
        x, y = subproblem.primal(lam)
        value = subproblem.dual_value(lam, x, y)
        grad = P @ (1.0 / (upp - x)) + Q @ (1.0 / (x - low)) - rhs - y
        projected = torch.where((lam > 0) | (grad > 0), grad, torch.zeros_like(grad))
        return x, y, value, grad, float(projected.abs().max()) if m else 0.0

    x, y, value, grad, residual = evaluate(lam)
    if m == 0:
        return x, y, lam, 0
    eye = torch.eye(m, dtype=rhs.dtype, device=rhs.device)
    iteration = 0
    for iteration in range(1, max_iterations + 1):
        if residual <= tol:
            break
        # Hessian of W: -sum_j G_ij G_kj / phi''_j over the free x_j, and -1/d_i where y_i > 0
        ux, xl = 1.0 / (upp - x), 1.0 / (x - low)
        a, b = subproblem.weights(lam)
        free = ((x > alpha) & (x < beta)).to(x.dtype)
        G = P * ux * ux - Q * xl * xl  # d psi_i / d x_j (m, n)
        curvature = 2.0 * (a * ux**3 + b * xl**3)  # phi''_j > 0
        H = -(G * (free / curvature)) @ G.T - torch.diag((y > 0).to(x.dtype) / d)
        fixed = (lam <= 0) & (grad <= 0)  # at the bound lam = 0 and pushing into it
        keep = (~fixed).to(x.dtype)
        scale = float(H.diagonal().abs().max())
        reduced = -H * keep[:, None] * keep[None, :] + eye * (1.0 - keep) + eye * max(1e-12 * scale, 1e-300)
        direction = torch.linalg.solve(reduced, grad * keep)
        # a flat W (every x_j on its box, no elastic curvature) gives a huge Newton step: cap it
        cap = 10.0 * (1.0 + float(lam.abs().max()))
        if float(direction @ grad) <= 0 or not bool(torch.isfinite(direction).all()):
            direction = grad * keep * (cap / max(float(grad.abs().max()), 1e-300))  # steepest ascent, line-searched
        length = float(direction.abs().max())
        step = min(1.0, cap / length) if length > 0 else 1.0
        roundoff = 1e-13 * max(1.0, abs(float(value)))
        for _ in range(80):
            trial = (lam + step * direction).clamp_min(0.0)
            x_t, y_t, value_t, grad_t, residual_t = evaluate(trial)
            predicted = float(grad @ (trial - lam))
            if predicted > roundoff:
                accept = float(value_t) >= float(value) + 1e-4 * predicted
            elif predicted >= -roundoff:  # W cannot resolve the change: accept a step that shrinks the residual
                accept = residual_t < residual
            else:  # the projection turned the step downhill
                accept = False
            if accept:
                break
            step *= 0.5
        else:
            break  # no progress measurable at machine precision: lam is as good as W can tell
        lam, x, y, value, grad, residual = trial, x_t, y_t, value_t, grad_t, residual_t
    else:
        logger.warning(
            "MMA: the dual subproblem did not converge in %d iterations (projected gradient %.3g)",
            max_iterations,
            residual,
        )
    return x, y, lam, iteration


def _as_bound(name: str, value: Any, like: Tensor) -> Tensor:
    if isinstance(value, Tensor):
        if value.shape not in (like.shape, ()):
            raise ValueError(
                f"{name} must be a number or a tensor shaped like its parameter {tuple(like.shape)}, "
                f"got shape {tuple(value.shape)}"
            )
        bound = value.detach().to(like)
    else:
        bound = torch.as_tensor(check_real(name, value), dtype=like.dtype, device=like.device)
    if not bool(torch.isfinite(bound).all()):
        raise ValueError(f"{name} must be finite")
    return bound.expand_as(like).reshape(-1)


class MMA(CheckedOptimizer):
    """Svanberg's Method of Moving Asymptotes for min f0(x) s.t. g(x) <= 0 (m,), lower <= x <= upper.

    Args:
        params: a tensor, an iterable of tensors or param groups (dicts that may override
            ``lower``, ``upper``, ``move_limit`` and the asymptote options).
        n_constraints: m >= 0, the length of the constraint vector the closure returns.
        lower, upper: bounds of the parameters (numbers or tensors shaped like each
            parameter), lower < upper; the parameters must start within them.
        move_limit: largest change per step, as a fraction of upper - lower, in (0, 1].
        asymptote_init: initial distance of the asymptotes, fraction of upper - lower (0.5).
        asymptote_increase, asymptote_decrease: the adaptation factors (1.2 and 0.7).
        asymptote_min, asymptote_max: the asymptotes stay between these fractions of
            upper - lower from x (0.01 and 10). Plain MMA (not GCMMA) can settle into a
            two-cycle of amplitude below asymptote_min (upper - lower) around an optimum
            strictly inside the bounds; a smaller asymptote_min shrinks it.
        albefa: how far inside the asymptotes the subproblem box stays (0.1).
        c, d: the costs c y + d y^2 / 2 of the elastic variables (1000 and 1).
        raa0: the small regularisation of the approximations (1e-5).
        dual_tol, dual_max_iterations: stopping rule of the dual solver (:func:`solve_dual`).
        objective_scale: a positive number the objective is multiplied by before the
            subproblem is built, or "initial" (default): 10 / |f0(x_0)|, fixed at the first
            step and kept in ``state`` (so a restored optimiser keeps it). MMA's elastic
            costs c assume an objective of order 1-100; the multipliers and the KKT residual
            in ``state`` are in the scaled units; ``step`` returns the objective unscaled.

    ``step(closure)`` (closure() -> (objective 0-d, constraints (m,))) evaluates the
    problem, differentiates it, solves the subproblem and moves the parameters in place;
    it returns the objective and constraints it evaluated (detached). The module
    docstring describes the method and what ``state`` records.
    """

    def __init__(
        self,
        params,
        n_constraints: int,
        lower: float | Tensor = 0.0,
        upper: float | Tensor = 1.0,
        move_limit: float = 0.5,
        asymptote_init: float = 0.5,
        asymptote_increase: float = 1.2,
        asymptote_decrease: float = 0.7,
        asymptote_min: float = 0.01,
        asymptote_max: float = 10.0,
        albefa: float = 0.1,
        c: float = 1000.0,
        d: float = 1.0,
        raa0: float = 1e-5,
        dual_tol: float = 1e-10,
        dual_max_iterations: int = 500,
        objective_scale: float | str = "initial",
    ):
        if isinstance(params, Tensor):
            params = [params]
        self.n_constraints = check_count("n_constraints", n_constraints, 0)
        self.c = check_real("c", c, 0.0)
        self.d = check_real("d", d, 0.0)
        self.raa0 = check_real("raa0", raa0, 0.0)
        self.dual_tol = check_real("dual_tol", dual_tol, 0.0)
        self.dual_max_iterations = check_count("dual_max_iterations", dual_max_iterations)
        if objective_scale != "initial":
            check_real("objective_scale", objective_scale, 0.0)
        self.objective_scale = objective_scale
        defaults = dict(
            lower=lower,
            upper=upper,
            move_limit=move_limit,
            asymptote_init=asymptote_init,
            asymptote_increase=asymptote_increase,
            asymptote_decrease=asymptote_decrease,
            asymptote_min=asymptote_min,
            asymptote_max=asymptote_max,
            albefa=albefa,
        )
        super().__init__(params, defaults)

    @staticmethod
    def _check_group(group: dict[str, Any]) -> None:
        check_real("move_limit", group["move_limit"], 0.0, 1.0, high_open=False)
        check_real("asymptote_init", group["asymptote_init"], 0.0)
        check_real("asymptote_increase", group["asymptote_increase"], 1.0, low_open=False)
        check_real("asymptote_decrease", group["asymptote_decrease"], 0.0, 1.0, high_open=False)
        check_real("albefa", group["albefa"], 0.0, 1.0)
        check_real("asymptote_min", group["asymptote_min"], 0.0)
        check_real("asymptote_max", group["asymptote_max"], group["asymptote_min"])
        for p in group["params"]:
            if not p.is_floating_point():
                raise TypeError(f"MMA parameters must be floating-point tensors, got {p.dtype}")
            lower, upper = _as_bound("lower", group["lower"], p), _as_bound("upper", group["upper"], p)
            if not bool((lower < upper).all()):
                raise ValueError("lower must be below upper for every entry")
            x = p.detach().reshape(-1)
            if not bool(torch.isfinite(x).all()) or bool((x < lower).any()) or bool((x > upper).any()):
                raise ValueError(
                    f"parameters must start within [lower, upper], got [{float(x.min()):.3g}, {float(x.max()):.3g}]"
                )

    # -- the step ------------------------------------------------------------------------

    def _blocks(self):
        """(param, group) for every parameter, in order."""
        return [(p, group) for group in self.param_groups for p in group["params"]]

    def _evaluate(self, closure: Closure) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Objective, constraints (m,), and their gradients (n,) and (m, n) over the flattened parameters."""
        params = [p for p, _ in self._blocks()]
        with torch.enable_grad():
            out = closure()
            if not (isinstance(out, tuple) and len(out) == 2):
                raise TypeError("the MMA closure must return (objective, constraints), a 0-d tensor and an (m,) tensor")
            objective, constraints = out
            if not isinstance(objective, Tensor) or objective.numel() != 1:
                got = getattr(objective, "shape", type(objective).__name__)
                raise ValueError(f"the objective must be a scalar tensor, got {got}")
            constraints = torch.as_tensor(constraints).reshape(-1) if isinstance(constraints, Tensor) else constraints
            if not isinstance(constraints, Tensor) or constraints.shape != (self.n_constraints,):
                got = tuple(constraints.shape) if isinstance(constraints, Tensor) else type(constraints).__name__
                raise ValueError(f"the constraints must be a tensor of shape ({self.n_constraints},), got {got}")
            outputs = [objective.reshape(())] + list(constraints.unbind())
            rows = []
            for k, output in enumerate(outputs):
                if output.requires_grad:
                    grads = torch.autograd.grad(output, params, retain_graph=k < len(outputs) - 1, allow_unused=True)
                else:
                    grads = [None] * len(params)
                rows.append(
                    torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads)])
                )
        gradients = torch.stack(rows).detach()
        values = torch.cat([objective.detach().reshape(1), constraints.detach()])
        if not bool(torch.isfinite(values).all()) or not bool(torch.isfinite(gradients).all()):
            raise ValueError("the objective, the constraints or their gradients contain NaN or inf")
        return values[0], values[1:], gradients[0], gradients[1:]

    @torch.no_grad()
    def step(self, closure: Closure):  # type: ignore[override]
        """One MMA iteration; returns (objective, constraints) at the point it started from (detached)."""
        if closure is None:
            raise ValueError("MMA.step needs a closure returning (objective, constraints)")
        objective, constraints, df0, dg = self._evaluate(closure)
        blocks = self._blocks()
        device, dtype = df0.device, df0.dtype
        x = torch.cat([p.detach().reshape(-1) for p, _ in blocks]).to(dtype)

        def per_entry(key):
            return torch.cat(
                [torch.as_tensor(group[key], dtype=dtype, device=device).expand(p.numel()) for p, group in blocks]
            )

        lower = torch.cat([_as_bound("lower", group["lower"], p) for p, group in blocks]).to(dtype)
        upper = torch.cat([_as_bound("upper", group["upper"], p) for p, group in blocks]).to(dtype)
        move, init = per_entry("move_limit"), per_entry("asymptote_init")
        increase, decrease, albefa = (
            per_entry("asymptote_increase"),
            per_entry("asymptote_decrease"),
            per_entry("albefa"),
        )
        span = upper - lower
        if bool((x < lower).any()) or bool((x > upper).any()):
            raise ValueError("the parameters left [lower, upper] (changed in place since the last step?)")

        first = self.state[blocks[0][0]]
        k = first.get("step", 0)
        m = self.n_constraints
        lam_old = first.get("multipliers")
        scale = first.get("objective_scale")
        if scale is None:
            scale = self.objective_scale
            if scale == "initial":
                scale = 10.0 / abs(float(objective)) if float(objective) != 0.0 else 1.0
        df0 = df0 * scale
        kkt = math.nan
        if lam_old is not None:
            kkt = float(kkt_residual(x, df0, constraints, dg, lam_old.to(x), lower, upper))

        def gather(key):
            return torch.cat([self.state[p][key].reshape(-1) for p, _ in blocks]).to(x)

        # asymptotes
        if k < 2:
            low, upp = x - init * span, x + init * span
        else:
            x1, x2, low_old, upp_old = gather("x_old1"), gather("x_old2"), gather("low"), gather("upp")
            trend = (x - x1) * (x1 - x2)
            factor = torch.where(trend > 0, increase, torch.where(trend < 0, decrease, torch.ones_like(x)))
            low = x - factor * (x1 - low_old)
            upp = x + factor * (upp_old - x1)
            closest, farthest = per_entry("asymptote_min") * span, per_entry("asymptote_max") * span
            low = torch.minimum(torch.maximum(low, x - farthest), x - closest)
            upp = torch.maximum(torch.minimum(upp, x + farthest), x + closest)
        # the subproblem's box
        alpha = torch.maximum(torch.maximum(low + albefa * (x - low), x - move * span), lower)
        beta = torch.minimum(torch.minimum(upp - albefa * (upp - x), x + move * span), upper)
        # the approximations
        ux, xl = upp - x, x - low
        reg = self.raa0 / span
        gradients = torch.cat([df0[None], dg])  # (m + 1, n)
        plus, minus = gradients.clamp_min(0.0), (-gradients).clamp_min(0.0)
        extra = 0.001 * (plus + minus) + reg
        p_all = (plus + extra) * ux * ux
        q_all = (minus + extra) * xl * xl
        p0, q0, P, Q = p_all[0], q_all[0], p_all[1:], q_all[1:]
        rhs = P @ (1.0 / ux) + Q @ (1.0 / xl) - constraints
        c = torch.full((m,), self.c, dtype=dtype, device=device)
        d = torch.full((m,), self.d, dtype=dtype, device=device)
        lam0 = lam_old.to(x) if lam_old is not None else None
        subproblem = Subproblem(p0, q0, P, Q, rhs, low, upp, alpha, beta, c, d)
        x_new, y, lam, iterations = solve_dual(subproblem, lam0, self.dual_tol, self.dual_max_iterations)
        change = float((x_new - x).abs().max()) if x.numel() else 0.0
        elastic = float(y.max()) if m else 0.0
        offset = 0
        for p, _ in blocks:
            n = p.numel()
            state = self.state[p]
            if k >= 1:
                state["x_old2"] = state["x_old1"]
            else:
                state["x_old2"] = x[offset : offset + n].clone().reshape(p.shape)
            state["x_old1"] = x[offset : offset + n].clone().reshape(p.shape)
            state["low"] = low[offset : offset + n].clone().reshape(p.shape)
            state["upp"] = upp[offset : offset + n].clone().reshape(p.shape)
            p.copy_(x_new[offset : offset + n].reshape(p.shape).to(p.dtype))
            state.update(
                step=k + 1,
                objective=float(objective),
                constraints=constraints.clone(),
                multipliers=lam.clone(),
                change=change,
                dual_iterations=iterations,
                elastic=elastic,
                kkt_residual=kkt,
                objective_scale=scale,
            )
            offset += n
        if elastic > 0:
            logger.info(
                "MMA step %d: the subproblem relaxed a constraint (max y = %.3g); raise c or rescale", k + 1, elastic
            )
        return objective, constraints
