"""MKL through ctypes: a batch of SPD matrices on one pattern, factorised on several cores.

Two routines: PARDISO (a sparse direct solver, :class:`BatchFactor`) and LAPACK's banded
Cholesky (dpbtrf/dpbtrs, :func:`band_factor`, :func:`band_solve`, which the banded backend
runs on a batch's matrices side by side through :func:`in_parallel`).

Why it exists: SciPy's SuperLU and scikit-sparse 0.4's CHOLMOD hold the GIL while they
factorise, so Python threads cannot factorise two matrices of a batch at once (measured
on the 2-core machine: 16 CHOLMOD factorisations at 1e4 unknowns took 208 ms on one
thread and 209 ms on two; SuperLU got slower). A ctypes call releases the GIL for its
duration, and one PARDISO handle keeps several numeric factorisations of one analysed
pattern side by side (its ``maxfct``/``mnum`` arguments). So a batch runs on W handles,
one per worker thread: each handle is analysed once (ordering and symbolic factorisation)
and then factorises its share of the batch with one MKL thread, on its own core.

Handles are pooled on the pattern (``pattern.solver_cache``): a later batch on the same
pattern takes the free handles and skips the analysis, so a training loop analyses W
times in all. A batch gives its handles back when it is garbage-collected (after the
backward pass that needed its factors).

The banded routines exist for the same reason: SciPy's LAPACK wrappers hold the GIL, and
OpenBLAS's dpbtrf called through ctypes from two threads ran *slower* than from one
(measured: 0.19 against 0.18-0.22 ms per 690-unknown matrix; OpenBLAS serialises its
buffers), while MKL's ran 1.6-1.8x faster on two threads than on one (0.114 -> 0.071 ms).

Optional: needs the MKL runtime library libmkl_rt (``pip install mkl``), found through
``$TMCORE_MKL_RT``, the system library path or the Python prefix's ``lib/``. Without it,
:func:`available` is False and batches use CHOLMOD or SuperLU one matrix after another.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import sys
import threading
import weakref
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import lru_cache

import numpy as np
import torch

from tmcore.core.errors import SingularMatrixError, SolverError
from tmcore.core.linalg.pattern import SparsityPattern

__all__ = ["available", "band_factor", "band_solve", "BatchFactor", "in_parallel", "threads"]

ENV_LIBRARY = "TMCORE_MKL_RT"
ENV_THREADS = "TMCORE_SOLVER_THREADS"
SPD = 2  # PARDISO's matrix type: real symmetric positive definite
ERRORS = {
    -1: "input inconsistent",
    -2: "not enough memory",
    -3: "reordering problem",
    -4: "zero or negative pivot: the matrix is not positive definite",
    -5: "unclassified internal error",
    -6: "reordering failed",
    -7: "diagonal matrix is singular",
    -8: "32-bit integer overflow",
    -9: "not enough memory for out-of-core",
    -10: "error opening out-of-core files",
    -11: "read/write error",
}


@lru_cache(maxsize=None)
def _library():
    """The loaded libmkl_rt with the signatures we use, or None."""
    candidates = [os.environ.get(ENV_LIBRARY), ctypes.util.find_library("mkl_rt")]
    candidates += sorted(glob.glob(os.path.join(sys.prefix, "lib", "libmkl_rt.so*")), key=len)
    for path in candidates:
        if not path:
            continue
        try:
            lib = ctypes.CDLL(path)
            pardiso = lib.pardiso
            set_threads = lib.MKL_Set_Num_Threads_Local
        except (OSError, AttributeError):
            continue
        p = ctypes.c_void_p
        pardiso.argtypes = [p] * 16
        pardiso.restype = None
        set_threads.argtypes = [ctypes.c_int]
        set_threads.restype = ctypes.c_int
        integer = ctypes.POINTER(ctypes.c_int32)
        for routine, arguments in (
            ("dpbtrf", [ctypes.c_char_p, integer, integer, p, integer, integer]),
            ("dpbtrs", [ctypes.c_char_p, integer, integer, integer, p, integer, p, integer, integer]),
        ):
            getattr(lib, routine).argtypes = arguments
            getattr(lib, routine).restype = None
        return lib
    return None


def available() -> bool:
    """Whether MKL PARDISO can be loaded."""
    return _library() is not None


def threads() -> int:
    """Worker threads for a batch: ``$TMCORE_SOLVER_THREADS``, else torch's intra-op thread count
    (``torch.get_num_threads()``, at most 8), so ``torch.set_num_threads(1)`` keeps batches on one."""
    value = os.environ.get(ENV_THREADS)
    if value:
        try:
            count = int(value)
        except ValueError:
            raise ValueError(f"${ENV_THREADS} must be a positive integer, got {value!r}") from None
        if count < 1:
            raise ValueError(f"${ENV_THREADS} must be a positive integer, got {value!r}")
        return count
    return max(1, min(torch.get_num_threads(), 8))


_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _pool_of_threads(count: int) -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None or _executor._max_workers < count:
            _executor = ThreadPoolExecutor(max_workers=count, thread_name_prefix="tmcore-pardiso")
        return _executor


def in_parallel(task, count: int, workers: int) -> list:
    """[task(w, i) for i in range(count)] with worker w = i mod ``workers`` running its share
    on its own thread (tasks must release the GIL, as ctypes calls do); results in order of i."""
    results: list = [None] * count

    def share(w: int) -> None:
        for i in range(w, count, workers):
            results[i] = task(w, i)

    if workers <= 1:
        share(0)
    else:
        for future in [_pool_of_threads(workers).submit(share, w) for w in range(workers)]:
            future.result()
    return results


def _int(value: int) -> ctypes.c_int32:
    return ctypes.c_int32(int(value))


@contextmanager
def _one_mkl_thread(lib) -> Iterator[None]:
    """MKL on one thread in this Python thread for the block (restored after): the parallelism is
    across a batch's matrices, one per worker thread."""
    previous = lib.MKL_Set_Num_Threads_Local(1)
    try:
        yield
    finally:
        lib.MKL_Set_Num_Threads_Local(previous)


