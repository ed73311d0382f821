"""Shape gradients: losses differentiated w.r.t. node coordinates, checked by FD and Taylor; the fin example."""

import math

import pytest
import torch

from tmcore import Condenser, Functional, Mesh
from tmcore.core.assembly import dof_mask
from tmcore.forms import Diffusion, LinearElasticity, Source
from tmcore.methods.gradcheck import finite_difference_check, taylor_test
from tmcore.methods.shape import Fin, interior_mask, optimise_fin, with_points
from tmcore.topology import point_load


def _jiggled(mesh: Mesh, amount: float = 0.15) -> Mesh:
    """The mesh with its interior nodes moved randomly by up to ``amount`` cells (a generic, unstructured layout)."""
    h = float(mesh.cell_measures().mean()) ** (1 / mesh.dim)
    gen = torch.Generator().manual_seed(7)
    shift = (2 * torch.rand(mesh.points.shape, generator=gen, dtype=torch.float64) - 1) * amount * h
    return with_points(mesh, mesh.points + shift * interior_mask(mesh)[:, None])


def _interior_loss(mesh: Mesh, energy):
    """loss(d) with d (n_interior * dim,) the displacement of the interior nodes."""
    inner = torch.nonzero(interior_mask(mesh)).flatten()

    def loss(d):
        points = mesh.points.index_add(0, inner, d.reshape(-1, mesh.dim))
        return energy(with_points(mesh, points))

    return loss, torch.zeros(inner.numel() * mesh.dim, dtype=torch.float64)


def _poisson_compliance(mesh: Mesh):
    x, y = mesh.points[:, 0], mesh.points[:, 1]
    K = Diffusion.from_mesh(mesh)(point_data={"kappa": 1.0 + x * y})
    b = Source.from_mesh(mesh)(point_data={"f": 1.0 + torch.sin(3 * x)})
    cond = Condenser(mesh.boundary_mask)
    K_, b_ = cond(K, b)
    return b_ @ K_.solve(b_)


def _elastic_compliance(mesh: Mesh):
    fixed = dof_mask(mesh.nodes_of("left"), 2)
    cond = Condenser(fixed)
    f = point_load(mesh, mesh.nodes_of("right"), (0.0, -1.0))
    K = LinearElasticity.from_mesh(mesh, nu=0.3)(scalar_data={"E": 1.0})
    K_, f_ = cond(K, f)
    return f_ @ K_.solve(f_)


@pytest.mark.parametrize(
    "cell, energy",
    [
        ("triangle", _poisson_compliance),
        ("quad", _poisson_compliance),
        ("quad", _elastic_compliance),
        ("triangle", _elastic_compliance),
    ],
)
def test_gradient_wrt_interior_nodes_passes_fd_and_taylor(cell, energy):
    mesh = _jiggled(Mesh.gen_grid((6, 5), upper=(1.2, 1.0), element_type=cell))
    loss, d0 = _interior_loss(mesh, energy)
    check = finite_difference_check(loss, d0, n_probes=8)
    assert check.median_digits > 8, check.table()
    assert float(check.digits.min()) > 6, check.table()
    direction = 0.02 * (2 * torch.rand(d0.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64) - 1)
    assert taylor_test(loss, d0, direction=direction, eps0=1.0).min_rate > 1.9


def test_points_leaf_requiring_grad_and_area_is_stationary_in_interior_nodes():
    mesh = Mesh.gen_grid((4, 4), element_type="quad")
    mesh.points.requires_grad_(True)

    class Area(Functional):
        def forward(self, x):
            return torch.ones((), dtype=x.dtype)

    area = Area.from_mesh(mesh)()
    (grad,) = torch.autograd.grad(area, mesh.points)
    inner = interior_mask(mesh)
    assert float(area.detach()) == pytest.approx(1.0)
    assert grad[inner].abs().max() < 1e-14  # moving an interior node keeps the domain
    right = mesh.nodes_of("right") & ~mesh.nodes_of("top") & ~mesh.nodes_of("bottom")
    assert torch.allclose(
        grad[right, 0], torch.full((int(right.sum()),), 0.25, dtype=torch.float64)
    )  # d area / d x of a right-edge node: its edge length
    mesh.points.requires_grad_(False)


def test_geometry_cache_follows_moves_and_with_points_shares_the_topology():
    class Area(Functional):
        def forward(self, x):
            return torch.ones((), dtype=x.dtype)

    mesh = Mesh.gen_grid((3, 3), element_type="triangle")
    area = Area.from_mesh(mesh)
    assert float(area()) == pytest.approx(1.0)
    with torch.no_grad():
        mesh.points.mul_(2.0)
    assert float(area()) == pytest.approx(4.0)  # the cached geometry saw the in-place move
    points = mesh.points.detach().clone().requires_grad_(True)
    moved = with_points(mesh, points)
    assert moved.elements is mesh.elements
    K_mesh = Diffusion.from_mesh(mesh)(scalar_data={"kappa": 1.0})
    K_moved = Diffusion.from_mesh(moved)(scalar_data={"kappa": 1.0})
    assert K_moved.pattern is K_mesh.pattern  # shared, not rebuilt
    (grad,) = torch.autograd.grad(Area.from_mesh(moved)(), points)
    assert float(grad.abs().sum()) > 0


# -- the fin ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fin():
    return Fin(n_modes=3, length=2.0, h0=0.5, shape=(16, 4))


def test_fin_area_is_fixed_and_gradient_passes_fd_and_taylor(fin):
    a0 = torch.tensor([0.2, -0.1, 0.05], dtype=torch.float64)
    assert float(fin.area(a0)) == pytest.approx(1.0, rel=1e-12)  # L h0, whatever a
    check = finite_difference_check(fin.compliance, a0, indices=[0, 1, 2])
    assert float(check.digits.min()) > 8, check.table()
    assert taylor_test(fin.compliance, a0, eps0=0.05).min_rate > 1.9


def test_fin_optimisation_tapers_the_fin_and_lowers_its_compliance(fin):
    result = optimise_fin(fin, steps=12, max_step=0.2)
    assert result.improvement > 1.2
    heights = fin.height(result.a, torch.tensor([0.0, fin.length], dtype=torch.float64))
    assert float(heights[0]) > 1.5 * float(heights[1])  # thick at the base, thin at the tip
    assert bool((result.compliance[1:] <= result.compliance[:-1]).all())
    assert float(fin.area(result.a)) == pytest.approx(1.0, rel=1e-12)


def test_with_points_checks_shape():
    mesh = Mesh.gen_grid((2, 2))
    with pytest.raises(ValueError, match=r"points must have the shape of mesh.points \(9, 2\)"):
        with_points(mesh, torch.zeros(8, 2))
    assert math.isclose(float(with_points(mesh, mesh.points * 3).cell_measures().sum()), 9.0)


def test_fin_example_runs_as_written(monkeypatch):
    from .docpages import run_example

    result = run_example("fin_shape.py", monkeypatch, 3)["result"]
    assert result.improvement > 1.5


def test_guide_page_runs_and_prints_what_it_shows():
    from .docpages import run_page

    run_page("shape.md")
