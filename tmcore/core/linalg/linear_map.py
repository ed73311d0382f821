"""A fixed sparse linear map y = A x, differentiable in x (its backward is A^T g).

The assemblers use it for forms that are affine in their data: the map from a coefficient
(per node, per cell or a number) to the matrix values or the load vector is built once per
mesh and form, after which assembly and its backward are one sparse product each.
"""

from __future__ import annotations

import warnings

import scipy.sparse
import torch
from torch import Tensor

from tmcore.core.threads import threads_for

__all__ = ["SparseLinearMap"]

# Non-zeros from which a map's CPU product uses torch's parallel kernel when torch has several
# threads (measured crossover on 2 cores: SciPy faster at 3e4 non-zeros, torch at 3e5)
PARALLEL_NNZ = 1 << 17


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
            forward, transpose = coo.to_sparse_csr(), coo.t().coalesce().to_sparse_csr()
        self.matrix, self.transpose = _Operand(forward), _Operand(transpose)

    def __call__(self, x: Tensor) -> Tensor:
        """A x for x (n_in,) -> (n_out,), or (B, n_in) -> (B, n_out)."""
        return _Apply.apply(x, self.matrix, self.transpose)


class _Operand:
    """One sparse matrix of a map: torch's CSR tensor, and on the CPU a SciPy CSR view of the same
    arrays. SciPy's product costs less there: torch's CSR ``addmv`` builds an MKL handle, zero-fills
    and copies on every call (a py-spy profile put 14% of the chapter's identification step in the
    map's forward, at 2.3e4 non-zeros); with SciPy's the step went from 1.58 to 1.51 ms. Maps from
    ``PARALLEL_NNZ`` non-zeros use torch's when torch has several threads (SciPy's runs on one);
    other devices use torch's."""

    def __init__(self, csr: Tensor):
        self.csr = csr
        self.host = None
        if csr.device.type == "cpu" and csr.dtype in (torch.float32, torch.float64):
            self.host = scipy.sparse.csr_array(
                (csr.values().numpy(), csr.col_indices().numpy(), csr.crow_indices().numpy()), shape=tuple(csr.shape)
            )

    def __matmul__(self, x: Tensor) -> Tensor:
        """This matrix times x (n_in,) -> (n_out,), or each row of x (B, n_in) -> (B, n_out)."""
        # SciPy's product runs on one thread: torch's (MKL) wins on large maps when it has more
        # (1e5 nodes, 3.1e6 non-zeros: 2.6 against 3.7 ms on two threads; 5.9 against 2.7 ms on one)
        one_thread = self.host is not None and (self.host.nnz < PARALLEL_NNZ or torch.get_num_threads() == 1)
        if one_thread and x.device.type == "cpu":
            array = x.detach().numpy()
            if x.ndim == 1:
                return torch.from_numpy(self.host @ array)
            # torch's blocked copy transposes (n_out, B) five times faster than NumPy's strided one
            # (256 x 5324: 1.8 against 9.7 ms)
            return torch.from_numpy(self.host @ array.T).T.contiguous()
        with threads_for(self.csr.values().numel()):
            return self.csr @ x if x.ndim == 1 else (self.csr @ x.T).T


class _Apply(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, matrix: _Operand, transpose: _Operand) -> Tensor:
        ctx.matrix, ctx.transpose = matrix, transpose
        return matrix @ x.to(matrix.csr.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        if torch.is_grad_enabled():  # create_graph=True: the transpose map goes on the graph (linear: exact)
            return _Apply.apply(grad.contiguous(), ctx.transpose, ctx.matrix), None, None
        return ctx.transpose @ grad.contiguous(), None, None  # the same product without a Function's overhead
