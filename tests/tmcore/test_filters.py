"""The Helmholtz density filter, the Heaviside projection, the sensitivity filter and the checkerboard indicator."""

import math

import pytest
import torch

from tmcore import Functional, Mesh, solvers
from tmcore.core.linalg.factored import factored_solve
from tmcore.forms import Source
from tmcore.studies import thermal_topology
from tmcore.topology.filters import (
    HeavisideProjection,
    HelmholtzFilter,
    cell_neighbours,
    checkerboard_indicator,
    default_filter_radius,
    sensitivity_filter,
)

F64 = torch.float64

MESHES = {
    "triangle": lambda: Mesh.gen_grid((6, 5)),
    "quad": lambda: Mesh.gen_grid((6, 5), element_type="quad"),
    "triangle6": lambda: Mesh.gen_grid((4, 3), order=2),
    "tetra": lambda: Mesh.gen_grid((3, 3, 2)),
    "hexahedron": lambda: Mesh.gen_grid((3, 3, 2), element_type="hexahedron"),
    "gmsh triangle": lambda: Mesh.gen_rectangle(chara_length=0.2),
}


@pytest.fixture(scope="module", params=sorted(MESHES))
def mesh(request) -> Mesh:
    return MESHES[request.param]()


def random_cells(mesh: Mesh, seed: int = 0, batch: tuple[int, ...] = ()) -> torch.Tensor:
    return torch.rand(*batch, mesh.n_cells, generator=torch.Generator().manual_seed(seed), dtype=F64)


def checkerboard(n: int) -> torch.Tensor:
    """0/1 checkerboard on an n x n quad grid (cells numbered x fastest)."""
    i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    return ((i + j) % 2).to(F64).reshape(-1)


# -- the Helmholtz filter ------------------------------------------------------------------------


def test_filter_keeps_constants_and_the_weighted_volume(mesh):
    filt = HelmholtzFilter(mesh, 0.15)
    ones = torch.ones(mesh.n_cells, dtype=F64)
    assert torch.allclose(filt(ones), ones, rtol=0, atol=1e-13)
    rho = random_cells(mesh)
    measures = mesh.cell_measures()
    assert torch.allclose(filt.measures, measures, rtol=1e-13)
    volume, filtered_volume = (measures * rho).sum(), (measures * filt(rho)).sum()
    assert abs(float(filtered_volume - volume)) <= 1e-13 * float(measures.sum())


def test_filter_gradient_is_the_transposed_operator(mesh):
    filt = HelmholtzFilter(mesh, 0.1)
    rho = random_cells(mesh, 1).requires_grad_(True)
    assert torch.autograd.gradcheck(filt, (rho,), eps=1e-6, atol=1e-8, rtol=1e-6)
    # the backward is a filter solve again: second derivatives (e.g. of a quadratic) are exact
    assert torch.autograd.gradgradcheck(lambda x: filt(x) ** 2, (rho,), eps=1e-6, atol=1e-8, rtol=1e-6)
    # D F is symmetric (D = diag of cell measures): <D F a, b> = <a, D F b>
    a, b = random_cells(mesh, 2), random_cells(mesh, 3)
    d = filt.measures
    assert float((d * filt(a) * b).sum()) == pytest.approx(float((a * d * filt(b)).sum()), rel=1e-12)


def test_filter_factorises_once_and_reuses_it():
    mesh = Mesh.gen_grid((20, 20), element_type="quad")
    filt = HelmholtzFilter(mesh, 0.05)
    rho = random_cells(mesh).requires_grad_(True)
    filt(rho)  # the first call factorises
    solvers.stats.reset()
    for _ in range(5):
        (filt(rho) ** 2).sum().backward()
    assert solvers.stats.factorizations == 0


