"""Stress-constrained topology optimisation: von Mises, centroid stresses, aggregation and its
adaptive scaling, the aggregated stress's gradient against finite differences, and the L-bracket."""

import math
from pathlib import Path

import pytest
import torch

from tmcore import Mesh
from tmcore.methods.gradcheck import finite_difference_check, taylor_test
from tmcore.topology import ConeFilter, optimise
from tmcore.topology.filters import HeavisideProjection
from tmcore.topology.mma import MMA
from tmcore.topology.problems import heat_conduction, simp
from tmcore.topology.stress import (
    StressDesign,
    centroid_gradients,
    l_bracket,
    von_mises_squared,
)

from .docpages import run_example


def test_von_mises_of_closed_form_states():
    uniaxial = torch.tensor([[3.0, 0.0], [0.0, 0.0]])
    shear = torch.tensor([[0.0, 2.0], [2.0, 0.0]])
    equibiaxial = torch.tensor([[5.0, 0.0], [0.0, 5.0]])
    assert float(von_mises_squared(uniaxial)) == pytest.approx(9.0)
    assert float(von_mises_squared(shear)) == pytest.approx(3.0 * 4.0)
    assert float(von_mises_squared(equibiaxial)) == pytest.approx(25.0)  # plane stress: s33 = 0
    # plane strain with nu = 1/2: s33 = (s11 + s22) / 2 = 5, a hydrostatic state
    assert float(von_mises_squared(equibiaxial, plane="strain", nu=0.5)) == pytest.approx(0.0, abs=1e-12)
    hydrostatic = 7.0 * torch.eye(3)
    assert float(von_mises_squared(hydrostatic, plane=None)) == pytest.approx(0.0, abs=1e-12)
    # a batch, and the 3-D formula against the deviatoric definition 3/2 s:s
    sigma = torch.randn(4, 3, 3, generator=torch.Generator().manual_seed(1))
    sigma = sigma + sigma.transpose(-1, -2)
    deviator = sigma - sigma.diagonal(dim1=-2, dim2=-1).mean(-1)[:, None, None] * torch.eye(3)
    assert torch.allclose(von_mises_squared(sigma, plane=None), 1.5 * (deviator**2).sum((-1, -2)))


def test_von_mises_refuses_what_it_cannot_read():
    with pytest.raises(ValueError, match="plane strain needs"):
        von_mises_squared(torch.eye(2), plane="strain")
    with pytest.raises(ValueError, match="shape"):
        von_mises_squared(torch.ones(3))
    with pytest.raises(ValueError, match="plane=None"):
        von_mises_squared(torch.eye(3), plane="stress")


def test_centroid_gradients_are_exact_for_a_linear_field_on_distorted_quads():
    mesh = Mesh.gen_grid((4, 3), element_type="quad")
    points = mesh.points.clone()
    inner = ~mesh.boundary_mask
    points[inner] += 0.03 * torch.randn(int(inner.sum()), 2, generator=torch.Generator().manual_seed(0))
    mesh = Mesh(points, {"quad": mesh.elements})
    A = torch.tensor([[0.3, -1.2], [0.7, 2.0]])
    u = points @ A.T + torch.tensor([1.0, -2.0])
    gradu = torch.einsum("mki,mkj->mij", u[mesh.elements], centroid_gradients(mesh))
    assert torch.allclose(gradu, A.expand_as(gradu), atol=1e-12)


def test_l_bracket_geometry_supports_and_load():
    problem = l_bracket(20, load_span=0.1, force=2.0)
    mesh = problem.mesh
    assert mesh.n_cells == 20 * 20 - 12 * 12
    assert float(mesh.cell_measures().sum()) == pytest.approx(1.0 - 0.36)
    load = problem.load.reshape(-1, 2)
    assert load.sum(0).tolist() == pytest.approx([0.0, -2.0])
    loaded = mesh.points[load[:, 1] != 0]
    assert (loaded[:, 0] == 1.0).all() and float(loaded[:, 1].min()) == pytest.approx(0.3)
    clamped = mesh.points[problem.fixed.reshape(-1, 2).all(dim=1)]
    assert clamped.shape[0] == 9 and (clamped[:, 1] == 1.0).all() and float(clamped[:, 0].max()) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="whole number of cells"):
        l_bracket(12)


