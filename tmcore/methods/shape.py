"""Shape gradients: derivatives of a loss with respect to the node coordinates.

When ``mesh.points`` requires grad (a leaf with ``requires_grad_()``, or any tensor
computed from shape parameters), the assemblers recompute the Jacobians, quadrature
weights and shape-function gradients from the points on every call instead of taking
them from the mesh's cache, and autograd carries dL/dpoints through them: the shape
derivative of any pipeline (assembly, condensation, solve, loss) with the same one
adjoint solve as any other parameter.

This module adds the pieces a shape study needs:

- :func:`with_points` a mesh with the same cells, facet sets and sparsity pattern on
  new (differentiable) points, so one mesh topology serves many shapes;
- :func:`interior_mask` the nodes that may move freely without changing the domain;
- :class:`Fin` a small shape-optimisation example: the profile of a cooling fin,
  y in [0, H(x)] with H(x) = h0 (1 + sum_k a_k cos(k pi x / L)), heated uniformly and
  held at u = 0 at its base x = 0. Its area is L h0 for every a (the cosines integrate
  to zero), so minimising the thermal compliance at fixed material is unconstrained in
  a; :func:`optimise_fin` does it with a step-limited gradient descent.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from tmcore.core.assembly import share_patterns
from tmcore.core.checks import check_count, check_real
from tmcore.core.condense import Condenser
from tmcore.core.mesh import Mesh, check_mesh_type
from tmcore.forms import Laplace, Source

__all__ = ["Fin", "FinResult", "interior_mask", "optimise_fin", "with_points"]


def with_points(mesh: Mesh, points: Tensor) -> Mesh:
    """A mesh with ``mesh``'s cells and facet sets on ``points`` (n, dim), which may carry gradients.

    The new mesh shares the connectivity tensors and the assembly sparsity patterns of
    ``mesh`` (no re-analysis); it is not checked for inverted cells.
    """
    check_mesh_type(mesh)
    if not isinstance(points, Tensor) or points.shape != mesh.points.shape:
        got = tuple(points.shape) if isinstance(points, Tensor) else type(points).__name__
        raise ValueError(f"points must have the shape of mesh.points {tuple(mesh.points.shape)}, got {got}")
    facets = {name: mesh.facet_sets[name] for name in mesh.facet_sets.keys()}
    moved = Mesh(points, {mesh.cell_type: mesh.elements}, facets, check=False)
    share_patterns(mesh, moved)
    return moved


def interior_mask(mesh: Mesh) -> Tensor:
    """(n,) bool: nodes on no boundary facet, the ones that move without changing the domain."""
    check_mesh_type(mesh)
    return ~mesh.boundary_mask


# -- the fin example ------------------------------------------------------------------------


class Fin:
    """Thermal compliance of a fin whose upper edge is y = H(x), H(x) = h0 (1 + sum_k a_k cos(k pi x / L)).

    A reference grid of (nx, ny) cells on the unit square is mapped to the fin by
    (xi, eta) -> (L xi, eta H(L xi)); every node moves with the shape, so the mesh stays
    valid for H > 0. Heat is produced uniformly (source 1), the base x = 0 is held at
    u = 0 and the other edges are insulated; the compliance J = int u dx is the mean
    temperature times the area, lower for a better fin. ``compliance(a)`` is
    differentiable in the shape parameters a (K,); ``points(a)`` gives the mesh nodes.
    """

    def __init__(
        self,
        n_modes: int = 4,
        length: float = 2.0,
        h0: float = 0.5,
        shape: tuple[int, int] = (40, 10),
        element_type: str = "quad",
    ):
        self.n_modes = check_count("n_modes", n_modes)
        self.length, self.h0 = check_real("length", length, 0.0), check_real("h0", h0, 0.0)
        self.reference = Mesh.gen_grid(tuple(shape), element_type=element_type)
        self.base = self.reference.nodes_of("left")
        self.condenser = Condenser(self.base)
        self.modes = torch.arange(1, n_modes + 1, dtype=torch.float64)

    def height(self, a: Tensor, x: Tensor) -> Tensor:
        """H(x) for shape parameters a (K,) at abscissae x (...)."""
        a = self._check(a)
        waves = torch.cos(math.pi * x[..., None] * self.modes / self.length)
        return self.h0 * (1.0 + waves @ a)

    def points(self, a: Tensor) -> Tensor:
        """Node coordinates (n, 2) of the fin with parameters a."""
        xi, eta = self.reference.points[:, 0], self.reference.points[:, 1]
        x = self.length * xi
        return torch.stack([x, eta * self.height(a, x)], dim=1)

    def mesh(self, a: Tensor) -> Mesh:
        """The fin's mesh (points differentiable in a)."""
        return with_points(self.reference, self.points(a))

    def solve(self, a: Tensor) -> tuple[Tensor, Tensor]:
        """(temperature (n,), load vector (n,)) of the fin with parameters a."""
        mesh = self.mesh(a)
        K = Laplace.from_mesh(mesh)()
        b = Source.from_mesh(mesh)(scalar_data={"f": 1.0})
        K_free, b_free = self.condenser(K, b)
        return self.condenser.recover(K_free.solve(b_free)), b

    def compliance(self, a: Tensor) -> Tensor:
        """J(a) = f . u, the thermal compliance (0-d, differentiable in a)."""
        u, b = self.solve(a)
        return b @ u

    def area(self, a: Tensor) -> Tensor:
        """The fin's area from its cells (equals L h0 for every a)."""
        return self.mesh(a).cell_measures().sum()

    def _check(self, a) -> Tensor:
        if not isinstance(a, Tensor) or a.shape != (self.n_modes,) or not a.is_floating_point():
            got = tuple(a.shape) if isinstance(a, Tensor) else type(a).__name__
            raise ValueError(f"a must be a floating-point ({self.n_modes},) tensor, got {got}")
        return a


