"""Finite-strain hyperelasticity: closed forms, patch tests, Newton's convergence and load-path gradients."""

import math

import pytest
import torch

from tmcore import Mesh, VectorFacetAssembler, dof_mask
from tmcore.core.errors import SolverError
from tmcore.forms import Traction
from tmcore.methods.gradcheck import finite_difference_check, taylor_test
from tmcore.methods.hyperelastic import Hyperelasticity, first_piola, neo_hookean, neo_hookean_uniaxial

MU, LAM = 1.0, 2.0


class Boundary(VectorFacetAssembler):
    """int (P N) . v dA: the nodal forces of a first Piola-Kirchhoff stress P on the reference boundary."""

    def forward(self, v, n, P):
        return v @ (P @ n)


# -- closed forms ------------------------------------------------------------------------------


def bar(dim: int):
    """A bar [0, 1] x [0, 1/4]^(d-1) on symmetry planes: u_x = 0 at x = 0, u_y = 0 at y = 0 (u_z = 0 at z = 0)."""
    shape, upper = ((4, 2), (1.0, 0.25)) if dim == 2 else ((3, 2, 2), (1.0, 0.25, 0.25))
    mesh = Mesh.gen_grid(shape, upper=upper, element_type="quad" if dim == 2 else "hexahedron")
    x = mesh.points
    fixed = dof_mask(mesh.nodes_of("left"), dim, which=0) | dof_mask(mesh.nodes_of("right"), dim, which=0)
    fixed |= dof_mask(x[:, 1] == 0.0, dim, which=1)
    if dim == 3:
        fixed |= dof_mask(x[:, 2] == 0.0, dim, which=2)
    return mesh, fixed


@pytest.mark.parametrize("dim", [2, 3])
def test_uniaxial_stretch_to_ten_times_matches_the_closed_form(dim):
    mesh, fixed = bar(dim)
    problem = Hyperelasticity(mesh, fixed)
    index = problem.fixed_index
    node, component = index // dim, index % dim
    at_right = (component == 0) & (mesh.points[node, 0] == 1.0)
    stretches = torch.linspace(1.0, 10.0, 11)[1:]  # 10 increments to 10 x the length
    states = problem.load_path({"mu": MU, "lam": LAM}, dirichlet=torch.where(at_right, stretches[:, None] - 1.0, 0.0))
    x = mesh.points
    area = 0.25 ** (dim - 1)
    right = mesh.nodes_of("right")
    errors = []
    for s, u in zip(stretches.tolist(), states):
        t, P = neo_hookean_uniaxial(s, MU, LAM, dim)
        exact = torch.cat([(s - 1.0) * x[:, :1], (t - 1.0) * x[:, 1:]], dim=1)
        force = problem.internal_force(u, {"mu": MU, "lam": LAM}).reshape(-1, dim)[right, 0].sum() / area
        errors += [float((u.reshape(-1, dim) - exact).abs().max()), abs(float(force) - P) / P]
    assert max(errors) < 1e-8, max(errors)
    assert len(problem.records) == 10  # (in 3-D an increment may be cut back: the linear predictor over-contracts)


def test_closed_form_satisfies_its_own_equations():
    # lateral stress free and the axial one from P = dW/dF of the energy itself
    for dim in (2, 3):
        t, P = neo_hookean_uniaxial(4.0, MU, LAM, dim)
        F = torch.diag(torch.tensor([4.0] + [t] * (dim - 1)))
        piola = first_piola(neo_hookean, F, mu=MU, lam=LAM)
        assert abs(float(piola[1, 1])) < 1e-14 and abs(float(piola[0, 0]) - P) < 1e-13 * P


@pytest.mark.parametrize("case", ["gmsh-triangles", "grid-tetra"])
def test_homogeneous_finite_deformation_patch_test(case):
    if case == "gmsh-triangles":
        mesh = Mesh.gen_rectangle(0.25)
        F0 = torch.tensor([[1.6, 0.4], [-0.3, 0.8]])
    else:
        mesh = Mesh.gen_grid((2, 2, 2), element_type="tetra")
        F0 = torch.tensor([[1.5, 0.3, 0.0], [-0.2, 0.9, 0.1], [0.1, 0.0, 1.3]])
    dim = mesh.dim
    fixed = dof_mask(mesh.boundary_mask, dim)
    problem = Hyperelasticity(mesh, fixed)
    exact = (mesh.points @ (F0 - torch.eye(dim)).T).reshape(-1)
    u = problem.solve({"mu": MU, "lam": LAM}, g=exact[problem.fixed_index])
    assert float((u - exact).abs().max()) < 1e-10
    # the reactions are the nodal forces of the constant stress P(F0): int P N . v dA
    P = first_piola(neo_hookean, F0, mu=MU, lam=LAM)
    reactions = Boundary.from_mesh(mesh)(point_data={"P": P.expand(mesh.n_points, dim, dim)})
    assert float((problem.internal_force(u, {"mu": MU, "lam": LAM}) - reactions).abs().max()) < 1e-10


