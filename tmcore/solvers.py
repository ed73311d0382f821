"""Sparse linear solves with an adjoint backward that reuses the forward factorisation.

``solve(A, b)`` solves A u = b for a ``SparseMatrix`` A (one matrix or a batch) and is
differentiable in A's values and in b through :class:`SparseSolve`, our own
``torch.autograd.Function``. Its backward solves one adjoint system A^T lam = dL/du with
the factorisation the forward computed (never a second one) and returns

    dL/db = lam,        dL/dA_ij = -lam_i u_j  (on the pattern only).

Backends sit behind one door, :func:`factorize`:

- ``"splu"``: SciPy's SuperLU, always available; symmetric mode and an A + A^T
  ordering for symmetric matrices. The floor every install has.
- ``"cholmod"``: CHOLMOD through scikit-sparse, when it is installed (SPD only).
- ``"dense"``: ``torch.linalg.lu_factor`` on the matrix's own device; for small
  systems and for CUDA tensors.
- ``"auto"`` (default): CHOLMOD for symmetric matrices when available, else SuperLU on
  the CPU; ``dense`` for CUDA matrices of at most ``DENSE_LIMIT`` unknowns, else the
  values go to the CPU for SuperLU and the solution comes back.

torch-sla's own ``solve`` is not used for the adjoint (see NOTES.md): its default path
re-factorises the transpose in the backward and its cached AMG path can return stale
answers. Direct solves run in float64 whatever the input dtype; the result is cast back.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse
import scipy.sparse.linalg
import torch
from torch import Tensor

from .errors import SingularMatrixError, SolverError
from .sparse import SparseMatrix, SparsityPattern

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "splu", "cholmod", "dense")
DENSE_LIMIT = 4096
# A pivot smaller than this times the largest one marks the matrix singular to working precision.
PIVOT_RATIO_TOL = 1e3 * np.finfo(np.float64).eps
# Relative residual above which a direct solve is reported as failed.
RESIDUAL_TOL = 1e-8


@dataclass
class SolverStats:
    """Counters for tests and benchmarks: how many factorisations and solves ran."""

    factorizations: int = 0
    solves: int = 0
    by_backend: dict[str, int] = field(default_factory=dict)

    def reset(self) -> None:
        self.factorizations = 0
        self.solves = 0
        self.by_backend.clear()


stats = SolverStats()


# -- backends ---------------------------------------------------------------------------


class Factorization:
    """A factorised matrix: ``solve(b, transpose)`` for b (n,) or (n, k) float64 numpy arrays."""

    backend = "?"

    def solve(self, b: np.ndarray, transpose: bool = False) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


class _SuperLU(Factorization):
    backend = "splu"

    def __init__(self, matrix: scipy.sparse.csc_array, symmetric: bool):
        options = {"SymmetricMode": True} if symmetric else {}
        try:
            self.lu = scipy.sparse.linalg.splu(
                matrix,
                permc_spec="MMD_AT_PLUS_A" if symmetric else "COLAMD",
                diag_pivot_thresh=0.0 if symmetric else 1.0,
                options=options,
            )
        except RuntimeError as exc:  # "Factor is exactly singular"
            raise SingularMatrixError(f"the matrix is singular: SuperLU reports {exc}") from None
        pivots = np.abs(self.lu.U.diagonal())
        if not np.all(np.isfinite(pivots)) or pivots.min() <= PIVOT_RATIO_TOL * pivots.max():
            raise SingularMatrixError(
                f"the matrix is singular to working precision (smallest/largest LU pivot "
                f"{pivots.min():.3e}/{pivots.max():.3e}); is a Dirichlet condition missing "
                "(a pure Neumann problem has a null space)?"
            )

    def solve(self, b, transpose=False):
        return self.lu.solve(b, trans="T" if transpose else "N")


class _Cholmod(Factorization):
    backend = "cholmod"

    def __init__(self, matrix: scipy.sparse.csc_array):
        from sksparse.cholmod import CholmodNotPositiveDefiniteError, cholesky

        try:
            self.factor = cholesky(scipy.sparse.csc_matrix(matrix))
        except CholmodNotPositiveDefiniteError as exc:
            raise SingularMatrixError(f"CHOLMOD: the matrix is not positive definite ({exc})") from None

    def solve(self, b, transpose=False):  # symmetric: A^T = A
        return self.factor(b)


class _Dense(Factorization):
    backend = "dense"

    def __init__(self, dense: Tensor):
        self.lu, self.pivots, info = torch.linalg.lu_factor_ex(dense)
        diag = self.lu.diagonal().abs()
        if int(info) != 0 or diag.min() <= PIVOT_RATIO_TOL * diag.max():
            raise SingularMatrixError("the matrix is singular to working precision (dense LU)")

    def solve(self, b, transpose=False):
        rhs = b if b.ndim == 2 else b.unsqueeze(-1)
        out = torch.linalg.lu_solve(self.lu, self.pivots, rhs, adjoint=transpose)
        return out if b.ndim == 2 else out.squeeze(-1)


def _cholmod_available() -> bool:
    try:
        import sksparse.cholmod  # noqa: F401
    except ImportError:
        return False
    return True


def _is_symmetric(pattern: SparsityPattern, values: Tensor) -> bool:
    if not pattern.is_structurally_symmetric:
        return False
    _, perm = pattern.transpose
    scale = values.abs().max()
    return bool((values - values[perm]).abs().max() <= 1e-12 * scale)


def choose_backend(pattern: SparsityPattern, values: Tensor, backend: str) -> str:
    """The backend ``"auto"`` resolves to for this matrix (see the module docstring)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "cholmod" and not _cholmod_available():
        raise ValueError("backend='cholmod' needs scikit-sparse (pip install scikit-sparse)")
    if backend != "auto":
        return backend
    if values.device.type != "cpu" and pattern.shape[0] <= DENSE_LIMIT:
        return "dense"
    if _cholmod_available() and _is_symmetric(pattern, values):
        return "cholmod"
    return "splu"


