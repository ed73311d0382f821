"""Mesh topology from connectivity alone: facets, boundary facets and their owner cells.

A facet (an edge in 2-D, a face in 3-D) is on the boundary when exactly one cell has it.
Facets are identified by their sorted vertex indices, so P2 midside nodes never matter
for the identification but are carried along in the returned connectivity.

Cost: on CPU, each facet (edge, cell) is keyed by one int64 (its sorted vertex indices as
base-n digits, scrambled by an odd multiplier: NumPy sorts those faster) and the keys are sorted
once with NumPy; which facets hold a key of interest (seen once, asked for, repeated) is then
found by one pass over the keys through a bitmap of the keys' top bits, exact on the few
candidates it lets through. No argsort of all the keys (NumPy's takes ten times its sort).
Tensors on other devices take the torch path (``torch.unique`` of the rows), and so do boundary
facets whose keys do not fit in 63 bits (tetrahedral faces past about 2.1e6 nodes, quadrilateral
faces past 55,000); facet owners and duplicate cells use 64-bit hashes there, checked exactly.
``edges`` keeps the torch path (its per-cell numbering needs the inverse of the sort). The mesh
checks (:mod:`tmcore.core.mesh.validate`) key their facets with the helpers below.
docs/reliability.md gives the measured cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from tmcore.core.elements import Element, get_element

_BLOCK = 1 << 15  # rows per block of the vectorised passes


@dataclass(frozen=True)
class BoundaryFacets:
    """Boundary facets of a mesh.

    facets: (nf, kf) node indices, in the facet element's node order.
    owners: (nf,) index of the one cell each facet belongs to.
    facet_type: meshio cell type of the facets (e.g. "line", "triangle6").
    """

    facets: Tensor
    owners: Tensor
    facet_type: str


# -- int64 keys of index rows (shared with the mesh checks) -----------------------------------

_MIX = np.uint64(0x9E3779B97F4A7C15)
# compare-exchange networks that sort 2, 3 or 4 columns elementwise
_NETWORKS = {1: [], 2: [(0, 1)], 3: [(0, 1), (1, 2), (0, 1)], 4: [(0, 1), (2, 3), (0, 2), (1, 3), (1, 2)]}


def _blocks(m: int, size: int = _BLOCK):
    """Slices of at most ``size`` rows: temporaries stay in cache and reuse the heap's pages
    (cell-sized temporaries cost more in fresh-page faults than in arithmetic)."""
    for start in range(0, m, size):
        yield slice(start, min(m, start + size))


def _sorted_columns(columns: list[np.ndarray], parity: bool = False):
    """The columns of an (r, k) index array sorted along each row (a sorting network for k <= 4);
    with ``parity``, also whether each row's sorting permutation is odd (k <= 4 only)."""
    columns = list(columns)
    if len(columns) not in _NETWORKS:
        return list(np.sort(np.stack(columns, axis=1), axis=1).T)
    odd = np.zeros(columns[0].shape, dtype=bool) if parity else None
    for i, j in _NETWORKS[len(columns)]:
        if parity:
            odd ^= columns[i] > columns[j]
        columns[i], columns[j] = np.minimum(columns[i], columns[j]), np.maximum(columns[i], columns[j])
    return (columns, odd) if parity else columns


def _exact(base: int, k: int, flag: bool = False) -> bool:
    """Whether rows of ``k`` indices below ``base`` (and a bool ``flag``) have exact int64 keys."""
    return (2 if flag else 1) * base**k < 2**63


