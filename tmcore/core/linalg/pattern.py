"""The sparsity pattern of a sparse matrix, and products with values on it.

``SparsityPattern`` holds the structure (sorted, unique COO indices) and everything
derived from it once: CSC/CSR index arrays for the solvers, the transpose permutation
and a content key. :func:`batched_matvec` multiplies a batch of matrices given by values
(B, nnz) on a pattern's indices. This module is the bottom of :mod:`tmcore.core.linalg`:
it imports nothing else from the package.
"""

from __future__ import annotations

import hashlib
from functools import cached_property

import numpy as np
import torch
from torch import Tensor

__all__ = ["SparsityPattern", "batched_matvec"]


class SparsityPattern:
    """The non-zero structure of an (n_rows, n_cols) sparse matrix.

    rows, cols: (nnz,) long tensors, sorted row-major without duplicates. Patterns
    compare equal by content, so two assemblers on the same mesh share a pattern even
    when they built it separately.
    """

    def __init__(self, rows: Tensor, cols: Tensor, shape: tuple[int, int]):
        self.rows = rows
        self.cols = cols
        self.shape = (int(shape[0]), int(shape[1]))
        self._per_device: dict[torch.device, SparsityPattern] = {rows.device: self}
        # what solvers may reuse across matrices with this pattern (symbolic analysis,
        # AMG hierarchy); it lives and dies with the pattern, so it is never applied to
        # another pattern
        self.solver_cache: dict[str, object] = {}
        # index maps derived from this pattern by other modules (a Condenser's split, keyed
        # by its mask), shared by every user of the pattern
        self.derived: dict[object, object] = {}

    @classmethod
    def from_coo(cls, rows: Tensor, cols: Tensor, shape: tuple[int, int]) -> tuple["SparsityPattern", Tensor]:
        """The pattern of possibly repeated, unsorted entries, and the map (len(rows),) from entries to slots."""
        return cls.from_keys(rows.to(torch.long) * int(shape[1]) + cols.to(torch.long), shape)

    @classmethod
    def from_keys(cls, keys: Tensor, shape: tuple[int, int]) -> tuple["SparsityPattern", Tensor]:
        """:meth:`from_coo` for entries given as row-major keys ``row * n_cols + col`` (long),
        which saves the two index arrays when the entries are generated (assembly)."""
        n_cols = int(shape[1])
        unique, slot = torch.unique(keys, sorted=True, return_inverse=True)
        return cls(unique // n_cols, unique % n_cols, shape), slot

    @property
    def nnz(self) -> int:
        return self.rows.numel()

    @property
    def device(self) -> torch.device:
        return self.rows.device

    def to(self, device) -> "SparsityPattern":
        """This pattern on another device (cached, so repeated moves are free)."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        hit = self._per_device.get(device)
        if hit is None:
            hit = SparsityPattern(self.rows.to(device), self.cols.to(device), self.shape)
            hit._per_device = self._per_device
            self._per_device[device] = hit
        return hit

    @cached_property
    def key(self) -> str:
        """A content hash of shape and indices: equal patterns have equal keys."""
        digest = hashlib.sha256(repr(self.shape).encode())
        digest.update(self.rows.cpu().numpy().tobytes())
        digest.update(self.cols.cpu().numpy().tobytes())
        return digest.hexdigest()

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, SparsityPattern):
            return NotImplemented
        return self.shape == other.shape and self.nnz == other.nnz and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def slots(self, rows: Tensor, cols: Tensor) -> Tensor:
        """Slot index in the pattern of each (row, col) pair; ValueError if a pair is not in it."""
        keys = self.rows * self.shape[1] + self.cols
        query = rows.to(torch.long) * self.shape[1] + cols.to(torch.long)
        slot = torch.searchsorted(keys, query).clamp_max(keys.numel() - 1)
        if not torch.equal(keys[slot], query):
            raise ValueError("entries outside the sparsity pattern")
        return slot

    @cached_property
    def transpose(self) -> tuple["SparsityPattern", Tensor]:
        """The transposed pattern and the permutation (nnz,) taking values to its slot order."""
        keys_t = self.cols * self.shape[0] + self.rows
        perm = torch.argsort(keys_t)
        pattern_t = SparsityPattern(self.cols[perm], self.rows[perm], (self.shape[1], self.shape[0]))
        return pattern_t, perm

    @cached_property
    def is_structurally_symmetric(self) -> bool:
        if self.shape[0] != self.shape[1]:
            return False
        pattern_t, _ = self.transpose
        return torch.equal(pattern_t.rows, self.rows) and torch.equal(pattern_t.cols, self.cols)

    @cached_property
    def csc(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(perm, indptr, indices) so that ``csc_matrix((values[perm], indices, indptr))`` is the matrix."""
        pattern_t, perm = self.transpose
        indptr = np.zeros(self.shape[1] + 1, dtype=np.int64)
        np.cumsum(np.bincount(pattern_t.rows.cpu().numpy(), minlength=self.shape[1]), out=indptr[1:])
        return perm.cpu().numpy(), *_scipy_index_arrays(indptr, pattern_t.cols.cpu().numpy())

    @cached_property
    def csr(self) -> tuple[np.ndarray, np.ndarray]:
        """(indptr, indices) so that ``csr_array((values, indices, indptr))`` is the matrix (values in slot order)."""
        indptr = np.zeros(self.shape[0] + 1, dtype=np.int64)
        np.cumsum(np.bincount(self.rows.cpu().numpy(), minlength=self.shape[0]), out=indptr[1:])
        return _scipy_index_arrays(indptr, self.cols.cpu().numpy())

    @cached_property
    def host_index(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows, cols) as NumPy arrays on the host, for the NumPy fast paths of small CPU work."""
        return self.rows.cpu().numpy(), self.cols.cpu().numpy()

    @cached_property
    def diagonal_slots(self) -> Tensor:
        """Slots of the pattern's diagonal entries (at most min(shape),)."""
        return torch.nonzero(self.rows == self.cols).flatten()

    def to_dense(self, values: Tensor) -> Tensor:
        """The dense matrices (..., n_rows, n_cols) of values (..., nnz) on this pattern, differentiable."""
        flat_index = self.rows * self.shape[1] + self.cols
        dense = values.new_zeros(values.shape[:-1] + (self.shape[0] * self.shape[1],))
        return dense.index_add(-1, flat_index, values).reshape(values.shape[:-1] + self.shape)

    def __repr__(self) -> str:
        return f"SparsityPattern(shape={self.shape}, nnz={self.nnz}, device={self.device})"


def batched_matvec(values: Tensor, rows: Tensor, cols: Tensor, x: Tensor, n_rows: int | None = None) -> Tensor:
    """A_i x_i for values (B, nnz) at (rows, cols) and x (B, n_cols, k): (B, n_rows, k).

    Scattered along the last dimension of (B, k, n): ``index_add`` along a middle
    dimension of (B, n, k) measured ~90x slower here (25 ms against 0.3 ms at 1e4 unknowns).
    n_rows defaults to n_cols (a square matrix).
    """
    columns = x.transpose(1, 2)  # (B, k, n_cols)
    products = values.unsqueeze(1) * columns[:, :, cols]
    out = products.new_zeros(columns.shape[:2] + (columns.shape[2] if n_rows is None else n_rows,))
    return out.index_add_(2, rows, products).transpose(1, 2)


def _scipy_index_arrays(indptr: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """indptr and indices in the dtype SciPy would choose (int32 when the values fit), so that
    building a SciPy matrix on them neither scans nor copies them (0.1 ms at 1e3 unknowns)."""
    if max(indptr[-1], indices.max(initial=0)) < np.iinfo(np.int32).max:
        return indptr.astype(np.int32), indices.astype(np.int32)
    return indptr, indices
