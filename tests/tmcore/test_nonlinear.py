"""Newton for -div(kappa(u) grad u) = f and its implicit-function adjoint."""

import pytest
import torch

from tmcore import Condenser, Mesh, solvers
from tmcore.core.errors import SolverError
from tmcore.forms import Diffusion, Source
from tmcore.methods.gradcheck import finite_difference_check, taylor_test
from tmcore.methods.nonlinear import NonlinearDiffusion


def kappa_quadratic(u, c):
    return c * (1.0 + u**2)


@pytest.fixture(scope="module")
def mesh():
    return Mesh.gen_grid((8, 8), element_type="triangle")


def _data(mesh):
    x, y = mesh.points[:, 0], mesh.points[:, 1]
    c = 1.0 + 0.5 * x * y
    f = 10.0 * (1.0 + torch.sin(3 * x) * y)
    target = 0.3 * torch.sin(torch.pi * x) * torch.sin(torch.pi * y)
    return c, f, target


def test_linear_kappa_reproduces_the_linear_solve(mesh):
    c, f, _ = _data(mesh)
    problem = NonlinearDiffusion(mesh, lambda u, c: c)
    u = problem(c, f)
    K = Diffusion.from_mesh(mesh)(point_data={"kappa": c})
    b = Source.from_mesh(mesh)(point_data={"f": f})
    cond = Condenser(mesh.boundary_mask)
    K_, b_ = cond(K, b)
    assert torch.allclose(u, cond.recover(K_.solve(b_)), rtol=1e-12, atol=1e-14)
    assert problem.stats.last_iterations <= 3


def test_newton_converges_quadratically_to_the_kirchhoff_solution():
    # kappa = 1 + u^2: G(u) = u + u^3 / 3 is harmonic for -div(kappa grad u) = 0, so with
    # u = G^-1(x) on the boundary the exact solution is u = G^-1(x) everywhere
    def inverse_G(s):
        u = s.clone()
        for _ in range(60):
            u = u - (u + u**3 / 3 - s) / (1 + u**2)
        return u

    errors = []
    for n in (8, 16):
        fine = Mesh.gen_grid((n, n), upper=(2.0, 1.0), element_type="triangle")
        exact = inverse_G(fine.points[:, 0])
        problem = NonlinearDiffusion(fine, kappa_quadratic)
        u = problem(
            torch.ones(fine.n_points, dtype=torch.float64), torch.zeros(fine.n_points, dtype=torch.float64), g=exact
        )
        errors.append(float((u - exact).abs().max()))
        assert problem.stats.last_iterations <= 7
        assert problem.stats.last_residual < 1e-10 * 10
    assert errors[1] < 0.35 * errors[0]  # second order in h


@pytest.mark.parametrize("name", ["c", "f", "g"])
def test_implicit_gradients_pass_fd_and_taylor(mesh, name):
    c0, f0, target = _data(mesh)
    mask = mesh.boundary_mask
    g0 = 0.1 * mesh.points[:, 0][mask]
    problem = NonlinearDiffusion(mesh, kappa_quadratic)
    args = {"c": c0, "f": f0, "g": g0}

    def loss(value):
        u = problem(**{**args, name: value})
        return ((u - target) ** 2).sum() + (u**3).sum() * 1e-2

    x0 = args[name]
    check = finite_difference_check(loss, x0, n_probes=6)
    assert check.median_digits > 8, check.table()
    assert taylor_test(loss, x0, eps0=0.05 * float(x0.abs().max())).min_rate > 1.9


def test_backward_is_one_factorisation_and_one_solve_whatever_the_newton_count(mesh):
    c0, f0, target = _data(mesh)
    problem = NonlinearDiffusion(mesh, kappa_quadratic)
    c = c0.clone().requires_grad_(True)
    f = f0.clone().requires_grad_(True)
    u = problem(c, f)
    assert problem.stats.last_iterations >= 4  # a genuinely nonlinear solve
    before = solvers.stats.factorizations
    ((u - target) ** 2).sum().backward()
    assert solvers.stats.factorizations - before == 1
    assert (problem.stats.adjoint_factorizations, problem.stats.adjoint_solves) == (1, 1)
    assert c.grad is not None and f.grad is not None


def test_implicit_gradient_equals_differentiating_through_the_iterations(mesh):
    """The unrolled Newton (autograd through every assembly and solve) converges to the same gradient."""
    c0, f0, target = _data(mesh)
    problem = NonlinearDiffusion(mesh, kappa_quadratic)
    c = c0.clone().requires_grad_(True)
    ((problem(c, f0) - target) ** 2).sum().backward()
    implicit = c.grad.clone()

    c_unrolled = c0.clone().requires_grad_(True)
    cond = Condenser(mesh.boundary_mask)
    u = torch.zeros(mesh.n_points, dtype=torch.float64)
    for _ in range(12):
        R = problem.residual(u, c_unrolled, f0)
        J_free, _ = cond(problem.tangent(u, c_unrolled), R)
        du = J_free.solve(R[cond.free_index])
        u = u - cond.recover(du)
    ((u - target) ** 2).sum().backward()
    assert torch.allclose(implicit, c_unrolled.grad, rtol=1e-8, atol=1e-12)


def test_newton_failure_and_argument_checks(mesh):
    c0, f0, _ = _data(mesh)
    problem = NonlinearDiffusion(mesh, kappa_quadratic, max_iterations=1)
    with pytest.raises(SolverError, match="Newton did not converge in 1 iterations"):
        problem(c0, f0)
    with pytest.raises(ValueError, match=r"c must be a floating-point \(81,\) nodal field"):
        problem(torch.ones(3), f0)
    with pytest.raises(TypeError, match="kappa must be a callable"):
        NonlinearDiffusion(mesh, 1.0)


def test_nonlinear_example_runs_as_written(monkeypatch):
    from .docpages import run_example

    check = run_example("nonlinear_diffusion.py", monkeypatch, 6)["check"]
    assert check.median_digits > 8


def test_guide_page_runs_and_prints_what_it_shows():
    from .docpages import run_page

    run_page("nonlinear.md", minimum_blocks=1)
