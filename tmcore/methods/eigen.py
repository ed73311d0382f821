"""Generalised symmetric eigenproblems K phi = lambda M phi, differentiable in K and M.

:func:`eigsh` returns the k eigenvalues nearest a shift sigma (by default the smallest, sigma =
0) and M-orthonormal eigenvectors of two symmetric sparse matrices on one pattern (K positive
semi-definite, M positive definite on the free dofs, e.g. after condensation). The forward is
shift-invert Lanczos (ARPACK through SciPy's ``eigsh``) on one factorisation of K - sigma M
made by tmcore's :func:`~tmcore.core.linalg.solvers.factorize` (CHOLMOD or SuperLU), reused
for every Lanczos iteration.

**Derivatives.** For a simple eigenvalue with M-normalised phi,

    d lambda = phi^T (dK - lambda dM) phi,

so, on the values of the pattern (entry e at (r_e, c_e)), d lambda / d K_e = phi_r phi_c and
d lambda / d M_e = -lambda phi_r phi_c. The backward of :class:`EigenSolve` forms
sum_i g_i phi_i[r] phi_i[c] for the upstream gradients g (k,) in one pass over the pattern;
autograd takes it on to whatever built K and M (densities, moduli, coordinates).

**Repeated eigenvalues.** In a cluster of equal eigenvalues (a square plate's pair of modes)
the eigenvectors are any M-orthonormal basis of the eigenspace and the individual eigenvalues
are not differentiable: perturbing the plate splits the pair along directions that depend on
the perturbation. What *is* differentiable is any symmetric function of the cluster (its sum,
mean, a p-norm or KS aggregate): its derivative is tr(Phi_C^T (dK - lambda dM) Phi_C) times the
common upstream gradient, independent of the basis Phi_C. The backward therefore groups the
eigenvalues into clusters (relative gap below ``cluster_rtol``) and uses, in each cluster, the
mean of the upstream gradients: the exact gradient of every loss that is symmetric in each
cluster. For a loss that is not (lambda_1 alone of a double eigenvalue), it returns the
gradient of that loss with the cluster's eigenvalues replaced by their mean, a subgradient
direction, and logs a warning that the derivative does not exist. Use a symmetric aggregate of
the cluster as the objective then (docs/optimisation.md). Eigenvector derivatives are not
provided: phi is returned without gradient.
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse
import scipy.sparse.linalg
import torch
from torch import Tensor

from tmcore.core.checks import is_int
from tmcore.core.linalg.solvers import SolveOptions, factorize
from tmcore.core.linalg.sparse import SparseMatrix

__all__ = ["EigenSolve", "eigen_clusters", "eigsh"]

logger = logging.getLogger(__name__)


def eigen_clusters(eigenvalues: Tensor, rtol: float) -> list[list[int]]:
    """Indices of (ascending) eigenvalues grouped into clusters: neighbours closer than rtol * max(|lambda|, tiny)."""
    values = eigenvalues.detach().cpu().tolist()
    scale = max(max((abs(v) for v in values), default=0.0), 1e-300)
    clusters: list[list[int]] = []
    for i, value in enumerate(values):
        if clusters and abs(value - values[clusters[-1][-1]]) <= rtol * scale:
            clusters[-1].append(i)
        else:
            clusters.append([i])
    return clusters


def _to_scipy(pattern, values: Tensor) -> scipy.sparse.csr_array:
    rows, cols = pattern.rows.cpu().numpy(), pattern.cols.cpu().numpy()
    data = values.detach().to(device="cpu", dtype=torch.float64).numpy()
    return scipy.sparse.csr_array((data, (rows, cols)), shape=pattern.shape)


class EigenSolve(torch.autograd.Function):
    """(lambda (k,), phi (n, k)) of K phi = lambda M phi from the values of K and M on one pattern.

    ``EigenSolve.apply(k_values, m_values, pattern, k, sigma, backend, cluster_rtol, tol)``;
    differentiable in both value vectors (nnz,) through the eigenvalues (module docstring);
    phi is non-differentiable.
    """

    @staticmethod
    def forward(ctx, k_values, m_values, pattern, k, sigma, backend, cluster_rtol, tol):
        n = pattern.shape[0]
        shifted = k_values.detach() - sigma * m_values.detach()
        factor = factorize(pattern, shifted.reshape(1, -1), SolveOptions(backend=backend))

        def shift_invert(b):
            rhs = torch.from_numpy(np.ascontiguousarray(b, dtype=np.float64)).reshape(1, n, -1)
            return factor.solve(rhs).reshape(b.shape).numpy()

        operator = scipy.sparse.linalg.LinearOperator((n, n), matvec=shift_invert, dtype=np.float64)
        K, M = _to_scipy(pattern, k_values), _to_scipy(pattern, m_values)
        v0 = np.ones(n) / np.sqrt(n)  # a fixed start vector: reproducible runs
        lam, phi = scipy.sparse.linalg.eigsh(K, k=k, M=M, sigma=sigma, which="LM", OPinv=operator, tol=tol, v0=v0)
        order = np.argsort(lam)
        lam, phi = lam[order], phi[:, order]
        # M-normalise (ARPACK's are, to its tolerance) and fix the sign: largest entry positive
        phi = phi / np.sqrt(np.einsum("ik,ik->k", phi, M @ phi))
        signs = np.sign(phi[np.abs(phi).argmax(axis=0), np.arange(k)])
        phi = phi * np.where(signs == 0, 1.0, signs)
        lam_t = torch.from_numpy(lam).to(k_values)
        phi_t = torch.from_numpy(np.ascontiguousarray(phi)).to(k_values)
        ctx.pattern, ctx.cluster_rtol = pattern, cluster_rtol
        ctx.save_for_backward(lam_t, phi_t)
        ctx.mark_non_differentiable(phi_t)
        return lam_t, phi_t

    @staticmethod
    def backward(ctx, grad_lam, grad_phi):
        lam, phi = ctx.saved_tensors
        if grad_lam is None:
            return (None,) * 8
        g = grad_lam.clone()
        for cluster in eigen_clusters(lam, ctx.cluster_rtol):
            if len(cluster) > 1:
                members = g[cluster]
                if float((members - members.mean()).abs().max()) > 1e-10 * float(members.abs().max() + 1e-300):
                    logger.warning(
                        "eigsh: the loss is not symmetric in the repeated eigenvalues %s (lambda = %.6g): their "
                        "individual derivatives do not exist; using the gradient of the cluster mean",
                        cluster,
                        float(lam[cluster[0]]),
                    )
                g[cluster] = members.mean()
        rows, cols = ctx.pattern.rows.to(phi.device), ctx.pattern.cols.to(phi.device)
        products = phi[rows] * phi[cols]  # (nnz, k)
        grad_k = products @ g
        grad_m = -(products @ (g * lam))
        return grad_k, grad_m, None, None, None, None, None, None


def eigsh(
    K: SparseMatrix,
    M: SparseMatrix,
    k: int = 6,
    sigma: float = 0.0,
    backend: str = "auto",
    cluster_rtol: float = 1e-6,
    tol: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """The k eigenpairs of K phi = lambda M phi nearest ``sigma``, eigenvalues ascending.

    K, M: symmetric (n, n) :class:`SparseMatrix` on the same pattern (condense both with one
    :class:`~tmcore.core.condense.Condenser` first), K - sigma M nonsingular. Returns lambda (k,)
    (differentiable in K's and M's values) and phi (n, k), M-orthonormal, not differentiable.
    ``backend`` is the factorisation's (``factorize``); ``cluster_rtol`` groups repeated
    eigenvalues (module docstring); ``tol`` is ARPACK's (0: machine precision).
    """
    if not isinstance(K, SparseMatrix) or not isinstance(M, SparseMatrix):
        raise TypeError(f"K and M must be SparseMatrix, got {type(K).__name__} and {type(M).__name__}")
    if K.pattern != M.pattern:
        raise ValueError(
            f"K and M must share one sparsity pattern (assemble both on the same mesh and dofs), "
            f"got {K.pattern} and {M.pattern}"
        )
    n = K.pattern.shape[0]
    if not is_int(k) or not 1 <= k < n:
        raise ValueError(f"k must be an int in [1, {n - 1}] (fewer than the {n} unknowns), got {k!r}")
    if K.values.ndim != 1 or M.values.ndim != 1:
        raise ValueError("eigsh takes one pair of matrices, not a batch")
    return EigenSolve.apply(K.values, M.values, K.pattern, k, float(sigma), backend, float(cluster_rtol), float(tol))