def factorize(pattern: SparsityPattern, values: Tensor, backend: str = "auto") -> Factorization:
    """Factorise the matrix with ``values`` (nnz,) on ``pattern``; raises SingularMatrixError."""
    backend = choose_backend(pattern, values, backend)
    stats.factorizations += 1
    stats.by_backend[backend] = stats.by_backend.get(backend, 0) + 1
    if backend == "dense":
        return _Dense(SparseMatrix.from_pattern(pattern, values.detach().to(torch.float64)).to_dense())
    perm, indptr, indices = pattern.csc
    data = values.detach().to(device="cpu", dtype=torch.float64).numpy()[perm]
    matrix = scipy.sparse.csc_array((data, indices, indptr), shape=pattern.shape)
    if backend == "cholmod":
        return _Cholmod(matrix)
    return _SuperLU(matrix, symmetric=_is_symmetric(pattern, values))


def _apply(factor: Factorization, rhs: Tensor, transpose: bool) -> Tensor:
    """Solve with a factorisation for rhs (n, k), returning a tensor like rhs."""
    stats.solves += 1
    if isinstance(factor, _Dense):
        return factor.solve(rhs.detach().to(factor.lu), transpose).to(rhs)
    out = factor.solve(rhs.detach().to(device="cpu", dtype=torch.float64).numpy(), transpose)
    return torch.from_numpy(np.ascontiguousarray(out)).to(rhs)


# -- the autograd function --------------------------------------------------------------


class SparseSolve(torch.autograd.Function):
    """u = A^{-1} b for values (B, nnz) and b (B, n, k); backward by one adjoint solve per matrix."""

    @staticmethod
    def forward(ctx, values: Tensor, b: Tensor, pattern: SparsityPattern, backend: str, check: bool):
        factors = [factorize(pattern, values[i], backend) for i in range(values.shape[0])]
        u = torch.stack([_apply(f, b[i], transpose=False) for i, f in enumerate(factors)])
        if check:
            _check_residual(values, pattern, b, u)
        ctx.factors = factors
        ctx.pattern = pattern
        ctx.save_for_backward(u)
        return u

    @staticmethod
    def backward(ctx, grad_u: Tensor):
        (u,) = ctx.saved_tensors
        lam = torch.stack([_apply(f, grad_u[i], transpose=True) for i, f in enumerate(ctx.factors)])
        grad_values = None
        if ctx.needs_input_grad[0]:
            rows, cols = ctx.pattern.rows, ctx.pattern.cols
            grad_values = -(lam[:, rows, :] * u[:, cols, :]).sum(-1)
        return grad_values, lam, None, None, None


