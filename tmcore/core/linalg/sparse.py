"""Sparse matrices with a fixed pattern and differentiable values.

``SparseMatrix`` pairs a :class:`~tmcore.core.linalg.pattern.SparsityPattern` with values
(nnz,) or a batch of values (B, nnz); it is a ``torch_sla.SparseTensor`` so torch-sla's
operations apply, and its ``solve`` is tmcore's own adjoint-aware solve
(:func:`tmcore.core.linalg.solvers.solve`). The pattern and :func:`batched_matvec` are
re-exported here, where most callers look for them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse
import torch
from torch import Tensor
from torch_sla import SparseTensor

from tmcore.core.linalg import solvers
from tmcore.core.linalg.pattern import SparsityPattern, batched_matvec

__all__ = ["SparsityPattern", "SparseMatrix", "batched_matvec"]


class SparseMatrix(SparseTensor):
    """A sparse matrix (n_rows, n_cols), or a batch (B, n_rows, n_cols), with a fixed pattern.

    values: (nnz,) or (B, nnz), differentiable; the pattern is shared, never copied.
    Construct from a pattern with :meth:`from_pattern`, or like a
    ``torch_sla.SparseTensor`` from COO indices (duplicates are summed).
    """

    def __init__(
        self,
        values: Tensor,
        row_indices: Tensor | None = None,
        col_indices: Tensor | None = None,
        shape: tuple[int, ...] | None = None,
        sparse_dim: tuple[int, int] = (-2, -1),
        *,
        pattern: SparsityPattern | None = None,
    ):
        if pattern is None:
            if row_indices is None or col_indices is None or shape is None:
                raise TypeError("SparseMatrix needs either pattern= or row_indices, col_indices and shape")
            if tuple(sparse_dim) not in ((-2, -1), (len(shape) - 2, len(shape) - 1)):
                raise ValueError(f"SparseMatrix supports sparse_dim=(-2, -1) only, got {sparse_dim}")
            if values.shape[-1] != row_indices.numel() or row_indices.shape != col_indices.shape:
                raise ValueError(
                    f"values (..., nnz) must match row_indices and col_indices (nnz,); got {tuple(values.shape)}, "
                    f"{tuple(row_indices.shape)}, {tuple(col_indices.shape)}"
                )
            pattern, slot = SparsityPattern.from_coo(row_indices, col_indices, shape[-2:])
            if pattern.nnz != slot.numel() or not torch.equal(slot, torch.arange(slot.numel(), device=slot.device)):
                values = values.new_zeros(values.shape[:-1] + (pattern.nnz,)).index_add(-1, slot, values)
        if not isinstance(values, Tensor) or values.shape[-1] != pattern.nnz or values.ndim not in (1, 2):
            raise ValueError(
                f"values must have shape (nnz,) or (B, nnz) with nnz={pattern.nnz}, got "
                f"{tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__}"
            )
        pattern = pattern.to(values.device)
        self.pattern = pattern
        super().__init__(values, pattern.rows, pattern.cols, tuple(values.shape[:-1]) + pattern.shape)

    @classmethod
    def from_pattern(cls, pattern: SparsityPattern, values: Tensor) -> "SparseMatrix":
        """A matrix on ``pattern`` with values (nnz,) or (B, nnz)."""
        return cls(values, pattern=pattern)

    @classmethod
    def from_scipy(cls, matrix, dtype: torch.dtype = torch.float64, device=None) -> "SparseMatrix":
        """A matrix from any scipy.sparse matrix or array."""
        coo = scipy.sparse.coo_array(matrix)
        rows = torch.as_tensor(coo.row.astype(np.int64), device=device)
        cols = torch.as_tensor(coo.col.astype(np.int64), device=device)
        values = torch.as_tensor(coo.data, dtype=dtype, device=device)
        return cls(values, rows, cols, coo.shape)

    def _with_values(self, values: Tensor, pattern: SparsityPattern | None = None) -> "SparseMatrix":
        return SparseMatrix(values, pattern=pattern or self.pattern)

    # -- dtype and device -------------------------------------------------------------

    def to(self, device=None, dtype: torch.dtype | None = None) -> "SparseMatrix":  # type: ignore[override]
        """Move to a device and/or cast the values (the pattern is cached per device)."""
        if isinstance(device, torch.dtype):
            device, dtype = None, device
        values = self.values.to(device=device, dtype=dtype)
        if values is self.values:  # nothing to move or cast: this matrix itself, as Tensor.to returns self
            return self
        return self._with_values(values, self.pattern.to(values.device))

    def double(self) -> "SparseMatrix":
        return self.to(dtype=torch.float64)

    def float(self) -> "SparseMatrix":
        return self.to(dtype=torch.float32)

    def cpu(self) -> "SparseMatrix":
        return self.to("cpu")

    def cuda(self, device=None) -> "SparseMatrix":
        return self.to("cuda" if device is None else torch.device("cuda", device))

    def detach(self) -> "SparseMatrix":
        return self._with_values(self.values.detach())

    # -- algebra ------------------------------------------------------------------------

    @property
    def T(self) -> "SparseMatrix":  # type: ignore[override]
        """The transpose, on the transposed pattern (values permuted, differentiable)."""
        pattern_t, perm = self.pattern.transpose
        return self._with_values(self.values[..., perm], pattern_t)

    def __matmul__(self, x: Any):
        """A @ x for x of shape (n_cols,) or (n_cols, k); batched: (B, n_cols[, k]) or unbatched x."""
        if isinstance(x, SparseTensor):
            return super().__matmul__(x)
        n_rows, n_cols = self.pattern.shape
        values = self.values if self.is_batched else self.values.unsqueeze(0)
        batch = values.shape[0]
        if isinstance(x, Tensor) and x.ndim in (1, 2) and x.shape[0] == n_cols:  # one x, broadcast over a batch
            columns = x.reshape(1, n_cols, -1).expand(batch, n_cols, -1)
            out_shape = (batch,) * self.is_batched + (n_rows,) + tuple(x.shape[1:])
        elif self.is_batched and isinstance(x, Tensor) and x.ndim in (2, 3) and x.shape[:2] == (batch, n_cols):
            columns = x.reshape(batch, n_cols, -1)
            out_shape = (batch, n_rows) + tuple(x.shape[2:])
        else:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"cannot multiply a {tuple(self.shape)} matrix by {got}")
        return batched_matvec(values, self.pattern.rows, self.pattern.cols, columns, n_rows).reshape(out_shape)

    def _same_pattern(self, other: "SparseMatrix", op: str) -> None:
        if not isinstance(other, SparseMatrix):
            raise TypeError(f"{op} needs a SparseMatrix or a scalar, got {type(other).__name__}")
        if self.pattern != other.pattern:
            raise ValueError(f"{op} of matrices with different sparsity patterns is not supported")

    def __add__(self, other):
        if isinstance(other, SparseMatrix):
            self._same_pattern(other, "+")
            return self._with_values(self.values + other.values)
        return NotImplemented

    def __sub__(self, other):
        if isinstance(other, SparseMatrix):
            self._same_pattern(other, "-")
            return self._with_values(self.values - other.values)
        return NotImplemented

    def __mul__(self, scalar):
        if isinstance(scalar, (int, float)) or (isinstance(scalar, Tensor) and scalar.ndim == 0):
            return self._with_values(self.values * scalar)
        return NotImplemented

    __rmul__ = __mul__

    def __neg__(self) -> "SparseMatrix":
        return self._with_values(-self.values)

    def to_dense(self) -> Tensor:  # type: ignore[override]
        """Dense (n_rows, n_cols) or (B, n_rows, n_cols) tensor, differentiable in the values."""
        return self.pattern.to_dense(self.values)

    def to_scipy(self, batch_index: int | None = None) -> scipy.sparse.csr_array:
        """The values (detached) as a SciPy CSR array; pick one matrix of a batch with batch_index."""
        values = self.values
        if self.is_batched:
            if batch_index is None:
                raise ValueError(f"to_scipy of a batch of {values.shape[0]} matrices needs batch_index")
            values = values[batch_index]
        indptr, indices = self.pattern.csr
        return scipy.sparse.csr_array((values.detach().cpu().numpy(), indices, indptr), shape=self.pattern.shape)

    # -- solve --------------------------------------------------------------------------

    def solve(self, b: Tensor, backend: str = "auto", **options) -> Tensor:  # type: ignore[override]
        """Solve A u = b with an adjoint backward; see :func:`tmcore.core.linalg.solvers.solve`.

        b: (n,) or (n, k) for one matrix; (B, n), (B, n, k) or a shared (n,) for a batch.
        options: ``method``, ``rtol``, ``maxiter``, ``check``.
        """
        return solvers.solve(self, b, backend=backend, **options)

    def __repr__(self) -> str:
        batch = f"batch={self.values.shape[0]}, " if self.is_batched else ""
        return (
            f"SparseMatrix({batch}shape={self.pattern.shape}, nnz={self.pattern.nnz}, "
            f"dtype={self.values.dtype}, device={self.values.device})"
        )
