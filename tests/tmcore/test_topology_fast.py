"""Mesh topology (tmcore.core.mesh.topology) against brute-force references written with Python
sets and dicts: boundary facets (the same facets, owners and order), facet owners, duplicate
cells, on meshes whose nodes and cells are shuffled, for every cell type, P2 included; the
NumPy path (CPU), the hashed keys past 63 bits and the torch path (other devices) alike."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from tmcore import Mesh, MeshError
from tmcore.core.elements import get_element
from tmcore.core.mesh import topology

from . import grids

# cells along the axes, per cell type
SIZES = {
    "triangle": (5, 4),
    "quad": (5, 4),
    "triangle6": (4, 3),
    "tetra": (3, 2, 4),
    "hexahedron": (3, 2, 4),
    "tetra10": (2, 3, 2),
}


def shuffled(cell_type: str, seed: int = 0) -> tuple[torch.Tensor, str]:
    """Cells (m, k) of a grid with randomly renumbered nodes and reordered cells."""
    mesh = grids.grid(cell_type, SIZES[cell_type])
    g = torch.Generator().manual_seed(seed)
    new_of_old = torch.randperm(mesh.n_points, generator=g)
    return new_of_old[mesh.elements][torch.randperm(mesh.n_cells, generator=g)], mesh.cell_type


def cell_facets(cells: torch.Tensor, cell_type: str):
    """(cell, local facet, vertex set, nodes) of every facet of every cell, cell-major."""
    element = get_element(cell_type)
    r = get_element(element.facet_type).n_vertices
    for c, row in enumerate(cells.tolist()):
        for i, local in enumerate(element.facets):
            nodes = [row[v] for v in local]
            yield c, i, frozenset(nodes[:r]), nodes


def reference_boundary(cells, cell_type):
    count = Counter(key for _, _, key, _ in cell_facets(cells, cell_type))
    on = [(c, nodes) for c, _, key, nodes in cell_facets(cells, cell_type) if count[key] == 1]
    return [nodes for _, nodes in on], [c for c, _ in on]


def reference_owners(cells, cell_type, facets):
    r = get_element(get_element(cell_type).facet_type).n_vertices
    owner = {}
    for c, _, key, _ in cell_facets(cells, cell_type):
        owner[key] = max(owner.get(key, -1), c)
    return [owner[frozenset(f[:r])] for f in facets.tolist()]


def reference_duplicates(cells, k):
    count = Counter(frozenset(row[:k]) for row in cells.tolist())
    return [c for c, row in enumerate(cells.tolist()) if count[frozenset(row[:k])] > 1]


def far_cell(cells: torch.Tensor) -> torch.Tensor:
    """The cells and one more, apart from the rest, whose node numbers (up to 1e6) push the keys of
    4-vertex sets past 63 bits (hashed keys or the torch path)."""
    return torch.cat([cells, 10**6 - torch.arange(cells.shape[1]).flip(0)[None]])


@pytest.fixture(params=["numpy", "torch"])
def path(request, monkeypatch):
    """Run each test on the NumPy path and on the torch path that other devices take."""
    if request.param == "torch":
        monkeypatch.setattr(topology, "_numpy_base", lambda *tensors: None)
    return request.param


@pytest.mark.parametrize("far", [False, True], ids=["small", "far"])
@pytest.mark.parametrize("cell_type", grids.CELL_TYPES)
def test_boundary_facets_are_the_facets_of_one_cell_in_cell_order(cell_type, far, path):
    cells, cell_type = shuffled(cell_type)
    if far:
        cells = far_cell(cells)
    facets, owners = reference_boundary(cells, cell_type)
    got = topology.boundary_facets(cells, cell_type)
    assert got.facet_type == get_element(cell_type).facet_type
    assert got.facets.tolist() == facets
    assert got.owners.tolist() == owners
    assert got.facets.dtype == got.owners.dtype == torch.long


@pytest.mark.parametrize("far", [False, True], ids=["small", "far"])
@pytest.mark.parametrize("cell_type", grids.CELL_TYPES)
def test_facet_owners_of_boundary_and_interior_facets(cell_type, far, path):
    cells, cell_type = shuffled(cell_type, seed=1)
    if far:
        cells = far_cell(cells)
    every = [nodes for _, _, _, nodes in cell_facets(cells, cell_type)]
    g = torch.Generator().manual_seed(2)
    query = torch.tensor(every)[torch.randperm(len(every), generator=g)[:40]]
    r = get_element(get_element(cell_type).facet_type).n_vertices
    turned = query[:3].clone()
    turned[:, :r] = turned[:, :r].flip(1)  # a facet's vertices in another order
    query = torch.cat([query, turned])
    assert topology.facet_owners(cells, cell_type, query).tolist() == reference_owners(cells, cell_type, query)


@pytest.mark.parametrize("cell_type", ["triangle", "tetra", "hexahedron"])
def test_a_facet_of_no_cell_is_refused(cell_type, path):
    cells, cell_type = shuffled(cell_type)
    facets = topology.boundary_facets(cells, cell_type).facets[:5].clone()
    facets[2, 0] = facets[2, 1]  # a facet with a repeated vertex belongs to no cell
    with pytest.raises(MeshError, match="1 facets are not facets of any cell"):
        topology.facet_owners(cells, cell_type, facets)


@pytest.mark.parametrize("far", [False, True], ids=["small", "far"])
@pytest.mark.parametrize("cell_type", grids.CELL_TYPES)
def test_duplicate_cells_name_every_cell_of_a_repeated_vertex_set(cell_type, far, path):
    cells, cell_type = shuffled(cell_type, seed=3)
    k = get_element(cell_type).n_vertices
    assert topology.duplicate_cells(cells, k).numel() == 0
    if far:
        cells = far_cell(cells)
    copies = cells[[4, 0, 4, cells.shape[0] - 1]].clone()
    copies[:, :k] = copies[:, :k].roll(1, dims=1)  # the same vertex set in another order
    doubled = torch.cat([cells[:7], copies, cells[7:]])
    got = topology.duplicate_cells(doubled, k)
    assert got.tolist() == reference_duplicates(doubled, k)
    assert len(got) == 7


@pytest.mark.parametrize("cell_type", ["triangle", "tetra"])
def test_the_numpy_path_gives_the_torch_paths_answers_on_a_larger_mesh(cell_type, monkeypatch):
    """Same facets, owners and order as the torch path (kept for other devices), on some
    thousands of cells."""
    mesh = Mesh.gen_grid((40, 30) if cell_type == "triangle" else (9, 8, 7), element_type=cell_type)
    g = torch.Generator().manual_seed(4)
    cells = torch.randperm(mesh.n_points, generator=g)[mesh.elements][torch.randperm(mesh.n_cells, generator=g)]
    fast = topology.boundary_facets(cells, cell_type)
    query = fast.facets[torch.randperm(fast.facets.shape[0], generator=g)]
    owners = topology.facet_owners(cells, cell_type, query)
    monkeypatch.setattr(topology, "_numpy_base", lambda *tensors: None)
    slow = topology.boundary_facets(cells, cell_type)
    assert torch.equal(fast.facets, slow.facets) and torch.equal(fast.owners, slow.owners)
    assert torch.equal(owners, topology.facet_owners(cells, cell_type, query))


def test_members_finds_exactly_the_keys_of_the_table():
    """The bitmap of top bits only lets candidates through; the answer is exact, also for keys
    that are not scrambled (all in the lowest slots of the bitmap)."""
    rng = np.random.default_rng(5)
    for keys in (rng.integers(-(2**63), 2**63 - 1, 200_000, dtype=np.int64), rng.integers(0, 1000, 50_000)):
        table = np.unique(np.concatenate([rng.choice(keys, 300), rng.integers(0, 2**62, 300)]))
        where, place = topology._members(keys, table)
        assert np.array_equal(where, np.flatnonzero(np.isin(keys, table)))
        assert np.array_equal(table[place], keys[where])


def test_mesh_boundary_mask_of_a_shuffled_box():
    cells, _ = shuffled("tetra")
    mesh = Mesh.gen_grid(SIZES["tetra"])
    perm = torch.empty(mesh.n_points, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    new_of_old = torch.randperm(mesh.n_points, generator=g)
    perm[new_of_old] = torch.arange(mesh.n_points)
    points = mesh.points[perm]  # points[new] = old point
    shuffled_mesh = Mesh(points, {"tetra": cells})
    on_box = ((points == 0) | (points == points.max(dim=0).values)).any(dim=1)
    assert torch.equal(shuffled_mesh.boundary_mask, on_box)