def _check_residual(values: Tensor, pattern: SparsityPattern, b: Tensor, u: Tensor) -> None:
    for i in range(values.shape[0]):
        matrix = SparseMatrix.from_pattern(pattern, values[i].detach())
        residual = (matrix @ u[i] - b[i]).norm()
        scale = b[i].norm()
        if not torch.isfinite(residual) or residual > RESIDUAL_TOL * max(float(scale), 1e-300):
            raise SolverError(
                f"the solve did not reach a trustworthy solution: relative residual "
                f"{float(residual / scale) if scale > 0 else float(residual):.3e} > {RESIDUAL_TOL:g} "
                "(the matrix is probably singular or extremely ill-conditioned)"
            )


def _normalise_rhs(matrix: SparseMatrix, b: Tensor) -> tuple[Tensor, Tensor, tuple[int, ...]]:
    """Values (B, nnz), b (B, n, k) and the output shape for the solution."""
    n = matrix.pattern.shape[0]
    values = matrix.values
    batch = values.shape[0] if values.ndim == 2 else None
    if batch is None:
        values = values.unsqueeze(0)
        if b.ndim in (1, 2) and b.shape[0] == n:
            out_shape = tuple(b.shape)
            b = b.reshape(1, n, -1)
        else:
            raise ValueError(f"b must have shape ({n},) or ({n}, k) for a {n} x {n} matrix, got {tuple(b.shape)}")
    else:
        if b.ndim == 1 and b.shape[0] == n:
            b = b.expand(batch, n)
        if b.ndim in (2, 3) and b.shape[0] == batch and b.shape[1] == n:
            out_shape = tuple(b.shape)
            b = b.reshape(batch, n, -1)
        else:
            raise ValueError(
                f"b must have shape ({batch}, {n}), ({batch}, {n}, k) or ({n},) for a batch of {batch} "
                f"{n} x {n} matrices, got {tuple(b.shape)}"
            )
    return values, b, out_shape


def solve(matrix: SparseMatrix, b: Tensor, backend: str = "auto", check: bool = True) -> Tensor:
    """Solve A u = b, differentiable in A's values and in b (one adjoint solve per matrix).

    Args:
        matrix: square SparseMatrix, (n, n) or a batch (B, n, n).
        b: (n,) or (n, k) columns for one matrix; (B, n), (B, n, k) or a shared (n,) for a batch.
        backend: ``"auto"``, ``"splu"``, ``"cholmod"`` or ``"dense"`` (module docstring).
        check: verify the relative residual (cheap: one matrix-vector product).

    Returns:
        u with the shape of b (broadcast over the batch); dtype and device of b.
    """
    if not isinstance(matrix, SparseMatrix):
        raise TypeError(f"matrix must be a tmcore SparseMatrix, got {type(matrix).__name__}")
    if not isinstance(b, Tensor):
        raise TypeError(f"b must be a torch.Tensor, got {type(b).__name__}")
    n_rows, n_cols = matrix.pattern.shape
    if n_rows != n_cols:
        raise ValueError(f"solve needs a square matrix, got {n_rows} x {n_cols}")
    if not b.is_floating_point() or not matrix.values.is_floating_point():
        raise TypeError(f"solve needs real floating-point values and b, got {matrix.values.dtype} and {b.dtype}")
    if b.dtype != matrix.values.dtype:
        raise TypeError(
            f"matrix values are {matrix.values.dtype} but b is {b.dtype}; cast one (e.g. .double()) so they match"
        )
    if b.device != matrix.values.device:
        raise ValueError(f"matrix is on {matrix.values.device} but b is on {b.device}")
    if b.dtype != torch.float64 and backend != "dense":
        warnings.warn(
            f"solving a {b.dtype} system: the factorisation runs in float64 but inputs and result keep "
            f"{b.dtype}'s ~{int(-np.log10(torch.finfo(b.dtype).eps))} digits",
            stacklevel=2,
        )
    if not torch.isfinite(matrix.values).all():
        raise SolverError("the matrix values contain NaN or inf")
    if not torch.isfinite(b).all():
        raise SolverError("b contains NaN or inf")
    values, b3, out_shape = _normalise_rhs(matrix, b)
    u = SparseSolve.apply(values, b3, matrix.pattern, backend, check)
    return u.reshape(out_shape)


__all__ = ["BACKENDS", "Factorization", "SparseSolve", "choose_backend", "factorize", "solve", "stats"]