# -- Newton --------------------------------------------------------------------------------


def cantilever_3d(shape=(8, 2, 2)):
    """A beam 8 x 1 x 1 of hexahedra clamped at x = 0; the load: a unit downward dead traction on its end."""
    mesh = Mesh.gen_grid(shape, upper=(8.0, 1.0, 1.0), element_type="hexahedron")
    load = Traction.from_mesh(mesh, facets="right")(
        point_data={"t": torch.tensor([0.0, 0.0, -1.0]).expand(mesh.n_points, 3)}
    )
    return mesh, dof_mask(mesh.nodes_of("left"), 3), load


def test_3d_cantilever_large_load_converges_quadratically():
    mesh, fixed, load = cantilever_3d()
    problem = Hyperelasticity(mesh, fixed)
    steps = torch.linspace(0.25, 1.0, 4)[:, None] * 0.006 * load  # tip deflection 2.78: 35% of the length
    states = problem.load_path({"mu": MU, "lam": LAM}, loads=steps)
    tip = states[-1].reshape(-1, 3)[mesh.nodes_of("right"), 2].mean()
    assert float(tip) < -2.5
    for record in problem.records:
        r = record.residuals
        assert r[-1] < 1e-9 * r[0]
        # quadratic: once below 1e-2 of the start, each residual is at most C r^2 (C from the first such pair)
        tail = [x / r[0] for x in r if x / r[0] < 1e-2]
        assert len(tail) >= 2 and all(b <= 10 * a * a + 1e-11 for a, b in zip(tail, tail[1:])), r  # + round-off


