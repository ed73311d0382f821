"""Mesh validation: the geometric and topological checks a ``Mesh`` runs when it is built.

Every check names itself in its message (``check 'coincident nodes' failed: ...``) and the
first offending entities, so that a bad file is diagnosed where it enters. The checks, in
the order they run:

- ``duplicate cells``: two cells with the same vertex set;
- ``degenerate cells`` / ``inverted cells``: det(dx/dxi) zero or negative at a node of a cell;
- ``overlapping cells``: a facet shared by more than two cells (a second layer of cells);
- ``unused nodes``: nodes no cell uses (each leaves a zero row in every assembled matrix);
- ``coincident nodes``: distinct nodes closer than ``rtol`` times the shortest vertex edge
  (a crack exported with doubled nodes, two overlapping copies of a mesh, a file written
  twice into one). When identifying those nodes would make cells coincide, the message
  says so (``overlapping cells``): the mesh holds overlapping copies.

Coincident and unused nodes can be accepted on purpose: ``coincident="merge"`` merges
each group of coincident nodes into its lowest-numbered node, ``coincident="allow"``
keeps them (a deliberate crack, whose two faces are then boundary facets and can be given
a facet set of their own), ``unused="drop"`` removes unused nodes and ``unused="allow"``
keeps them (see :func:`merge_coincident`, :func:`drop_unused`).

Cost: every check is a vectorised pass over the cells or one sort of int64 keys; the
coincident-node search buckets the nodes on a grid finer than the shortest edge, so only
nodes sharing a bucket (or lying within the tolerance of a bucket face) are compared. At
1e6 nodes the checks take a fraction of reading the file (docs/reliability.md gives the
measured numbers). Not detected: two pieces of mesh that overlap without sharing a node
position, a facet or a vertex set (e.g. a copy shifted by a fraction of a cell).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from tmcore.core.elements import Element, get_element
from tmcore.core.errors import MeshError

COINCIDENT_MODES = ("error", "merge", "allow")
UNUSED_MODES = ("error", "drop", "allow")
# Coincident means closer than RTOL x the shortest vertex edge of the mesh.
RTOL = 1e-6
_SHOW = 4  # offending entities named in a message
_BLOCK = 1 << 15  # rows per block of the vectorised passes


def check_mode(name: str, value: str, modes: tuple[str, ...]) -> str:
    """``value`` if it is one of ``modes``; ValueError naming the argument otherwise."""
    if not isinstance(value, str) or value not in modes:
        raise ValueError(f"{name} must be one of {list(modes)}, got {value!r}")
    return value


def check_rtol(rtol: float) -> float:
    """The coincidence tolerance, relative to the shortest edge: a float in (0, 0.1]."""
    if isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not (0 < rtol <= 0.1):
        raise ValueError(f"rtol must be a number in (0, 0.1] (a fraction of the shortest edge), got {rtol!r}")
    return float(rtol)


def _failed(check: str, message: str) -> MeshError:
    return MeshError(f"check {check!r} failed: {message}")


# -- keys of index rows -----------------------------------------------------------------------

_MIX = np.uint64(0x9E3779B97F4A7C15)
# compare-exchange networks that sort 2, 3 or 4 columns elementwise
_NETWORKS = {1: [], 2: [(0, 1)], 3: [(0, 1), (1, 2), (0, 1)], 4: [(0, 1), (2, 3), (0, 2), (1, 3), (1, 2)]}


def _sorted_columns(columns: list[np.ndarray]) -> list[np.ndarray]:
    """The columns of an (r, k) index array sorted along each row (a sorting network for k <= 4)."""
    columns = list(columns)
    if len(columns) not in _NETWORKS:
        return list(np.sort(np.stack(columns, axis=1), axis=1).T)
    for i, j in _NETWORKS[len(columns)]:
        columns[i], columns[j] = np.minimum(columns[i], columns[j]), np.maximum(columns[i], columns[j])
    return columns


def _keys(columns: list[np.ndarray], base: int) -> np.ndarray:
    """One int64 key per row of sorted index columns: exact (base-``base`` digits) when that fits
    in 63 bits, else a 64-bit hash whose collisions :func:`_groups_of_repeats` weeds out."""
    if base ** len(columns) < 2**63:
        keys = columns[0].astype(np.int64, copy=True)
        for column in columns[1:]:
            keys *= base
            keys += column
        return keys
    keys = np.zeros(columns[0].shape, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for column in columns:
            keys = (keys ^ column.astype(np.uint64)) * _MIX
            keys ^= keys >> np.uint64(29)
    return keys.view(np.int64)


def _repeats(keys: np.ndarray, times: int) -> bool:
    """True if some key occurs at least ``times`` times (one sort, no index arrays)."""
    if keys.size < times:
        return False
    ordered = np.sort(keys)
    return bool((ordered[times - 1 :] == ordered[: ordered.size - times + 1]).any())


def _groups_of_repeats(rows: np.ndarray, times: int) -> list[np.ndarray]:
    """Exact, for error messages: the row indices of each set of identical rows occurring >=
    ``times`` times (at most a few sets)."""
    _, inverse, counts = np.unique(rows, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    return [np.nonzero(inverse == group)[0] for group in np.nonzero(counts >= times)[0][:_SHOW]]


# -- geometry ---------------------------------------------------------------------------------


def _det(jac: np.ndarray) -> np.ndarray:
    """det of (..., d, d) Jacobians, d = 2 or 3, written out."""
    if jac.shape[-1] == 2:
        return jac[..., 0, 0] * jac[..., 1, 1] - jac[..., 0, 1] * jac[..., 1, 0]
    a, b, c = jac[..., 0, :], jac[..., 1, :], jac[..., 2, :]
    return (a * np.cross(b, c)).sum(-1)


def _blocks(m: int):
    """Slices of at most _BLOCK rows: temporaries stay in cache and reuse the heap's pages
    (cell-sized temporaries cost more in fresh-page faults than in arithmetic)."""
    for start in range(0, m, _BLOCK):
        yield slice(start, min(m, start + _BLOCK))


def cell_geometry(points: np.ndarray, conn: np.ndarray, element: Element) -> tuple[np.ndarray, float]:
    """det(dx/dxi) (m, q) at the element's reference nodes (q = 1 for P1 simplices, whose map
    is affine) and the length of the shortest vertex-to-vertex edge, block by block on
    coordinate columns (np.take; fancy indexing and reductions over a length-2 axis are
    several times slower at a million cells)."""
    dim = points.shape[1]
    simplex = element.order == 1 and element.n_nodes == element.dim + 1  # P1 triangle / tetra: one Jacobian
    grads = None if simplex else element.basis_gradients(element.reference_nodes.double()).numpy()  # (q, k, dim)
    xs = [np.ascontiguousarray(points[:, d]) for d in range(dim)]
    det = np.empty((conn.shape[0], 1 if simplex else grads.shape[0]))
    h2 = math.inf
    for block in _blocks(conn.shape[0]):
        coords = [np.take(x, conn[block]) for x in xs]  # dim x (b, k)
        for a, b in element.edges:
            h2 = min(h2, float(sum(np.square(c[:, a] - c[:, b]) for c in coords).min()))
        if simplex:
            e = [[c[:, i] - c[:, 0] for c in coords] for i in range(1, dim + 1)]  # e[i][d]: edge from node 0
            if dim == 2:
                det[block, 0] = e[0][0] * e[1][1] - e[1][0] * e[0][1]
            else:
                (a0, a1, a2), (b0, b1, b2), (c0, c1, c2) = e
                det[block, 0] = a0 * (b1 * c2 - b2 * c1) - a1 * (b0 * c2 - b2 * c0) + a2 * (b0 * c1 - b1 * c0)
        else:
            det[block] = _det(np.einsum("qkr,mkd->mqdr", grads, np.stack(coords, axis=-1)))
    return det, math.sqrt(h2)


def _facet_keys(cells: np.ndarray, local: list, base: int) -> np.ndarray:
    """Keys (f * m,) of every facet of every cell (facet-major), block by block."""
    m = cells.shape[0]
    keys = np.empty(len(local) * m, dtype=np.int64)
    for block in _blocks(m):
        for i, facet in enumerate(local):
            keys[i * m + block.start : i * m + block.stop] = _keys(
                _sorted_columns([cells[block, v] for v in facet]), base
            )
    return keys


def shortest_edge(points: Tensor, conn: Tensor, element: Element) -> float:
    """Length of the shortest vertex-to-vertex edge of the cells (coordinate units)."""
    return cell_geometry(_np_points(points), conn.detach().cpu().numpy(), element)[1]


def _np_points(points: Tensor) -> np.ndarray:
    return points.detach().cpu().double().numpy()


# -- coincident nodes -------------------------------------------------------------------------


def coincident_pairs(points: np.ndarray, tol: float, spacing: float) -> np.ndarray:
    """Pairs (k, 2), i < j, of nodes at most ``tol`` apart (Euclidean).

    ``spacing``: a length below which distinct nodes are rare (the shortest edge). Nodes are
    bucketed on a grid of cells of diagonal < spacing / 1.4; only nodes sharing a bucket, or
    lying within tol of a bucket face, are compared (a k-d tree on those few), so a mesh
    without coincident nodes costs one sort of n int64 keys.
    """
    from scipy.spatial import cKDTree

    n, dim = points.shape
    if n < 2:
        return np.zeros((0, 2), dtype=np.int64)
    size = spacing / (math.sqrt(dim) * math.sqrt(2.0))
    low = points.min(axis=0)
    extent = points.max(axis=0) - low
    counts = np.floor(extent / size) + 2 if size > 0 else np.full(dim, np.inf)
    if not size > 8 * tol or not np.all(np.isfinite(counts)) or float(np.prod(counts + 1)) >= 2.0**62:
        candidates = np.arange(n)  # no useful grid: compare everything through the tree
    else:
        # an irrational offset keeps structured grids' nodes off the bucket faces
        margin = 2.0 * tol / size
        keys = np.empty(n, dtype=np.int64)
        border = np.empty(n, dtype=bool)
        strides = [int(np.prod(counts[axis + 1 :] + 1)) for axis in range(dim)]
        for block in _blocks(n):
            scaled = (points[block] - low) / size + 0.31830988618379067
            cell = np.floor(scaled)
            fraction = scaled - cell
            border[block] = ((fraction < margin) | (fraction > 1.0 - margin)).any(axis=1)
            keys[block] = cell.astype(np.int64) @ np.asarray(strides, dtype=np.int64)
        ordered = np.sort(keys)
        shared = ordered[1:] == ordered[:-1]
        if shared.any():
            crowded = np.unique(ordered[1:][shared])
            border |= np.isin(keys, crowded)
        candidates = np.nonzero(border)[0]
    if candidates.size < 2:
        return np.zeros((0, 2), dtype=np.int64)
    pairs = cKDTree(points[candidates]).query_pairs(tol, output_type="ndarray")
    pairs = np.sort(candidates[pairs], axis=1)
    return pairs[np.lexsort(pairs.T[::-1])] if pairs.size else pairs.reshape(0, 2).astype(np.int64)


def _representatives(n: int, pairs: np.ndarray) -> np.ndarray:
    """For each node, the lowest-numbered node of its group of coincident nodes (n,)."""
    parent = np.arange(n)
    if pairs.size == 0:
        return parent
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    lowest = np.full(labels.max() + 1, n, dtype=np.int64)
    np.minimum.at(lowest, labels, np.arange(n))
    return lowest[labels]


def find_coincident(
    points: Tensor, conn: Tensor, element: Element, rtol: float = RTOL, spacing: float | None = None
) -> tuple[np.ndarray, float]:
    """The coincident node pairs (k, 2) of a mesh and the tolerance used (rtol x shortest edge)."""
    pts = _np_points(points)
    h = shortest_edge(points, conn, element) if spacing is None else spacing
    return coincident_pairs(pts, rtol * h, h), rtol * h


# -- the checks -------------------------------------------------------------------------------


def check_mesh(
    points: Tensor, conn: Tensor, cell_type: str, coincident: str = "error", unused: str = "error", rtol: float = RTOL
) -> None:
    """Every check of the module docstring, in its order; MeshError naming the first that fails.

    ``coincident``/``unused`` "allow" skip those checks.
    """
    element = get_element(cell_type)
    pts, cells = _np_points(points), conn.detach().cpu().numpy()
    n, k = pts.shape[0], element.n_vertices

    # duplicate cells
    if _repeats(_facet_keys(cells, [tuple(range(k))], n), 2) and _groups_of_repeats(np.sort(cells[:, :k], axis=1), 2):
        from tmcore.core.mesh import topology

        dup = topology.duplicate_cells(conn, k)
        raise MeshError(f"{dup.numel()} duplicate cells (same vertices), e.g. cells {dup[:_SHOW].tolist()}")

    # degenerate and inverted cells
    det, h = cell_geometry(pts, cells, element)
    extent = float(np.linalg.norm(pts.max(0) - pts.min(0)))
    tol = 64 * torch.finfo(points.dtype).eps * extent ** pts.shape[1]
    degenerate = (np.abs(det) <= tol).any(axis=1)
    if degenerate.any():
        idx = np.nonzero(degenerate)[0]
        raise MeshError(f"{idx.size} degenerate cells (zero measure), e.g. cells {idx[:_SHOW].tolist()}")
    inverted = (det < 0).any(axis=1)
    if inverted.any():
        idx = np.nonzero(inverted)[0]
        raise MeshError(
            f"{idx.size} inverted cells (negative orientation or non-convex), e.g. cells {idx[:_SHOW].tolist()}; "
            "Mesh.from_meshio(..., orient=True) reorders simplex nodes"
        )

    # overlapping cells: a facet of more than two cells
    n_facet_vertices = get_element(element.facet_type).n_vertices
    local = [f[:n_facet_vertices] for f in element.facets]
    if _repeats(_facet_keys(cells, local, n), 3):
        facets = np.sort(cells[:, np.asarray(local)], axis=2).transpose(1, 0, 2).reshape(-1, n_facet_vertices)
        groups = _groups_of_repeats(facets, 3)
        if groups:
            m = cells.shape[0]
            example = "; ".join(f"facet {facets[g[0]].tolist()} in cells {(g % m).tolist()}" for g in groups[:2])
            raise _failed(
                "overlapping cells",
                f"{len(groups)}{'+' if len(groups) == _SHOW else ''} facets are shared by more than two cells "
                f"(a second layer of cells overlaps the first), e.g. {example}",
            )

    if unused != "allow":
        used = np.bincount(cells.ravel(), minlength=n) > 0
        if not used.all():
            idx = np.nonzero(~used)[0]
            raise _failed(
                "unused nodes",
                f"{idx.size} of {n} nodes belong to no cell, e.g. nodes {idx[:_SHOW].tolist()} at "
                f"{_coords(points, idx[:2])} (each leaves a zero row in every assembled matrix: a singular solve); "
                "remove them with unused='drop', or keep them with unused='allow'",
            )
    if coincident != "allow":
        pairs = coincident_pairs(pts, rtol * h, h)
        if pairs.size:
            raise _coincident_error(points, conn, element, pairs, rtol * h, rtol)


def _coords(points: Tensor, idx) -> str:
    rows = points[torch.as_tensor(np.asarray(idx), dtype=torch.long, device=points.device)].tolist()
    return " and ".join("(" + ", ".join(f"{v:.6g}" for v in row) + ")" for row in rows)


def _coincident_error(
    points: Tensor, conn: Tensor, element: Element, pairs: np.ndarray, tol: float, rtol: float
) -> MeshError:
    n = points.shape[0]
    rep = _representatives(n, pairs)
    n_nodes = int((rep != np.arange(n)).sum())
    merged = np.sort(rep[conn.detach().cpu().numpy()[:, : element.n_vertices]], axis=1)
    groups = _groups_of_repeats(merged, 2)
    if groups:
        cells = [g[:2].tolist() for g in groups[:2]]
        return _failed(
            "overlapping cells",
            f"{n_nodes} nodes coincide (within {tol:.3g}) with other nodes, and identifying them makes cells coincide, "
            f"e.g. cells {cells[0]}: the mesh holds overlapping copies of its cells; remove the copy "
            "(coincident='merge' would leave duplicate cells)",
        )
    first = pairs[0].tolist()
    return _failed(
        "coincident nodes",
        f"{n_nodes} nodes lie within {tol:.3g} ({rtol:g} x the shortest edge) of another node, e.g. nodes "
        f"{first[0]} and {first[1]} at {_coords(points, first)}; a crack or a seam exported with doubled nodes is cut "
        "off from itself (its faces become boundary). Merge them with coincident='merge', or keep them, for a "
        "deliberate crack, with coincident='allow'",
    )


# -- repairs ----------------------------------------------------------------------------------


def _renumber(
    keep: np.ndarray,
    target: np.ndarray,
    points: Tensor,
    conn: Tensor,
    facet_sets: Mapping[str, Tensor],
    point_data: Mapping[str, Tensor],
):
    """Nodes ``keep`` (bool, n) survive; node i is replaced by target[i] (a kept node)."""
    new_index = np.cumsum(keep) - 1
    mapping = torch.as_tensor(new_index[target], dtype=torch.long, device=conn.device)
    keep_t = torch.as_tensor(keep, device=points.device)
    return (
        points[keep_t],
        mapping[conn],
        {name: mapping.to(f.device)[f] for name, f in facet_sets.items()},
        {name: v[keep_t.to(v.device)] for name, v in point_data.items()},
    )


def merge_coincident(
    points: Tensor,
    conn: Tensor,
    cell_type: str,
    facet_sets: Mapping[str, Tensor] | None = None,
    point_data: Mapping[str, Tensor] | None = None,
    rtol: float = RTOL,
):
    """Merge every group of coincident nodes into its lowest-numbered node.

    Returns (points (n', dim), conn (m, k), facet_sets, point_data) renumbered in the
    original order; point data keeps the surviving node's values. Facets of a merged
    seam stay in their facet sets (they are interior facets after the merge).
    """
    pairs, _ = find_coincident(points, conn, get_element(cell_type), rtol)
    n = points.shape[0]
    rep = _representatives(n, pairs)
    return _renumber(rep == np.arange(n), rep, points, conn, dict(facet_sets or {}), dict(point_data or {}))


def drop_unused(
    points: Tensor,
    conn: Tensor,
    facet_sets: Mapping[str, Tensor] | None = None,
    point_data: Mapping[str, Tensor] | None = None,
):
    """Remove the nodes no cell uses; returns (points, conn, facet_sets, point_data) renumbered.

    A facet set that names a dropped node raises MeshError (its facets belong to no cell).
    """
    n = points.shape[0]
    used = np.bincount(conn.detach().cpu().numpy().ravel(), minlength=n) > 0
    for name, facets in (facet_sets or {}).items():
        if facets.numel() and not used[facets.detach().cpu().numpy()].all():
            raise MeshError(f"facet_sets[{name!r}] uses nodes that belong to no cell; cannot drop them")
    return _renumber(used, np.arange(n), points, conn, dict(facet_sets or {}), dict(point_data or {}))
