"""Time integration of M du/dt + K u = f with adjoints: implicit Euler and Crank-Nicolson.

The theta scheme with step dt,

    (M + theta dt K) u^{n+1} = (M - (1 - theta) dt K) u^n + dt (theta f^{n+1} + (1 - theta) f^n),

is implicit Euler for theta = 1 (first order, L-stable) and Crank-Nicolson for theta = 1/2
(second order, A-stable). Dirichlet nodes hold u = g at every step (condensed out of the
step matrix A = M + theta dt K exactly as :class:`~tmcore.core.condense.Condenser` does).

:class:`TimeStepper` factorises A once, when it is built: every step of every run, and
every adjoint step of the backward pass, reuses that factorisation as long as dt and the
coefficients stay fixed (a new K, M or dt means a new stepper). A loss on the trajectory
back-propagates with one adjoint solve A^T lam = ... per step (plus one sparse
matrix-vector product with B^T), and gradients reach everything the trajectory was
built from: the values of K and M (hence kappa, a density, a network's weights), the
initial state, the sources and the Dirichlet values.

Memory. Without checkpointing the autograd graph keeps about two vectors per step (the
state entering the step and the free solution); 1000 steps of a 1e4-node problem hold
about 1000 x 2 x 1e4 doubles. With ``checkpoint=S`` the steps run in segments of S under
``torch.utils.checkpoint`` (non-reentrant): only each segment's starting state is kept,
and the backward recomputes one segment at a time (one more forward solve per step, with
the same factorisation). ``checkpoint="auto"`` takes S = ceil(sqrt(N)), so about
2 sqrt(N) states are alive at any time instead of 2 N.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint as _checkpoint

from tmcore.core.checks import check_count, check_real, is_int, is_number
from tmcore.core.condense import Condenser
from tmcore.core.linalg.factored import factored_solve
from tmcore.core.linalg.solvers import SolveOptions, factorize
from tmcore.core.linalg.sparse import SparseMatrix, SparsityPattern

__all__ = ["SCHEMES", "StepCounters", "TimeStepper", "Trajectory", "crank_nicolson", "implicit_euler", "integrate"]

SCHEMES = {"implicit-euler": 1.0, "crank-nicolson": 0.5}


@dataclass
class StepCounters:
    """What a stepper has done: its one factorisation, forward solves (recomputation included) and adjoint solves."""

    factorizations: int = 0
    forward_solves: int = 0
    adjoint_solves: int = 0


@dataclass
class Trajectory:
    """The result of :meth:`TimeStepper.run`.

    ``final``: u at t_N (n,); ``states``: {step: u (n,)} for the requested ``save_steps``
    (step 0 is the initial state); ``objective``: sum over steps 1..N of the running
    objective (0-d tensor) or None; ``times``: t_0..t_N (N + 1,). All of them are on the
    autograd graph when the inputs require grad.
    """

    final: Tensor
    times: Tensor
    states: dict[int, Tensor] = field(default_factory=dict)
    objective: Tensor | None = None
    segments: int = 1


class _MatVec(torch.autograd.Function):
    """B x for values on a pattern; saves x (n,) only, not the (nnz,) gathered copy a plain product keeps."""

    @staticmethod
    def forward(ctx, values: Tensor, x: Tensor, pattern: SparsityPattern):
        ctx.pattern = pattern
        ctx.save_for_backward(values, x)
        return values.new_zeros(pattern.shape[0]).index_add(0, pattern.rows, values * x[pattern.cols])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        values, x = ctx.saved_tensors
        pattern = ctx.pattern
        gathered = grad_out[pattern.rows]
        grad_values = gathered * x[pattern.cols] if ctx.needs_input_grad[0] else None
        grad_x = None
        if ctx.needs_input_grad[1]:
            grad_x = grad_out.new_zeros(pattern.shape[1]).index_add(0, pattern.cols, values * gathered)
        return grad_values, grad_x, None


def _check_matrix(name: str, matrix: Any) -> SparseMatrix:
    if not isinstance(matrix, SparseMatrix):
        raise TypeError(f"{name} must be a tmcore SparseMatrix, got {type(matrix).__name__}")
    if matrix.values.ndim != 1:
        raise ValueError(f"{name} must be one matrix, not a batch of {matrix.values.shape[0]}")
    rows, cols = matrix.pattern.shape
    if rows != cols:
        raise ValueError(f"{name} must be square, got {rows} x {cols}")
    return matrix


class TimeStepper:
    """The theta scheme for M du/dt + K u = f with a fixed step, factorised once.

    Args:
        M, K: mass and stiffness matrices (n, n) on one sparsity pattern (assemblers on
            the same mesh share it); their values may require grad.
        dt: the step (> 0).
        scheme: "implicit-euler" or "crank-nicolson" (or theta in (0, 1] as a float).
        mask: (n,) bool Dirichlet nodes, or None for none.
        dirichlet_value: u on the masked nodes, held at every step: None (zero), a float,
            (n_dirichlet,) or (n,) values, as for :class:`~tmcore.core.condense.Condenser`.
        backend: factorisation backend (:func:`tmcore.core.linalg.solvers.factorize`); the steps
            solve through :func:`tmcore.core.linalg.factored.factored_solve` with that one factorisation.

    The step matrix is condensed and factorised in the constructor; ``run`` may then be
    called any number of times (other initial states, sources, objectives) without
    factorising again.
    """

    def __init__(
        self,
        M: SparseMatrix,
        K: SparseMatrix,
        dt: float,
        scheme: str | float = "crank-nicolson",
        mask: Tensor | None = None,
        dirichlet_value: Tensor | float | None = None,
        backend: str = "auto",
    ):
        M, K = _check_matrix("M", M), _check_matrix("K", K)
        if M.pattern != K.pattern:
            raise ValueError("M and K must share a sparsity pattern (assemble both on the same mesh)")
        check_real("dt", dt, 0.0, what="a positive finite number")
        if isinstance(scheme, str):
            if scheme not in SCHEMES:
                raise ValueError(f"scheme must be one of {sorted(SCHEMES)} or a theta in (0, 1], got {scheme!r}")
            theta = SCHEMES[scheme]
        elif is_number(scheme) and 0.0 < scheme <= 1.0:
            theta = float(scheme)
        else:
            raise ValueError(f"scheme must be one of {sorted(SCHEMES)} or a theta in (0, 1], got {scheme!r}")
        self.dt, self.theta, self.n = float(dt), theta, M.pattern.shape[0]
        self.pattern = M.pattern
        A = SparseMatrix.from_pattern(M.pattern, M.values + (theta * self.dt) * K.values)
        self.explicit_values = M.values - ((1.0 - theta) * self.dt) * K.values  # B = M - (1 - theta) dt K
        self.condenser = Condenser(mask, dirichlet_value) if mask is not None else None
        if self.condenser is not None:
            A_free, minus_lift = self.condenser(A, A.values.new_zeros(self.n))
            self.free_index = self.condenser.free_index
        else:
            A_free, minus_lift = A, None
            self.free_index = None
        self.step_values, self.step_pattern = A_free.values, A_free.pattern
        self.minus_lift = minus_lift  # -A_fd g: the Dirichlet values moved to the right-hand side
        self.factor = factorize(
            self.step_pattern, self.step_values.detach().unsqueeze(0), SolveOptions(backend=backend)
        )

    @property
    def counters(self) -> StepCounters:
        """The factorisation and the solves with it so far (the factorisation counts them)."""
        return StepCounters(
            factorizations=1, forward_solves=self.factor.solves, adjoint_solves=self.factor.transposed_solves
        )

    @property
    def scheme(self) -> str:
        return {1.0: "implicit-euler", 0.5: "crank-nicolson"}.get(self.theta, f"theta={self.theta:g}")

    # -- one step ---------------------------------------------------------------------

    def step(self, u: Tensor, load: Tensor | None) -> Tensor:
        """u^{n+1} (n,) from u^n (n,) and the step's load dt (theta f^{n+1} + (1 - theta) f^n) (n,) or None."""
        rhs = _MatVec.apply(self.explicit_values, u, self.pattern)
        if load is not None:
            rhs = rhs + load
        if self.condenser is None:
            return factored_solve(self.factor, rhs, self.step_values)
        rhs_free = rhs[self.free_index]
        if self.minus_lift is not None and self.condenser.dirichlet_value is not None:
            rhs_free = rhs_free + self.minus_lift
        return self.condenser.recover(factored_solve(self.factor, rhs_free, self.step_values))

    # -- a run ------------------------------------------------------------------------

    def _loads(self, source, n_steps: int) -> Callable[[int], Tensor | None]:
        """step index n (0-based) -> the load of the step from t_n to t_{n+1}."""
        dt, theta = self.dt, self.theta
        if source is None:
            return lambda n: None
        if callable(source):

            def load(n: int) -> Tensor:
                f_new = _check_load(source((n + 1) * dt), self.n)
                if theta == 1.0:
                    return dt * f_new
                return dt * (theta * f_new + (1.0 - theta) * _check_load(source(n * dt), self.n))

            return load
        if not isinstance(source, Tensor) or not source.is_floating_point():
            raise TypeError(
                "source must be None, a callable t -> (n,) tensor, or a floating-point tensor, got "
                f"{type(source).__name__}"
            )
        if source.shape == (self.n,):
            constant = dt * source
            return lambda n: constant
        if source.shape == (n_steps + 1, self.n):
            if theta == 1.0:
                return lambda n: dt * source[n + 1]
            return lambda n: dt * (theta * source[n + 1] + (1.0 - theta) * source[n])
        raise ValueError(
            f"source must have shape ({self.n},) or (n_steps + 1, {self.n}) = ({n_steps + 1}, {self.n}), got "
            f"{tuple(source.shape)}"
        )

    def run(
        self,
        u0: Tensor,
        n_steps: int,
        source: Tensor | Callable[[float], Tensor] | None = None,
        objective: Callable[[int, float, Tensor], Tensor] | None = None,
        save_steps: Iterable[int] = (),
        checkpoint: int | str | None = "auto",
    ) -> Trajectory:
        """Integrate ``n_steps`` steps from u0 (n,).

        Args:
            source: the load vector f(t) (assembled, e.g. by a NodeAssembler): None, a
                constant (n,), one per time level (n_steps + 1, n), or a callable t -> (n,).
            objective: running objective J_n = objective(n, t_n, u^n), summed over
                n = 1..n_steps into ``Trajectory.objective`` (e.g. dt * |u^n - d^n|^2);
                evaluated inside the checkpointed segments, so it costs no memory per step.
            save_steps: steps whose states to return (0 is u0; negative ones count from the end).
            checkpoint: None (keep every step's graph), a segment length S >= 1, or
                "auto" (S = ceil(sqrt(n_steps))). Only used when gradients are recorded.
        """
        if not isinstance(u0, Tensor) or u0.shape != (self.n,) or not u0.is_floating_point():
            got = tuple(u0.shape) if isinstance(u0, Tensor) else type(u0).__name__
            raise ValueError(f"u0 must be a floating-point ({self.n},) tensor, got {got}")
        check_count("n_steps", n_steps)
        if objective is not None and not callable(objective):
            raise TypeError(
                f"objective must be None or a callable (step, t, u) -> scalar, got {type(objective).__name__}"
            )
        keep = set()
        for s in save_steps:
            if not is_int(s) or not -n_steps - 1 <= s <= n_steps:
                raise ValueError(f"save_steps must hold ints in [-{n_steps + 1}, {n_steps}], got {s!r}")
            keep.add(s % (n_steps + 1))
        segment = _segment_length(checkpoint, n_steps)
        loads = self._loads(source, n_steps)
        recording = torch.is_grad_enabled()
        if not recording:
            segment = n_steps

        def advance(start: int, stop: int, u: Tensor):
            """Steps start..stop-1: (u^stop, objective sum, saved states in order)."""
            total = None
            saved = []
            for n in range(start, stop):
                u = self.step(u, loads(n))
                if objective is not None:
                    value = objective(n + 1, (n + 1) * self.dt, u)
                    total = value if total is None else total + value
                if n + 1 in keep:
                    saved.append(u)
            return u, total, saved

        states: dict[int, Tensor] = {0: u0} if 0 in keep else {}
        u, total = u0, None
        starts = list(range(0, n_steps, segment))
        for start in starts:
            stop = min(start + segment, n_steps)
            if segment < n_steps and recording:
                # the segment's outputs as a flat tuple (checkpoint needs tensors out)
                def run_segment(u_in, start=start, stop=stop):
                    u_out, seg_total, saved = advance(start, stop, u_in)
                    return (u_out, seg_total if seg_total is not None else u_out.new_zeros(()), *saved)

                outputs = _checkpoint(run_segment, u, use_reentrant=False)
                u, seg_total, saved = outputs[0], outputs[1], list(outputs[2:])
                seg_total = seg_total if objective is not None else None
            else:
                u, seg_total, saved = advance(start, stop, u)
            for step_index, state in zip(sorted(s for s in keep if start < s <= stop), saved):
                states[step_index] = state
            if seg_total is not None:
                total = seg_total if total is None else total + seg_total
        times = torch.arange(n_steps + 1, dtype=torch.float64) * self.dt
        return Trajectory(final=u, times=times, states=states, objective=total, segments=len(starts))

    def __repr__(self) -> str:
        dirichlet = self.n - (self.free_index.numel() if self.free_index is not None else self.n)
        return (
            f"TimeStepper(scheme={self.scheme}, dt={self.dt:g}, n={self.n}, dirichlet={dirichlet}, "
            f"backend={self.factor.backend})"
        )


