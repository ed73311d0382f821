"""Sparse linear solves with an adjoint backward that reuses the forward's work.

``solve(A, b)`` solves A u = b for a ``SparseMatrix`` A (one matrix or a batch) and is
differentiable in A's values and in b through :class:`SparseSolve`, our own
``torch.autograd.Function``. Its backward solves one adjoint system A^T lam = dL/du with
the factorisation (or preconditioner) the forward built, never a second one, and returns

    dL/db = lam,        dL/dA_ij = -lam_i u_j  (on the pattern only).

Backends sit behind one door, :func:`factorize`:

========== ================================================================= ===========
backend    what                                                              reuse
========== ================================================================= ===========
splu       SciPy SuperLU; symmetric mode with an A + A^T ordering for        none
           symmetric matrices. Always available: the floor.
cholmod    CHOLMOD (scikit-sparse, optional), SPD matrices                   symbolic
                                                                             analysis
amg        pyamg Ruge-Stuben AMG preconditioning CG (``method="cg"``, SPD)   hierarchy
           or GMRES (``method="gmres"``), to ``rtol``
torch-cg   Jacobi-preconditioned CG in torch on the matrix's own device      none
           (CPU or CUDA), batched over right-hand sides, to ``rtol``
dense      ``torch.linalg.lu_factor`` on the matrix's device; small systems  none
pardiso    MKL PARDISO (optional, :mod:`tmcore.core.linalg.pardiso`), SPD matrices;      analysis
           a batch's factorisations run on several threads (GIL released)  (pooled)
========== ================================================================= ===========

``"auto"`` (the default) picks by device, size, sparsity and symmetry (see
:func:`choose_backend`). On the CPU, symmetric matrices with a positive diagonal go to a
direct solver while it is the faster choice, and to AMG-CG above that: with CHOLMOD up to
``CHOLMOD_LIMIT`` unknowns, with SuperLU up to ``DIRECT_LIMIT``. For 3-D-like sparsity
(more than 10 non-zeros per row), where fill-in makes factorisations expensive early,
SuperLU (symmetric mode, faster than CHOLMOD there) up to ``DIRECT_LIMIT_3D``, AMG-CG
above. Other matrices go to SuperLU. On CUDA:
``dense`` up to ``DENSE_LIMIT`` unknowns, ``torch-cg`` above. The limits come from the
benchmark suite (``make bench``) on a 2-core CPU. Override with ``backend=``,
``method=``, ``rtol=``, ``maxiter=``.

A batch of matrices, values (B, nnz) on one pattern, goes through :func:`factorize_batch`:
one vectorised symmetry test and one backend for the batch, one gather of all values to
CSC order, one symbolic analysis (CHOLMOD) and B numeric factorisations, one vectorised
residual check. Under ``"auto"`` an SPD batch goes to PARDISO when MKL is installed, since
SuperLU and CHOLMOD hold the GIL and cannot factorise two matrices at once; on a GPU
``dense`` factorises the batch in one batched LU and ``torch-cg`` iterates on all of it at once.

"Reuse" is across calls on matrices with the same pattern *object* (assemblers on one
mesh and one Condenser share it): CHOLMOD's ordering and symbolic factorisation, and the
AMG hierarchy, which stays a valid preconditioner when the values change and is rebuilt
when CG starts needing many more iterations than it did when it was built. Correctness
never rests on reuse: iterative solves check the true residual of the current matrix.

torch-sla's own ``solve`` is not used (see NOTES.md): its default path re-factorises the
transpose in the backward, and its cached AMG path fingerprints matrices by the sum of
|values| and can return stale answers. Direct solves run in float64 whatever the input
dtype; the result is cast back. SciPy's SuperLU and pyamg run on one thread; CHOLMOD
uses the BLAS's threads; torch's own kernels follow ``torch.set_num_threads``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import warnings
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse
import scipy.sparse.linalg
import torch
from torch import Tensor

from tmcore.core.errors import SingularMatrixError, SolverError
from tmcore.core.linalg.sparse import SparseMatrix, SparsityPattern, batched_matvec

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "splu", "cholmod", "amg", "torch-cg", "dense", "pardiso")
ITERATIVE = ("amg", "torch-cg")
# Unknowns up to which "auto" uses a direct solver on the CPU / a dense LU on a GPU.
DIRECT_LIMIT = 30_000
CHOLMOD_LIMIT = 30_000
DIRECT_LIMIT_3D = 4_000
DENSE_LIMIT = 4096
DEFAULT_RTOL = 1e-10
# A pivot smaller than this times the largest one marks the matrix singular to working precision.
PIVOT_RATIO_TOL = 1e3 * np.finfo(np.float64).eps
# Relative residual above which a direct solve is reported as failed.
RESIDUAL_TOL = 1e-8
# Rebuild an AMG hierarchy once a reused one needs this many times its initial iterations.
AMG_REBUILD_RATIO = 1.5


@dataclass
class SolverStats:
    """Counters for tests and benchmarks.

    factorizations: numeric factorisations and preconditioner builds;
    analyses: symbolic analyses (orderings) and AMG hierarchies built;
    reuses: times an analysis or hierarchy of an earlier call was reused;
    solves: triangular-solve pairs or Krylov solves (one per right-hand-side block).
    """

    factorizations: int = 0
    analyses: int = 0
    reuses: int = 0
    solves: int = 0
    by_backend: dict[str, int] = field(default_factory=dict)

    def reset(self) -> None:
        self.factorizations = self.analyses = self.reuses = self.solves = 0
        self.by_backend.clear()


stats = SolverStats()


@dataclass(frozen=True)
class SolveOptions:
    """How to solve: backend (see the module docstring), Krylov method, tolerance, iteration cap."""

    backend: str = "auto"
    method: str | None = None
    rtol: float = DEFAULT_RTOL
    maxiter: int | None = None
    check: bool = True


# -- backends ---------------------------------------------------------------------------


class Factorization:
    """A prepared matrix: ``solve(rhs, transpose)`` for rhs (n, k) tensors, result like rhs."""

    backend = "?"
    iterative = False

    def solve(self, rhs: Tensor, transpose: bool = False) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


def _to_numpy(rhs: Tensor) -> np.ndarray:
    return rhs.detach().to(device="cpu", dtype=torch.float64).numpy()


def _from_numpy(array: np.ndarray, like: Tensor) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).to(like)


class _SuperLU(Factorization):
    backend = "splu"

    def __init__(self, matrix: scipy.sparse.csc_array, symmetric: bool):
        try:
            self.lu = scipy.sparse.linalg.splu(
                matrix,
                permc_spec="MMD_AT_PLUS_A" if symmetric else "COLAMD",
                diag_pivot_thresh=0.0 if symmetric else 1.0,
                options={"SymmetricMode": True} if symmetric else {},
            )
        except RuntimeError as exc:  # "Factor is exactly singular"
            raise SingularMatrixError(f"the matrix is singular: SuperLU reports {exc}") from None
        _check_pivots(np.abs(self.lu.U.diagonal()), "LU")

    def solve(self, rhs, transpose=False):
        return _from_numpy(self.lu.solve(_to_numpy(rhs), trans="T" if transpose else "N"), rhs)


class _Cholmod(Factorization):
    backend = "cholmod"

    def __init__(self, matrix: scipy.sparse.csc_matrix, cache: dict):
        from sksparse.cholmod import CholmodNotPositiveDefiniteError, cholesky

        # The first factorisation (analysis and numbers in one call) is cached and later
        # matrices on the pattern factorise from a copy of its analysis. Analysing
        # separately would allocate, copy and free one more factor per call: 1 ms of a
        # 3.5 ms solve at 512 unknowns in 3-D.
        cached = cache.get("cholmod")
        try:
            if cached is None:
                self.factor = cache["cholmod"] = cholesky(matrix)
                stats.analyses += 1
            else:
                self.factor = cached.cholesky(matrix)
                stats.reuses += 1
        except CholmodNotPositiveDefiniteError as exc:
            raise SingularMatrixError(f"CHOLMOD: the matrix is not positive definite ({exc})") from None
        _check_pivots(self.factor.D(), "LDL^T")

    def solve(self, rhs, transpose=False):  # symmetric: A^T = A
        return _from_numpy(self.factor(_to_numpy(rhs)), rhs)


class _AMG(Factorization):
    """pyamg Ruge-Stuben hierarchy preconditioning a SciPy Krylov method on the current matrix."""

    backend = "amg"
    iterative = True

    def __init__(self, matrix: scipy.sparse.csr_array, cache: dict, symmetric: bool, options: SolveOptions):
        import pyamg

        self.method = options.method or ("cg" if symmetric else "gmres")
        if self.method not in ("cg", "gmres"):
            raise ValueError(f"method for backend 'amg' must be 'cg' or 'gmres', got {options.method!r}")
        if self.method == "cg" and not symmetric:
            raise ValueError("method='cg' needs a symmetric matrix; use method='gmres' or a direct backend")
        self.matrix = scipy.sparse.csr_matrix(matrix)
        self.rtol, self.maxiter = options.rtol, options.maxiter or max(200, matrix.shape[0] // 10)
        self.cache = cache
        entry = cache.get("amg")
        if entry is None or entry["stale"]:
            try:
                with np.errstate(all="ignore"):
                    hierarchy = pyamg.ruge_stuben_solver(self.matrix)
            except (ValueError, ZeroDivisionError, np.linalg.LinAlgError) as exc:
                raise SolverError(f"AMG set-up failed ({exc}); the matrix is not suited to AMG, use a direct backend") from None
            entry = cache["amg"] = {"preconditioner": hierarchy.aspreconditioner(cycle="V"), "baseline": None, "stale": False}
            stats.analyses += 1
            stats.factorizations += 1
        else:
            stats.reuses += 1
        self.entry = entry

    def _krylov(self, matrix, b: np.ndarray) -> tuple[np.ndarray, int]:
        iterations = 0

        def count(_):
            nonlocal iterations
            iterations += 1

        common = dict(rtol=self.rtol, atol=0.0, maxiter=self.maxiter, M=self.entry["preconditioner"], callback=count)
        try:
            with np.errstate(all="ignore"):  # a breakdown shows as a non-finite residual, checked by the caller
                if self.method == "cg":
                    x, _ = scipy.sparse.linalg.cg(matrix, b, **common)
                else:
                    x, _ = scipy.sparse.linalg.gmres(matrix, b, callback_type="pr_norm", **common)
        except (ValueError, ZeroDivisionError, np.linalg.LinAlgError) as exc:  # e.g. NaN in the coarse-grid solve
            raise SolverError(f"AMG-{self.method.upper()} broke down after {iterations} iterations ({exc})") from None
        return x, iterations

    def solve(self, rhs, transpose=False):
        matrix = self.matrix.T.tocsr() if transpose and self.method != "cg" else self.matrix
        b_all = _to_numpy(rhs)
        out = np.zeros_like(b_all)
        for j in range(b_all.shape[1]):
            b = b_all[:, j]
            scale = np.linalg.norm(b)
            if scale == 0.0:
                continue
            # normalised right-hand side: the relative tolerance then means the same for
            # a tiny adjoint source as for the forward load
            x, iterations = self._krylov(matrix, b / scale)
            residual = np.linalg.norm(matrix @ x - b / scale)
            if not np.isfinite(residual) or residual > max(10 * self.rtol, 1e-14):
                raise SolverError(
                    f"AMG-{self.method.upper()} did not converge: relative residual {residual:.3e} after "
                    f"{iterations} iterations (rtol {self.rtol:g}, maxiter {self.maxiter}); the matrix may be "
                    "singular or indefinite, or needs a direct backend"
                )
            baseline = self.entry["baseline"]
            if baseline is None:
                self.entry["baseline"] = iterations
            elif iterations > AMG_REBUILD_RATIO * baseline + 2:
                self.entry["stale"] = True  # the next matrix gets a fresh hierarchy
            out[:, j] = x * scale
        return _from_numpy(out, rhs)


class _TorchCG(Factorization):
    """Jacobi-preconditioned CG in torch, on the matrix's device, all right-hand sides at once."""

    backend = "torch-cg"
    iterative = True

    def __init__(self, pattern: SparsityPattern, values: Tensor, options: SolveOptions):
        if options.method not in (None, "cg"):
            raise ValueError(f"method for backend 'torch-cg' must be 'cg', got {options.method!r}")
        self.matrix = SparseMatrix.from_pattern(pattern, values.detach())
        diagonal = values.new_zeros(pattern.shape[0]).index_add(0, pattern.rows, torch.where(pattern.rows == pattern.cols, values.detach(), 0.0))
        if not bool((diagonal > 0).all()):
            raise ValueError("backend 'torch-cg' needs a symmetric matrix with a positive diagonal")
        self.inverse_diagonal = 1.0 / diagonal
        self.rtol, self.maxiter = options.rtol, options.maxiter or max(1000, 10 * pattern.shape[0])

    def solve(self, rhs, transpose=False):  # symmetric
        b = rhs.detach().to(self.matrix.values.dtype)
        scale = b.norm(dim=0).clamp_min(torch.finfo(b.dtype).tiny)
        b = b / scale
        x = torch.zeros_like(b)
        r = b.clone()
        z = self.inverse_diagonal[:, None] * r
        p = z.clone()
        rz = (r * z).sum(0)
        for iteration in range(1, self.maxiter + 1):
            Ap = self.matrix @ p
            alpha = rz / (p * Ap).sum(0)
            x += alpha * p
            r -= alpha * Ap
            if bool((r.norm(dim=0) <= self.rtol).all()):
                break
            z = self.inverse_diagonal[:, None] * r
            rz_new = (r * z).sum(0)
            p = z + (rz_new / rz) * p
            rz = rz_new
        residual = float((self.matrix @ x - b).norm(dim=0).max())
        if not np.isfinite(residual) or residual > max(10 * self.rtol, 1e-14):
            raise SolverError(
                f"torch-cg did not converge: relative residual {residual:.3e} after {iteration} iterations "
                f"(rtol {self.rtol:g}, maxiter {self.maxiter})"
            )
        return (x * scale).to(rhs)


