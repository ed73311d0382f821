"""Assemblers against scikit-fem, batches, gradients to the data, quadrature defaults, facets."""

import math

import numpy as np
import pytest
import torch

from tmcore import ElementAssembler, FacetAssembler, Functional, Mesh
from tmcore.core.assembly import default_quadrature_degree
from tmcore.forms import Diffusion, Source

skfem = pytest.importorskip("skfem")
from skfem.helpers import dot, grad  # noqa: E402


class Mass(ElementAssembler):
    def forward(self, u, v, rho):
        return rho * u * v


SKFEM = {
    "triangle": (lambda p, t: skfem.MeshTri(p, t), skfem.ElementTriP1),
    "quad": (lambda p, t: skfem.MeshQuad(p, t), skfem.ElementQuad1),
    "tetra": (lambda p, t: skfem.MeshTet(p, t), skfem.ElementTetP1),
}
MESHES = {
    "triangle": lambda: Mesh.gen_rectangle(chara_length=0.1),
    "quad": lambda: Mesh.gen_rectangle(chara_length=0.1, element_type="quad"),
    "tetra": lambda: Mesh.gen_box(chara_length=0.25),
}


@pytest.mark.parametrize("cell_type", list(SKFEM))
def test_matrices_agree_with_scikit_fem(cell_type):
    mesh = MESHES[cell_type]()
    make_mesh, element = SKFEM[cell_type]
    skmesh = make_mesh(mesh.points.numpy().T.copy(), mesh.elements.numpy().T.copy())
    basis = skfem.Basis(skmesh, element(), intorder=4)
    kappa = 1.0 + mesh.points[:, 0] ** 2

    @skfem.BilinearForm
    def laplace(u, v, w):
        return w.kappa * dot(grad(u), grad(v))

    @skfem.BilinearForm
    def mass(u, v, w):
        return w.kappa * u * v

    @skfem.LinearForm
    def load(v, w):
        return w.kappa * v

    interpolated = basis.interpolate(kappa.numpy())
    for ours, theirs in (
        (Diffusion.from_mesh(mesh)(point_data={"kappa": kappa}), laplace),
        (Mass.from_mesh(mesh)(point_data={"rho": kappa}), mass),
    ):
        reference = skfem.asm(theirs, basis, kappa=interpolated).toarray()
        assert np.abs(ours.to_dense().numpy() - reference).max() <= 1e-13 * np.abs(reference).max()
    vector = Source.from_mesh(mesh)(point_data={"f": kappa})
    reference = skfem.asm(load, basis, kappa=interpolated)
    assert np.abs(vector.numpy() - reference).max() <= 1e-14 * np.abs(reference).max()


@pytest.mark.parametrize("cell_type,order", [("triangle", 2), ("tetra", 2), ("hexahedron", 1), ("quad", 1)])
def test_matrix_invariants_on_every_element(cell_type, order):
    """Laplacian rows sum to zero; the mass matrix sums to the domain's measure; both are symmetric."""
    dim = 3 if cell_type in ("tetra", "hexahedron") else 2
    mesh = Mesh.gen_grid((3,) * dim, element_type=cell_type, order=order, upper=(2.0,) * dim)
    K = Diffusion.from_mesh(mesh)(scalar_data={"kappa": 1.0}).to_dense()
    M = Mass.from_mesh(mesh)(scalar_data={"rho": 1.0}).to_dense()
    assert K.sum(1).abs().max() < 1e-12
    assert torch.allclose(K, K.T, atol=1e-13) and torch.allclose(M, M.T, atol=1e-15)
    assert abs(float(M.sum()) - 2.0**dim) < 1e-12
    # the Laplacian of the linear function x: 1^T K x = 0 and x^T K x = int |grad x|^2 = measure
    x = mesh.points[:, 0]
    assert abs(float(x @ K @ x) - 2.0**dim) < 1e-11