def test_filter_maps_agree_with_the_assemblers():
    mesh = Mesh.gen_rectangle(chara_length=0.2)
    filt = HelmholtzFilter(mesh, 0.1)
    rho = random_cells(mesh)

    class Integral(Functional):
        def forward(self, phi):
            return phi

    assert torch.allclose(filt.to_nodes(rho), Source.from_mesh(mesh)(element_data={"f": rho}), rtol=1e-13, atol=1e-16)
    phi = filt.nodal(rho)
    cell_means = Integral.from_mesh(mesh)(point_data={"phi": phi}, per_cell=True) / mesh.cell_measures()
    assert torch.allclose(filt.to_cells(phi), cell_means, rtol=1e-12)
    # and phi solves (r^2 K + M) phi = T rho
    from tmcore.core.linalg.sparse import SparseMatrix

    matrix = SparseMatrix.from_pattern(filt.pattern, filt.values)
    assert torch.allclose(matrix @ phi, filt.to_nodes(rho), rtol=1e-10, atol=1e-14)


def test_filter_batches_and_dtypes():
    mesh = Mesh.gen_grid((5, 4), element_type="quad")
    filt = HelmholtzFilter(mesh, 0.2)
    batch = random_cells(mesh, batch=(3,))
    out = filt(batch)
    assert out.shape == (3, mesh.n_cells)
    for i in range(3):
        assert torch.allclose(out[i], filt(batch[i]), rtol=1e-14)
    single = filt(batch[0].float())
    assert single.dtype == torch.float32
    assert torch.allclose(single.double(), out[0], atol=1e-6)


def test_wider_filter_smooths_more_and_removes_a_checkerboard():
    n = 20
    mesh = Mesh.gen_grid((n, n), element_type="quad")
    pairs = cell_neighbours(mesh)
    board = checkerboard(n)
    assert checkerboard_indicator(pairs, board) == 1.0
    h = 1.0 / n
    smoothed = [checkerboard_indicator(pairs, HelmholtzFilter(mesh, r)(board)) for r in (0.5 * h, h, 2 * h)]
    assert smoothed[0] < 0.1 and smoothed[2] < smoothed[1] < smoothed[0]
    # at r >= h / sqrt(3) the filter matrix is an M-matrix on a square grid: no over- or undershoot
    filtered = HelmholtzFilter(mesh, h)(board)
    assert float(filtered.min()) >= 0.0 and float(filtered.max()) <= 1.0


def test_default_radius_is_one_cell_size():
    assert default_filter_radius(Mesh.gen_grid((10, 10), element_type="quad")) == pytest.approx(0.1)
    assert default_filter_radius(Mesh.gen_grid((4, 4, 4), element_type="hexahedron")) == pytest.approx(0.25)


def test_prefactored_solve_matches_the_solver():
    mesh = Mesh.gen_grid((6, 6))
    filt = HelmholtzFilter(mesh, 0.1)
    b = torch.rand(mesh.n_points, dtype=F64, requires_grad=True)
    u = factored_solve(filt.factor, b)
    from tmcore.core.linalg.sparse import SparseMatrix

    matrix = SparseMatrix.from_pattern(filt.pattern, filt.values)
    b2 = b.detach().clone().requires_grad_(True)
    reference = matrix.solve(b2)
    assert torch.allclose(u, reference, rtol=1e-12)
    weights = torch.linspace(-1, 1, mesh.n_points, dtype=F64)
    (weights * u).sum().backward()
    (weights * reference).sum().backward()
    assert torch.allclose(b.grad, b2.grad, rtol=1e-12)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda m: HelmholtzFilter(m, 0.0), ValueError, "radius must be a positive finite length"),
        (lambda m: HelmholtzFilter(m, float("inf")), ValueError, "radius must be a positive finite length"),
        (lambda m: HelmholtzFilter("mesh", 0.1), TypeError, "mesh must be a tmcore Mesh"),
        (lambda m: HelmholtzFilter(m, 0.1)(torch.ones(3, dtype=F64)), ValueError, r"one value per cell \(50,\)"),
        (lambda m: HelmholtzFilter(m, 0.1)([0.5] * 50), TypeError, "rho must be a torch.Tensor"),
        (lambda m: HelmholtzFilter(m, 0.1)(torch.ones(50, dtype=torch.long)), TypeError, "floating-point"),
        (lambda m: HelmholtzFilter(m, 0.1)(torch.full((50,), float("nan"))), ValueError, "NaN or inf"),
        (
            lambda m: sensitivity_filter(HelmholtzFilter(m, 0.1), torch.ones(50), torch.ones(4)),
            ValueError,
            r"grad must have one value per cell \(50,\)",
        ),
        (
            lambda m: sensitivity_filter(HelmholtzFilter(m, 0.1), torch.ones(4), torch.ones(50)),
            ValueError,
            "rho must have the shape of grad",
        ),
        (
            lambda m: sensitivity_filter(HelmholtzFilter(m, 0.1), torch.ones(50), torch.ones(50), rho_floor=0.0),
            ValueError,
            "rho_floor",
        ),
        (
            lambda m: sensitivity_filter(None, torch.ones(50), torch.ones(50)),
            TypeError,
            "filt must be a HelmholtzFilter",
        ),
        (lambda m: checkerboard_indicator(m, torch.ones(4)), ValueError, "pairs index cell"),
    ],
)
def test_filter_errors(call, error, message):
    mesh = Mesh.gen_grid((5, 5))
    with pytest.raises(error, match=message):
        call(mesh)