@dataclass
class FinResult:
    """History of :func:`optimise_fin`: compliance and parameters per accepted step, the final a."""

    compliance: Tensor
    a: Tensor
    history: list[Tensor] = field(default_factory=list)
    evaluations: int = 0

    @property
    def improvement(self) -> float:
        """J(a_0) / J(a_final)."""
        return float(self.compliance[0] / self.compliance[-1])


def optimise_fin(
    fin: Fin,
    steps: int = 20,
    max_step: float = 0.1,
    min_height: float = 0.1,
    callback: Callable[[int, float], object] | None = None,
) -> FinResult:
    """Minimise the fin's compliance from a = 0 (a straight fin) by step-limited gradient descent.

    Each step moves a by at most ``max_step`` (Euclidean) along -dJ/da, halving the step
    until J decreases and min H >= ``min_height`` h0 (the mesh stays valid).
    """
    a = torch.zeros(fin.n_modes, dtype=torch.float64)
    xs = torch.linspace(0.0, fin.length, 201, dtype=torch.float64)
    history, values, evaluations = [a.clone()], [], 0
    step = max_step
    for iteration in range(steps):
        a_var = a.clone().requires_grad_(True)
        J = fin.compliance(a_var)
        (grad,) = torch.autograd.grad(J, a_var)
        evaluations += 1
        values.append(float(J.detach()))
        if callback is not None:
            callback(iteration, float(J.detach()))
        direction = -grad / grad.norm().clamp_min(1e-300)
        while step > 1e-6:
            trial = a + step * direction
            if float(fin.height(trial, xs).min()) >= min_height * fin.h0:
                with torch.no_grad():
                    J_trial = float(fin.compliance(trial))
                evaluations += 1
                if J_trial < values[-1]:
                    a = trial
                    history.append(a.clone())
                    step = min(max_step, 2 * step)
                    break
            step *= 0.5
        else:
            break
    with torch.no_grad():
        values.append(float(fin.compliance(a)))
    return FinResult(torch.tensor(values, dtype=torch.float64), a, history, evaluations)
