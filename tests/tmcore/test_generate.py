"""Mesh generators: gmsh domains and structured grids."""

import math

import pytest
import torch

from tmcore.core.mesh import Mesh, generate
from tmcore.core.mesh.generate import box, circle, elevate_order, grid, l_shape, orient_cells, rectangle


def _same(a: Mesh, b: Mesh) -> bool:
    return (
        torch.equal(a.points, b.points)
        and a.cell_type == b.cell_type
        and torch.equal(a.elements, b.elements)
        and a.facet_sets.keys() == b.facet_sets.keys()
        and all(torch.equal(a.facet_sets[k], b.facet_sets[k]) for k in a.facet_sets)
    )


def _midside_ok(points, conn, edges, n_vertices) -> bool:
    """Every midside node sits at the midpoint of its edge."""
    for i, (a, b) in enumerate(edges):
        mid = 0.5 * (points[conn[:, a]] + points[conn[:, b]])
        if not torch.allclose(points[conn[:, n_vertices + i]], mid, atol=1e-12):
            return False
    return True


# -- gmsh --------------------------------------------------------------------------------


def test_rectangle_node_counts_match_reference():
    assert rectangle(0.04).n_points == 790
    assert rectangle(0.025).n_points == 1935


def test_gmsh_generators_are_deterministic():
    assert _same(rectangle(0.1), rectangle(0.1))
    assert _same(circle(0.15, order=2), circle(0.15, order=2))
    assert _same(box(0.3), box(0.3))


def test_gmsh_prints_nothing(capfd):
    rectangle(0.2, element_type="quad")
    circle(0.3)
    box(0.5, order=2)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_gmsh_left_running_by_caller_stays_running():
    import gmsh

    gmsh.initialize(readConfigFiles=False, interruptible=False)
    try:
        gmsh.option.setNumber("General.Terminal", 0)
        gmsh.option.setNumber("Mesh.MeshSizeMax", 0.5)
        gmsh.model.add("mine")
        assert rectangle(0.04).n_points == 790  # the caller's options do not leak in
        assert gmsh.isInitialized()
        assert gmsh.model.getCurrent() == "mine"
        assert gmsh.option.getNumber("Mesh.MeshSizeMax") == 0.5
    finally:
        gmsh.finalize()


AREA_CASES = {
    "rectangle": (lambda: rectangle(0.2), 1.0, 1e-12),
    "rectangle_offset": (lambda: rectangle(0.2, left=-1, right=2, bottom=0.5, top=1.0), 1.5, 1e-12),
    "rectangle_quad": (lambda: rectangle(0.2, element_type="quad"), 1.0, 1e-12),
    "rectangle_p2": (lambda: rectangle(0.2, order=2), 1.0, 1e-12),
    "circle": (lambda: circle(0.1, center=(1.0, -2.0), radius=2.0), 4 * math.pi, 1e-2),
    "circle_quad": (lambda: circle(0.2, element_type="quad"), math.pi, 1e-2),
    "circle_p2": (lambda: circle(0.2, order=2), math.pi, 1e-4),
    "l_shape": (lambda: l_shape(0.2), 3.0, 1e-12),
    "l_shape_p2": (lambda: l_shape(0.3, order=2), 3.0, 1e-12),
    "box": (lambda: box(0.4, lower=(0, -1, 0), upper=(2, 0, 0.5)), 1.0, 1e-12),
    "box_p2": (lambda: box(0.5, order=2), 1.0, 1e-12),
}


@pytest.mark.parametrize("case", sorted(AREA_CASES))
def test_gmsh_cells_positive_and_fill_the_domain(case):
    make, area, rtol = AREA_CASES[case]
    mesh = make()
    assert mesh.dtype == torch.float64
    mesh.check()
    measures = mesh.cell_measures()
    assert (measures > 0).all()
    assert math.isclose(float(measures.sum()), area, rel_tol=rtol)
    assert int(mesh.elements.max()) == mesh.n_points - 1  # no unreferenced nodes
    assert torch.equal(torch.unique(mesh.elements), torch.arange(mesh.n_points))
    # facet sets cover the boundary exactly once
    assert sum(f.shape[0] for f in mesh.facet_sets.values()) == mesh.boundary_facets.shape[0]
    assert mesh.facet_sets[next(iter(mesh.facet_sets))].shape[1] == mesh.boundary_facets.shape[1]