def test_default_quadrature_follows_the_integrand():
    tri2 = Mesh.gen_grid((2, 2), order=2).element
    assert default_quadrature_degree(tri2, ("u", "v", "rho"), {"rho"}) == 6
    assert default_quadrature_degree(tri2, ("gradu", "gradv"), set()) == 2
    mesh = Mesh.gen_grid((3, 3), order=2)
    rho = 1.0 + mesh.points[:, 0] * mesh.points[:, 1]
    default = Mass.from_mesh(mesh)(point_data={"rho": rho}).values
    exact = Mass.from_mesh(mesh, quadrature_order=12)(point_data={"rho": rho}).values
    too_low = Mass.from_mesh(mesh, quadrature_order=2)(point_data={"rho": rho}).values
    assert torch.allclose(default, exact, rtol=1e-13, atol=1e-16)
    assert not torch.allclose(too_low, exact, rtol=1e-6)  # the check could fail


def test_batched_data_gives_a_batch_on_one_pattern():
    mesh = Mesh.gen_rectangle(chara_length=0.2)
    kappas = torch.stack([torch.ones(mesh.n_points), 1.0 + mesh.points[:, 1]])
    laplace = Diffusion.from_mesh(mesh)
    batch = laplace(point_data={"kappa": kappas})
    assert batch.values.shape == (2, batch.pattern.nnz)
    for i in range(2):
        assert torch.allclose(batch.values[i], laplace(point_data={"kappa": kappas[i]}).values)
    vectors = Source.from_mesh(mesh)(point_data={"f": kappas})
    assert vectors.shape == (2, mesh.n_points)


def test_gradients_reach_element_and_scalar_data_and_module_parameters():
    mesh = Mesh.gen_grid((4, 4))

    class Scaled(ElementAssembler):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.tensor(2.0))

        def forward(self, gradu, gradv, alpha, beta):
            return self.scale * alpha * beta * (gradu @ gradv)

    alpha = torch.ones(mesh.n_cells, requires_grad=True)
    beta = torch.tensor(3.0, requires_grad=True)
    assembler = Scaled.from_mesh(mesh)
    K = assembler(element_data={"alpha": alpha}, scalar_data={"beta": beta})
    K.values.square().sum().backward()
    assert alpha.grad.abs().sum() > 0 and beta.grad != 0 and assembler.scale.grad != 0


def test_rebuilt_assemblers_share_the_pattern_and_geometry():
    mesh = Mesh.gen_rectangle(chara_length=0.1)
    first = Diffusion.from_mesh(mesh)(scalar_data={"kappa": 1.0})
    second = Diffusion.from_mesh(mesh)(scalar_data={"kappa": 1.0})
    assert first.pattern is second.pattern


def test_moving_points_invalidates_the_cached_geometry():
    mesh = Mesh.gen_grid((2, 2))
    before = Mass.from_mesh(mesh)(scalar_data={"rho": 1.0}).values.sum()
    with torch.no_grad():
        mesh.points.mul_(2.0)
    after = Mass.from_mesh(mesh)(scalar_data={"rho": 1.0}).values.sum()
    assert abs(float(after / before) - 4.0) < 1e-12


class Perimeter(FacetAssembler):
    def forward(self, v):
        return v


class NormalFlux(FacetAssembler):
    def forward(self, v, n, x):
        return (x @ n) * v


class Robin(FacetAssembler):
    def forward(self, u, v, h):
        return h * u * v


def test_facet_integrals_perimeter_and_divergence_theorem():
    mesh = Mesh.gen_circle(chara_length=0.1, radius=1.0)
    perimeter = Perimeter.from_mesh(mesh)().sum()
    assert abs(float(perimeter) - 2 * math.pi) < 2e-2
    # int_boundary x . n ds = dim * area, exactly on the polygon
    flux = NormalFlux.from_mesh(mesh)().sum()
    polygon_area = float(mesh.cell_measures().sum())
    assert abs(float(flux) - 2 * polygon_area) < 1e-12