def _check_load(value: Any, n: int) -> Tensor:
    if not isinstance(value, Tensor) or value.shape != (n,):
        got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"source(t) must return an ({n},) tensor, got {got}")
    return value


def _segment_length(checkpoint: int | str | None, n_steps: int) -> int:
    if checkpoint is None:
        return n_steps
    if checkpoint == "auto":
        return max(1, math.ceil(math.sqrt(n_steps)))
    if not is_int(checkpoint) or checkpoint < 1:
        raise ValueError(f"checkpoint must be None, 'auto' or a segment length >= 1, got {checkpoint!r}")
    return min(checkpoint, n_steps)


def integrate(
    M: SparseMatrix,
    K: SparseMatrix,
    u0: Tensor,
    dt: float,
    n_steps: int,
    scheme: str | float = "crank-nicolson",
    mask: Tensor | None = None,
    dirichlet_value: Tensor | float | None = None,
    source: Tensor | Callable[[float], Tensor] | None = None,
    objective: Callable[[int, float, Tensor], Tensor] | None = None,
    save_steps: Iterable[int] = (),
    checkpoint: int | str | None = "auto",
    backend: str = "auto",
) -> Trajectory:
    """One run of a fresh :class:`TimeStepper` (see there and :meth:`TimeStepper.run` for the arguments)."""
    stepper = TimeStepper(M, K, dt, scheme, mask, dirichlet_value, backend)
    return stepper.run(u0, n_steps, source=source, objective=objective, save_steps=save_steps, checkpoint=checkpoint)


def implicit_euler(M: SparseMatrix, K: SparseMatrix, u0: Tensor, dt: float, n_steps: int, **kwargs) -> Trajectory:
    """:func:`integrate` with the implicit Euler scheme (theta = 1)."""
    return integrate(M, K, u0, dt, n_steps, scheme="implicit-euler", **kwargs)


def crank_nicolson(M: SparseMatrix, K: SparseMatrix, u0: Tensor, dt: float, n_steps: int, **kwargs) -> Trajectory:
    """:func:`integrate` with the Crank-Nicolson scheme (theta = 1/2)."""
    return integrate(M, K, u0, dt, n_steps, scheme="crank-nicolson", **kwargs)
