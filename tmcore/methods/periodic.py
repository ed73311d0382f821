"""Periodic boundary conditions on box-shaped cells: node pairing and periodic assembly.

A mesh of the box [lower, upper] is periodic when every node on the face x_a = lower_a has
a partner on x_a = upper_a at the same other coordinates, for every axis a. The nodes then
fall into classes (a corner of a 2-D cell is one class of four nodes); a periodic field has
one value per class. :class:`PeriodicCell` finds the classes (on generated grids and on
gmsh meshes alike, by coordinates, to a tolerance) and raises a
:class:`~tmcore.core.errors.MeshError` that says which face has unmatched nodes, and where,
when the mesh is not periodic.

Periodic assembly: element matrices are computed on the mesh as it is (its geometry), then
summed into the classes of their nodes. ``cell.scatter(local)`` does it with the ordinary
assembler's scatter, bound to the *topology* mesh whose cells are the original cells with
every node replaced by its class (a torus, for the pattern only): so the periodic matrix
is a :class:`~tmcore.core.linalg.sparse.SparseMatrix` like any other, and every step is
differentiable in the element matrices.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import Tensor

from tmcore.core.assembly import ElementAssembler, VectorElementAssembler, dof_connectivity
from tmcore.core.errors import MeshError
from tmcore.core.linalg.sparse import SparseMatrix
from tmcore.core.mesh import Mesh, check_mesh_type

__all__ = ["PeriodicCell"]

logger = logging.getLogger(__name__)

_AXES = "xyz"


class _ScalarScatter(ElementAssembler):
    """Only its scatter is used: element matrices of a scalar field onto the periodic pattern."""

    def forward(self, gradu, gradv):  # pragma: no cover - never assembled
        return gradu @ gradv


class _VectorScatter(VectorElementAssembler):
    """Only its scatter is used: element matrices of a vector field onto the periodic pattern."""

    def forward(self, gradu, gradv):  # pragma: no cover - never assembled
        return (gradu * gradv).sum()


def _union_find(n: int, pairs: list[np.ndarray]) -> np.ndarray:
    """The smallest node index of each node's class, for the identification pairs (k, 2)."""
    parent = np.arange(n)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for block in pairs:
        for a, b in block:
            ra, rb = root(int(a)), root(int(b))
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    return np.array([root(i) for i in range(n)])