def test_rectangle_and_box_facet_sets_lie_on_their_sides():
    mesh = rectangle(0.2, left=-1, right=2, bottom=0.5, top=1.0, order=2)
    x = mesh.points
    for name, axis, value in (("left", 0, -1), ("right", 0, 2), ("bottom", 1, 0.5), ("top", 1, 1.0)):
        assert torch.allclose(x[mesh.facet_set(name)][..., axis], torch.tensor(value, dtype=x.dtype))
    mesh = box(0.5, lower=(0, 0, 0), upper=(1, 2, 3))
    sides = {"left": (0, 0), "right": (0, 1), "front": (1, 0), "back": (1, 2), "bottom": (2, 0), "top": (2, 3)}
    assert set(mesh.facet_sets.keys()) == set(sides)
    for name, (axis, value) in sides.items():
        assert torch.allclose(
            mesh.points[mesh.facet_set(name)][..., axis], torch.tensor(float(value), dtype=torch.float64)
        )


def test_circle_and_l_shape_boundaries():
    mesh = circle(0.2, center=(1.0, 2.0), radius=0.5, order=2)
    r = (mesh.points[mesh.facet_set("boundary")] - torch.tensor([1.0, 2.0], dtype=torch.float64)).norm(dim=-1)
    assert torch.allclose(r, torch.full_like(r, 0.5))  # midside nodes too: curved edges
    mesh = l_shape(0.25)
    x, y = mesh.points[mesh.facet_set("boundary")].unbind(-1)
    on_edge = (x.abs() - 1).abs().lt(1e-12) | (y.abs() - 1).abs().lt(1e-12)
    on_edge |= ((x.abs() < 1e-12) & (y >= 0)) | ((y.abs() < 1e-12) & (x >= 0))
    assert on_edge.all()
    assert not ((mesh.points[:, 0] > 1e-12) & (mesh.points[:, 1] > 1e-12)).any()


