"""Weak forms of tmcore.forms against exact values (forms tested elsewhere: Diffusion, Mass, the elasticity forms)."""

import pytest
import torch

from tmcore import Mesh
from tmcore.forms import BoundaryFlux


def _box(shape=(4, 3, 2), size=(2.0, 1.0, 0.5)) -> Mesh:
    mesh = Mesh.gen_grid(shape, element_type="hexahedron")
    with torch.no_grad():
        mesh.points.mul_(torch.tensor(size, dtype=mesh.points.dtype))
    return mesh


def test_boundary_flux_of_a_uniform_flux_puts_a_quarter_facet_area_on_each_corner():
    # right face x = 2 of a 4x3x2 grid on [0,2]x[0,1]x[0,0.5]: 3 x 2 quads of area (1/3)(1/4)
    mesh = _box()
    load = BoundaryFlux.from_mesh(mesh, facets="right")(scalar_data={"q": 3.0})
    area = (1.0 / 3.0) * (0.5 / 2.0)
    on_face = mesh.points[:, 0] > 2.0 - 1e-12
    assert torch.all(load[~on_face] == 0)
    # quads touching each face node: 1 at a corner of the face, 2 on its edges, 4 inside
    y, z = mesh.points[on_face, 1], mesh.points[on_face, 2]
    edge_y = (y < 1e-12) | (y > 1.0 - 1e-12)
    edge_z = (z < 1e-12) | (z > 0.5 - 1e-12)
    quads = torch.where(edge_y & edge_z, 1, torch.where(edge_y | edge_z, 2, 4)).to(load.dtype)
    torch.testing.assert_close(load[on_face], 3.0 * area / 4.0 * quads, rtol=1e-14, atol=0)
    assert float(load.sum()) == pytest.approx(3.0 * 1.0 * 0.5, rel=1e-14)


def test_boundary_flux_integrates_a_bilinear_flux_exactly():
    # q = 1 + y z on the right face: int q ds = 0.5 + (1/2)(1/8) = 0.5625 on [0,1]x[0,0.5]
    mesh = _box()
    q = 1.0 + mesh.points[:, 1] * mesh.points[:, 2]
    load = BoundaryFlux.from_mesh(mesh, facets="right")(point_data={"q": q})
    assert float(load.sum()) == pytest.approx(0.5625, rel=1e-13)
    # and its first moment in y: int y q ds = 1/2 * 0.5 + (1/3)(1/8) = 0.25 + 1/24
    assert float(load @ mesh.points[:, 1]) == pytest.approx(0.25 + 1.0 / 24.0, rel=1e-13)


def test_boundary_flux_is_linear_in_q_and_differentiable():
    mesh = _box((2, 2, 2), (1.0, 1.0, 1.0))
    q = torch.full((mesh.n_points,), 2.0, dtype=mesh.points.dtype, requires_grad=True)
    load = BoundaryFlux.from_mesh(mesh, facets="left")(point_data={"q": q})
    (grad,) = torch.autograd.grad(load.sum(), q)
    # d(sum load)/dq_a = int phi_a ds over the left face: 1/16 at its corners, 1/8 on edges, 1/4 at the centre
    left = mesh.points[:, 0] < 1e-12
    assert float(grad[left].sum()) == pytest.approx(1.0, rel=1e-14)
    assert torch.all(grad[~left] == 0)
    assert float(grad.max()) == pytest.approx(0.25, rel=1e-14)