@pytest.fixture(scope="module")
def small():
    # built before the per-test float64 default of conftest.py is in force, so set it here and restore it:
    # a module fixture that leaves it set leaks float64 into every later test (Adam's step counter then
    # comes out float64, which tests/reliability/test_checkpoints.py checks)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        problem = l_bracket(10)
        design = StressDesign(problem, limit=20.0, density_filter=ConeFilter(problem.mesh, 0.15))
        generator = torch.Generator().manual_seed(0)
        x = 0.3 + 0.7 * torch.rand(problem.mesh.n_cells, generator=generator, dtype=torch.float64)
    finally:
        torch.set_default_dtype(previous)
    return design, x


def test_the_diagonally_scaled_solve_gives_the_unscaled_displacements(small):
    design, x = small
    rho = design.physical(x)
    E = simp(rho, design.penal, design.problem.e_min, design.problem.e0)
    plain = design.problem.solve(E).reshape(-1, 2)
    assert torch.allclose(design.displacement(rho), plain, rtol=1e-10, atol=1e-12 * float(plain.abs().max()))


def test_first_scale_makes_the_constraint_the_true_maximum_then_follows_le_et_al(small):
    design, x = small
    design = StressDesign(design.problem, limit=design.limit, density_filter=design.density_filter)
    relaxed, solid = design.element_stress(x)
    rho = design.physical(x)
    assert torch.allclose(relaxed, rho.sqrt() * solid)
    pn = float(design.aggregated_stress(x))  # scale 1: the plain p-norm, above the maximum
    assert pn > float(relaxed.max()) / design.limit
    g0 = float(design.constraints(x)[0])
    assert g0 == pytest.approx(float(relaxed.max()) / design.limit - 1.0, rel=1e-12)
    c0 = design.scale
    y = (x * 0.9).clamp(0, 1)
    design.constraints(y)
    assert design.scale == pytest.approx(c0)  # alpha ratio(x) + (1 - alpha) c0 with ratio(x) = c0
    ratio_y = float(design.element_stress(y)[0].max()) / design.limit / float(design._aggregate(y)[0])
    design.constraints(x)
    assert design.scale == pytest.approx(0.5 * ratio_y + 0.5 * c0)
    fixed = StressDesign(design.problem, limit=design.limit, density_filter=design.density_filter, adaptive=False)
    assert float(fixed.constraints(x)[0]) == pytest.approx(pn - 1.0)


def test_aggregated_stress_gradient_against_finite_differences(small):
    """>= 8 significant digits on the entries that carry the gradient (|g| >= 1e-2 max |g|); below that
    the function's round-off (about 1e-13 relative: strains are differences of nodal displacements)
    limits what a difference quotient can resolve, so those are checked in absolute terms."""
    design, x = small
    x_req = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(design.aggregated_stress(x_req), x_req)
    large = torch.nonzero(grad.abs() >= 1e-2 * grad.abs().max()).flatten()
    probes = large[torch.randperm(large.numel(), generator=torch.Generator().manual_seed(2))[:8]]
    check = finite_difference_check(design.aggregated_stress, x, indices=probes, step=1e-3)
    assert check.digits.min() >= 8.0, check.table()
    small_entries = torch.nonzero(grad.abs() < 1e-2 * grad.abs().max()).flatten()[:4]
    check = finite_difference_check(design.aggregated_stress, x, indices=small_entries, step=1e-3)
    assert float(check.abs_diff.max()) <= 1e-9 * float(grad.abs().max())
    taylor = taylor_test(design.aggregated_stress, x, direction=0.2 * torch.ones_like(x), eps0=0.05, n_halvings=4)
    assert taylor.min_rate > 1.9, taylor.table()


def test_a_wrong_relaxation_exponent_is_caught_by_the_same_check(small):
    """The check can fail: a gradient taken with q = 0.5 against values computed with q = 0.6."""
    design, x = small
    other = StressDesign(design.problem, limit=design.limit, density_filter=design.density_filter, relaxation=0.6)

    def mixed(y):
        return design.aggregated_stress(y) + (other.aggregated_stress(y) - design.aggregated_stress(y)).detach()

    check = finite_difference_check(mixed, x, indices=[3, 17, 40], step=1e-3)
    assert check.digits.min() < 4


