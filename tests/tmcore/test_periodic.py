"""Periodic node pairing on generated and gmsh meshes, and periodic assembly."""

import pytest
import torch

from tmcore import Mesh
from tmcore.core.errors import MeshError
from tmcore.forms import Diffusion, LinearElasticity
from tmcore.methods.periodic import PeriodicCell


@pytest.mark.parametrize(
    "shape, element_type, classes", [((4, 3), "quad", 12), ((4, 3), "triangle", 12), ((2, 3, 2), "tetra", 12)]
)
def test_grid_nodes_pair_across_every_face(shape, element_type, classes):
    mesh = Mesh.gen_grid(shape, element_type=element_type)
    cell = PeriodicCell(mesh)
    assert cell.n_classes == classes  # the product of the cell counts: one class per lattice point of the torus
    for axis, pairs in enumerate(cell.pairs):
        low, high = mesh.points[pairs[:, 0]], mesh.points[pairs[:, 1]]
        assert torch.all(low[:, axis] == 0.0) and torch.all(high[:, axis] == 1.0)
        others = [a for a in range(mesh.dim) if a != axis]
        assert torch.equal(low[:, others], high[:, others])
    # the corners are one class
    corners = (mesh.points == 0.0) | (mesh.points == 1.0)
    assert cell.classes[corners.all(dim=1)].unique().numel() == 1


def test_gmsh_rectangle_is_periodic():
    mesh = Mesh.gen_rectangle(0.1)
    cell = PeriodicCell(mesh)
    n_left = int(mesh.nodes_of("left").sum())
    n_bottom = int(mesh.nodes_of("bottom").sum())
    assert cell.n_classes == mesh.n_points - n_left - n_bottom + 1


@pytest.mark.parametrize("case", ["gmsh L-shape", "moved node"])
def test_a_mesh_that_is_not_periodic_is_refused_with_the_place(case):
    if case == "gmsh L-shape":
        mesh = Mesh.gen_L(0.5)
        match = "not periodic along x"
    else:
        mesh = Mesh.gen_grid((4, 4), element_type="quad")
        points = mesh.points.clone()
        points[10, 1] += 1e-3  # the node (0, 0.5) of the face x = 0 moves up
        mesh = Mesh(points, {"quad": mesh.elements})
        match = r"not periodic along x: 1 of the nodes on the face x = 0 have no partner on x = 1 "
        match += r".*first at \[0\.\s+0\.501\]"
    with pytest.raises(MeshError, match=match):
        PeriodicCell(mesh)


@pytest.mark.parametrize("vector", [False, True])
def test_periodic_matrix_is_the_identification_of_the_full_one(vector):
    mesh = Mesh.gen_rectangle(0.3)
    cell = PeriodicCell(mesh)
    form = LinearElasticity.from_mesh(mesh, plane="strain") if vector else Diffusion.from_mesh(mesh)
    data = {"E" if vector else "kappa": 1.0 + torch.rand(mesh.n_cells, generator=torch.Generator().manual_seed(0))}
    K = form(element_data=data).to_dense()
    components = 2 if vector else None
    index = cell.dof_classes(components)
    size = cell.n_classes * (components or 1)
    P = torch.zeros(index.numel(), size)
    P[torch.arange(index.numel()), index] = 1.0  # full dof -> its periodic dof
    periodic = cell.scatter(form.local(element_data=data), components).to_dense()
    assert torch.allclose(periodic, P.T @ K @ P, atol=1e-12)
    v = torch.randn(size)
    assert torch.allclose(cell.expand(v, components), P @ v) and torch.allclose(
        cell.reduce(K @ P @ v, components), P.T @ K @ P @ v
    )


def test_bad_arguments_are_named():
    mesh = Mesh.gen_grid((2, 2))
    with pytest.raises(TypeError, match="mesh must be"):
        PeriodicCell("mesh")
    with pytest.raises(ValueError, match="upper > lower"):
        PeriodicCell(mesh, lower=(0.0, 0.0), upper=(1.0, 0.0))
    with pytest.raises(ValueError, match="tol"):
        PeriodicCell(mesh, tol=-1.0)
    with pytest.raises(ValueError, match="components"):
        PeriodicCell(mesh).scatter(torch.zeros(8, 3, 3), components=3)
