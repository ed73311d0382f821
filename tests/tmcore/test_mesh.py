"""The Mesh module: buffers, device and dtype moves, state_dict, topology."""

import torch

from tmcore import Mesh


def test_points_and_cells_are_buffers_that_round_trip_through_state_dict():
    mesh = Mesh.gen_rectangle(chara_length=0.2)
    state = mesh.state_dict()
    assert {"points", "cells.triangle", "facet_sets.left"} <= set(state)
    other = Mesh.gen_rectangle(chara_length=0.2)
    with torch.no_grad():
        other.points.zero_()
    other.load_state_dict(state)
    assert torch.equal(other.points, mesh.points)
    assert torch.equal(other.cells["triangle"], mesh.cells["triangle"])


def test_to_and_double_move_every_buffer():
    mesh = Mesh.gen_grid((3, 3)).float()
    assert mesh.points.dtype == torch.float32
    assert mesh.cells["triangle"].dtype == torch.int64  # indices keep their dtype
    mesh = mesh.double().to("cpu")
    assert mesh.points.dtype == torch.float64 and mesh.device.type == "cpu"


def test_boundary_mask_comes_from_topology():
    mesh = Mesh.gen_grid((5, 4))
    on_box = (mesh.points[:, 0] % 1 == 0) | (mesh.points[:, 1] % 1 == 0)
    assert torch.equal(mesh.boundary_mask, on_box)
    assert mesh.boundary_facets.shape == (2 * (5 + 4), 2)
    # P2: midside nodes on the boundary are in the mask, interior ones are not
    p2 = Mesh.gen_grid((5, 4), order=2)
    on_box = (p2.points[:, 0] % 1 == 0) | (p2.points[:, 1] % 1 == 0)
    assert torch.equal(p2.boundary_mask, on_box)


def test_boundary_of_a_tetrahedral_box():
    mesh = Mesh.gen_grid((3, 3, 3))
    assert mesh.boundary_facets.shape == (6 * 9 * 2, 3)
    assert int(mesh.boundary_mask.sum()) == 4**3 - 2**3


def test_cell_measures_sum_to_the_domain():
    assert abs(float(Mesh.gen_L(chara_length=0.3).cell_measures().sum()) - 3.0) < 1e-12
    assert abs(float(Mesh.gen_box(chara_length=0.4, upper=(2.0, 1.0, 1.0)).cell_measures().sum()) - 2.0) < 1e-12


def test_named_boundary_parts_of_generated_shapes():
    mesh = Mesh.gen_rectangle(chara_length=0.1)
    assert set(mesh.facet_sets.keys()) == {"left", "right", "bottom", "top"}
    left = mesh.nodes_of("left")
    assert torch.all(mesh.points[left, 0] == 0.0)
    union = mesh.nodes_of("left") | mesh.nodes_of("right") | mesh.nodes_of("bottom") | mesh.nodes_of("top")
    assert torch.equal(union, mesh.boundary_mask)
