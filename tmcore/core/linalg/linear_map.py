"""A fixed sparse linear map y = A x, differentiable in x (its backward is A^T g).

The assemblers use it for forms that are affine in their data: the map from a coefficient
(per node, per cell or a number) to the matrix values or the load vector is built once per
mesh and form, after which assembly and its backward are one sparse product each.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from tmcore.core.threads import threads_for

__all__ = ["SparseLinearMap"]


class SparseLinearMap:
    """y = A x for a fixed sparse A (n_out, n_in), x (n_in,) or a batch (B, n_in).

    Built from COO triplets (duplicates summed); A and A^T are kept in CSR form, so the
    forward and the backward are each one sparse matrix-vector (or matrix-matrix) product.
    """

    def __init__(self, rows: Tensor, cols: Tensor, values: Tensor, shape: tuple[int, int]):
        coo = torch.sparse_coo_tensor(torch.stack([rows, cols]), values, shape, check_invariants=True).coalesce()
        self.shape = tuple(shape)
        self.nnz = int(coo.values().numel())
        with warnings.catch_warnings():  # "sparse CSR support is in beta": matrix-vector products are all we use
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            self.matrix = coo.to_sparse_csr()
            self.transpose = coo.t().coalesce().to_sparse_csr()

    def __call__(self, x: Tensor) -> Tensor:
        """A x for x (n_in,) -> (n_out,), or (B, n_in) -> (B, n_out)."""
        return _Apply.apply(x, self.matrix, self.transpose)


def _product(matrix: Tensor, x: Tensor) -> Tensor:
    with threads_for(matrix.values().numel()):
        if x.ndim == 1:
            return matrix @ x
        return (matrix @ x.T).T


class _Apply(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, matrix: Tensor, transpose: Tensor) -> Tensor:
        ctx.matrix, ctx.transpose = matrix, transpose
        return _product(matrix, x.to(matrix.dtype))

    @staticmethod
    def backward(ctx, grad: Tensor):
        # the transpose map, itself differentiable (the map is linear: higher derivatives vanish)
        return _Apply.apply(grad.contiguous(), ctx.transpose, ctx.matrix), None, None