# -- the Heaviside projection --------------------------------------------------------------------


def test_heaviside_projection_fixes_the_ends_and_sharpens_with_beta():
    rho = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64)
    gentle, sharp = HeavisideProjection(beta=1e-6), HeavisideProjection(beta=32.0)
    assert torch.allclose(gentle(rho), rho, atol=1e-9)  # beta -> 0: the identity
    projected = sharp(rho)
    assert projected[0] == pytest.approx(0.0, abs=1e-15) and projected[-1] == pytest.approx(1.0, abs=1e-15)
    assert projected[2] == pytest.approx(0.5, abs=1e-12)  # eta = 1/2 maps to itself (symmetric ends)
    assert float(projected[1]) < 1e-3 and float(projected[3]) > 1 - 1e-3
    # closed form at beta = 2, eta = 0.3
    beta, eta, r = 2.0, 0.3, 0.6
    expected = (math.tanh(beta * eta) + math.tanh(beta * (r - eta))) / (
        math.tanh(beta * eta) + math.tanh(beta * (1 - eta))
    )
    assert float(HeavisideProjection(beta, eta)(torch.tensor(r, dtype=F64))) == pytest.approx(expected, rel=1e-14)
    with pytest.raises(ValueError, match="beta"):
        HeavisideProjection(beta=0.0)
    with pytest.raises(ValueError, match="eta"):
        HeavisideProjection(eta=1.0)
    with pytest.raises(TypeError, match="floating-point"):
        sharp(torch.tensor([0, 1]))


def test_heaviside_projection_gradient_is_its_derivative():
    proj = HeavisideProjection(beta=8.0, eta=0.4)
    rho = torch.linspace(0.05, 0.95, 7, dtype=F64, requires_grad=True)
    (grad,) = torch.autograd.grad(proj(rho).sum(), rho)
    beta, eta = 8.0, 0.4
    denominator = math.tanh(beta * eta) + math.tanh(beta * (1 - eta))
    expected = beta / torch.cosh(beta * (rho.detach() - eta)) ** 2 / denominator
    assert torch.allclose(grad, expected, rtol=1e-13)
    assert "beta=8" in repr(proj)


# -- the sensitivity filter ----------------------------------------------------------------------


