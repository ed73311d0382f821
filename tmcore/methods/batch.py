"""Batched pipelines: B samples through one mesh, one sparsity pattern and one set of analyses.

Every stage of tmcore already takes a leading batch dimension:

=====================  ===========================================================
assemblers             ``point_data`` (B, n), ``element_data`` (B, m), ``scalar_data``
                       (B,) -> matrix values (B, nnz) on one pattern, vectors (B, n)
``Condenser``          K (B, n, n), b (n,) or (B, n), ``dirichlet_value`` (B, n_d)
                       -> K_ff (B, n_f, n_f), b_f (B, n_f); ``recover`` (B, n_f) -> (B, n)
``solve``              values (B, nnz), b (B, n[, k]) -> one symbolic analysis (shared
                       by the batch and cached on the pattern), B numeric
                       factorisations, one vectorised residual check; the backward
                       reuses every factorisation
=====================  ===========================================================

This module adds what a batched workflow needs around them:

- :class:`DiffusionMap`: the forward map kappa -> u of -div(kappa grad u) = f with
  u = g on the Dirichlet nodes, an ``nn.Module`` that takes one field (n,) or a batch (B, n);
- :func:`solve_columns`: one matrix against a batch of right-hand sides (B, n), one
  factorisation for all of them;
- :func:`random_fields`: smooth random fields for training data, sample i a function
  of (seed, i) only, so a data set does not depend on how it was split into batches;
- :func:`diffusion_samples`: (kappa, u) pairs for operator learning, solved B at a time;
- :func:`in_batches`: a map over N samples, B at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from tmcore.core.checks import check_count, check_real, is_number
from tmcore.core.condense import Condenser
from tmcore.core.linalg.sparse import SparseMatrix
from tmcore.core.mesh import Mesh, check_mesh_type
from tmcore.forms import Diffusion, Source

__all__ = ["DiffusionMap", "diffusion_samples", "in_batches", "random_fields", "solve_columns"]


def solve_columns(matrix: SparseMatrix, b: Tensor, **options) -> Tensor:
    """u (B, n) with A u_i = b_i for one matrix A (n, n) and loads b (B, n): one factorisation.

    ``solve`` reads a 2-D b as columns (n, k) for a single matrix; this transposes a
    batch of rows into columns and back. ``options`` go to :func:`tmcore.core.linalg.solvers.solve`.
    """
    if not isinstance(matrix, SparseMatrix):
        raise TypeError(f"matrix must be a tmcore SparseMatrix, got {type(matrix).__name__}")
    if matrix.values.ndim != 1:
        raise ValueError(f"solve_columns needs one matrix (values (nnz,)), got a batch of {matrix.values.shape[0]}")
    n = matrix.pattern.shape[1]
    if not isinstance(b, Tensor) or b.ndim != 2 or b.shape[1] != n:
        raise ValueError(
            f"b must have shape (B, {n}), got {tuple(b.shape) if isinstance(b, Tensor) else type(b).__name__}"
        )
    return matrix.solve(b.T, **options).T


class DiffusionMap(nn.Module):
    """u = S(kappa): -div(kappa grad u) = f in the domain, u = g on the masked nodes.

    Args:
        mesh: the mesh.
        f: source, a float or one value per node (n,).
        mask: Dirichlet nodes (n,) bool; default ``mesh.boundary_mask``.
        dirichlet_value: g, as for :class:`~tmcore.core.condense.Condenser` (None: zero);
            a batch (B, n_d) or (B, n) pairs with a batch of kappa or stands alone.
        where: ``"node"`` (kappa per node, interpolated) or ``"cell"`` (per cell).
        solve_options: passed to :func:`tmcore.core.linalg.solvers.solve` (``backend=``, ``rtol=``, ...).

    ``forward(kappa)``: kappa (n,) or (B, n) per node ((m,) or (B, m) per cell) ->
    u (n,) or (B, n). Differentiable in kappa, f and g. A batch assembles in one
    vectorised pass and solves with one analysis and B numeric factorisations; a single
    kappa with a batch of boundary data factorises once.
    """

    def __init__(
        self,
        mesh: Mesh,
        f: float | Tensor = 1.0,
        mask: Tensor | None = None,
        dirichlet_value: Tensor | float | None = None,
        where: str = "node",
        **solve_options,
    ):
        super().__init__()
        check_mesh_type(mesh)
        if where not in ("node", "cell"):
            raise ValueError(f"where must be 'node' or 'cell', got {where!r}")
        self.mesh, self.where, self.solve_options = mesh, where, solve_options
        dtype = torch.float64
        if is_number(f):
            f = torch.full((mesh.n_points,), float(f), dtype=dtype, device=mesh.device)
        if not isinstance(f, Tensor) or f.shape != (mesh.n_points,):
            raise ValueError(
                f"f must be a float or one value per node ({mesh.n_points},), "
                f"got {getattr(f, 'shape', type(f).__name__)}"
            )
        self.stiffness = Diffusion.from_mesh(mesh)
        self.load = Source.from_mesh(mesh)(point_data={"f": f.to(dtype)})
        self.condenser = Condenser(mesh.boundary_mask if mask is None else mask, dirichlet_value=dirichlet_value)

    @property
    def n_kappa(self) -> int:
        """Values kappa takes per sample: nodes or cells."""
        return self.mesh.n_points if self.where == "node" else self.mesh.n_cells

    def matrix(self, kappa: Tensor) -> SparseMatrix:
        """The stiffness matrix (n, n), or a batch (B, n, n), of kappa."""
        if not isinstance(kappa, Tensor) or kappa.ndim not in (1, 2) or kappa.shape[-1] != self.n_kappa:
            shape = tuple(kappa.shape) if isinstance(kappa, Tensor) else type(kappa).__name__
            raise ValueError(
                f"kappa must have shape ({self.n_kappa},) or (B, {self.n_kappa}) (one value per "
                f"{self.where}), got {shape}"
            )
        data = {"kappa": kappa}
        K = self.stiffness(**({"point_data": data} if self.where == "node" else {"element_data": data}))
        return K.double()

    def forward(self, kappa: Tensor) -> Tensor:
        K_free, b_free = self.condenser(self.matrix(kappa), self.load)
        if K_free.values.ndim == 1 and b_free.ndim == 2:  # one matrix, a batch of boundary data
            u_free = solve_columns(K_free, b_free, **self.solve_options)
        else:
            u_free = K_free.solve(b_free, **self.solve_options)
        return self.condenser.recover(u_free)


def random_fields(
    points: Tensor,
    samples: int | Sequence[int] | Tensor,
    seed: int = 0,
    length_scale: float = 0.2,
    n_features: int = 64,
) -> Tensor:
    """Smooth random fields (N, n) at ``points`` (n, dim): zero mean, unit variance.

    Random Fourier features of the squared-exponential covariance
    exp(-|x - y|^2 / (2 l^2)): f(x) = sqrt(2 / F) sum_j a_j cos(w_j . x + phi_j) with
    w_j ~ N(0, I / l^2), phi_j ~ U(0, 2 pi), a_j ~ N(0, 1), F = ``n_features``.

    samples: a count N (samples 0..N-1) or the sample indices. Sample i is drawn from
    ``numpy.random.default_rng([seed, i])``, so it is the same whichever batch or worker
    draws it. A log-normal coefficient is ``exp(mean + sigma * field)``.
    """
    if not isinstance(points, Tensor) or points.ndim != 2:
        raise ValueError(f"points must be an (n, dim) tensor, got {getattr(points, 'shape', type(points).__name__)}")
    if isinstance(samples, bool) or (isinstance(samples, int) and samples < 0):
        raise ValueError(f"samples must be a count >= 0 or a sequence of indices, got {samples!r}")
    indices = (
        range(samples) if isinstance(samples, int) else [int(i) for i in torch.as_tensor(samples).reshape(-1).tolist()]
    )
    if any(i < 0 for i in indices):
        raise ValueError("sample indices must be >= 0")
    check_count("seed", seed, 0)
    check_real("length_scale", length_scale, 0.0)
    check_count("n_features", n_features)
    x = points.detach().to(device="cpu", dtype=torch.float64).numpy()
    dim = x.shape[1]
    fields = np.empty((len(indices), x.shape[0]))
    for row, index in enumerate(indices):
        rng = np.random.default_rng([int(seed), index])
        w = rng.standard_normal((n_features, dim)) / length_scale
        phi = rng.uniform(0.0, 2.0 * math.pi, n_features)
        a = rng.standard_normal(n_features)
        fields[row] = math.sqrt(2.0 / n_features) * (np.cos(x @ w.T + phi) @ a)
    return torch.from_numpy(fields).to(points.device)


def in_batches(fn: Callable[[Tensor], Tensor], inputs: Tensor, batch_size: int) -> Tensor:
    """``fn`` applied to ``inputs`` (N, ...) ``batch_size`` rows at a time, results concatenated."""
    check_count("batch_size", batch_size)
    if not isinstance(inputs, Tensor) or inputs.ndim < 1:
        raise ValueError(
            "inputs must be a tensor with a leading sample dimension, "
            f"got {getattr(inputs, 'shape', type(inputs).__name__)}"
        )
    return torch.cat([fn(inputs[start : start + batch_size]) for start in range(0, inputs.shape[0], batch_size)])


def diffusion_samples(
    mesh: Mesh,
    samples: int | Sequence[int] | Tensor,
    seed: int = 0,
    length_scale: float = 0.2,
    sigma: float = 0.5,
    f: float | Tensor = 1.0,
    batch_size: int = 64,
    **solve_options,
) -> tuple[Tensor, Tensor]:
    """(kappa, u), each (N, n): operator-learning pairs on ``mesh``.

    kappa = exp(sigma * field) per node, the field from :func:`random_fields` (``seed``,
    ``length_scale``); u solves -div(kappa grad u) = f with u = 0 on the boundary
    (:class:`DiffusionMap`), ``batch_size`` samples per batched solve. No gradients are kept.
    """
    if not (is_number(sigma) and sigma >= 0):
        raise ValueError(f"sigma must be a number >= 0, got {sigma!r}")
    fields = random_fields(mesh.points, samples, seed=seed, length_scale=length_scale)
    kappa = torch.exp(sigma * fields)
    forward = DiffusionMap(mesh, f=f, **solve_options)
    with torch.no_grad():
        u = in_batches(forward, kappa, batch_size) if kappa.shape[0] else kappa.new_zeros(0, mesh.n_points)
    return kappa, u