def _keys(columns: list[np.ndarray], base: int, flag: np.ndarray | None = None) -> np.ndarray:
    """One int64 key per row of index columns (and of an optional bool ``flag``): exact
    (base-``base`` digits, then the flag as a last binary digit) when that fits in 63 bits, else
    a 64-bit hash whose collisions the exact checks that follow a repeated key weed out."""
    if _exact(base, len(columns), flag is not None):
        keys = columns[0].astype(np.int64, copy=True)
        for column in columns[1:]:
            keys *= base
            keys += column
        if flag is not None:
            keys *= 2
            keys += flag
        return keys
    keys = np.zeros(columns[0].shape, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for column in columns if flag is None else [*columns, flag]:
            keys = (keys ^ column.astype(np.uint64)) * _MIX
            keys ^= keys >> np.uint64(29)
    return keys.view(np.int64)


def _scramble(keys: np.ndarray) -> None:
    """Multiply int64 keys in place by an odd constant, modulo 2**64: a bijection, so repeats are
    kept exactly, that makes structured keys look random to the sort (and spreads them over the
    top bits). NumPy's quicksort is slow on the facet keys of a structured numbering: sorting the
    2.3e7 keys of a 1e6-node tetrahedral grid in its natural numbering took 0.37 s, scrambled
    0.23 s (with the scrambling; 0.24 s either way for shuffled numbers)."""
    scrambled = keys.view(np.uint64)
    scrambled *= _MIX


def _set_keys(rows: np.ndarray, local: list[list[int]], base: int) -> np.ndarray:
    """Scrambled keys (len(local) * m,) of the vertex sets ``rows[:, local[i]]`` of rows (m, k),
    local-index-major (entry i * m + j is row j's set i): equal for equal sets, and distinct for
    distinct sets when ``_exact(base, len(local[0]))`` (else 64-bit hashes)."""
    m = rows.shape[0]
    keys = np.empty(len(local) * m, dtype=np.int64)
    for block in _blocks(m):
        for i, vertices in enumerate(local):
            out = keys[i * m + block.start : i * m + block.stop]
            out[...] = _keys(_sorted_columns([rows[block, v] for v in vertices]), base)
            _scramble(out)
    return keys


def _members(keys: np.ndarray, table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where keys (N,) hold a key of ``table`` (sorted, unique, scrambled): positions (ascending)
    and their places in ``table``. One pass over the keys through a bitmap of the table's top bits
    (about 1/64 of the slots set), then exact on the candidates it lets through."""
    if table.size == 0 or keys.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    bits = min(26, table.size.bit_length() + 6)
    shift = np.uint64(64 - bits)
    slots = np.zeros(1 << bits, dtype=bool)
    slots[table.view(np.uint64) >> shift] = True
    top = np.empty(min(keys.size, _BLOCK), dtype=np.uint64)
    unsigned = np.ascontiguousarray(keys).view(np.uint64)
    hits = []
    for block in _blocks(keys.size):
        np.right_shift(unsigned[block], shift, out=top[: block.stop - block.start])
        hits.append(np.flatnonzero(slots[top[: block.stop - block.start]]) + block.start)
    hit = np.concatenate(hits)
    place = np.searchsorted(table, keys[hit])
    place[place == table.size] = 0
    found = table[place] == keys[hit]
    return hit[found], place[found]


def _numpy_base(*tensors: Tensor) -> int | None:
    """The key base (max index + 1) of CPU index tensors; None on other devices (the torch path)."""
    if any(t.device.type != "cpu" for t in tensors):
        return None
    return max((int(t.max()) + 1 for t in tensors if t.numel()), default=1)


def _repeated_rows(rows: np.ndarray) -> np.ndarray:
    """Exact: which rows (r, k) of vertex indices, each sorted, occur more than once (r,) bool."""
    _, inverse, counts = np.unique(rows, axis=0, return_inverse=True, return_counts=True)
    return counts[inverse.ravel()] > 1


def _local_facets(element: Element) -> list[list[int]]:
    """The vertices of each local facet of an element (its first n_vertices nodes)."""
    r = get_element(element.facet_type).n_vertices
    return [list(f[:r]) for f in element.facets]


# -- the topology ----------------------------------------------------------------------------


def boundary_facets(cells: Tensor, cell_type: str) -> BoundaryFacets:
    """Facets that belong to exactly one cell, in cell order (each cell's in its local order)."""
    element = get_element(cell_type)
    local = _local_facets(element)
    base = _numpy_base(cells)
    if base is None or not _exact(base, len(local[0])):
        return _boundary_facets_torch(cells, element)
    conn = cells.detach().numpy()
    keys = _set_keys(conn, local, base)
    ordered = np.sort(keys)
    once = np.ones(ordered.size, dtype=bool)
    repeat = ordered[1:] == ordered[:-1]
    once[1:] &= ~repeat
    once[:-1] &= ~repeat
    where, _ = _members(keys, ordered[once])
    m, f = conn.shape[0], len(local)
    where = np.sort((where % m) * f + where // m)  # cell-major
    owners = where // f
    nodes = np.asarray(element.facets, dtype=np.int64)[where % f]  # (nf, kf) local nodes
    facets = np.take_along_axis(conn[owners], nodes, axis=1)
    return BoundaryFacets(torch.from_numpy(facets), torch.from_numpy(owners), element.facet_type)


def duplicate_cells(cells: Tensor, n_vertices: int) -> Tensor:
    """Indices (ascending) of the cells whose vertex set (first ``n_vertices`` nodes) another cell
    has too, the first of each group included."""
    base = _numpy_base(cells)
    if base is None:
        keys = torch.sort(cells[:, :n_vertices], dim=1).values
        _, inverse, counts = _unique_rows(keys, return_inverse=True, return_counts=True)
        return torch.nonzero(counts[inverse] > 1).flatten()
    conn = cells.detach().numpy()[:, :n_vertices]
    keys = _set_keys(conn, [list(range(n_vertices))], base)
    ordered = np.sort(keys)
    repeated = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
    found = _members(keys, repeated)[0]
    if not _exact(base, n_vertices):  # hashed keys: the candidates checked exactly
        found = found[_repeated_rows(np.sort(conn[found], axis=1))]
    return torch.from_numpy(found)


def edges(cells: Tensor, cell_type: str) -> tuple[Tensor, Tensor]:
    """Unique vertex edges (ne, 2), sorted (each edge's vertices ascending, edges in lexicographic
    order), and, per cell, the index of each local edge (m, n_edges)."""
    element = get_element(cell_type)
    local = torch.tensor(element.edges, dtype=torch.long, device=cells.device)
    pairs = torch.sort(cells[:, local], dim=-1).values  # (m, n_edges, 2)
    unique, inverse = _unique_rows(pairs.reshape(-1, 2), return_inverse=True)
    return unique, inverse.reshape(cells.shape[0], local.shape[0])


def facet_owners(cells: Tensor, cell_type: str, facets: Tensor) -> Tensor:
    """For each facet (nf, kf), the index of a cell that has it (the highest-numbered one, for an
    interior facet); MeshError if one has none."""
    from tmcore.core.errors import MeshError

    element = get_element(cell_type)
    local = _local_facets(element)
    r = len(local[0])
    base = _numpy_base(cells, facets)
    if base is None:
        found = _facet_owners_torch(cells, element, facets)
    else:
        conn, rows = cells.detach().numpy(), facets.detach().numpy()[:, :r]
        query = _set_keys(rows, [list(range(r))], base)
        table = np.unique(query)
        where, place = _members(_set_keys(conn, local, base), table)
        m = conn.shape[0]
        if not _exact(base, r):  # hashed keys: the candidates matched to the queries exactly
            candidates = np.take_along_axis(conn[where % m], np.asarray(local)[where // m], axis=1)
            both = np.sort(np.concatenate([candidates, rows]), axis=1)
            unique, inverse = np.unique(both, axis=0, return_inverse=True)
            inverse = inverse.ravel()
            table, place, query = np.arange(unique.shape[0]), inverse[: where.size], inverse[where.size :]
        owner = np.full(table.size, -1, dtype=np.int64)
        np.maximum.at(owner, place, where % m)
        found = torch.from_numpy(owner[np.searchsorted(table, query)])
    if (found < 0).any():
        raise MeshError(f"{int((found < 0).sum())} facets are not facets of any cell of the mesh")
    return found


# -- the torch path (other devices, keys past 63 bits) ---------------------------------------


def _all_cell_facets(cells: Tensor, element: Element) -> tuple[Tensor, Tensor]:
    """Every facet of every cell: (m * f, kf) nodes and (m * f,) owner cell indices, cell-major."""
    local = torch.tensor(element.facets, dtype=torch.long, device=cells.device)  # (f, kf)
    facets = cells[:, local].reshape(-1, local.shape[1])
    owners = torch.arange(cells.shape[0], device=cells.device).repeat_interleave(local.shape[0])
    return facets, owners


def _facet_keys(facets: Tensor, n_vertices: int) -> Tensor:
    """Sorted vertex indices of each facet: a key identical for the two sides of a facet."""
    return torch.sort(facets[:, :n_vertices], dim=1).values


def _unique_rows(rows: Tensor, **kwargs):
    """``torch.unique(rows, dim=0, ...)``, through one int64 key per row when it fits (20x faster)."""
    if rows.numel() == 0:
        return torch.unique(rows, dim=0, **kwargs)
    base = int(rows.max()) + 1
    if base ** rows.shape[1] >= 2**63:
        return torch.unique(rows, dim=0, **kwargs)
    weights = base ** torch.arange(rows.shape[1] - 1, -1, -1, device=rows.device)
    out = torch.unique(rows @ weights, **kwargs)
    keys = out[0] if isinstance(out, tuple) else out
    digits = torch.stack([(keys // w) % base for w in weights.tolist()], dim=1)
    return (digits, *out[1:]) if isinstance(out, tuple) else digits


def _boundary_facets_torch(cells: Tensor, element: Element) -> BoundaryFacets:
    facets, owners = _all_cell_facets(cells, element)
    keys = _facet_keys(facets, get_element(element.facet_type).n_vertices)
    _, inverse, counts = _unique_rows(keys, return_inverse=True, return_counts=True)
    on_boundary = counts[inverse] == 1
    return BoundaryFacets(facets[on_boundary], owners[on_boundary], element.facet_type)


def _facet_owners_torch(cells: Tensor, element: Element, facets: Tensor) -> Tensor:
    all_facets, owners = _all_cell_facets(cells, element)
    n_vertices = get_element(element.facet_type).n_vertices
    keys = _facet_keys(all_facets, n_vertices)
    query = _facet_keys(facets, n_vertices)
    unique, inverse = _unique_rows(torch.cat([keys, query]), return_inverse=True)
    owner_of_key = torch.full((unique.shape[0],), -1, dtype=torch.long, device=cells.device)
    owner_of_key[inverse[: keys.shape[0]]] = owners
    return owner_of_key[inverse[keys.shape[0] :]]