def test_sensitivity_filter_keeps_uniform_sensitivities_and_matches_its_formula():
    n = 12
    mesh = Mesh.gen_grid((n, n), element_type="quad")
    filt = HelmholtzFilter(mesh, 0.08)
    rho = torch.full((n * n,), 0.4, dtype=F64)
    grad = -torch.ones(n * n, dtype=F64)
    assert torch.allclose(sensitivity_filter(filt, rho, grad), grad, rtol=1e-13)
    # uniform mesh: F(rho * grad) / max(rho, floor)
    rho, grad = random_cells(mesh, 4), -random_cells(mesh, 5)
    expected = filt(rho * grad) / rho.clamp_min(1e-3)
    assert torch.allclose(sensitivity_filter(filt, rho, grad), expected, rtol=1e-12)
    # negative in, negative out (the filter is an M-matrix here), and smoother than its input
    smoothed = sensitivity_filter(filt, torch.full((n * n,), 0.5, dtype=F64), -0.5 - checkerboard(n))
    assert float(smoothed.max()) < 0
    pairs = cell_neighbours(mesh)
    assert checkerboard_indicator(pairs, smoothed) < 0.1 * checkerboard_indicator(pairs, -0.5 - checkerboard(n))


# -- neighbours and the indicator ----------------------------------------------------------------


@pytest.mark.parametrize(
    "make, pairs",
    [
        (lambda: Mesh.gen_grid((4, 3), element_type="quad"), 3 * 3 + 4 * 2),
        (lambda: Mesh.gen_grid((4, 3)), 3 * 3 + 4 * 2 + 12),  # plus one diagonal per square
        (lambda: Mesh.gen_grid((2, 2, 2), element_type="hexahedron"), 3 * 4),
    ],
)
def test_cell_neighbours_counts_interior_facets(make, pairs):
    mesh = make()
    found = cell_neighbours(mesh)
    assert found.shape == (pairs, 2)
    assert bool((found[:, 0] != found[:, 1]).all())
    assert len({tuple(sorted(p)) for p in found.tolist()}) == pairs


def test_checkerboard_indicator_values():
    mesh = Mesh.gen_grid((8, 8), element_type="quad")
    assert checkerboard_indicator(mesh, torch.full((64,), 0.3, dtype=F64)) == 0.0
    assert checkerboard_indicator(mesh, checkerboard(8)) == 1.0
    half = (torch.arange(64) % 8 < 4).to(F64)  # left half solid: 8 of 112 pairs differ
    assert checkerboard_indicator(mesh, half) == pytest.approx(8 / 112)


# -- filters in the topology study ---------------------------------------------------------------


@pytest.fixture(scope="module")
def distributed_heating():
    """A 24 x 24 quad grid with a nearly uniform source (sigma = 10): unfiltered OC checkerboards."""
    mesh = Mesh.gen_grid((24, 24), element_type="quad")
    runs = {
        name: thermal_topology(mesh, sigma=10.0, steps=40, move_limit=0.2, snapshot_steps=None, filter=name)
        for name in (None, "density", "sensitivity")
    }
    return mesh, runs


def test_filters_remove_the_checkerboard(distributed_heating):
    mesh, runs = distributed_heating
    pairs = cell_neighbours(mesh)
    indicator = {name: checkerboard_indicator(pairs, run.rho) for name, run in runs.items()}
    assert indicator[None] > 0.3
    assert indicator["density"] < 0.15 and indicator["sensitivity"] < 0.15
    for run in runs.values():
        assert float(run.compliance[-1]) < 0.6 * float(run.compliance[0])
        # a uniform grid: the plain mean and the measure-weighted volume agree, the filter keeps both
        assert float((run.volume - 0.4).abs().max()) <= 1e-10
        assert float((run.weighted_volume - 0.4).abs().max()) <= 1e-10


def test_density_filter_result_holds_the_design_and_its_image(distributed_heating):
    mesh, runs = distributed_heating
    run = runs["density"]
    assert run.design is not None and runs[None].design is None and runs["sensitivity"].design is None
    filt = HelmholtzFilter(mesh, default_filter_radius(mesh))
    assert torch.allclose(run.rho, filt(run.design), rtol=1e-12)
    assert run.parameters["filter"] == "density"
    assert run.parameters["filter_radius"] == pytest.approx(1 / 24)