class _Dense(Factorization):
    backend = "dense"

    def __init__(self, dense: Tensor):
        self.lu, self.pivots, info = torch.linalg.lu_factor_ex(dense)
        if int(info) != 0:
            raise SingularMatrixError("the matrix is exactly singular (dense LU)")
        _check_pivots(self.lu.diagonal().abs().cpu().numpy(), "LU")

    def solve(self, rhs, transpose=False):
        return torch.linalg.lu_solve(self.lu, self.pivots, rhs.detach().to(self.lu), adjoint=transpose).to(rhs)


def _check_pivots(pivots: np.ndarray, kind: str) -> None:
    pivots = np.abs(pivots)
    if not np.all(np.isfinite(pivots)) or pivots.min() <= PIVOT_RATIO_TOL * pivots.max():
        raise SingularMatrixError(
            f"the matrix is singular to working precision (smallest/largest {kind} pivot "
            f"{pivots.min():.3e}/{pivots.max():.3e}); is a Dirichlet condition missing "
            "(a pure Neumann problem has a null space)?"
        )


@functools.lru_cache(maxsize=None)
def _module_available(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def cholmod_available() -> bool:
    """Whether scikit-sparse's CHOLMOD can be imported."""
    if not _module_available("sksparse"):
        return False
    try:
        import sksparse.cholmod  # noqa: F401
    except ImportError:
        return False
    return True


def pardiso_available() -> bool:
    """Whether MKL PARDISO can be loaded (:mod:`tmcore.core.linalg.pardiso`)."""
    from tmcore.core.linalg import pardiso

    return pardiso.available()


def _on_host(values: Tensor, *indices: Tensor) -> tuple:
    """``values`` and ``indices`` as NumPy arrays (views, no copies) when they live on the CPU
    in a NumPy dtype, else unchanged: the checks below cost ~10 us per torch call and ~1 us
    per NumPy call on a system of 1e3 unknowns, where the factorisation itself takes 0.5 ms."""
    if values.device.type == "cpu" and values.dtype in (torch.float64, torch.float32):
        return (values.detach().numpy(), *(index.numpy() for index in indices))
    return (values, *indices)


def _all_finite(values: Tensor) -> bool:
    """Whether every entry of ``values`` is finite (no NaN, no inf)."""
    (values,) = _on_host(values)
    return bool(np.isfinite(values).all()) if isinstance(values, np.ndarray) else bool(torch.isfinite(values).all())


def _is_symmetric(pattern: SparsityPattern, values: Tensor) -> bool:
    if not pattern.is_structurally_symmetric:
        return False
    if pattern.nnz == 0:
        return True
    values, perm = _on_host(values, pattern.transpose[1])
    return bool(abs(values - values[perm]).max() <= 1e-12 * abs(values).max())


def _has_positive_diagonal(pattern: SparsityPattern, values: Tensor) -> bool:
    values, diagonal = _on_host(values, pattern.diagonal_slots)
    return len(diagonal) == pattern.shape[0] and bool((values[diagonal] > 0).all())


def choose_backend(pattern: SparsityPattern, values: Tensor, backend: str = "auto", symmetric: bool | None = None) -> str:
    """The backend ``backend`` resolves to for this matrix (``"auto"``: see the module docstring)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "cholmod" and not cholmod_available():
        raise ValueError("backend='cholmod' needs scikit-sparse (apt install libsuitesparse-dev; pip install scikit-sparse)")
    if backend == "amg" and not _module_available("pyamg"):
        raise ValueError("backend='amg' needs pyamg (pip install pyamg)")
    if backend == "pardiso" and not pardiso_available():
        raise ValueError("backend='pardiso' needs the MKL runtime (pip install mkl, or set $TMCORE_MKL_RT to libmkl_rt)")
    symmetric = _is_symmetric(pattern, values) if symmetric is None else symmetric
    if backend in ("cholmod", "torch-cg", "pardiso") and not symmetric:
        raise ValueError(f"backend={backend!r} solves symmetric matrices only; this one is not symmetric (use 'splu')")
    if backend != "auto":
        return backend
    n = pattern.shape[0]
    spd_like = symmetric and _has_positive_diagonal(pattern, values)
    if values.device.type != "cpu":
        return "dense" if n <= DENSE_LIMIT or not spd_like else "torch-cg"
    if not spd_like:
        return "splu"
    three_d_like = pattern.nnz > 10 * n
    if three_d_like and n <= DIRECT_LIMIT_3D:
        # SuperLU in symmetric mode beat CHOLMOD (with Debian's reference BLAS) on small 3-D
        # systems: 2.0 against 2.9 ms at 512 unknowns, 50 against 73 ms at 4096
        return "splu"
    cholmod = cholmod_available()
    limit = DIRECT_LIMIT_3D if three_d_like else (CHOLMOD_LIMIT if cholmod else DIRECT_LIMIT)
    if n <= limit or not _module_available("pyamg"):
        return "cholmod" if cholmod else "splu"
    return "amg"


def factorize(pattern: SparsityPattern, values: Tensor, options: SolveOptions | str = "auto") -> Factorization:
    """Prepare the matrix with ``values`` (nnz,) on ``pattern`` for solves; raises SingularMatrixError."""
    if isinstance(options, str):
        options = SolveOptions(backend=options)
    symmetric = _is_symmetric(pattern, values)
    backend = choose_backend(pattern, values, options.backend, symmetric)
    if options.method is not None and backend not in ITERATIVE:
        raise ValueError(f"method={options.method!r} applies to iterative backends {ITERATIVE}, not {backend!r}")
    stats.by_backend[backend] = stats.by_backend.get(backend, 0) + 1
    if backend == "torch-cg":
        return _TorchCG(pattern, values, options)
    if backend == "dense":
        stats.factorizations += 1
        return _Dense(SparseMatrix.from_pattern(pattern, values.detach().to(torch.float64)).to_dense())
    data = values.detach().to(device="cpu", dtype=torch.float64).numpy()
    if backend == "pardiso":
        return _PardisoOne(_PardisoBatch(pattern, data[None]))
    if backend == "amg":
        indptr, indices = pattern.csr
        matrix = scipy.sparse.csr_array((data, indices, indptr), shape=pattern.shape)
        return _AMG(matrix, pattern.solver_cache, symmetric, options)
    perm, indptr, indices = pattern.csc
    stats.factorizations += 1
    if backend == "cholmod":  # scikit-sparse takes the (legacy) csc_matrix
        return _Cholmod(scipy.sparse.csc_matrix((data[perm], indices, indptr), shape=pattern.shape), pattern.solver_cache)
    return _SuperLU(scipy.sparse.csc_array((data[perm], indices, indptr), shape=pattern.shape), symmetric)


# -- batches ----------------------------------------------------------------------------


class BatchFactorization:
    """B prepared matrices on one pattern: ``solve(rhs, transpose)`` for rhs (B, n, k), result like rhs."""

    backend = "?"
    iterative = False

    def solve(self, rhs: Tensor, transpose: bool = False) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class _EachMatrix(BatchFactorization):
    """One :class:`Factorization` per matrix (the CPU direct backends, AMG), solved matrix by matrix."""

    def __init__(self, factors: list[Factorization]):
        self.factors = factors
        self.backend = factors[0].backend if len({f.backend for f in factors}) == 1 else "mixed"
        self.iterative = any(f.iterative for f in factors)

    def solve(self, rhs, transpose=False):
        stats.solves += len(self.factors)
        return torch.stack([f.solve(rhs[i], transpose) for i, f in enumerate(self.factors)])


class _PardisoBatch(BatchFactorization):
    """MKL PARDISO (:mod:`tmcore.core.linalg.pardiso`): SPD matrices factorised on W threads with the GIL
    released, W analyses pooled on the pattern and reused by later batches."""

    backend = "pardiso"

    def __init__(self, pattern: SparsityPattern, data: np.ndarray):
        from tmcore.core.linalg import pardiso

        self.factor = pardiso.BatchFactor(pattern, data)
        stats.factorizations += data.shape[0]
        stats.analyses += self.factor.analyses
        stats.reuses += self.factor.workers - self.factor.analyses

    def solve(self, rhs, transpose=False):  # symmetric
        stats.solves += rhs.shape[0]
        return _from_numpy(self.factor.solve(_to_numpy(rhs)), rhs)


class _PardisoOne(Factorization):
    """One matrix through the PARDISO batch path (B = 1)."""

    backend = "pardiso"

    def __init__(self, batch: _PardisoBatch):
        self.batch = batch

    def solve(self, rhs, transpose=False):
        return _from_numpy(self.batch.factor.solve(_to_numpy(rhs)[None])[0], rhs)


class _DenseBatch(BatchFactorization):
    """One batched LU (``torch.linalg.lu_factor_ex`` on (B, n, n)) on the matrices' device."""

    backend = "dense"

    def __init__(self, pattern: SparsityPattern, values: Tensor):
        dense = SparseMatrix.from_pattern(pattern, values.detach().to(torch.float64)).to_dense()
        self.lu, self.pivots, info = torch.linalg.lu_factor_ex(dense)
        singular = torch.nonzero(info).flatten()
        if singular.numel():
            raise SingularMatrixError(f"matrix {int(singular[0])} of the batch is exactly singular (dense LU)")
        pivots = self.lu.diagonal(dim1=-2, dim2=-1).abs().cpu().numpy()
        for i, row in enumerate(pivots):
            try:
                _check_pivots(row, "LU")
            except SingularMatrixError as error:
                raise SingularMatrixError(f"matrix {i} of the batch: {error}") from None
        stats.factorizations += values.shape[0]

    def solve(self, rhs, transpose=False):
        stats.solves += rhs.shape[0]
        return torch.linalg.lu_solve(self.lu, self.pivots, rhs.detach().to(self.lu), adjoint=transpose).to(rhs)


class _TorchCGBatch(BatchFactorization):
    """Jacobi-preconditioned CG on every matrix and right-hand side of the batch at once (GPU)."""

    backend = "torch-cg"
    iterative = True

    def __init__(self, pattern: SparsityPattern, values: Tensor, options: SolveOptions):
        if options.method not in (None, "cg"):
            raise ValueError(f"method for backend 'torch-cg' must be 'cg', got {options.method!r}")
        self.values = values.detach()
        self.rows, self.cols = pattern.rows, pattern.cols
        on_diagonal = pattern.rows == pattern.cols
        diagonal = self.values.new_zeros(values.shape[0], pattern.shape[0])
        diagonal[:, pattern.rows[on_diagonal]] = self.values[:, on_diagonal]
        if not bool((diagonal > 0).all()):
            raise ValueError("backend 'torch-cg' needs symmetric matrices with a positive diagonal")
        self.inverse_diagonal = (1.0 / diagonal).unsqueeze(-1)  # (B, n, 1)
        self.rtol, self.maxiter = options.rtol, options.maxiter or max(1000, 10 * pattern.shape[0])

    def _matmul(self, x: Tensor) -> Tensor:
        return batched_matvec(self.values, self.rows, self.cols, x)

    def solve(self, rhs, transpose=False):  # symmetric
        stats.solves += rhs.shape[0]
        b = rhs.detach().to(self.values.dtype)
        scale = b.norm(dim=1, keepdim=True).clamp_min(torch.finfo(b.dtype).tiny)  # (B, 1, k)
        b = b / scale
        x = torch.zeros_like(b)
        r = b.clone()
        z = self.inverse_diagonal * r
        p = z.clone()
        rz = (r * z).sum(1, keepdim=True)
        for iteration in range(1, self.maxiter + 1):
            Ap = self._matmul(p)
            alpha = rz / (p * Ap).sum(1, keepdim=True).where(rz != 0, torch.ones_like(rz))
            x += alpha * p
            r -= alpha * Ap
            if bool((r.norm(dim=1) <= self.rtol).all()):
                break
            z = self.inverse_diagonal * r
            rz_new = (r * z).sum(1, keepdim=True)
            p = z + (rz_new / rz.where(rz != 0, torch.ones_like(rz))) * p
            rz = rz_new
        residual = float((self._matmul(x) - b).norm(dim=1).max())
        if not np.isfinite(residual) or residual > max(10 * self.rtol, 1e-14):
            raise SolverError(
                f"torch-cg did not converge on the batch: largest relative residual {residual:.3e} after "
                f"{iteration} iterations (rtol {self.rtol:g}, maxiter {self.maxiter})"
            )
        return (x * scale).to(rhs)


def _batch_symmetric(pattern: SparsityPattern, values: Tensor) -> Tensor:
    """(B,) bool: which matrices of the batch are symmetric (the test of :func:`_is_symmetric`)."""
    if not pattern.is_structurally_symmetric:
        return torch.zeros(values.shape[0], dtype=torch.bool)
    _, perm = pattern.transpose
    scale = values.abs().amax(dim=1)
    return ((values - values[:, perm]).abs().amax(dim=1) <= 1e-12 * scale).cpu()


def _batch_positive_diagonal(pattern: SparsityPattern, values: Tensor) -> Tensor:
    """(B,) bool: which matrices have every diagonal entry in the pattern and positive."""
    diagonal = pattern.diagonal_slots
    if diagonal.numel() != pattern.shape[0]:
        return torch.zeros(values.shape[0], dtype=torch.bool)
    return (values[:, diagonal] > 0).all(dim=1).cpu()


def factorize_batch(pattern: SparsityPattern, values: Tensor, options: SolveOptions | str = "auto") -> BatchFactorization:
    """Prepare a batch of matrices, ``values`` (B, nnz) on ``pattern``, for solves.

    One backend for the whole batch, chosen once (a batch mixing symmetric and
    nonsymmetric matrices lets each matrix choose). On the CPU: the values go to CSC
    order in one gather, CHOLMOD runs one symbolic analysis (cached on the pattern, so
    later batches reuse it too) and B numeric factorisations, AMG builds one hierarchy
    that preconditions every matrix. ``dense`` factorises the batch in one batched LU,
    ``torch-cg`` iterates on all matrices at once. Raises SingularMatrixError.
    """
    if isinstance(options, str):
        options = SolveOptions(backend=options)
    if values.ndim != 2 or values.shape[1] != pattern.nnz:
        raise ValueError(f"values must have shape (B, {pattern.nnz}), got {tuple(values.shape)}")
    batch = values.shape[0]
    if batch == 1:
        return _EachMatrix([factorize(pattern, values[0], options)])
    symmetric = _batch_symmetric(pattern, values)
    positive = _batch_positive_diagonal(pattern, values)
    if bool(symmetric.any()) != bool(symmetric.all()) or bool(positive.any()) != bool(positive.all()):
        return _EachMatrix([factorize(pattern, values[i], options) for i in range(batch)])
    symmetric_all = bool(symmetric[0])
    backend = choose_backend(pattern, values[0], options.backend, symmetric_all)
    if options.backend == "auto" and backend in ("cholmod", "splu") and symmetric_all and bool(positive[0]) and pardiso_available():
        backend = "pardiso"  # the batch's factorisations in parallel: the other direct solvers hold the GIL
    if options.method is not None and backend not in ITERATIVE:
        raise ValueError(f"method={options.method!r} applies to iterative backends {ITERATIVE}, not {backend!r}")
    stats.by_backend[backend] = stats.by_backend.get(backend, 0) + batch
    if backend == "torch-cg":
        return _TorchCGBatch(pattern, values, options)
    if backend == "dense":
        return _DenseBatch(pattern, values)
    data = values.detach().to(device="cpu", dtype=torch.float64).numpy()
    if backend == "amg":
        indptr, indices = pattern.csr
        return _EachMatrix([
            _AMG(scipy.sparse.csr_array((data[i], indices, indptr), shape=pattern.shape), pattern.solver_cache, symmetric_all, options)
            for i in range(batch)
        ])
    if backend == "pardiso":
        return _PardisoBatch(pattern, data)
    perm, indptr, indices = pattern.csc
    data = np.ascontiguousarray(data[:, perm])  # every matrix to CSC order in one gather
    csc = scipy.sparse.csc_matrix if backend == "cholmod" else scipy.sparse.csc_array  # scikit-sparse takes csc_matrix
    matrices = [csc((data[i], indices, indptr), shape=pattern.shape) for i in range(batch)]
    stats.factorizations += batch
    if backend == "cholmod":
        return _EachMatrix([_Cholmod(matrix, pattern.solver_cache) for matrix in matrices])
    return _EachMatrix([_SuperLU(matrix, symmetric_all) for matrix in matrices])


# -- the autograd function --------------------------------------------------------------


class SparseSolve(torch.autograd.Function):
    """u = A^{-1} b for values (B, nnz) and b (B, n, k); backward by one adjoint solve per matrix.

    The backward reuses the forward's factorisations. Under ``create_graph=True`` it
    solves the adjoint system through this Function again (on the transposed pattern), so
    second derivatives (Hessian-vector products) are exact too, at the price of one more
    factorisation per matrix.
    """

    @staticmethod
    def forward(ctx, values: Tensor, b: Tensor, pattern: SparsityPattern, options: SolveOptions):
        # the CPU backends solve in float64: check the residual before rounding to b's dtype
        # (a float32 solution of a well-posed system rounds to a residual of ~eps32 * cond(A))
        rhs = b.to(torch.float64) if values.device.type == "cpu" else b
        try:
            factors = factorize_batch(pattern, values, options)
            u = factors.solve(rhs, transpose=False)
        except SolverError as exc:
            if options.backend != "auto" or isinstance(exc, SingularMatrixError):
                raise
            # "auto" chose an iterative backend that failed on this matrix (AMG on an
            # elasticity-like system, say): a direct solver always applies
            direct = "cholmod" if cholmod_available() and _is_symmetric(pattern, values[0]) else "splu"
            logger.warning("solve: the automatic iterative backend failed (%s); falling back to %r", exc, direct)
            options = dataclasses.replace(options, backend=direct)
            factors = factorize_batch(pattern, values, options)
            u = factors.solve(rhs, transpose=False)
        if options.check:
            tolerance = max(RESIDUAL_TOL, 100 * options.rtol) if factors.iterative else RESIDUAL_TOL
            _check_residual(values, pattern, rhs, u, tolerance)
        u = u.to(b.dtype)
        ctx.factors = factors
        ctx.pattern = pattern
        ctx.options = options
        ctx.save_for_backward(values, u)
        return u

    @staticmethod
    def backward(ctx, grad_u: Tensor):
        values, u = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: keep the adjoint solve on the graph
            pattern_t, perm = ctx.pattern.transpose
            lam = SparseSolve.apply(values[:, perm], grad_u, pattern_t, ctx.options)
        else:
            lam = ctx.factors.solve(grad_u, transpose=True)
        grad_values = None
        if ctx.needs_input_grad[0]:
            rows, cols = ctx.pattern.rows, ctx.pattern.cols
            grad_values = -(lam[:, rows, :] * u[:, cols, :]).sum(-1)
        return grad_values, lam, None, None


def _check_residual(values: Tensor, pattern: SparsityPattern, b: Tensor, u: Tensor, tolerance: float) -> None:
    """Relative residual |A_i u_i - b_i| / |b_i| of every matrix of the batch (values (B, nnz),
    b and u (B, n, k)); SolverError names the first matrix over ``tolerance``."""
    u = u.detach()
    values, b = values.detach().to(u.dtype), b.detach().to(u.dtype)
    with np.errstate(over="ignore", invalid="ignore"):  # a non-finite residual is reported below
        if isinstance(_on_host(values)[0], np.ndarray):  # in NumPy/SciPy: each torch call costs ~10 us on small systems
            indptr, indices = pattern.csr
            residual = np.array([
                np.linalg.norm(scipy.sparse.csr_matrix((v, indices, indptr), shape=pattern.shape) @ x - r)
                for v, x, r in zip(values.numpy(), u.numpy(), b.numpy())
            ])
            scale = np.linalg.norm(b.numpy().reshape(b.shape[0], -1), axis=1)
        else:
            residual = (batched_matvec(values, pattern.rows, pattern.cols, u) - b).flatten(1).norm(dim=1).cpu().numpy()
            scale = b.flatten(1).norm(dim=1).cpu().numpy()
        bad = ~np.isfinite(residual) | (residual > tolerance * np.maximum(scale, 1e-300))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        relative = float(residual[i] / scale[i]) if scale[i] > 0 else float(residual[i])
        where = f" (matrix {i} of a batch of {values.shape[0]})" if values.shape[0] > 1 else ""
        raise SolverError(
            f"the solve did not reach a trustworthy solution{where}: relative residual "
            f"{relative:.3e} > {tolerance:g} (the matrix is probably singular or extremely ill-conditioned)"
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


def solve(
    matrix: SparseMatrix,
    b: Tensor,
    backend: str = "auto",
    method: str | None = None,
    rtol: float = DEFAULT_RTOL,
    maxiter: int | None = None,
    check: bool = True,
) -> Tensor:
    """Solve A u = b, differentiable in A's values and in b (one adjoint solve per matrix).

    Args:
        matrix: square SparseMatrix, (n, n) or a batch (B, n, n).
        b: (n,) or (n, k) columns for one matrix; (B, n), (B, n, k) or a shared (n,) for a batch.
        backend: one of ``BACKENDS`` (module docstring); ``"auto"`` chooses by device, size, symmetry.
        method: Krylov method of an iterative backend (``"cg"``, ``"gmres"``).
        rtol: relative residual an iterative backend must reach (forward and adjoint).
        maxiter: iteration cap of an iterative backend.
        check: verify the relative residual of the result (one matrix-vector product).

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
    if not (isinstance(rtol, float) and 0.0 < rtol < 1.0):
        raise ValueError(f"rtol must be a float in (0, 1), got {rtol!r}")
    if maxiter is not None and (not isinstance(maxiter, int) or maxiter < 1):
        raise ValueError(f"maxiter must be a positive int or None, got {maxiter!r}")
    if b.dtype != torch.float64 and backend not in ("dense", "torch-cg"):
        warnings.warn(
            f"solving a {b.dtype} system: the factorisation runs in float64 but inputs and result keep "
            f"{b.dtype}'s ~{int(-np.log10(torch.finfo(b.dtype).eps))} digits",
            stacklevel=2,
        )
    if not _all_finite(matrix.values):
        raise SolverError("the matrix values contain NaN or inf")
    if not _all_finite(b):
        raise SolverError("b contains NaN or inf")
    values, b3, out_shape = _normalise_rhs(matrix, b)
    options = SolveOptions(backend=backend, method=method, rtol=rtol, maxiter=maxiter, check=check)
    u = SparseSolve.apply(values, b3, matrix.pattern, options)
    return u.reshape(out_shape)


__all__ = [
    "BACKENDS",
    "BatchFactorization",
    "Factorization",
    "SolveOptions",
    "SparseSolve",
    "choose_backend",
    "cholmod_available",
    "factorize",
    "factorize_batch",
    "pardiso_available",
    "solve",
    "stats",
]