@pytest.mark.parametrize(
    "make", [lambda: rectangle(0.3, order=2), lambda: box(0.6, order=2)], ids=["triangle6", "tetra10"]
)
def test_gmsh_p2_midside_nodes_at_midpoints(make):
    mesh = make()
    element = mesh.element
    assert _midside_ok(mesh.points, mesh.elements, element.edges, element.n_vertices)
    facets = next(iter(mesh.facet_sets.values()))
    facet_edges = [(0, 1)] if facets.shape[1] == 3 else [(0, 1), (1, 2), (2, 0)]
    assert _midside_ok(mesh.points, facets, facet_edges, facets.shape[1] // 2 if facets.shape[1] == 6 else 2)


def test_mesh_classmethods_call_the_generators():
    assert Mesh.gen_rectangle(0.5).cell_type == "triangle"
    assert Mesh.gen_L(0.5).cell_type == "triangle"
    assert Mesh.gen_cube(0.8).cell_type == "tetra"
    assert Mesh.gen_grid((2, 2)).n_points == 9


BAD_ARGUMENTS = [
    (lambda: rectangle(0), "chara_length"),
    (lambda: rectangle(-1), "chara_length"),
    (lambda: rectangle(float("nan")), "chara_length"),
    (lambda: rectangle(float("inf")), "chara_length"),
    (lambda: rectangle(0.1, left=1.0, right=1.0), "right"),
    (lambda: rectangle(0.1, bottom=2.0), "top"),
    (lambda: rectangle(0.1, element_type="hex"), "element_type"),
    (lambda: rectangle(0.1, order=3), "order"),
    (lambda: rectangle(0.1, element_type="quad", order=2), "order"),
    (lambda: circle(0.1, radius=0), "radius"),
    (lambda: l_shape(-0.1), "chara_length"),
    (lambda: box(0.1, lower=(0, 0, 1), upper=(1, 1, 1)), "upper"),
    (lambda: box(0.1, order=0), "order"),
    (lambda: grid((0, 2)), "shape"),
    (lambda: grid((2,)), "shape"),
    (lambda: grid((2.5, 2)), "shape"),
    (lambda: grid((2, 2), lower=(0, 0), upper=(1, 0)), "upper"),
    (lambda: grid((2, 2), lower=(0, 0, 0)), "lower"),
    (lambda: grid((2, 2), element_type="tetra"), "element_type"),
    (lambda: grid((2, 2, 2), element_type="hexahedron", order=2), "order"),
]


@pytest.mark.parametrize("call,word", BAD_ARGUMENTS)
def test_bad_arguments_raise_value_error_naming_them(call, word):
    with pytest.raises(ValueError, match=word):
        call()


# -- structured grids ------------------------------------------------------------------

GRID_CASES = [
    ((3, 2), "triangle", 1, 12, 12),
    ((3, 2), "quad", 1, 12, 6),
    ((3, 2), "triangle", 2, 35, 12),
    ((2, 3, 4), "tetra", 1, 60, 144),
    ((2, 3, 4), "hexahedron", 1, 60, 24),
    ((2, 3, 4), "tetra", 2, 315, 144),
]


@pytest.mark.parametrize("shape,element_type,order,n_points,n_cells", GRID_CASES)
def test_grid_counts_orientation_volume(shape, element_type, order, n_points, n_cells):
    lower, upper = [-1.0, 0.0, 2.0][: len(shape)], [1.0, 0.5, 3.0][: len(shape)]
    mesh = grid(shape, lower=lower, upper=upper, element_type=element_type, order=order)
    assert (mesh.n_points, mesh.n_cells) == (n_points, n_cells)
    assert mesh.dtype == torch.float64
    mesh.check()
    measures = mesh.cell_measures()
    assert (measures > 0).all()
    assert math.isclose(float(measures.sum()), math.prod(b - a for a, b in zip(lower, upper)), rel_tol=1e-12)
    # conforming: the boundary is exactly the union of the side facet sets
    assert sum(f.shape[0] for f in mesh.facet_sets.values()) == mesh.boundary_facets.shape[0]
    if order == 2:
        assert _midside_ok(mesh.points, mesh.elements, mesh.element.edges, mesh.element.n_vertices)


@pytest.mark.parametrize(
    "shape,element_type", [((3, 2), "triangle"), ((3, 2), "quad"), ((2, 3, 4), "tetra"), ((2, 3, 4), "hexahedron")]
)
def test_grid_facet_sets_on_sides_with_outward_normals(shape, element_type):
    mesh = grid(shape, element_type=element_type)
    dim = len(shape)
    sides = ["left", "right", "front", "back", "bottom", "top"] if dim == 3 else ["left", "right", "bottom", "top"]
    assert list(mesh.facet_sets.keys()) == sides
    for i, name in enumerate(sides):
        axis, outward = i // 2, 1.0 if i % 2 else -1.0
        x = mesh.points[mesh.facet_set(name)]
        assert torch.allclose(x[..., axis], torch.tensor(max(outward, 0.0), dtype=x.dtype))
        if dim == 2:
            t = x[:, 1] - x[:, 0]
            normal = torch.stack([t[:, 1], -t[:, 0]], dim=-1)
        else:
            normal = torch.linalg.cross(x[:, 1] - x[:, 0], x[:, -1] - x[:, 0])
        assert (normal[:, axis] * outward > 0).all()
        per_square = 2 if element_type == "tetra" else 1
        assert mesh.facet_set(name).shape[0] == per_square * math.prod(n for j, n in enumerate(shape) if j != axis)


def test_grid_boundary_mask_and_node_order():
    n = 7
    assert int(grid((n, n)).boundary_mask.sum()) == 4 * n
    assert int(grid((n, n, n)).boundary_mask.sum()) == (n + 1) ** 3 - (n - 1) ** 3
    mesh = grid((2, 1), lower=(0, 0), upper=(2, 1))
    expected = torch.tensor([[0, 0], [1, 0], [2, 0], [0, 1], [1, 1], [2, 1]], dtype=torch.float64)
    assert torch.equal(mesh.points, expected)  # x fastest


def test_elevate_order_on_gmsh_mesh_and_orient_cells():
    p1 = box(0.6)
    points, cells, facets = elevate_order(p1.points, p1.cells.to_dict(), p1.facet_sets.to_dict())
    p2 = Mesh(points, cells, facets)
    assert p2.cell_type == "tetra10" and torch.equal(p2.points[: p1.n_points], p1.points)
    assert math.isclose(float(p2.cell_measures().sum()), 1.0, rel_tol=1e-12)
    assert all(f.shape[1] == 6 for f in p2.facet_sets.values())
    flipped = p2.elements[:, generate._FLIP["tetra10"]]
    assert torch.equal(orient_cells(p2.points, flipped, "tetra10"), p2.elements)


def test_uniform_refinement_splits_every_triangle_into_four():
    from tmcore.core.mesh.generate import refine_uniformly

    coarse = Mesh.gen_rectangle(chara_length=0.2)
    fine = refine_uniformly(coarse)
    n_edges = (3 * coarse.n_cells + coarse.boundary_facets.shape[0]) // 2
    assert fine.n_cells == 4 * coarse.n_cells and fine.n_points == coarse.n_points + n_edges
    assert torch.allclose(fine.cell_measures().sum(), torch.tensor(1.0, dtype=torch.float64))
    assert bool((fine.cell_measures() > 0).all())
    # children have a quarter of their parent's area: the four children of cell 0
    m = coarse.n_cells
    children = fine.cell_measures()[torch.arange(4) * m]
    assert torch.allclose(children, coarse.cell_measures()[0].expand(4) / 4)
    for name in ("left", "right", "bottom", "top"):
        assert fine.facet_set(name).shape[0] == 2 * coarse.facet_set(name).shape[0]
    sides = fine.nodes_of("left") | fine.nodes_of("right") | fine.nodes_of("bottom") | fine.nodes_of("top")
    assert torch.equal(sides, fine.boundary_mask)


def test_rectangle_refine_option_matches_explicit_refinement():
    from tmcore.core.mesh.generate import refine_uniformly

    direct = Mesh.gen_rectangle(chara_length=0.3, refine=2)
    explicit = refine_uniformly(refine_uniformly(Mesh.gen_rectangle(chara_length=0.3)))
    assert torch.equal(direct.points, explicit.points) and torch.equal(direct.elements, explicit.elements)
    with pytest.raises(ValueError, match="refine"):
        Mesh.gen_rectangle(chara_length=0.3, element_type="quad", refine=1)


@pytest.mark.parametrize(
    "make, estimate",
    [
        (lambda: rectangle(0.02), lambda g: g.estimate_nodes(2, 1.0, 4.0, 0.02)),
        (lambda: rectangle(0.05, order=2), lambda g: g.estimate_nodes(2, 1.0, 4.0, 0.05, order=2)),
        (lambda: rectangle(0.1, refine=2), lambda g: g.estimate_nodes(2, 1.0, 4.0, 0.1, refine=2)),
        (lambda: Mesh.gen_circle(0.05), lambda g: g.estimate_nodes(2, math.pi, 2 * math.pi, 0.05)),
        (lambda: Mesh.gen_L(0.05), lambda g: g.estimate_nodes(2, 3.0, 8.0, 0.05)),
        (lambda: box(0.1), lambda g: g.estimate_nodes(3, 1.0, 6.0, 0.1)),
        (lambda: box(0.2, order=2), lambda g: g.estimate_nodes(3, 1.0, 6.0, 0.2, order=2)),
    ],
    ids=["rectangle", "rectangle-p2", "rectangle-refine2", "circle", "l-shape", "box", "box-p2"],
)
def test_node_estimates_are_within_a_factor_one_and_a_half(make, estimate):
    from tmcore.core.mesh import generate

    ratio = make().n_points / estimate(generate)
    assert 1 / 1.5 < ratio < 1.5
