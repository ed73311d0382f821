"""Thread use for small work: one thread, whatever torch's setting, below a size where threads pay.

torch runs element-wise and sparse kernels on its intra-op pool (``torch.get_num_threads()``,
all cores by default). For the small systems of a typical optimisation loop (a few thousand
unknowns) a parallel region costs more than it saves, and on a machine where another process
keeps a core busy it costs a scheduler time slice: a 790-node identification step measured
16-17 ms on one thread and 180-200 ms on two with a busy neighbour (2-core machine, load 10).
tmcore's own calls on small data therefore run on one thread; large ones keep torch's setting.

The BLAS behind SciPy (OpenBLAS) has a thread pool of its own, which torch's setting does not
reach: a 790-node banded Cholesky solve took 63 ms beside a busy process with OpenBLAS's default
two threads, against 0.5 ms on one. :func:`one_blas_thread` limits it for a small factorisation,
through threadpoolctl (about 10 us per use; 1 us when BLAS runs on one thread already).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch

__all__ = ["SMALL_WORK", "one_blas_thread", "threads_for"]

# Entries of work (matrix non-zeros, vector length) below which one thread is used.
SMALL_WORK = 1 << 16


@contextmanager
def threads_for(work: int) -> Iterator[None]:
    """Run the block on one intra-op thread when ``work`` < SMALL_WORK, else unchanged."""
    threads = torch.get_num_threads()
    if threads == 1 or work >= SMALL_WORK:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@functools.lru_cache(maxsize=None)
def _blas_pools():
    """threadpoolctl's handle on the BLAS libraries loaded now (SciPy's OpenBLAS), or None without it."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        return None
    return ThreadpoolController().select(user_api="blas")


def one_blas_thread():
    """A context in which the BLAS libraries behind SciPy run on one thread (restored after).

    Nothing to do (about 1 us) when every BLAS library runs on one thread already
    (OMP_NUM_THREADS=1); otherwise threadpoolctl's ``limit`` (about 10 us), which lets one
    Python thread at a time control OpenBLAS's process-wide pool. (A hand-rolled set-and-restore
    from every thread measured 2-4x slower per step for the chapter's two studies run in two
    threads beside a busy process, as ``make figures`` runs them.)
    """
    pools = _blas_pools()
    if pools is None or all(library.num_threads == 1 for library in pools.lib_controllers):
        return nullcontext()
    return pools.limit(limits=1)
