"""The mesh checks' cheap tests against exact answers (tmcore.core.mesh.validate): every cell
type, faults at the edges of the blocks the passes run in, hash collisions, the coincidence
tolerance when the sampled shortest edge is only an upper bound, and folds the old facet count
missed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tmcore import Mesh, MeshError
from tmcore.core.elements import get_element
from tmcore.core.mesh import validate

from . import grids


def grid(cell_type: str) -> Mesh:
    """3 x 3 cells in 2D, 2 x 2 x 2 in 3D."""
    return grids.grid(cell_type, (3, 3) if get_element(cell_type).dim == 2 else (2, 2, 2))


@pytest.mark.parametrize("cell_type", grids.CELL_TYPES)
def test_a_grid_passes_and_a_duplicate_of_its_last_cell_is_named(cell_type):
    mesh = grid(cell_type)
    validate.check_mesh(mesh.points, mesh.elements, mesh.cell_type)
    cells = torch.cat([mesh.elements, mesh.elements[-1:]])
    last = mesh.n_cells - 1
    with pytest.raises(MeshError, match=rf"2 duplicate cells \(same vertices\), e\.g\. cells \[{last}, {last + 1}\]"):
        validate.check_mesh(mesh.points, cells, mesh.cell_type)


@pytest.mark.parametrize("cell_type", ["triangle", "tetra"])
def test_a_bad_cell_is_found_in_every_block(cell_type):
    """Meshes of several blocks of the passes (8192 cells for the geometry, 32768 for the
    facet keys): an inverted cell last, and a duplicate of the last cell, are both named."""
    mesh = Mesh.gen_grid((130, 130) if cell_type == "triangle" else (18, 18, 18), element_type=cell_type)
    assert mesh.n_cells > 32768
    last = mesh.n_cells - 1
    flipped = mesh.elements.clone()
    flipped[-1, [0, 1]] = flipped[-1, [1, 0]]
    with pytest.raises(MeshError, match=rf"1 inverted cells .* e\.g\. cells \[{last}\]"):
        validate.check_mesh(mesh.points, flipped, cell_type)
    with pytest.raises(MeshError, match=rf"2 duplicate cells .* e\.g\. cells \[{last}, {last + 1}\]"):
        validate.check_mesh(mesh.points, torch.cat([mesh.elements, mesh.elements[-1:]]), cell_type)


def test_a_cell_folded_over_its_neighbour_is_refused():
    """Two triangles on the same side of their common edge (the second inside the first): no
    facet has three cells, so the facet count alone let this through."""
    points = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.8, 0.2]], dtype=torch.float64)
    with pytest.raises(
        MeshError,
        match=r"check 'overlapping cells' failed: 1 facets have two cells on the same side \(the cells overlap\), "
        r"e\.g\. facet \[0, 2\] in cells \[0, 1\]",
    ):
        Mesh(points, torch.tensor([[0, 1, 2], [0, 3, 2]]))
    # the same two cells on opposite sides of the edge are a good mesh
    Mesh(torch.cat([points[:3], torch.tensor([[0.0, 1.0]], dtype=torch.float64)]), torch.tensor([[0, 1, 2], [0, 2, 3]]))


def test_a_tetrahedron_folded_over_its_neighbour_is_refused():
    points = torch.tensor(
        [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.1, 0.1, 0.1]], dtype=torch.float64
    )
    # both have the face (0, 1, 2) with the apex above it: the second lies inside the first
    with pytest.raises(MeshError, match=r"two cells on the same side .* facet \[0, 1, 2\] in cells \[0, 1\]"):
        Mesh(points, torch.tensor([[0, 1, 2, 3], [0, 1, 2, 4]]))


@pytest.mark.parametrize("cell_type", ["tetra", "hexahedron"])
def test_a_hash_collision_of_the_facet_keys_does_not_refuse_a_good_mesh(cell_type, monkeypatch):
    """Past 63 bits the facet keys are hashes: a repeated key is checked exactly before any
    error. Here every key collides."""
    mesh = grid(cell_type)
    monkeypatch.setattr(validate, "_keys", lambda columns, base, flag=None: np.zeros(columns[0].shape, np.int64))
    validate.check_mesh(mesh.points, mesh.elements, mesh.cell_type)
    with pytest.raises(MeshError, match="duplicate cells"):
        validate.check_mesh(mesh.points, torch.cat([mesh.elements, mesh.elements[:1]]), mesh.cell_type)


@pytest.mark.parametrize("separation, refused", [(0.5, True), (10.0, False)])
def test_the_tolerance_is_rtol_times_the_shortest_edge_of_all_cells(separation, refused, monkeypatch):
    """The candidates come from an upper bound of the shortest edge (a sample of the cells; here
    a hundred times too long); the tolerance applied is rtol x the mesh's true shortest edge."""
    mesh = Mesh.gen_grid((8, 8))
    h = 1 / 8
    monkeypatch.setattr(validate, "_sampled_shortest_edge", lambda points, conn, element: 100 * h)
    points = torch.cat([mesh.points, mesh.points[:1] + torch.tensor([separation * validate.RTOL * h, 0.0])])
    cells = mesh.elements.clone()
    cells[0, cells[0] == 0] = mesh.n_points  # the first cell takes the copy of node 0 (a crack at one corner)
    if refused:
        with pytest.raises(MeshError, match=r"check 'coincident nodes' failed: 1 nodes lie within 1\.25e-07 "):
            validate.check_mesh(points, cells, "triangle")
    else:
        validate.check_mesh(points, cells, "triangle")