# -- LAPACK's banded Cholesky -------------------------------------------------------------


def band_factor(band: np.ndarray) -> int:
    """dpbtrf in place on ``band`` (b + 1, n), LAPACK's upper band storage in Fortran order (the
    transpose of a C-order (n, b + 1) array); returns LAPACK's info (0: factorised; k > 0: leading
    minor k is not positive). One MKL thread; the GIL is released while it runs."""
    lib = _library()
    width, n = band.shape
    info = ctypes.c_int32(0)
    with _one_mkl_thread(lib):
        lib.dpbtrf(b"U", _int(n), _int(width - 1), band.ctypes.data, _int(width), info)
    return info.value


def band_solve(factor: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """dpbtrs: x (n, k) for rhs (n, k) with a factor (b + 1, n) of :func:`band_factor`; GIL released."""
    lib = _library()
    width, n = factor.shape
    x = np.array(rhs, dtype=np.float64, order="F")
    info = ctypes.c_int32(0)
    with _one_mkl_thread(lib):
        lib.dpbtrs(
            b"U",
            _int(n),
            _int(width - 1),
            _int(x.shape[1]),
            factor.ctypes.data,
            _int(width),
            x.ctypes.data,
            _int(n),
            info,
        )
    if info.value != 0:
        raise SolverError(f"dpbtrs argument {-info.value} is invalid")
    return x


class _Structure:
    """The upper triangle of a symmetric pattern as zero-based CSR (what PARDISO reads for SPD)."""

    def __init__(self, pattern: SparsityPattern):
        rows, cols = pattern.rows.cpu().numpy(), pattern.cols.cpu().numpy()
        self.upper = np.nonzero(rows <= cols)[0]  # row-major order is kept: CSR of the upper triangle
        n = pattern.shape[0]
        self.n = n
        self.ia = np.zeros(n + 1, dtype=np.int32)
        np.cumsum(np.bincount(rows[self.upper], minlength=n), out=self.ia[1:])
        self.ja = cols[self.upper].astype(np.int32)


class _Handle:
    """One PARDISO handle: one analysis, up to ``capacity`` numeric factorisations (slots)."""

    def __init__(self, structure: _Structure, capacity: int, values: np.ndarray):
        self.lib = _library()
        self.structure = structure
        self.capacity = capacity
        self.pt = np.zeros(64, dtype=np.int64)
        self.iparm = np.zeros(64, dtype=np.int32)
        self.iparm[0] = 1  # our own iparm values
        self.iparm[1] = 0  # minimum-degree ordering: measured cheaper to analyse than METIS at these sizes
        self.iparm[34] = 1  # zero-based indices
        self.used: set[int] = set()
        self._call(11, 0, values)  # ordering and symbolic factorisation
        self._finalizer = weakref.finalize(self, _release, self.lib, self.pt, self.iparm, structure, capacity)
        self._finalizer.atexit = False

    def _call(
        self, phase: int, slot: int, values: np.ndarray, rhs: np.ndarray | None = None, out: np.ndarray | None = None
    ) -> None:
        s = self.structure
        dummy = np.zeros(1)
        rhs = dummy if rhs is None else rhs
        out = dummy if out is None else out
        nrhs = 1 if rhs.ndim == 1 else rhs.shape[1]
        error = ctypes.c_int32(0)
        # one MKL thread for every phase of every handle: the parallelism is across the batch, and
        # PARDISO crashed (measured) when a handle analysed with two threads factorised with one
        with _one_mkl_thread(self.lib):
            self.lib.pardiso(
                self.pt.ctypes.data,
                ctypes.byref(_int(self.capacity)),
                ctypes.byref(_int(slot + 1)),
                ctypes.byref(_int(SPD)),
                ctypes.byref(_int(phase)),
                ctypes.byref(_int(s.n)),
                values.ctypes.data,
                s.ia.ctypes.data,
                s.ja.ctypes.data,
                None,
                ctypes.byref(_int(nrhs)),
                self.iparm.ctypes.data,
                ctypes.byref(_int(0)),
                rhs.ctypes.data,
                out.ctypes.data,
                ctypes.byref(error),
            )
        if error.value != 0:
            message = f"PARDISO error {error.value} in phase {phase}: {ERRORS.get(error.value, 'unknown error')}"
            if error.value in (-4, -7):
                raise SingularMatrixError(message)
            raise SolverError(message)

    def factorize(self, slot: int, values: np.ndarray) -> None:
        self._call(22, slot, values)
        self.used.add(slot)

    def solve(self, slot: int, values: np.ndarray, rhs: np.ndarray) -> np.ndarray:
        """x (n, k) for rhs (n, k) (column-major for PARDISO, returned C-contiguous)."""
        rhs = np.asfortranarray(rhs)
        out = np.zeros_like(rhs, order="F")
        self._call(33, slot, values, rhs, out)
        return np.ascontiguousarray(out)

    def free_factors(self) -> None:
        """Release the numeric factors of every used slot (the analysis stays)."""
        for slot in sorted(self.used):
            self._call(0, slot, np.zeros(1))
        self.used.clear()


def _release(lib, pt, iparm, structure, capacity) -> None:
    """Free all of a handle's memory (its finalizer)."""
    error = ctypes.c_int32(0)
    dummy = np.zeros(1)
    with _one_mkl_thread(lib):
        lib.pardiso(
            pt.ctypes.data,
            ctypes.byref(_int(capacity)),
            ctypes.byref(_int(1)),
            ctypes.byref(_int(SPD)),
            ctypes.byref(_int(-1)),
            ctypes.byref(_int(structure.n)),
            dummy.ctypes.data,
            structure.ia.ctypes.data,
            structure.ja.ctypes.data,
            None,
            ctypes.byref(_int(1)),
            iparm.ctypes.data,
            ctypes.byref(_int(0)),
            dummy.ctypes.data,
            dummy.ctypes.data,
            ctypes.byref(error),
        )


class _Pool:
    """The free handles of one pattern (kept in ``pattern.solver_cache``)."""

    def __init__(self, pattern: SparsityPattern):
        self.structure = _Structure(pattern)
        self.free: list[_Handle] = []
        self.lock = threading.Lock()
        self.keep = 2 * threads()

    def take(self, count: int, capacity: int) -> tuple[list[_Handle], int]:
        """``count`` free handles that hold ``capacity`` factorisations; how many had to be made."""
        with self.lock:
            fitting = [h for h in self.free if h.capacity >= capacity][:count]
            for handle in fitting:
                self.free.remove(handle)
        return fitting, count - len(fitting)

    def give_back(self, handles: list[_Handle]) -> None:
        for handle in handles:
            handle.free_factors()
        with self.lock:
            self.free.extend(handles)
            self.free.sort(key=lambda h: -h.capacity)
            del self.free[self.keep :]  # the rest are freed by their finalizers


def _pool(pattern: SparsityPattern) -> _Pool:
    cache = pattern.solver_cache
    pool = cache.get("pardiso")
    if pool is None:
        pool = cache["pardiso"] = _Pool(pattern)
    return pool


class BatchFactor:
    """Numeric factorisations of B SPD matrices ``values`` (B, nnz) on ``pattern``.

    Matrix i lives in handle i mod W, slot i // W, with W = min(B, :func:`threads`).
    ``analyses``: how many handles had to be analysed for this batch (0 once the pool is warm).
    """

    def __init__(self, pattern: SparsityPattern, values: np.ndarray):
        if _library() is None:
            raise RuntimeError("MKL PARDISO is not available (pip install mkl, or set $TMCORE_MKL_RT)")
        pool = _pool(pattern)
        self.values = np.ascontiguousarray(values[:, pool.structure.upper])  # PARDISO reads them again when solving
        batch = self.values.shape[0]
        self.workers = min(batch, threads())
        capacity = -(-batch // self.workers)
        handles, missing = pool.take(self.workers, capacity)
        self.analyses = missing
        try:
            handles += [_Handle(pool.structure, capacity, self.values[0]) for _ in range(missing)]
            self.handles = handles
            self._run(lambda handle, slot, i: handle.factorize(slot, self.values[i]))
        except BaseException:
            pool.give_back(handles)
            raise
        self._finalizer = weakref.finalize(self, pool.give_back, handles)
        self._finalizer.atexit = False

    def _run(self, task) -> list:
        """task(handle, slot, i) for every matrix i, each handle's share on its own thread (GIL released
        inside PARDISO); results in matrix order."""
        return in_parallel(lambda w, i: task(self.handles[w], i // self.workers, i), self.values.shape[0], self.workers)

    def solve(self, rhs: np.ndarray) -> np.ndarray:
        """Solutions (B, n, k) for right-hand sides (B, n, k)."""
        return np.stack(self._run(lambda handle, slot, i: handle.solve(slot, self.values[i], rhs[i])))
