"""The one factored-solve autograd primitive: x = A^-1 b or x = A^-T b with A given by a factorisation.

Every differentiable linear solve in tmcore goes through :class:`FactoredSolve`:
:func:`tmcore.core.linalg.solvers.solve` (``SparseMatrix.solve``), the time stepper's
steps, the Helmholtz filter and the adjoint of Newton's method. The factorisation comes
from :func:`tmcore.core.linalg.solvers.factorize` (any object with ``pattern`` and
``solve(rhs, transpose)`` does); the primitive never factorises.

For A x = b and a loss L(x), with lam the solution of the transposed system
A^T lam = dL/dx (the same factorisation, transpose flag flipped):

    dL/db = lam,        dL/dA_ij = -lam_i x_j      (on A's pattern only);

for A^T x = b the roles swap: A lam = dL/dx and dL/dA_ij = -x_i lam_j. The backward is
this primitive applied again with the flag flipped, so under ``create_graph=True`` it is
recorded like any other operation and higher derivatives are exact, still without a new
factorisation.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from tmcore.core.linalg.pattern import SparsityPattern
from tmcore.core.threads import threads_for

__all__ = ["Factor", "FactoredSolve", "factored_solve"]


class Factor(Protocol):
    """What the primitive needs of a factorisation of B matrices (n, n) on one pattern."""

    pattern: SparsityPattern
    batch: int

    def solve(self, rhs: Tensor, transpose: bool = False) -> Tensor:
        """A_i^-1 rhs_i (A_i^-T rhs_i when ``transpose``) for rhs (B, n, k); detached, dtype of rhs."""
        ...


class FactoredSolve(torch.autograd.Function):
    """x (B, n, k) = A^-1 b (A^-T b when ``transpose``) for b (B, n, k), A given by ``factor``.

    ``FactoredSolve.apply(values, b, factor, transpose)``: values (B, nnz) are the
    factorised matrices' values on ``factor.pattern`` (they carry the gradient to A; the
    numbers used are the factor's), or None when A gets no gradient. A single matrix is a
    batch of one. Gradients: to b by the transposed solve, to the values on the pattern.
    """

    @staticmethod
    def forward(ctx, values: Tensor | None, b: Tensor, factor: Factor, transpose: bool) -> Tensor:
        x = factor.solve(b, transpose)
        # values are referenced, not saved: the backward needs them only as the graph input of the
        # transposed solve (the numbers are the factor's), and the caller keeps them alive anyway (a
        # time stepper shares one tensor between all its steps, which saving would count per step)
        ctx.factor, ctx.transpose, ctx.values = factor, transpose, values
        ctx.save_for_backward(x)
        return x

    @staticmethod
    def backward(ctx, grad_x: Tensor):
        (x,) = ctx.saved_tensors
        values = ctx.values
        if torch.is_grad_enabled():  # create_graph=True: the transposed solve goes on the graph
            lam = FactoredSolve.apply(values, grad_x, ctx.factor, not ctx.transpose)
        else:  # the same solve without the Function's overhead (~30 us, 2% of a 700-unknown solve)
            lam = ctx.factor.solve(grad_x, not ctx.transpose)
        grad_values = None
        if ctx.needs_input_grad[0]:
            left, right = (x, lam) if ctx.transpose else (lam, x)
            grad_values = _values_gradient(ctx.factor.pattern, left, right).to(values.dtype)
        return grad_values, lam, None, None


def _values_gradient(pattern: SparsityPattern, left: Tensor, right: Tensor) -> Tensor:
    """-sum_k left[b, rows, k] right[b, cols, k]: (B, nnz) for left, right (B, n, k).

    Outside a recorded backward, CPU float64 arrays are multiplied in NumPy (10 us against 27 us
    for the torch gathers at 4.6e3 non-zeros: this runs once per backward of every solve).
    """
    rows, cols = pattern.rows, pattern.cols
    if not torch.is_grad_enabled() and left.device.type == "cpu" and left.dtype == right.dtype == torch.float64:
        rows_, cols_ = pattern.host_index
        left_, right_ = left.detach().numpy(), right.detach().numpy()
        if left_.shape[0] == left_.shape[2] == 1:  # one matrix, one column: 1-D takes, a third of the 3-D gathers
            product = left_[0, :, 0].take(rows_) * right_[0, :, 0].take(cols_)
            return torch.from_numpy(np.negative(product, out=product)).unsqueeze(0)
        product = left_[:, rows_, :] * right_[:, cols_, :]
        return torch.from_numpy(-product.sum(-1))
    with threads_for(rows.numel() * left.shape[0] * left.shape[2]):
        return -(left.index_select(1, rows) * right.index_select(1, cols)).sum(-1)


def factored_solve(factor: Factor, b: Tensor, values: Tensor | None = None, transpose: bool = False) -> Tensor:
    """x = A^-1 b (A^-T b) for the one matrix of ``factor``: b (n,) or (n, k), x like b.

    values (nnz,): A's values, when the gradient should reach them; None for a fixed A.
    """
    if factor.batch != 1:
        raise ValueError(f"factored_solve takes the factorisation of one matrix, got a batch of {factor.batch}")
    n = factor.pattern.shape[0]
    if not isinstance(b, Tensor) or b.ndim not in (1, 2) or b.shape[0] != n:
        got = tuple(b.shape) if isinstance(b, Tensor) else type(b).__name__
        raise ValueError(f"b must have shape ({n},) or ({n}, k), got {got}")
    if values is not None and values.shape != (factor.pattern.nnz,):
        raise ValueError(f"values must have shape ({factor.pattern.nnz},), got {tuple(values.shape)}")
    x = FactoredSolve.apply(None if values is None else values.unsqueeze(0), b.reshape(1, n, -1), factor, transpose)
    return x.reshape(b.shape)
