"""Mesh validation: the geometric and topological checks a ``Mesh`` runs when it is built.

Every check names itself in its message (``check 'coincident nodes' failed: ...``) and the
first offending entities, so that a bad file is diagnosed where it enters. The checks, in
the order they run:

- ``duplicate cells``: two cells with the same vertex set;
- ``degenerate cells`` / ``inverted cells``: det(dx/dxi) zero or negative at a node of a cell;
- ``overlapping cells``: a facet shared by more than two cells (a second layer of cells), or
  two cells on the same side of a facet (a cell folded over its neighbour);
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

Cost: each check first runs a cheap test that a good mesh passes, and only a mesh that fails
it pays for locating the offending entities (exact, slower code that also keeps the order
above). Orientation: one pass over the cells in blocks for the smallest det(dx/dxi).
Duplicate and overlapping cells: once every cell is positively oriented, the two cells of an
interior facet lie on opposite sides of it, so every facet of every cell, keyed by its
vertices and the turn of its outward cycle, must be unique: one sort of (facets x cells)
int64 keys (scrambled by a bijection first, which the sort runs faster on) covers duplicates
(equal keys for every facet), facets of three or more cells (two of them on one side) and
folds. Unused nodes: one scatter into a boolean per node. Coincident
nodes: one sort of n int64 bucket keys (below), with the tolerance from the shortest edge of a
sample of the cells (an upper bound; the exact shortest edge is measured only when candidates
turn up). docs/reliability.md gives the measured cost against reading the file
(``benchmarks/mesh_checks.py``). Not detected: two pieces of mesh that overlap without sharing
a node position, a facet or a vertex set (e.g. a copy shifted by a fraction of a cell).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from tmcore.core.checks import check_real
from tmcore.core.elements import Element, get_element
from tmcore.core.errors import MeshError
from tmcore.core.mesh import topology
from tmcore.core.mesh.topology import _BLOCK, _NETWORKS, _blocks, _keys, _scramble, _sorted_columns

COINCIDENT_MODES = ("error", "merge", "allow")
UNUSED_MODES = ("error", "drop", "allow")
# Coincident means closer than RTOL x the shortest vertex edge of the mesh.
RTOL = 1e-6
_SHOW = 4  # offending entities named in a message


def check_mode(name: str, value: str, modes: tuple[str, ...]) -> str:
    """``value`` if it is one of ``modes``; ValueError naming the argument otherwise."""
    if not isinstance(value, str) or value not in modes:
        raise ValueError(f"{name} must be one of {list(modes)}, got {value!r}")
    return value


def check_rtol(rtol: float) -> float:
    """The coincidence tolerance, relative to the shortest edge: a float in (0, 0.1]."""
    return check_real(
        "rtol", rtol, 0.0, 0.1, high_open=False, what="a number in (0, 0.1] (a fraction of the shortest edge)"
    )


def _failed(check: str, message: str) -> MeshError:
    return MeshError(f"check {check!r} failed: {message}")


# -- keys of index rows (tmcore.core.mesh.topology keys facets the same way) ------------------


def _turn(columns: list[np.ndarray]) -> np.ndarray:
    """Which way the cycle of a facet's vertex indices runs, a bool per row: a rotation of the
    cycle keeps it, a reversal flips it (for two vertices: whether the first is the smaller)."""
    if len(columns) == 2:
        return columns[0] < columns[1]
    if len(columns) == 3:  # a 3-cycle has one or two descents; reversal swaps the counts
        c0, c1, c2 = columns
        return (c1 < c0) ^ (c2 < c1) ^ (c0 < c2)
    lowest = np.minimum.reduce(columns)
    after = before = lowest
    for j, column in enumerate(columns):
        at = column == lowest
        after = np.where(at, columns[(j + 1) % len(columns)], after)
        before = np.where(at, columns[j - 1], before)
    return after < before


def _repeats(keys: np.ndarray, times: int) -> bool:
    """True if some key occurs at least ``times`` times (one in-place sort of ``keys``, then a
    comparison of neighbours chunk by chunk)."""
    keys.sort()
    step = 1 << 20
    for start in range(0, keys.size - times + 1, step):
        chunk = keys[start : start + step + times - 1]
        if (chunk[times - 1 :] == chunk[: chunk.size - times + 1]).any():
            return True
    return False


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


def _geometry_blocks(points: np.ndarray, conn: np.ndarray, element: Element, shortest: bool = True):
    """Per block of cells: (slice, det(dx/dxi) (b, q) at the element's reference nodes, squared
    length of the block's shortest vertex edge, or inf unless ``shortest``). q = 1 for P1
    simplices, whose map is affine. A block's node coordinates are gathered as rows (np.take in
    runs of 1024 cells: fewer cache misses than per-coordinate gathers) into reused buffers, then
    laid out coordinate-major so that the arithmetic runs on contiguous vectors (strided columns,
    fancy indexing and fresh cell-sized temporaries each cost several times more)."""
    m, k = conn.shape
    dim = points.shape[1]
    simplex = element.order == 1 and element.n_nodes == element.dim + 1  # P1 triangle / tetra: one Jacobian
    grads = None if simplex else element.basis_gradients(element.reference_nodes.double()).numpy()  # (q, k, dim)
    size, inf = _BLOCK // 4, math.inf  # inf: no shortest edge asked for
    rows, coords = np.empty((size, k, dim)), np.empty((dim, k, size))
    edges, products, det = np.empty((dim, dim, size)), np.empty((2, size)), np.empty(size)
    for block in _blocks(m, size):
        b = block.stop - block.start
        for part in _blocks(b, 1024):
            np.take(points, conn[block.start + part.start : block.start + part.stop], axis=0, out=rows[part])
        if not simplex:
            x = rows[:b]  # (b, k, dim)
            h2 = min(float(np.square(x[:, a] - x[:, z]).sum(-1).min()) for a, z in element.edges) if shortest else inf
            yield block, _det(np.einsum("qkr,mkd->mqdr", grads, x)), h2
            continue
        x = coords[:, :, :b]
        np.copyto(x, rows[:b].transpose(2, 1, 0))  # x[d, i]: coordinate d of vertex i, per cell
        h2 = min(float(sum(np.square(c[a] - c[z]) for c in x).min()) for a, z in element.edges) if shortest else inf
        e = np.subtract(x[:, 1:], x[:, :1], out=edges[:, :, :b])  # e[d, i]: coordinate d of edge (0, i + 1)
        u, v = products[:, :b]
        out = det[:b]
        if dim == 2:
            np.multiply(e[0, 0], e[1, 1], out=out)
            out -= np.multiply(e[1, 0], e[0, 1], out=v)
        else:
            (a0, b0, c0), (a1, b1, c1), (a2, b2, c2) = e  # a, b, c: the three edges; 0, 1, 2: their coordinates
            np.multiply(a0, np.subtract(np.multiply(b1, c2, out=u), np.multiply(b2, c1, out=v), out=u), out=out)
            out -= np.multiply(a1, np.subtract(np.multiply(b0, c2, out=u), np.multiply(b2, c0, out=v), out=u), out=u)
            out += np.multiply(a2, np.subtract(np.multiply(b0, c1, out=u), np.multiply(b1, c0, out=v), out=u), out=u)
        yield block, out[:, None], h2


def cell_geometry(points: np.ndarray, conn: np.ndarray, element: Element) -> tuple[np.ndarray, float]:
    """det(dx/dxi) (m, q) at the element's reference nodes (q = 1 for P1 simplices) and the
    length of the shortest vertex-to-vertex edge (coordinate units)."""
    det, h2 = None, math.inf
    for block, block_det, block_h2 in _geometry_blocks(points, conn, element):
        if det is None:
            det = np.empty((conn.shape[0], block_det.shape[1]))
        det[block] = block_det
        h2 = min(h2, block_h2)
    return det, math.sqrt(h2)


def _oriented_facet_keys(cells: np.ndarray, element: Element, base: int) -> np.ndarray:
    """Keys (f * m,) of every facet of every cell (facet-major): its vertex set and the turn of
    its outward vertex cycle (the element's facets are listed outward). In a mesh of positively
    oriented cells the two cells of an interior facet lie on opposite sides of it and give it
    different keys; a repeated key is a duplicate cell or two cells on the same side of a facet
    (every facet of more than two cells has such a pair).

    The keys are scrambled by :func:`_scramble` (equal keys stay equal, distinct stay distinct),
    block by block while they are in cache.

    An edge's key is its directed pair when that fits. A simplex's vertices are sorted once:
    the facet without the i-th smallest vertex lists the others in increasing order, outward
    when i and the parity of the cell's sorting permutation are both even or both odd."""
    r = get_element(element.facet_type).n_vertices
    local = [f[:r] for f in element.facets]
    simplex = element.n_vertices == element.dim + 1 and element.n_vertices in _NETWORKS
    m = cells.shape[0]
    keys = np.empty(len(local) * m, dtype=np.int64)
    for block in _blocks(m):
        if r == 2 and base**2 < 2**63:  # edges: the directed pair along the outward cycle
            for i, (a, z) in enumerate(local):
                out = keys[i * m + block.start : i * m + block.stop]
                np.multiply(cells[block, a], base, out=out)
                out += cells[block, z]
        elif simplex:
            vertices, odd = _sorted_columns([cells[block, v] for v in range(element.n_vertices)], parity=True)
            for i in range(len(vertices)):
                turn = ~odd if i % 2 else odd
                facet = vertices[:i] + vertices[i + 1 :]
                keys[i * m + block.start : i * m + block.stop] = _keys(facet, base, turn)
        else:
            for i, facet in enumerate(local):
                columns = [cells[block, v] for v in facet]
                keys[i * m + block.start : i * m + block.stop] = _keys(_sorted_columns(columns), base, _turn(columns))
        for i in range(len(local)):
            _scramble(keys[i * m + block.start : i * m + block.stop])
    return keys


def _sampled_shortest_edge(points: np.ndarray, conn: np.ndarray, element: Element) -> float:
    """The shortest vertex edge of about 2**14 cells spread over the mesh: an upper bound of the
    mesh's shortest edge, at a small fraction of the cost of measuring every cell."""
    x = points[conn[:: max(1, conn.shape[0] >> 14)]]  # (s, k, dim)
    return math.sqrt(min(float(np.square(x[:, a] - x[:, z]).sum(-1).min()) for a, z in element.edges))


def shortest_edge(points: Tensor, conn: Tensor, element: Element) -> float:
    """Length of the shortest vertex-to-vertex edge of the cells (coordinate units)."""
    return cell_geometry(_np_points(points), conn.detach().cpu().numpy(), element)[1]


def _np_points(points: Tensor) -> np.ndarray:
    return points.detach().cpu().double().numpy()


def _bounds(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The lowest and highest coordinates (dim,) of points (n, dim) (C-contiguous points are read
    in place, others copied once).

    NumPy reduces over axis 0 of a narrow array row by row (1e6 x 3 points: 35 ms), and a strided
    column at a time (5 ms); the points read as wide rows of 512 points, (n / 512, 512 dim),
    reduce over axis 0 with contiguous vector operations (2 ms), then fold the 512 partial results."""
    n, dim = points.shape
    whole = n - n % 512
    wide = points[:whole].reshape(-1, 512 * dim)
    low = np.minimum(
        wide.min(axis=0, initial=np.inf).reshape(512, dim).min(axis=0), points[whole:].min(axis=0, initial=np.inf)
    )
    high = np.maximum(
        wide.max(axis=0, initial=-np.inf).reshape(512, dim).max(axis=0), points[whole:].max(axis=0, initial=-np.inf)
    )
    return low, high


# -- coincident nodes -------------------------------------------------------------------------


def coincident_pairs(
    points: np.ndarray, tol: float, spacing: float, bounds: tuple[np.ndarray, np.ndarray] | None = None
) -> np.ndarray:
    """Pairs (k, 2), i < j, of nodes at most ``tol`` apart (Euclidean).

    ``spacing``: a length below which distinct nodes are rare (the shortest edge). ``bounds``: the
    points' lowest and highest coordinates (dim,), when already known. Nodes are
    bucketed on a grid of cells of diagonal < spacing / 1.4; only nodes sharing a bucket, or
    lying within tol of a bucket face, are compared (a k-d tree on those few), so a mesh
    without coincident nodes costs one sort of n int64 keys.
    """
    from scipy.spatial import cKDTree

    n, dim = points.shape
    if n < 2:
        return np.zeros((0, 2), dtype=np.int64)
    size = spacing / (math.sqrt(dim) * math.sqrt(2.0))
    low, high = _bounds(points) if bounds is None else bounds
    extent = high - low
    counts = np.floor(extent / size) + 2 if size > 0 else np.full(dim, np.inf)
    if not size > 8 * tol or not np.all(np.isfinite(counts)) or float(np.prod(counts + 1)) >= 2.0**62:
        candidates = np.arange(n)  # no useful grid: compare everything through the tree
    else:
        # an irrational offset keeps structured grids' nodes off the bucket faces
        margin = 2.0 * tol / size
        keys = np.empty(n, dtype=np.int64)
        border = np.zeros(n, dtype=bool)
        strides = [int(np.prod(counts[axis + 1 :] + 1)) for axis in range(dim)]
        for block in _blocks(n):
            for axis in range(dim):
                scaled = points[block, axis] - low[axis]
                scaled *= 1.0 / size
                scaled += 0.31830988618379067
                cell = np.floor(scaled)
                scaled -= cell  # the position inside the bucket, in [0, 1)
                border[block] |= np.abs(scaled - 0.5) > 0.5 - margin
                digit = cell.astype(np.int64)
                digit *= strides[axis]
                if axis:
                    keys[block] += digit
                else:
                    keys[block] = digit
        ordered = np.sort(keys)
        shared = ordered[1:] == ordered[:-1]
        if shared.any():
            crowded = ordered[1:][shared]
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
    points: Tensor,
    conn: Tensor,
    cell_type: str,
    coincident: str = "error",
    unused: str = "error",
    rtol: float = RTOL,
    timings: dict[str, float] | None = None,
) -> None:
    """Every check of the module docstring; MeshError naming the first that fails, in the
    docstring's order.

    ``coincident``/``unused`` "allow" skip those checks. Each check first runs a cheap test that
    a good mesh passes (one vectorised pass, or one sort); only when it fails are the offending
    entities located, by exact (slower) code that also decides which message comes first.
    ``timings``, when given, receives the seconds each check took (for benchmarks).
    """
    element = get_element(cell_type)
    pts, cells = _np_points(points), conn.detach().cpu().numpy()
    n = pts.shape[0]
    clock = _Clock(timings)

    # degenerate and inverted cells: the smallest det(dx/dxi) over all cells and nodes
    bounds = _bounds(pts)
    extent = float(np.linalg.norm(bounds[1] - bounds[0]))
    tol = 64 * torch.finfo(points.dtype).eps * extent ** pts.shape[1]
    lowest = math.inf
    for _, det, _ in _geometry_blocks(pts, cells, element, shortest=False):
        lowest = min(lowest, float(det.min()))
    if not lowest > tol:
        _raise_cell_faults(conn, cells, element, n)  # a duplicate cell is named before a bad one
        _raise_bad_cells(cell_geometry(pts, cells, element)[0], tol)
    clock("degenerate and inverted cells")

    # duplicate and overlapping cells: no two cells on the same side of a facet
    if _repeats(_oriented_facet_keys(cells, element, n), 2):
        _raise_cell_faults(conn, cells, element, n, same_side=True)
    clock("duplicate and overlapping cells")

    if unused != "allow":
        used = np.zeros(n, dtype=bool)
        used[cells] = True
        if not used.all():
            idx = np.nonzero(~used)[0]
            raise _failed(
                "unused nodes",
                f"{idx.size} of {n} nodes belong to no cell, e.g. nodes {idx[:_SHOW].tolist()} at "
                f"{_coords(points, idx[:2])} (each leaves a zero row in every assembled matrix: a singular solve); "
                "remove them with unused='drop', or keep them with unused='allow'",
            )
        clock("unused nodes")
    if coincident != "allow":
        # candidates within rtol x an upper bound of the shortest edge; the shortest edge of all cells
        # (a full pass over the cells) only if some are found
        h = _sampled_shortest_edge(pts, cells, element)
        pairs = coincident_pairs(pts, rtol * h, h, bounds)
        if pairs.size:
            h = shortest_edge(points, conn, element)
            pairs = pairs[np.linalg.norm(pts[pairs[:, 0]] - pts[pairs[:, 1]], axis=1) <= rtol * h]
        if pairs.size:
            raise _coincident_error(points, conn, element, pairs, rtol * h, rtol)
        clock("coincident nodes")


class _Clock:
    """Records the seconds since the previous call under each name, into ``timings`` (if given)."""

    def __init__(self, timings: dict[str, float] | None):
        self.timings, self.last = timings, time.perf_counter()

    def __call__(self, name: str) -> None:
        if self.timings is not None:
            now = time.perf_counter()
            self.timings[name] = now - self.last
            self.last = now


def _raise_bad_cells(det: np.ndarray, tol: float) -> None:
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


def _raise_cell_faults(conn: Tensor, cells: np.ndarray, element: Element, n: int, same_side: bool = False) -> None:
    """Exact: MeshError for duplicate cells, then for facets of more than two cells, then (with
    ``same_side``, for positively oriented cells) for two cells on the same side of a facet;
    returns if there are none (a hash collision of the cheap test)."""
    k = element.n_vertices
    if _groups_of_repeats(np.sort(cells[:, :k], axis=1), 2):
        dup = topology.duplicate_cells(conn, k)
        raise MeshError(f"{dup.numel()} duplicate cells (same vertices), e.g. cells {dup[:_SHOW].tolist()}")
    if not same_side:
        return
    r = get_element(element.facet_type).n_vertices
    local = np.asarray([f[:r] for f in element.facets])
    m = cells.shape[0]
    cycles = cells[:, local].transpose(1, 0, 2).reshape(-1, r)  # facet-major, as the keys
    facets = np.sort(cycles, axis=1)
    _raise_repeated_facets(
        facets, facets, m, 3, "are shared by more than two cells (a second layer of cells overlaps the first)"
    )
    turn = _turn(list(cycles.T))
    _raise_repeated_facets(
        np.column_stack([facets, turn]), facets, m, 2, "have two cells on the same side (the cells overlap)"
    )


def _raise_repeated_facets(rows: np.ndarray, facets: np.ndarray, m: int, times: int, what: str) -> None:
    """MeshError ('overlapping cells') if some row of ``rows`` (one per facet of a cell, facet-major:
    row j is a facet of cell j % m, with vertices ``facets[j]``) occurs ``times`` times or more."""
    groups = _groups_of_repeats(rows, times)
    if groups:
        example = "; ".join(f"facet {facets[g[0]].tolist()} in cells {(g % m).tolist()}" for g in groups[:2])
        raise _failed(
            "overlapping cells", f"{len(groups)}{'+' if len(groups) == _SHOW else ''} facets {what}, e.g. {example}"
        )


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
