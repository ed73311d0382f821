"""Sparse linear solves: backends behind one ``factorize``, and ``solve`` with an adjoint backward.

``solve(A, b)`` solves A u = b for a ``SparseMatrix`` A (one matrix or a batch) and is
differentiable in A's values and in b. It factorises with :func:`factorize` and solves
through :class:`~tmcore.core.linalg.factored.FactoredSolve`, the one factored-solve
autograd primitive: its backward solves one adjoint system A^T lam = dL/du with the
factorisation (or preconditioner) the forward built, never a second one, and returns

    dL/db = lam,        dL/dA_ij = -lam_i u_j  (on the pattern only).

Backends sit behind one door, :func:`factorize`. Each takes a batch of B matrices, values
(B, nnz) on one pattern; a single matrix is a batch of one.

========== ================================================================= ===========
backend    what                                                              reuse
========== ================================================================= ===========
banded     LAPACK's banded Cholesky (dpbtrf) on a reverse Cuthill-McKee      ordering
           ordering, SPD matrices of narrow band; a batch's factorisations
           run on several threads with MKL installed (its dpbtrf, GIL
           released), else one by one through SciPy
splu       SciPy SuperLU; symmetric mode with an A + A^T ordering for        none
           symmetric matrices. Always available: the floor.
cholmod    CHOLMOD (scikit-sparse, optional), SPD matrices                   symbolic
                                                                             analysis
amg        pyamg Ruge-Stuben AMG preconditioning CG (``method="cg"``, SPD)   hierarchy
           or GMRES (``method="gmres"``), to ``rtol``
torch-cg   Jacobi-preconditioned CG in torch on the matrix's own device      none
           (CPU or CUDA), all matrices and right-hand sides at once, to ``rtol``
dense      batched ``torch.linalg.lu_factor`` on the matrix's device; small  none
           systems
pardiso    MKL PARDISO (optional, :mod:`tmcore.core.linalg.pardiso`), SPD    analysis
           matrices; a batch's factorisations run on several threads (GIL    (pooled)
           released)
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
``method=``, ``rtol=``, ``maxiter=``. When "auto" chose an iterative backend that fails
on a matrix, ``solve`` falls back to a direct one.

A batch gets one vectorised symmetry test and one backend, chosen once (a batch mixing
symmetric and nonsymmetric matrices lets each matrix choose), one gather of all values to
CSC order, one symbolic analysis (CHOLMOD) and B numeric factorisations, one vectorised
residual check. Under ``"auto"`` an SPD batch of two or more goes to PARDISO when MKL is
installed, since SuperLU and CHOLMOD hold the GIL and cannot factorise two matrices at
once; on a GPU ``dense`` factorises the batch in one batched LU and ``torch-cg`` iterates
on all of it at once.

"Reuse" is across calls on matrices with the same pattern *object* (assemblers on one
mesh and one Condenser share it): CHOLMOD's ordering and symbolic factorisation, and the
AMG hierarchy, which stays a valid preconditioner when the values change and is rebuilt
when CG starts needing many more iterations than it did when it was built. Correctness
never rests on reuse: iterative solves check the true residual of the current matrix.

torch-sla's own ``solve`` is not used: its default path factorises the transposed matrix
again in the backward, and its cached AMG path fingerprints a matrix by the sum of
|values|, so two matrices with the same sum (the same values in other places) share an
entry and the second gets the first one's stale answer. Direct solves run in float64
whatever the input dtype; the result is cast back. SciPy's SuperLU and pyamg run on one
thread; CHOLMOD uses the BLAS's threads; torch's own kernels follow ``torch.set_num_threads``.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import logging
import threading
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg.blas
import scipy.linalg.lapack
import scipy.sparse
import scipy.sparse.linalg
import torch
from torch import Tensor

from tmcore.core.errors import SingularMatrixError, SolverError
from tmcore.core.host import all_finite, on_host
from tmcore.core.linalg import pardiso
from tmcore.core.linalg.factored import FactoredSolve
from tmcore.core.linalg.pattern import SparsityPattern, batched_matvec
from tmcore.core.threads import one_blas_thread, threads_for

logger = logging.getLogger(__name__)
BACKENDS = ("auto", "banded", "splu", "cholmod", "amg", "torch-cg", "dense", "pardiso")
ITERATIVE = ("amg", "torch-cg")
# Unknowns up to which "auto" uses a direct solver on the CPU / a dense LU on a GPU.
DIRECT_LIMIT = 30_000
CHOLMOD_LIMIT = 30_000
DIRECT_LIMIT_3D = 4_000
DENSE_LIMIT = 4096
# "auto" uses the banded Cholesky for SPD systems whose band work n (b + 1)^2 (b: the bandwidth
# after reverse Cuthill-McKee) is at most this: 2-D Poisson, 2-core machine, factor + solve,
# banded against SuperLU: 0.17 vs 1.2 ms at 690 unknowns, 0.84 vs 12 ms at 1775, 47 vs 106 ms at 8013
BANDED_WORK_LIMIT = 5e7
# Patterns with more unknowns than this are not ordered for the banded solver (RCM costs O(nnz)).
BANDED_ORDER_LIMIT = 200_000
# Band work up to which the banded factorisation and its solves run on one BLAS thread: below it a
# second thread saves little on a quiet machine and costs a time slice beside a busy process.
SMALL_BAND_WORK = BANDED_WORK_LIMIT
# Band work of a whole batch (B n (b + 1)^2) from which its banded factorisations run side by side on
# MKL's threads: about 5 ms of work on one thread. Below it the pool's hand-over and a time slice beside a
# busy process cost more than the second core saves (690 unknowns, b = 39, the other core busy:
# B = 8 took 2.1 ms on one thread and 2.7 ms on two; B = 256, 83 and 59 ms).
PARALLEL_BAND_WORK = 2**25
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
    """B matrices (n, n) with values on one pattern, prepared for solves (a single matrix: B = 1).

    ``solve(rhs, transpose)`` takes rhs (B, n, k) and returns A_i^-1 rhs_i (A_i^-T rhs_i when
    ``transpose``), detached, with rhs's dtype and device;
    :class:`~tmcore.core.linalg.factored.FactoredSolve` makes it differentiable.
    ``solves`` and ``transposed_solves`` count the calls.
    """

    backend = "?"
    iterative = False

    def __init__(self, pattern: SparsityPattern, batch: int):
        self.pattern, self.batch = pattern, batch
        self.solves = self.transposed_solves = 0

    def solve(self, rhs: Tensor, transpose: bool = False) -> Tensor:
        if rhs.ndim != 3 or rhs.shape[:2] != (self.batch, self.pattern.shape[0]):
            raise ValueError(f"rhs must have shape ({self.batch}, {self.pattern.shape[0]}, k), got {tuple(rhs.shape)}")
        stats.solves += self.batch
        if transpose:
            self.transposed_solves += 1
        else:
            self.solves += 1
        return self._solve(rhs.detach(), transpose)

    def _solve(self, rhs: Tensor, transpose: bool) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


def _to_numpy(rhs: Tensor) -> np.ndarray:
    """rhs as a float64 NumPy array on the host: a view when it is one already (skipping .to() and
    .detach() saves ~3 us a call, which a small solve's every step pays several times)."""
    if rhs.device.type == "cpu" and rhs.dtype == torch.float64:
        return on_host(rhs)[0]
    return rhs.detach().to(device="cpu", dtype=torch.float64).numpy()


def _from_numpy(array: np.ndarray, like: Tensor) -> Tensor:
    result = torch.from_numpy(np.ascontiguousarray(array))
    return result if like.device.type == "cpu" and like.dtype == torch.float64 else result.to(like)


def _member(i: int, batch: int) -> str:
    """How an error names matrix i: nothing for a single matrix."""
    return f"matrix {i} of a batch of {batch}: " if batch > 1 else ""


def _check_pivots(pivots: np.ndarray, kind: str, i: int = 0, batch: int = 1, squared: bool = False) -> None:
    """SingularMatrixError unless the smallest |pivot| exceeds PIVOT_RATIO_TOL times the largest.

    squared: ``pivots`` are positive square roots of the pivots (a Cholesky factor's diagonal),
    squared here as two numbers rather than as an array.
    """
    if squared:
        low, high = float(pivots.min()), float(pivots.max())  # NaN if any pivot is NaN
        low, high = low * low, high * high  # (a float's ** raises OverflowError where * gives inf)
    else:
        pivots = np.abs(pivots)
        low, high = float(pivots.min()), float(pivots.max())
    if not (np.isfinite(high) and low > PIVOT_RATIO_TOL * high):
        raise SingularMatrixError(
            f"{_member(i, batch)}the matrix is singular to working precision (smallest/largest {kind} pivot "
            f"{low:.3e}/{high:.3e}); is a Dirichlet condition missing "
            "(a pure Neumann problem has a null space)?"
        )


class _SuperLU(Factorization):
    backend = "splu"

    def __init__(self, pattern: SparsityPattern, data: np.ndarray, symmetric: bool):
        super().__init__(pattern, data.shape[0])
        perm, indptr, indices = pattern.csc
        stats.factorizations += self.batch
        self.lus = []
        for i, values in enumerate(data[:, perm]):  # every matrix to CSC order in one gather
            try:
                lu = scipy.sparse.linalg.splu(
                    scipy.sparse.csc_array((values, indices, indptr), shape=pattern.shape),
                    permc_spec="MMD_AT_PLUS_A" if symmetric else "COLAMD",
                    diag_pivot_thresh=0.0 if symmetric else 1.0,
                    options={"SymmetricMode": True} if symmetric else {},
                )
            except RuntimeError as exc:  # "Factor is exactly singular"
                raise SingularMatrixError(
                    f"{_member(i, self.batch)}the matrix is singular: SuperLU reports {exc}"
                ) from None
            _check_pivots(np.abs(lu.U.diagonal()), "LU", i, self.batch)
            self.lus.append(lu)

    def _solve(self, rhs, transpose):
        b = _to_numpy(rhs)
        trans = "T" if transpose else "N"
        return _from_numpy(np.stack([lu.solve(b[i], trans=trans) for i, lu in enumerate(self.lus)]), rhs)


@dataclass(frozen=True)
class _BandLayout:
    """Where each upper-triangle entry of a symmetric pattern goes in LAPACK's upper band storage
    after a reverse Cuthill-McKee ordering: ab[b + i - j, j] = A[p[i], p[j]] for i <= j."""

    order: np.ndarray  # p: new index -> old
    bandwidth: int
    slots: np.ndarray  # pattern slots of the upper-triangle entries (in the new numbering)
    flat: np.ndarray  # their flat positions in the (b + 1, n) band array in Fortran order, as LAPACK takes it


def band_layout(pattern: SparsityPattern) -> _BandLayout:
    """The RCM ordering and band layout of a symmetric pattern, computed once and cached on it."""
    layout = pattern.solver_cache.get("band")
    if layout is None:
        from scipy.sparse.csgraph import reverse_cuthill_mckee

        n = pattern.shape[0]
        rows, cols = pattern.rows.cpu().numpy(), pattern.cols.cpu().numpy()
        graph = scipy.sparse.csr_matrix((np.ones(rows.size, dtype=np.int8), (rows, cols)), shape=pattern.shape)
        order = np.asarray(reverse_cuthill_mckee(graph, symmetric_mode=True), dtype=np.int64)
        inverse = np.empty(n, dtype=np.int64)
        inverse[order] = np.arange(n)
        i, j = inverse[rows], inverse[cols]
        upper = np.flatnonzero(i <= j)
        bandwidth = int((j - i).max(initial=0))
        flat = j[upper] * (bandwidth + 1) + (bandwidth + i[upper] - j[upper])
        layout = pattern.solver_cache["band"] = _BandLayout(order, bandwidth, upper, flat)
    return layout


class _Banded(Factorization):
    """LAPACK's banded Cholesky (dpbtrf/dpbtrs) on a reverse Cuthill-McKee ordering computed once per
    pattern: for SPD systems of small bandwidth b it costs n (b + 1)^2 / 2 flops and little else,
    the fastest direct solver for the few-thousand-unknown systems of a typical 2-D design loop."""

    backend = "banded"

    def __init__(self, pattern: SparsityPattern, data: np.ndarray):
        super().__init__(pattern, data.shape[0])
        if "band" in pattern.solver_cache:
            stats.reuses += 1
        else:
            stats.analyses += 1
        layout = self.layout = band_layout(pattern)
        n = pattern.shape[0]
        stats.factorizations += self.batch
        self.small = n * (layout.bandwidth + 1) ** 2 <= SMALL_BAND_WORK
        # a large batch on MKL's dpbtrf, side by side on the solver's threads (SciPy's LAPACK holds the GIL);
        # the routine does not depend on the thread count, so neither do the results' bits. A single matrix
        # stays on SciPy's: its arithmetic, and the designs of chaotic optimisations built on it, unchanged
        work = self.batch * n * (layout.bandwidth + 1) ** 2
        self.mkl = self.batch > 1 and work >= PARALLEL_BAND_WORK and pardiso.available()
        self.workers = min(self.batch, pardiso.threads()) if self.mkl else 1

        def factor(worker: int, i: int) -> tuple[np.ndarray, int]:
            # each matrix's band filled just before its factorisation, while it is in the cache (a batch's
            # bands in one array measured slower: its pages are faulted in, then written, then factorised);
            # (n, b + 1) in C order is the (b + 1, n) Fortran array LAPACK works on in place
            band = np.zeros((n, layout.bandwidth + 1))
            band.reshape(-1)[layout.flat] = data[i].take(layout.slots)
            if self.mkl:
                return band.T, pardiso.band_factor(band.T)
            return scipy.linalg.lapack.dpbtrf(band.T, lower=0, overwrite_ab=1)

        with one_blas_thread() if self.small else nullcontext():
            factors = pardiso.in_parallel(factor, self.batch, self.workers)
        for i, (band, info) in enumerate(factors):
            if info != 0:
                raise SingularMatrixError(
                    f"{_member(i, self.batch)}the matrix is singular or not positive definite (banded "
                    f"Cholesky: leading minor {info} of {n} is not positive); is a Dirichlet condition missing?"
                )
            _check_pivots(band[layout.bandwidth], "Cholesky", i, self.batch, squared=True)
        self.factors = [band for band, _ in factors]

    def _solve(self, rhs, transpose):  # symmetric: A^T = A
        b = _to_numpy(rhs)
        order = self.layout.order
        out = np.empty_like(b)

        def solve(worker: int, i: int) -> None:
            # one column: 1-D gathers, a third of the cost of the 2-D ones at 700 unknowns
            right = b[i, :, 0].take(order) if b.shape[2] == 1 else b[i][order]
            if self.mkl:
                x = pardiso.band_solve(self.factors[i], right.reshape(b.shape[1], -1))
            else:
                x, info = scipy.linalg.lapack.dpbtrs(self.factors[i], right, lower=0)
            out[i][order] = x.reshape(out.shape[1:])

        with one_blas_thread() if self.small else nullcontext():
            pardiso.in_parallel(solve, self.batch, self.workers)
        return _from_numpy(out, rhs)


class _Cholmod(Factorization):
    backend = "cholmod"

    def __init__(self, pattern: SparsityPattern, data: np.ndarray):
        from sksparse.cholmod import CholmodNotPositiveDefiniteError, cholesky  # optional dependency

        super().__init__(pattern, data.shape[0])
        perm, indptr, indices = pattern.csc
        cache = pattern.solver_cache
        stats.factorizations += self.batch
        self.factors = []
        for i, values in enumerate(data[:, perm]):
            matrix = scipy.sparse.csc_matrix((values, indices, indptr), shape=pattern.shape)  # scikit-sparse's type
            # The first factorisation (analysis and numbers in one call) is cached and later
            # matrices on the pattern factorise from a copy of its analysis. Analysing
            # separately would allocate, copy and free one more factor per call: 1 ms of a
            # 3.5 ms solve at 512 unknowns in 3-D.
            cached = cache.get("cholmod")
            try:
                if cached is None:
                    factor = cache["cholmod"] = cholesky(matrix)
                    stats.analyses += 1
                else:
                    factor = cached.cholesky(matrix)
                    stats.reuses += 1
            except CholmodNotPositiveDefiniteError as exc:
                raise SingularMatrixError(
                    f"{_member(i, self.batch)}CHOLMOD: the matrix is not positive definite ({exc})"
                ) from None
            _check_pivots(factor.D(), "LDL^T", i, self.batch)
            self.factors.append(factor)

    def _solve(self, rhs, transpose):  # symmetric: A^T = A
        b = _to_numpy(rhs)
        return _from_numpy(np.stack([factor(b[i]) for i, factor in enumerate(self.factors)]), rhs)


class _AMG(Factorization):
    """pyamg Ruge-Stuben hierarchy preconditioning a SciPy Krylov method on each current matrix.

    One hierarchy, built from the first matrix and cached on the pattern, preconditions every matrix.
    """

    backend = "amg"
    iterative = True

    def __init__(self, pattern: SparsityPattern, data: np.ndarray, symmetric: bool, options: SolveOptions):
        import pyamg  # optional dependency, slow to import

        super().__init__(pattern, data.shape[0])
        self.method = options.method or ("cg" if symmetric else "gmres")
        if self.method not in ("cg", "gmres"):
            raise ValueError(f"method for backend 'amg' must be 'cg' or 'gmres', got {options.method!r}")
        if self.method == "cg" and not symmetric:
            raise ValueError("method='cg' needs a symmetric matrix; use method='gmres' or a direct backend")
        indptr, indices = pattern.csr
        self.matrices = [scipy.sparse.csr_matrix((values, indices, indptr), shape=pattern.shape) for values in data]
        self.rtol, self.maxiter = options.rtol, options.maxiter or max(200, pattern.shape[0] // 10)
        entry = pattern.solver_cache.get("amg")
        if entry is None or entry["stale"]:
            try:
                with np.errstate(all="ignore"):
                    hierarchy = pyamg.ruge_stuben_solver(self.matrices[0])
            except (ValueError, ZeroDivisionError, np.linalg.LinAlgError) as exc:
                raise SolverError(
                    f"AMG set-up failed ({exc}); the matrix is not suited to AMG, use a direct backend"
                ) from None
            preconditioner = hierarchy.aspreconditioner(cycle="V")
            entry = pattern.solver_cache["amg"] = {"preconditioner": preconditioner, "baseline": None, "stale": False}
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

    def _solve_column(self, matrix, b: np.ndarray) -> np.ndarray:
        scale = _norm(b)
        if scale == 0.0:
            return np.zeros_like(b)
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
        return x * scale

    def _solve(self, rhs, transpose):
        b = _to_numpy(rhs)
        out = np.zeros_like(b)
        for i, matrix in enumerate(self.matrices):
            matrix = matrix.T.tocsr() if transpose and self.method != "cg" else matrix
            for j in range(b.shape[2]):
                out[i, :, j] = self._solve_column(matrix, b[i, :, j])
        return _from_numpy(out, rhs)


class _TorchCG(Factorization):
    """Jacobi-preconditioned CG in torch on the matrices' device, every matrix and right-hand side at once."""

    backend = "torch-cg"
    iterative = True

    def __init__(self, pattern: SparsityPattern, values: Tensor, options: SolveOptions):
        if options.method not in (None, "cg"):
            raise ValueError(f"method for backend 'torch-cg' must be 'cg', got {options.method!r}")
        super().__init__(pattern, values.shape[0])
        self.values = values.detach()
        on_diagonal = pattern.rows == pattern.cols
        diagonal = self.values.new_zeros(self.batch, pattern.shape[0])
        diagonal[:, pattern.rows[on_diagonal]] = self.values[:, on_diagonal]
        if not bool((diagonal > 0).all()):
            raise ValueError("backend 'torch-cg' needs symmetric matrices with a positive diagonal")
        self.inverse_diagonal = (1.0 / diagonal).unsqueeze(-1)  # (B, n, 1)
        self.rtol, self.maxiter = options.rtol, options.maxiter or max(1000, 10 * pattern.shape[0])

    def _matmul(self, x: Tensor) -> Tensor:
        return batched_matvec(self.values, self.pattern.rows, self.pattern.cols, x)

    def _solve(self, rhs, transpose):  # symmetric
        b = rhs.to(self.values.dtype)
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
            largest = " (the largest of the batch)" if self.batch > 1 else ""
            raise SolverError(
                f"torch-cg did not converge: relative residual {residual:.3e}{largest} after {iteration} iterations "
                f"(rtol {self.rtol:g}, maxiter {self.maxiter})"
            )
        return (x * scale).to(rhs)


class _Dense(Factorization):
    """One batched LU (``torch.linalg.lu_factor_ex`` on (B, n, n)) on the matrices' device."""

    backend = "dense"

    def __init__(self, pattern: SparsityPattern, values: Tensor):
        super().__init__(pattern, values.shape[0])
        stats.factorizations += self.batch
        self.lu, self.pivots, info = torch.linalg.lu_factor_ex(pattern.to_dense(values.detach().to(torch.float64)))
        singular = torch.nonzero(info).flatten()
        if singular.numel():
            raise SingularMatrixError(
                f"{_member(int(singular[0]), self.batch)}the matrix is exactly singular (dense LU)"
            )
        for i, pivots in enumerate(self.lu.diagonal(dim1=-2, dim2=-1).abs().cpu().numpy()):
            _check_pivots(pivots, "LU", i, self.batch)

    def _solve(self, rhs, transpose):
        return torch.linalg.lu_solve(self.lu, self.pivots, rhs.to(self.lu), adjoint=transpose).to(rhs)


class _Pardiso(Factorization):
    """MKL PARDISO (:mod:`tmcore.core.linalg.pardiso`): SPD matrices factorised on W threads with the GIL
    released, W analyses pooled on the pattern and reused by later batches."""

    backend = "pardiso"

    def __init__(self, pattern: SparsityPattern, data: np.ndarray):
        super().__init__(pattern, data.shape[0])
        self.factor = pardiso.BatchFactor(pattern, data)
        stats.factorizations += self.batch
        stats.analyses += self.factor.analyses
        stats.reuses += self.factor.workers - self.factor.analyses

    def _solve(self, rhs, transpose):  # symmetric
        return _from_numpy(self.factor.solve(_to_numpy(rhs)), rhs)


class _EachMatrix(Factorization):
    """A batch whose matrices chose their backends one by one (some symmetric, some not): B factorisations of one."""

    def __init__(self, pattern: SparsityPattern, factors: list[Factorization]):
        super().__init__(pattern, len(factors))
        self.factors = factors
        self.backend = factors[0].backend if len({f.backend for f in factors}) == 1 else "mixed"
        self.iterative = any(f.iterative for f in factors)

    def _solve(self, rhs, transpose):
        return torch.cat([factor._solve(rhs[i : i + 1], transpose) for i, factor in enumerate(self.factors)])


@functools.lru_cache(maxsize=None)
def _module_available(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def cholmod_available() -> bool:
    """Whether scikit-sparse's CHOLMOD can be imported."""
    if not _module_available("sksparse"):
        return False
    try:
        import sksparse.cholmod  # noqa: F401  (optional dependency)
    except ImportError:
        return False
    return True


def pardiso_available() -> bool:
    """Whether MKL PARDISO can be loaded (:mod:`tmcore.core.linalg.pardiso`)."""
    return pardiso.available()


def _row_extreme(x, largest: bool) -> np.ndarray:
    """The largest (or smallest) entry of each row of x (B, m), NumPy or torch, as a NumPy array (B,)."""
    if isinstance(x, np.ndarray):
        return x.max(axis=1) if largest else x.min(axis=1)
    return (x.amax(dim=1) if largest else x.amin(dim=1)).detach().double().cpu().numpy()


def _symmetric(pattern: SparsityPattern, values: Tensor) -> np.ndarray:
    """(B,) bool: which matrices of values (B, nnz) are symmetric, to 1e-12 of their largest entry."""
    return _matrix_properties(pattern, values)[1]


def _matrix_properties(pattern: SparsityPattern, values: Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(finite, symmetric, positive_diagonal), each (B,) bool, for the matrices of values (B, nnz).

    finite: no NaN or inf; symmetric: to 1e-12 of the largest entry; positive_diagonal: every
    diagonal entry in the pattern and positive. One pass that shares the extremes: an entry's
    NaN or inf shows in the largest magnitude, so finiteness costs nothing more. (This runs on
    every solve; on a solve of the chapter's 690 unknowns every NumPy call avoided saves 5-10 us
    once the step's other work has pushed these arrays out of the cache.)
    """
    batch, n = values.shape[0], pattern.shape[0]
    host, perm, diagonal = on_host(values, pattern.transpose[1], pattern.diagonal_slots)
    on_numpy = isinstance(host, np.ndarray)
    if batch == 1 and on_numpy:  # 1-D takes and reductions: half the cost of the 2-D ones
        single = host[0]
        largest = max(single.max(), -single.min()) if single.size else 0.0
        largest = np.array([largest])
    elif on_numpy:
        largest = np.maximum(host.max(axis=1), -host.min(axis=1)) if host.shape[1] else np.zeros(batch)
    else:
        largest = _row_extreme(host.abs(), True) if host.shape[1] else np.zeros(batch)
    finite = np.isfinite(largest)
    if not finite.all():  # the caller refuses these: the other properties are not computed
        return finite, np.zeros(batch, dtype=bool), np.zeros(batch, dtype=bool)
    if not pattern.is_structurally_symmetric:
        symmetric = np.zeros(batch, dtype=bool)
    elif pattern.nnz == 0:
        symmetric = np.ones(batch, dtype=bool)
    elif batch == 1 and on_numpy:
        difference = single.take(perm)
        np.subtract(single, difference, out=difference)
        np.abs(difference, out=difference)
        symmetric = np.array([difference.max() <= 1e-12 * largest[0]])
    elif on_numpy:  # one temporary, reused in place; take(axis=1): a third of host[:, perm]'s time
        difference = host.take(perm, axis=1)
        np.subtract(host, difference, out=difference)
        np.abs(difference, out=difference)
        symmetric = difference.max(axis=1) <= 1e-12 * largest
    else:
        symmetric = _row_extreme(abs(host - host[:, perm]), True) <= 1e-12 * largest
    if len(diagonal) != n:
        positive = np.zeros(batch, dtype=bool)
    elif n == 0:
        positive = np.ones(batch, dtype=bool)
    elif batch == 1 and on_numpy:
        positive = np.array([single.take(diagonal).min() > 0])
    else:
        positive = _row_extreme(host.take(diagonal, axis=1) if on_numpy else host[:, diagonal], False) > 0
    return finite, symmetric, positive


def choose_backend(
    pattern: SparsityPattern,
    values: Tensor,
    backend: str = "auto",
    symmetric: bool | None = None,
    positive_diagonal: bool | None = None,
) -> str:
    """The backend ``backend`` resolves to for the matrix with values (nnz,) (``"auto"``: see the module docstring).

    ``symmetric`` and ``positive_diagonal``: the matrix's properties when the caller knows them
    already (None: computed here)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "cholmod" and not cholmod_available():
        raise ValueError(
            "backend='cholmod' needs scikit-sparse (apt install libsuitesparse-dev; pip install scikit-sparse)"
        )
    if backend == "amg" and not _module_available("pyamg"):
        raise ValueError("backend='amg' needs pyamg (pip install pyamg)")
    if backend == "pardiso" and not pardiso_available():
        raise ValueError(
            "backend='pardiso' needs the MKL runtime (pip install mkl, or set $TMCORE_MKL_RT to libmkl_rt)"
        )
    if symmetric is None or positive_diagonal is None:
        _, symmetric_, positive_ = _matrix_properties(pattern, values[None])
        symmetric = bool(symmetric_[0]) if symmetric is None else symmetric
        positive_diagonal = bool(positive_[0]) if positive_diagonal is None else positive_diagonal
    if backend in ("banded", "cholmod", "torch-cg", "pardiso") and not symmetric:
        raise ValueError(f"backend={backend!r} solves symmetric matrices only; this one is not symmetric (use 'splu')")
    if backend != "auto":
        return backend
    n = pattern.shape[0]
    spd_like = symmetric and positive_diagonal
    if values.device.type != "cpu":
        return "dense" if n <= DENSE_LIMIT or not spd_like else "torch-cg"
    if not spd_like:
        return "splu"
    if n <= BANDED_ORDER_LIMIT:
        bandwidth = band_layout(pattern).bandwidth
        if n * (bandwidth + 1) ** 2 <= BANDED_WORK_LIMIT:
            return "banded"
    three_d_like = pattern.nnz > 10 * n
    if three_d_like and n <= DIRECT_LIMIT_3D:
        # SuperLU in symmetric mode beat CHOLMOD (with Debian's reference BLAS) on small 3-D
        # systems: 2.0 against 2.9 ms at 512 unknowns, 50 against 73 ms at 4096
        return "splu"
    cholmod = cholmod_available()
    limit = DIRECT_LIMIT_3D if three_d_like else (CHOLMOD_LIMIT if cholmod else DIRECT_LIMIT)
    if n <= limit or not _module_available("pyamg") or pattern.solver_cache.get("iterative_failed"):
        return "cholmod" if cholmod else "splu"
    return "amg"


def factorize(pattern: SparsityPattern, values: Tensor, options: SolveOptions | str = "auto") -> Factorization:
    """Prepare B matrices, values (B, nnz) on ``pattern``, for solves; a single matrix is values (1, nnz).

    One backend for the whole batch, chosen once (a batch mixing symmetric and nonsymmetric
    matrices lets each matrix choose). On the CPU: the values go to CSC order in one gather,
    CHOLMOD runs one symbolic analysis (cached on the pattern, so later batches reuse it too)
    and B numeric factorisations, AMG builds one hierarchy that preconditions every matrix;
    ``dense`` factorises the batch in one batched LU, ``torch-cg`` iterates on all matrices
    at once. Raises SingularMatrixError (naming the matrix of a batch).
    """
    if isinstance(options, str):
        options = SolveOptions(backend=options)
    if not isinstance(values, Tensor) or values.ndim != 2 or values.shape[0] < 1 or values.shape[1] != pattern.nnz:
        got = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
        raise ValueError(
            f"values must have shape (B, {pattern.nnz}) with B >= 1 (one matrix: (1, {pattern.nnz})), got {got}"
        )
    values, batch = values.detach(), values.shape[0]
    finite, symmetric, positive = _matrix_properties(pattern, values)
    if not finite.all():
        where = f" (matrix {int(np.argmin(finite))} of a batch of {batch})" if batch > 1 else ""
        raise SolverError(f"the matrix values contain NaN or inf{where}")
    if symmetric.any() != symmetric.all() or positive.any() != positive.all():
        return _EachMatrix(pattern, [factorize(pattern, values[i : i + 1], options) for i in range(batch)])
    symmetric_all = bool(symmetric[0])
    backend = choose_backend(pattern, values[0], options.backend, symmetric_all, bool(positive[0]))
    if (
        options.backend == "auto"
        and batch > 1
        and backend in ("cholmod", "splu")  # the banded Cholesky beats PARDISO on one thread already
        and symmetric_all
        and positive[0]
        and pardiso_available()
    ):
        backend = "pardiso"  # the batch's factorisations in parallel: the other direct solvers hold the GIL
    if options.method is not None and backend not in ITERATIVE:
        raise ValueError(f"method={options.method!r} applies to iterative backends {ITERATIVE}, not {backend!r}")
    stats.by_backend[backend] = stats.by_backend.get(backend, 0) + batch
    if backend == "torch-cg":
        return _TorchCG(pattern, values, options)
    if backend == "dense":
        return _Dense(pattern, values)
    data = _to_numpy(values)
    if backend == "amg":
        return _AMG(pattern, data, symmetric_all, options)
    if backend == "pardiso":
        return _Pardiso(pattern, data)
    if backend == "cholmod":
        return _Cholmod(pattern, data)
    if backend == "banded":
        try:
            return _Banded(pattern, data)
        except SingularMatrixError:
            if options.backend != "auto":
                raise
            # symmetric with a positive diagonal, yet not positive definite: SuperLU factorises an
            # indefinite matrix, and reports a singular one with its pivots
            stats.by_backend["splu"] = stats.by_backend.get("splu", 0) + batch
    return _SuperLU(pattern, data, symmetric_all)


# -- the solve --------------------------------------------------------------------------


def _norm(x: np.ndarray) -> float:
    """The 2-norm of x (any shape), in float64, without overflow or underflow for entries near
    float64's limits: BLAS's dnrm2 scales as it sums (0.3 us at 1e3 entries)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    return float(scipy.linalg.blas.dnrm2(x)) if x.size else 0.0


def _host_csr(pattern: SparsityPattern) -> tuple[scipy.sparse.csr_matrix, threading.Lock]:
    """A SciPy CSR matrix on the pattern and its lock, built once and cached on it; callers swap in
    their values under the lock (building a matrix per call costs more than the product at 1e3 unknowns)."""
    entry = pattern.solver_cache.get("host_csr")
    if entry is None:
        indptr, indices = pattern.csr
        matrix = scipy.sparse.csr_matrix((np.zeros(pattern.nnz), indices, indptr), shape=pattern.shape)
        entry = pattern.solver_cache["host_csr"] = (matrix, threading.Lock())
    return entry


def _check_residual(values: Tensor, pattern: SparsityPattern, b: Tensor, u: Tensor, tolerance: float) -> None:
    """Relative residual |A_i u_i - b_i| / |b_i| of every matrix of the batch (values (B, nnz),
    b and u (B, n, k)); SolverError names the first matrix over ``tolerance``."""
    u = u.detach()
    values, b = values.detach().to(u.dtype), b.detach().to(u.dtype)
    host = on_host(values)[0]
    with np.errstate(over="ignore", invalid="ignore"):  # a non-finite residual is reported below
        if isinstance(host, np.ndarray):  # in NumPy/SciPy: each torch call costs ~10 us on small systems
            matrix, lock = _host_csr(pattern)
            # one column as a vector (SciPy's fast path): (n, 1) -> (n,)
            solutions, rights = u.numpy(), b.numpy()
            if solutions.shape[2] == 1:
                solutions, rights = solutions[:, :, 0], rights[:, :, 0]
            products = []
            with lock:  # one matrix object per pattern: threads take turns swapping their values in
                for v, x in zip(host, solutions):
                    matrix.data = v  # the values are in CSR order already
                    products.append(matrix @ x)
            residuals = [_norm(np.subtract(product, r, out=product)) for product, r in zip(products, rights)]
            scales = [_norm(r) for r in rights]
        else:
            difference = (batched_matvec(values, pattern.rows, pattern.cols, u) - b).flatten(1).cpu().numpy()
            residuals = [_norm(row) for row in difference]
            scales = [_norm(row) for row in b.flatten(1).cpu().numpy()]
    for i, (residual, scale) in enumerate(zip(residuals, scales)):
        if not residual <= tolerance * max(scale, 1e-300):  # a NaN residual fails too
            relative = residual / scale if scale > 0 else residual
            where = f" (matrix {i} of a batch of {values.shape[0]})" if values.shape[0] > 1 else ""
            raise SolverError(
                f"the solve did not reach a trustworthy solution{where}: relative residual "
                f"{relative:.3e} > {tolerance:g} (the matrix is probably singular or extremely ill-conditioned)"
            )


def _normalise_rhs(pattern: SparsityPattern, values: Tensor, b: Tensor) -> tuple[Tensor, Tensor, tuple[int, ...]]:
    """Values (B, nnz), b (B, n, k) and the output shape for the solution."""
    n = pattern.shape[0]
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
    matrix,
    b: Tensor,
    backend: str = "auto",
    method: str | None = None,
    rtol: float = DEFAULT_RTOL,
    maxiter: int | None = None,
    check: bool = True,
) -> Tensor:
    """Solve A u = b, differentiable in A's values and in b (one adjoint solve per matrix, same factorisation).

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
    # a SparseMatrix is recognised by its pattern: sparse.py imports this module, not the reverse
    pattern = getattr(matrix, "pattern", None)
    if not isinstance(pattern, SparsityPattern) or not isinstance(getattr(matrix, "values", None), Tensor):
        raise TypeError(f"matrix must be a tmcore SparseMatrix, got {type(matrix).__name__}")
    if not isinstance(b, Tensor):
        raise TypeError(f"b must be a torch.Tensor, got {type(b).__name__}")
    n_rows, n_cols = pattern.shape
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
    if not all_finite(b):  # the matrix's values are checked by factorize
        raise SolverError("b contains NaN or inf")
    values, b3, out_shape = _normalise_rhs(pattern, matrix.values, b)
    options = SolveOptions(backend=backend, method=method, rtol=rtol, maxiter=maxiter, check=check)
    with threads_for(values.numel()):
        return _solve(pattern, values, b3, options).to(b.dtype).reshape(out_shape)


def _solve(pattern: SparsityPattern, values: Tensor, b3: Tensor, options: SolveOptions) -> Tensor:
    """u (B, n, k) of values (B, nnz) and b3 (B, n, k), checked: the work of :func:`solve` after its argument checks."""
    backend, rtol, check = options.backend, options.rtol, options.check
    # the CPU backends solve in float64: check the residual before rounding to b's dtype
    # (a float32 solution of a well-posed system rounds to a residual of ~eps32 * cond(A))
    rhs = b3.to(torch.float64) if values.device.type == "cpu" else b3
    try:
        factor = factorize(pattern, values, options)
        u = FactoredSolve.apply(values, rhs, factor, False)
    except SolverError as exc:
        if backend != "auto" or isinstance(exc, SingularMatrixError):
            raise
        # "auto" chose an iterative backend that failed on this matrix (AMG on an
        # elasticity-like system, say): a direct solver always applies
        direct = "cholmod" if cholmod_available() and bool(_symmetric(pattern, values[:1])[0]) else "splu"
        pattern.solver_cache["iterative_failed"] = True  # later "auto" solves on this pattern go direct at once
        logger.warning("solve: the automatic iterative backend failed (%s); falling back to %r", exc, direct)
        factor = factorize(pattern, values, dataclasses.replace(options, backend=direct))
        u = FactoredSolve.apply(values, rhs, factor, False)
    if check:
        tolerance = max(RESIDUAL_TOL, 100 * rtol) if factor.iterative else RESIDUAL_TOL
        _check_residual(values, pattern, rhs, u, tolerance)
    return u


__all__ = [
    "BACKENDS",
    "Factorization",
    "SolveOptions",
    "choose_backend",
    "cholmod_available",
    "factorize",
    "pardiso_available",
    "solve",
    "stats",
]