def test_small_l_bracket_meets_the_limit_without_aggregation():
    problem = l_bracket(20)
    design = StressDesign(problem, limit=45.0, density_filter=ConeFilter(problem.mesh, 1.5 / 20))
    x = torch.full((problem.mesh.n_cells,), 0.5, requires_grad=True)
    optimizer = MMA([x], n_constraints=1, lower=0.0, upper=1.0, move_limit=0.1)
    records = list(optimise(design, x, optimizer, 120))
    relaxed, solid = design.max_stress(x)
    volume = float(design.volume(x.detach()))
    assert relaxed <= 1.05, (relaxed, solid, volume)
    assert volume < 0.7
    assert abs(records[-1].constraints[0]) < 0.05


def test_bad_arguments_name_what_was_expected():
    problem = l_bracket(10)
    with pytest.raises(ValueError, match="limit"):
        StressDesign(problem, limit=-1.0)
    with pytest.raises(ValueError, match="relaxation"):
        StressDesign(problem, limit=1.0, relaxation=4.0)
    with pytest.raises(TypeError, match="LinearElasticity"):
        StressDesign(heat_conduction(4, 4), limit=1.0)
    with pytest.raises(TypeError, match="ComplianceProblem"):
        StressDesign("bracket", limit=1.0)
    with pytest.raises(ValueError, match="threshold"):
        StressDesign(problem, limit=1.0).max_stress(torch.zeros(problem.mesh.n_cells))


def test_the_example_runs_at_small_size(monkeypatch):
    args = (20, "--limit", 45, "--steps", 60, "--x0", 0.5, "--p-norm", 8)
    result = run_example("stress_topology.py", monkeypatch, *args)["results"]
    assert result["relaxed"] <= 1.05
    assert math.isfinite(result["solid"])


@pytest.mark.parametrize("x0", [0.5, 1.0])
def test_from_a_uniform_start_the_corner_cell_is_where_material_lowers_the_stress_most(x0):
    """Why the re-entrant corner stays filled (docs/optimisation.md): on a uniform design the corner cell carries
    the largest stress, and adding material there lowers the aggregated stress most, twice as much as at any
    other cell, so MMA's first steps reinforce the corner instead of cutting it back."""
    n = 40
    problem = l_bracket(n)
    design = StressDesign(problem, limit=45.0, density_filter=ConeFilter(problem.mesh, 1.5 / n))
    mesh = problem.mesh
    distance = (mesh.points[mesh.elements].mean(dim=1) - 0.4).norm(dim=1) * n  # in cells
    corner = distance < 1.0  # the three cells that touch the corner point
    x = torch.full((mesh.n_cells,), x0, requires_grad=True)
    (grad,) = torch.autograd.grad(design.aggregated_stress(x), x)
    relaxed, _ = design.element_stress(x.detach())
    assert int(corner.sum()) == 3 and bool(corner[relaxed.argmax()]) and bool(corner[grad.argmin()])
    assert float(grad[~corner].min()) > 0.6 * float(grad.min())  # elsewhere: at most about half the pull


@pytest.fixture(scope="module")
def full_l_bracket(tmp_path_factory):
    """The example at full size with P = 8 and 300 steps, otherwise its defaults (n = 100, 6400 cells, limit 65)."""
    png = tmp_path_factory.mktemp("stress") / "l.png"
    with pytest.MonkeyPatch.context() as monkeypatch:
        result = run_example("stress_topology.py", monkeypatch, 100, "--p-norm", 8, "--steps", 300, "--png", png)[
            "results"
        ]
    return result, png


@pytest.mark.slow
def test_full_l_bracket_with_p_norm_8_meets_the_stress_limit(full_l_bracket):
    """With P = 8 (corner filled), the stress criterion of issue 15 on the full-size L-bracket: max von Mises
    over cells with rho > 0.5, no aggregation, <= 1.05 of the limit, relaxed and solid; the volume well below
    the full bracket's."""
    result, png = full_l_bracket
    run = result["run"]
    assert result["relaxed"] <= 1.05 and result["solid"] <= 1.05, (result["relaxed"], result["solid"])
    assert float(run.design.volume(run.x)) < 0.45
    assert abs(run.constraint[-1]) < 0.05
    assert png.exists()


VOID_START = (
    "200",
    "--x0",
    "0.01",
    "--move",
    "0.1",
    "--radius",
    "4",
    "--beta-from",
    "200",
    "--steps",
    "600",
    "--p-norm",
    "8",
)