def test_load_cutback_recovers_a_failed_increment():
    # stretching the bar to 10 x in one increment: the linear predictor contracts it laterally
    # by more than its width (elements inside out), so the increment must be cut back
    mesh, fixed = bar(2)
    index = torch.nonzero(fixed).flatten()
    pull = torch.where((index % 2 == 0) & (mesh.points[index // 2, 0] == 1.0), 9.0, 0.0)
    with pytest.raises(SolverError, match="cut-backs"):
        Hyperelasticity(mesh, fixed, max_cutbacks=0).solve({"mu": MU, "lam": LAM}, g=pull)
    problem = Hyperelasticity(mesh, fixed)
    u = problem.solve({"mu": MU, "lam": LAM}, g=pull)
    assert problem.records[0].cutbacks >= 1
    t, _ = neo_hookean_uniaxial(10.0, MU, LAM, 2)
    assert abs(float(u.reshape(-1, 2)[:, 1].min()) - 0.25 * (t - 1.0)) < 1e-10


def test_swapped_energy_in_other_parameters_gives_the_same_states():
    def neo_hookean_e_nu(F, E, nu):
        lam, mu = E * nu / ((1 + nu) * (1 - 2 * nu)), E / (2 * (1 + nu))
        return neo_hookean(F, mu, lam)

    mesh, fixed, load = cantilever_3d((4, 1, 1))
    nu = LAM / (2 * (LAM + MU))
    E = MU * 2 * (1 + nu)
    a = Hyperelasticity(mesh, fixed).solve({"mu": MU, "lam": LAM}, f=0.005 * load)
    b = Hyperelasticity(mesh, fixed, energy=neo_hookean_e_nu).solve({"E": E, "nu": nu}, f=0.005 * load)
    assert float((a - b).abs().max()) < 1e-12


# -- gradients through the load path -----------------------------------------------------------


def plate():
    """A 2 x 1 plate (4 x 2 quads, plane strain), clamped on the left; the right edge is pulled
    along x (prescribed) and loaded down (dead traction)."""
    mesh = Mesh.gen_grid((4, 2), upper=(2.0, 1.0), element_type="quad")
    fixed = dof_mask(mesh.nodes_of("left"), 2) | dof_mask(mesh.nodes_of("right"), 2, which=0)
    problem = Hyperelasticity(mesh, fixed)
    down = Traction.from_mesh(mesh, facets="right")(
        point_data={"t": torch.tensor([0.0, -1.0]).expand(mesh.n_points, 2)}
    )
    index = problem.fixed_index
    pull = torch.where(mesh.points[index // 2, 0] == 2.0, 1.0, 0.0)  # unit u_x on the right edge
    weights = torch.linspace(-1.0, 1.0, mesh.n_points * 2).sin()
    return mesh, problem, down, pull, weights


def path_loss(problem, mu, lam, ramp, down, pull, weights):
    """sum over the increments k of (k + 1) w . u_k, increment k pulling 0.6 ramp[k] and loading 0.3 ramp[k]."""
    states = problem.load_path(
        {"mu": mu, "lam": lam}, dirichlet=0.6 * ramp[:, None] * pull, loads=0.3 * ramp[:, None] * down
    )
    scale = torch.arange(1, len(ramp) + 1, dtype=states.dtype)
    return (scale[:, None] * states * weights).sum()


RAMP = torch.tensor([0.4, 0.7, 1.0], dtype=torch.float64)


@pytest.mark.parametrize("wrt", ["mu per cell", "density per cell", "lam", "ramp"])
def test_load_path_gradient_matches_finite_differences(wrt):
    mesh, problem, down, pull, weights = plate()
    m = mesh.n_cells
    mu0 = 1.0 + 0.5 * torch.linspace(0.0, 1.0, m)
    cases = {
        "mu per cell": (mu0, lambda mu: path_loss(problem, mu, LAM, RAMP, down, pull, weights)),
        "density per cell": (
            torch.full((m,), 0.8),
            lambda rho: path_loss(problem, rho**3 * mu0, rho**3 * LAM, RAMP, down, pull, weights),
        ),
        "lam": (torch.tensor(LAM), lambda lam: path_loss(problem, mu0, lam, RAMP, down, pull, weights)),
        "ramp": (RAMP.clone(), lambda ramp: path_loss(problem, mu0, LAM, ramp, down, pull, weights)),
    }
    x, loss = cases[wrt]
    check = finite_difference_check(loss, x, n_probes=3)
    assert float(check.digits.min()) >= 8, check.table()
    taylor = taylor_test(loss, x, eps0=1e-2, n_halvings=3)
    assert taylor.min_rate > 1.9, taylor.table()


def test_gradient_depends_on_every_increment():
    """The regression a library fails when it cuts the gradient at the last increment: each
    increment's load and each increment's state contribute, and the backward takes one
    transposed solve per increment."""
    mesh, problem, down, pull, weights = plate()
    mu = torch.full((mesh.n_cells,), 1.2, requires_grad=True)
    ramp = RAMP.clone().requires_grad_(True)
    loss = path_loss(problem, mu, LAM, ramp, down, pull, weights)
    grad_mu, grad_ramp = torch.autograd.grad(loss, (mu, ramp))
    assert problem.adjoint_solves == len(RAMP)
    assert bool((grad_ramp.abs() > 1e-3 * grad_ramp.abs().max()).all()), grad_ramp
    # the material gradient is the sum of the increments' own contributions, each of them non-zero
    parts = []
    for k in range(len(RAMP)):
        mu_k = mu.detach().clone().requires_grad_(True)
        states = problem.load_path(
            {"mu": mu_k, "lam": LAM}, dirichlet=0.6 * RAMP[:, None] * pull, loads=0.3 * RAMP[:, None] * down
        )
        (part,) = torch.autograd.grad((k + 1) * (states[k] * weights).sum(), mu_k)
        assert problem.adjoint_solves == 1
        parts.append(part)
    assert all(float(p.norm()) > 1e-3 * float(grad_mu.norm()) for p in parts)
    assert torch.allclose(sum(parts), grad_mu, rtol=1e-10, atol=1e-14)


def test_path_gradient_of_the_last_state_equals_a_single_solve():
    # a hyperelastic state depends on its own load only: the path is Newton's continuation
    mesh, problem, down, pull, weights = plate()
    mu = torch.full((mesh.n_cells,), 1.2, requires_grad=True)
    last = problem.load_path(
        {"mu": mu, "lam": LAM}, dirichlet=0.6 * RAMP[:, None] * pull, loads=0.3 * RAMP[:, None] * down
    )[-1]
    (a,) = torch.autograd.grad((last * weights).sum(), mu)
    mu2 = mu.detach().clone().requires_grad_(True)
    single = problem.solve({"mu": mu2, "lam": LAM}, g=0.6 * pull, f=0.3 * down, u0=last.detach())
    (b,) = torch.autograd.grad((single * weights).sum(), mu2)
    assert torch.allclose(a, b, rtol=1e-9, atol=1e-13)


# -- input checks --------------------------------------------------------------------------


def test_bad_inputs_are_named():
    mesh, problem, down, pull, weights = plate()
    with pytest.raises(ValueError, match="fixed must be an"):
        Hyperelasticity(mesh, torch.zeros(3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"material\['mu'\]"):
        problem.solve({"mu": torch.ones(3), "lam": LAM})
    with pytest.raises(ValueError, match="dirichlet values"):
        problem.load_path({"mu": MU, "lam": LAM}, dirichlet=torch.zeros(2, 3))
    with pytest.raises(TypeError, match="energy"):
        Hyperelasticity(mesh, problem.fixed, energy=3)
    assert math.isnan(float(neo_hookean(torch.diag(torch.tensor([-1.0, 1.0])), MU, LAM)))  # inverted: no energy


def test_identification_example_runs_small(monkeypatch):
    from .docpages import run_example

    result = run_example("hyperelastic_identification.py", monkeypatch, 6, 4)
    first, last = result["history"][0][1], result["history"][-1][1]
    assert last < 0.2 * first


def test_timing_example_runs_small(monkeypatch):
    from .docpages import run_example

    result = run_example("hyperelastic_timing.py", monkeypatch, 200)
    assert result["record"].residuals[-1] < 1e-10
