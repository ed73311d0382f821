"""Gradients through assemble -> condense -> solve -> recover, against finite differences and the Taylor test."""

import pytest
import torch

from tmcore import Condenser, Mesh, SparseMatrix
from tmcore.forms import Diffusion, Source
from tmcore.methods.gradcheck import finite_difference_check, taylor_test


@pytest.fixture(scope="module")
def mesh():
    return Mesh.gen_rectangle(chara_length=0.2)


def _problem(mesh):
    """Data of a Poisson problem with a non-trivial solution and a target to fit."""
    x, y = mesh.points[:, 0], mesh.points[:, 1]
    kappa = 1.0 + 0.5 * torch.sin(3 * x) * torch.cos(2 * y)
    f = 1.0 + x * y
    target = 0.05 * torch.sin(torch.pi * x) * torch.sin(torch.pi * y)
    return kappa, f, target


def _loss_factories(mesh):
    kappa0, f0, target = _problem(mesh)
    mask = mesh.boundary_mask
    n_dirichlet = int(mask.sum())
    laplace, source = Diffusion.from_mesh(mesh), Source.from_mesh(mesh)
    centroid_x = mesh.points[mesh.elements].mean(1)[:, 0]

    def solve(kappa_point=kappa0, kappa_cell=None, f=f0, g=None):
        if kappa_cell is not None:
            K = laplace(element_data={"kappa": kappa_cell})
        else:
            K = laplace(point_data={"kappa": kappa_point})
        b = source(point_data={"f": f})
        cond = Condenser(mask, dirichlet_value=g)
        K_, b_ = cond(K, b)
        return cond.recover(K_.solve(b_))

    def misfit(u):
        return ((u - target) ** 2).sum()

    K0 = laplace(point_data={"kappa": kappa0})
    cond0 = Condenser(mask)
    K0_, b0_ = cond0(K0, source(point_data={"f": f0}))

    def matrix_loss(values):
        u = SparseMatrix.from_pattern(K0_.pattern, values).solve(b0_)
        return ((u - target[~mask]) ** 2).sum()

    return {
        "point kappa": (lambda k: misfit(solve(kappa_point=k)), kappa0),
        "cell kappa": (lambda k: misfit(solve(kappa_cell=k)), 1.0 + 0.3 * centroid_x),
        "source f": (lambda f: misfit(solve(f=f)), f0),
        "dirichlet values": (lambda g: misfit(solve(g=g)), 0.01 * torch.linspace(0, 1, n_dirichlet)),
        "matrix values": (matrix_loss, K0_.values.detach().clone()),
    }


CASES = ["point kappa", "cell kappa", "source f", "dirichlet values", "matrix values"]


@pytest.mark.parametrize("case", CASES)
def test_gradient_matches_central_differences(mesh, case):
    loss, x = _loss_factories(mesh)[case]
    check = finite_difference_check(loss, x, n_probes=8, seed=3)
    assert check.median_digits >= 9.0, check.table()
    assert float(check.digits.min()) >= 7.0, check.table()


@pytest.mark.parametrize("case", CASES)
def test_taylor_remainder_falls_at_second_order(mesh, case):
    loss, x = _loss_factories(mesh)[case]
    scale = 0.1 if case in ("point kappa", "cell kappa", "matrix values") else 1.0
    direction = (
        scale * (2 * torch.rand(x.shape, generator=torch.Generator().manual_seed(5)) - 1) * x.abs().clamp_min(1e-2)
    )
    result = taylor_test(loss, x, direction=direction, eps0=0.05)
    assert result.min_rate >= 1.9, result.table()


def test_a_wrong_gradient_fails_the_taylor_test(mesh):
    """The test must be able to fail: a gradient scaled by 1.01 gives first-order remainders."""
    loss, x = _loss_factories(mesh)["point kappa"]

    class Scaled(torch.autograd.Function):
        @staticmethod
        def forward(ctx, value):
            return value.clone()

        @staticmethod
        def backward(ctx, grad):
            return 1.01 * grad

    result = taylor_test(lambda k: loss(Scaled.apply(k)), x, eps0=0.05)
    assert result.min_rate < 1.5, result.table()


def test_batched_pipeline_gradients_match_finite_differences(mesh):
    kappa0, f0, target = _problem(mesh)
    laplace, source = Diffusion.from_mesh(mesh), Source.from_mesh(mesh)
    cond = Condenser(mesh.boundary_mask)
    b = source(point_data={"f": f0})

    def loss(kappas):  # (B, n)
        K_, b_ = cond(laplace(point_data={"kappa": kappas}), b)
        u = cond.recover(K_.solve(b_))
        return ((u - target) ** 2).sum()

    kappas = torch.stack([kappa0, 1.5 * kappa0, kappa0**2])
    check = finite_difference_check(loss, kappas, n_probes=8, seed=1)
    assert check.median_digits >= 9.0, check.table()