@pytest.mark.slow
def test_l_bracket_grown_from_void_rounds_the_re_entrant_corner(monkeypatch, tmp_path):
    """n = 200 (25600 cells) from x = 0.01 with move 0.1, cone filter 4 cells, beta 1 until step 200 then
    doubling every 40 steps up to 8, 600 steps (about 5 minutes): the design that grows from near void goes
    around the corner. Rounded means: no cell with rho > 0.5 has its centroid within 3 cell sizes of the
    re-entrant corner point (a filled corner, or the 45-degree gusset the runs from x = 0.5 make, gives 0.71
    cells: a cell touching the corner point; material that follows an arc of radius R cells gives about R).
    Measured: 3.54 cells, volume 0.297 (the run from x = 0.5 at n = 200: 0.460, corner filled), relaxed max
    0.995. The solid-material stress of the gray cells with rho > 0.5 reaches 1.28 of the limit (not asserted).
    One setting, not a robust schedule: from x = 0.02 the corner filled again (docs/optimisation.md)."""
    png = tmp_path / "void.png"
    args = (*VOID_START, "--backend", "splu", "--png", png)
    result = run_example("stress_topology.py", monkeypatch, *args)["results"]
    run = result["run"]
    assert run.corner_clearance() >= 3.0, run.corner_clearance()
    assert result["relaxed"] <= 1.05, result["relaxed"]
    assert float(run.design.volume(run.x)) < 0.35
    assert abs(run.constraint[-1]) < 0.05
    assert png.exists()


def test_the_full_size_l_bracket_rounds_the_re_entrant_corner(monkeypatch, tmp_path):
    """The example at n = 100 with its defaults (P = 12, 400 steps, x = 0.5, move 0.05, cone filter 2 cells,
    beta 1 doubling every 40 steps up to 8; about 30 s): the design goes around the corner instead of filling
    it (rounded as in the test above: no cell with rho > 0.5 within 3 cell sizes of the corner point; P = 8
    gives 0.71). Measured: clearance 3.54 cells from step 175 on, volume 0.318
    (P = 8: 0.355), max von Mises / limit over rho > 0.5 relaxed 0.9999 and solid 1.032 (the solid one settles
    below 1.04 only after step 325: 1.24 at step 300), last constraint -2.6e-5. Not robust: neighbouring
    settings end 1.6-3.8 cells from the corner with the solid stress of gray cells up to 1.23, and at n = 60
    and 80 the corner fills (docs/optimisation.md)."""
    png = tmp_path / "l.png"
    result = run_example("stress_topology.py", monkeypatch, 100, "--png", png)
    result = result["results"]
    run = result["run"]
    assert run.corner_clearance() >= 3.0, run.corner_clearance()
    assert result["relaxed"] <= 1.05 and result["solid"] <= 1.05, (result["relaxed"], result["solid"])
    # 0.318 with SciPy's banded Cholesky; MKL's, which differs only in rounding, gave 0.351 (corner and stress met)
    assert float(run.design.volume(run.x)) < 0.36
    assert abs(run.constraint[-1]) < 0.05
    assert png.exists()


def test_aggregated_stress_gradient_through_the_projection(small):
    design, x = small
    projected = StressDesign(
        design.problem, limit=design.limit, density_filter=design.density_filter, projection=HeavisideProjection(4.0)
    )
    x_req = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(projected.aggregated_stress(x_req), x_req)
    large = torch.nonzero(grad.abs() >= 1e-2 * grad.abs().max()).flatten()[:6]
    check = finite_difference_check(projected.aggregated_stress, x, indices=large, step=1e-3)
    assert check.digits.min() >= 8.0, check.table()


def test_a_loose_limit_does_not_collapse_the_design(monkeypatch):
    """Limit 150 on the 20 x 20 L-bracket (about five times the stress of the full design away from the
    corner). From x = 1 with move 0.1 and no projection MMA empties the design (measured: volume 0.03,
    constraint +2.8e3); the example's defaults (x = 0.5, move 0.05, projection with beta continuation)
    end on the limit."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "examples"))
    from stress_topology import Settings, run

    loose = run(Settings(20, 150.0, 120, 1.5, p_norm=8.0))
    relaxed, _ = loose.max_stress()
    assert relaxed <= 1.05 and abs(loose.constraint[-1]) < 0.05
    assert loose.volume[-1] > 0.1
    collapsed = run(Settings(20, 150.0, 120, 1.5, move=0.1, x0=1.0, beta=0.0, p_norm=8.0))
    assert collapsed.volume[-1] < 0.1 and collapsed.constraint[-1] > 1.0