def test_facet_selection_by_name_mask_and_predicate():
    mesh = Mesh.gen_rectangle(chara_length=0.1, right=2.0)
    by_name = Perimeter.from_mesh(mesh, facets="right")().sum()
    by_mask = Perimeter.from_mesh(mesh, facets=mesh.points[:, 0] > 2.0 - 1e-9)().sum()
    by_predicate = Perimeter.from_mesh(mesh, facets=lambda c: c[:, 0] > 2.0 - 1e-9)().sum()
    for value in (by_name, by_mask, by_predicate):
        assert abs(float(value) - 1.0) < 1e-13


def test_robin_matrix_adds_to_the_stiffness_matrix():
    mesh = Mesh.gen_rectangle(chara_length=0.1)
    K = Diffusion.from_mesh(mesh)(scalar_data={"kappa": 1.0})
    R = Robin.from_mesh(mesh)(scalar_data={"h": 2.0})
    total = K + R
    ones = torch.ones(mesh.n_points)
    # 1^T (K + R) 1 = h * perimeter
    assert abs(float(ones @ (total @ ones)) - 8.0) < 1e-12


class Area(Functional):
    def forward(self, x):
        return torch.ones((), dtype=x.dtype)


def test_functional_integrates_over_the_domain():
    mesh = Mesh.gen_L(chara_length=0.2)
    assert abs(float(Area.from_mesh(mesh)()) - 3.0) < 1e-12
    per_cell = Area.from_mesh(mesh)(per_cell=True)
    assert torch.allclose(per_cell, mesh.cell_measures())


def test_library_forms_match_hand_written_integrands():
    from tmcore.forms import Diffusion
    from tmcore.forms import Mass as LibraryMass
    from tmcore.forms import Source as LibrarySource

    mesh = Mesh.gen_grid((3, 3))
    kappa = 1.0 + mesh.points[:, 0]
    assert torch.equal(
        Diffusion.from_mesh(mesh)(point_data={"kappa": kappa}).values,
        Diffusion.from_mesh(mesh)(point_data={"kappa": kappa}).values,
    )
    assert torch.equal(
        LibraryMass.from_mesh(mesh)(point_data={"rho": kappa}).values,
        Mass.from_mesh(mesh)(point_data={"rho": kappa}).values,
    )
    assert abs(float(LibrarySource.from_mesh(mesh)(scalar_data={"f": 1.0}).sum()) - 1.0) < 1e-14


@pytest.mark.parametrize("batched", [False, True])
def test_blocks_of_cells_give_the_one_block_result_and_gradients(monkeypatch, batched):
    """Assembly runs in blocks of cells (CHUNK_EVALUATIONS); blocks of 7 cells, not dividing
    the 50 cells, must give the one-block matrices, vectors, element matrices and gradients."""
    import tmcore.core.assembly as assemble
    from tmcore import VectorElementAssembler

    class Elastic(VectorElementAssembler):
        def forward(self, gradu, gradv, mu):
            return mu * (gradu * gradv).sum()

    mesh = Mesh.gen_grid((5, 5))
    shape = (3, mesh.n_points) if batched else (mesh.n_points,)
    kappa = (1.0 + torch.rand(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))).requires_grad_(
        True
    )
    mu = torch.rand(mesh.n_cells, dtype=torch.float64) + 1

    def everything():
        K = Diffusion.from_mesh(mesh)(point_data={"kappa": kappa})
        b = Source.from_mesh(mesh)(point_data={"f": kappa})
        E = Elastic.from_mesh(mesh)(element_data={"mu": mu})
        local = Diffusion.from_mesh(mesh).local(point_data={"kappa": kappa})
        (grad,) = torch.autograd.grad((K.values**2).sum() + (b**3).sum(), kappa)
        return K.values, b, E.values, local, grad

    one_block = everything()
    monkeypatch.setattr(assemble, "CHUNK_EVALUATIONS", 7 * 9 * (3 if batched else 1))
    blocks = everything()
    for expected, got in zip(one_block, blocks):
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=1e-14, atol=1e-14)