def test_timings_name_every_check():
    mesh = grid("triangle")
    timings = {}
    validate.check_mesh(mesh.points, mesh.elements, mesh.cell_type, timings=timings)
    assert list(timings) == [
        "degenerate and inverted cells",
        "duplicate and overlapping cells",
        "unused nodes",
        "coincident nodes",
    ]
    assert all(t >= 0 for t in timings.values())


@pytest.mark.parametrize("cell_type", ["triangle", "tetra", "hexahedron"])
def test_hashed_facet_keys_still_find_a_duplicate_cell(cell_type):
    """Past 63 bits (about 1.7e6 nodes for tetrahedra) the keys are 64-bit hashes: forced here
    with a huge base, a good mesh has no repeated key and a duplicated cell has."""
    mesh = grid(cell_type)
    cells = mesh.elements.numpy()
    assert not validate._repeats(validate._oriented_facet_keys(cells, mesh.element, 2**40), 2)
    doubled = np.concatenate([cells, cells[-1:]])
    assert validate._repeats(validate._oriented_facet_keys(doubled, mesh.element, 2**40), 2)


@pytest.mark.parametrize("cell_type", ["triangle", "tetra"])
def test_the_geometry_pass_gives_torchs_determinants_on_shuffled_numbers(cell_type):
    """The coordinate-column gathers of the geometry pass against torch.linalg.det of the
    Jacobians, on a mesh of several blocks whose node and cell numbers are shuffled (every gather
    a jump), with the shortest edge against the edges measured directly."""
    mesh = Mesh.gen_grid((130, 130) if cell_type == "triangle" else (14, 14, 14), element_type=cell_type)
    generator = torch.Generator().manual_seed(0)
    new_of_old = torch.randperm(mesh.n_points, generator=generator)
    points = torch.empty_like(mesh.points)
    points[new_of_old] = mesh.points * torch.tensor([1.0, 2.0, 3.0][: mesh.dim], dtype=mesh.points.dtype)
    cells = new_of_old[mesh.elements][torch.randperm(mesh.n_cells, generator=generator)]
    assert cells.shape[0] > 8192
    shuffled = Mesh(points, {cell_type: cells})
    det, shortest = validate.cell_geometry(points.numpy(), cells.numpy(), shuffled.element)
    expected = shuffled.jacobian_determinants(shuffled.element.reference_nodes.double()[:1])
    np.testing.assert_allclose(det, expected.numpy(), rtol=1e-12)
    edges = [points[cells[:, a]] - points[cells[:, z]] for a, z in shuffled.element.edges]
    assert shortest == pytest.approx(min(float(e.norm(dim=1).min()) for e in edges), rel=1e-12)


def test_scrambling_keeps_equal_keys_equal_and_distinct_keys_distinct():
    """The facet keys are multiplied by an odd constant modulo 2**64 before the sort: a bijection,
    so exactly the repeats of the keys are repeats of the scrambled keys (extremes included)."""
    rng = np.random.default_rng(0)
    keys = np.concatenate(
        [rng.integers(-(2**63), 2**63 - 1, 10000, dtype=np.int64), np.array([0, 1, -1, 2**63 - 1, -(2**63)])]
    )
    keys = np.concatenate([keys, keys[:7]])  # seven repeats
    scrambled = keys.copy()
    validate._scramble(scrambled)
    assert np.unique(scrambled).size == np.unique(keys).size == keys.size - 7
    assert (scrambled[-7:] == scrambled[:7]).all()
    assert not np.array_equal(np.sort(scrambled), np.sort(keys))


@pytest.mark.parametrize("n", [0, 1, 511, 512, 513, 5000])
@pytest.mark.parametrize("dim", [2, 3])
def test_bounds_read_as_wide_rows_are_numpys_column_extremes(n, dim):
    """The bounds fold 512-point rows; the points left over, fewer than 512, and Fortran-ordered
    points (not viewable as wide rows) give NumPy's column minima and maxima exactly."""
    points = np.random.default_rng(n).normal(size=(n, dim))
    for layout in (points, np.asfortranarray(points)):
        low, high = validate._bounds(layout)
        if n:
            np.testing.assert_array_equal(low, points.min(axis=0))
            np.testing.assert_array_equal(high, points.max(axis=0))
        else:
            assert (low == np.inf).all() and (high == -np.inf).all()