class PeriodicCell:
    """The periodic identification of the nodes of a mesh of a box (a unit cell).

    Args:
        mesh: a 2-D or 3-D mesh filling the box.
        lower, upper: the box's corners (dim,); by default the bounding box of the points.
        tol: how far (in length units) a node may be from a face and from its partner's
            position; by default 1e-8 times the largest side.

    Attributes:
        pairs: per axis, the (k, 2) long tensor of node pairs (on lower face, on upper face).
        classes: (n,) long, node -> its periodic class in 0 .. n_classes - 1 (classes
            numbered in the order of their smallest node).
        n_classes: the number of independent periodic nodes.
        volume: the box's measure |Y|.
        topology: the torus mesh (cells with nodes replaced by classes) that carries the
            periodic sparsity pattern.

    Raises MeshError when a face's nodes have no partner on the opposite face.
    """

    def __init__(self, mesh: Mesh, lower=None, upper=None, tol: float | None = None):
        check_mesh_type(mesh)
        points = mesh.points.detach().cpu().numpy()
        dim = mesh.dim
        lo = points.min(axis=0) if lower is None else np.asarray(lower, dtype=np.float64)
        hi = points.max(axis=0) if upper is None else np.asarray(upper, dtype=np.float64)
        if lo.shape != (dim,) or hi.shape != (dim,) or not np.all(hi > lo):
            raise ValueError(
                f"lower and upper must be {dim} coordinates with upper > lower, got {lo.tolist()}, {hi.tolist()}"
            )
        tol = 1e-8 * float((hi - lo).max()) if tol is None else float(tol)
        if not (np.isfinite(tol) and tol > 0):
            raise ValueError(f"tol must be a positive number, got {tol!r}")
        self.mesh, self.dim, self.tol = mesh, dim, tol
        self.lower, self.upper = torch.as_tensor(lo), torch.as_tensor(hi)
        self.volume = float(np.prod(hi - lo))
        pairs = []
        for axis in range(dim):
            on_low = np.flatnonzero(np.abs(points[:, axis] - lo[axis]) <= tol)
            on_high = np.flatnonzero(np.abs(points[:, axis] - hi[axis]) <= tol)
            pairs.append(self._match(points, axis, on_low, on_high, lo, hi))
        self.pairs = [torch.from_numpy(p).to(mesh.elements.device) for p in pairs]
        root = _union_find(mesh.n_points, pairs)
        roots, classes = np.unique(root, return_inverse=True)
        self.n_classes = int(roots.size)
        device = mesh.elements.device
        self.classes = torch.from_numpy(classes).to(device=device, dtype=torch.long)
        self.representatives = torch.from_numpy(roots).to(device=device, dtype=torch.long)
        conn = self.classes[mesh.elements]
        self.topology = Mesh(mesh.points[self.representatives], {mesh.cell_type: conn}, check=False)
        self._scatter = {}

    def _match(self, points: np.ndarray, axis: int, on_low: np.ndarray, on_high: np.ndarray, lo, hi) -> np.ndarray:
        """(k, 2) pairs of nodes across the faces normal to ``axis``; MeshError when some have no partner."""
        others = [a for a in range(self.dim) if a != axis]
        name = _AXES[axis]
        if on_low.size == 0 or on_high.size == 0:
            raise MeshError(
                f"the mesh is not periodic along {name}: no nodes on the face {name} = {lo[axis]:g} "
                f"or {name} = {hi[axis]:g}"
            )
        tree = cKDTree(points[on_high][:, others])
        distance, index = tree.query(points[on_low][:, others], distance_upper_bound=self.tol)
        unmatched_low = on_low[~np.isfinite(distance)]
        matched = np.isfinite(distance)
        partner = np.full(on_low.size, -1)
        partner[matched] = on_high[index[matched]]
        unmatched_high = np.setdiff1d(on_high, partner[matched])
        if unmatched_low.size or unmatched_high.size:
            side, nodes, where = (
                (f"{name} = {lo[axis]:g}", unmatched_low, f"{name} = {hi[axis]:g}")
                if unmatched_low.size
                else (f"{name} = {hi[axis]:g}", unmatched_high, f"{name} = {lo[axis]:g}")
            )
            first = np.array2string(points[nodes[0]], precision=6)
            raise MeshError(
                f"the mesh is not periodic along {name}: {nodes.size} of the nodes on the face {side} have no partner "
                f"on {where} within tol={self.tol:.3g} (the first at {first}); mesh the cell with matching "
                f"opposite faces (a structured grid, or gmsh with periodic constraints)"
            )
        return np.stack([on_low, partner], axis=1)

    # -- fields --------------------------------------------------------------------------------

    def dof_classes(self, components: int | None) -> Tensor:
        """Node (components None) or node-major dof (n c,) -> its periodic class / periodic dof."""
        if components is None:
            return self.classes
        return dof_connectivity(self.classes[:, None], components).reshape(-1)

    def expand(self, values: Tensor, components: int | None = None) -> Tensor:
        """A periodic field (..., n_classes[ * c]) as a field on every node (..., n[ * c])."""
        return values[..., self.dof_classes(components)]

    def reduce(self, values: Tensor, components: int | None = None) -> Tensor:
        """Sum a nodal vector (..., n[ * c]) (a load, a residual) into the periodic dofs (..., n_classes[ * c])."""
        index = self.dof_classes(components)
        size = self.n_classes * (components or 1)
        return values.new_zeros(values.shape[:-1] + (size,)).index_add(-1, index, values)

    # -- matrices ------------------------------------------------------------------------------

    def scatter(self, local: Tensor, components: int | None = None) -> SparseMatrix:
        """The periodic matrix (n_classes c, n_classes c) of element matrices ``local`` (B?, m, K, K)
        (from ``Assembler.local`` on ``self.mesh``); components None for scalar fields, dim for vectors."""
        if components not in (None, self.dim):
            raise ValueError(f"components must be None (scalar) or the dimension {self.dim}, got {components!r}")
        scatter = self._scatter.get(components)
        if scatter is None:
            scatter = self._scatter[components] = (_ScalarScatter if components is None else _VectorScatter).from_mesh(
                self.topology
            )
        return scatter.scatter(local)

    def element_dofs(self, components: int | None = None) -> tuple[Tensor, Tensor]:
        """(dofs on the mesh (m, K), periodic dofs (m, K)) of every cell, in the order of ``Assembler.local``."""
        conn = self.mesh.elements
        if components is None:
            return conn, self.classes[conn]
        return dof_connectivity(conn, components), dof_connectivity(self.classes[conn], components)

    def __repr__(self) -> str:
        box = f"{self.lower.tolist()}..{self.upper.tolist()}"
        return f"PeriodicCell(n={self.mesh.n_points}, classes={self.n_classes}, box={box})"
