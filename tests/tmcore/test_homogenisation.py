"""Homogenisation: laminates (exact), Hashin-Shtrikman bounds, the checkerboard, gradients."""

import math

import pytest
import torch

from tmcore import Mesh
from tmcore.forms import Diffusion, LinearElasticity, lame_parameters
from tmcore.methods.gradcheck import finite_difference_check, taylor_test
from tmcore.methods.homogenisation import (
    effective_tensor,
    hashin_shtrikman_conductivity,
    laminate_elasticity,
    poisson_ratio,
)
from tmcore.methods.periodic import PeriodicCell


def centroids(mesh):
    return mesh.points[mesh.elements].mean(dim=1)


def isotropic_voigt(E, nu, plane="strain"):
    lam, mu = lame_parameters(E, nu, plane)
    return torch.tensor([[lam + 2 * mu, lam, 0.0], [lam, lam + 2 * mu, 0.0], [0.0, 0.0, mu]])


@pytest.mark.parametrize("element_type", ["quad", "triangle"])
def test_laminate_conductivity_is_voigt_along_and_reuss_across(element_type):
    mesh = Mesh.gen_grid((6, 10), element_type=element_type)
    cell = PeriodicCell(mesh)
    y = centroids(mesh)[:, 1]
    stiff = (y < 0.3) | ((y > 0.6) & (y < 0.7))  # layers normal to y, 40 % of phase 2
    k1, k2, f2 = 1.0, 7.0, 0.4
    K = effective_tensor(cell, Diffusion.from_mesh(mesh), element_data={"kappa": torch.where(stiff, k2, k1)}).tensor
    voigt, reuss = (1 - f2) * k1 + f2 * k2, 1.0 / ((1 - f2) / k1 + f2 / k2)
    assert abs(float(K[0, 0]) - voigt) < 1e-10 and abs(float(K[1, 1]) - reuss) < 1e-10 and abs(float(K[0, 1])) < 1e-10


def test_laminate_elasticity_is_exact():
    mesh = Mesh.gen_grid((4, 10), element_type="quad")
    cell = PeriodicCell(mesh)
    y = centroids(mesh)[:, 1]
    stiff = (y < 0.3) | ((y > 0.6) & (y < 0.7))
    C = effective_tensor(
        cell,
        LinearElasticity.from_mesh(mesh, nu=0.3, plane="strain"),
        element_data={"E": torch.where(stiff, 10.0, 1.0)},
    ).tensor
    layers = torch.stack([isotropic_voigt(1.0, 0.3), isotropic_voigt(10.0, 0.3)])
    exact = laminate_elasticity(layers, torch.tensor([0.6, 0.4]), normal_axis=1)
    assert float((C - exact).abs().max()) < 1e-10
    # the shear modulus across the layers is the Reuss mean, and C*_11 at zero sigma_22 the Voigt mean of E'
    mu = layers[:, 2, 2]
    assert abs(float(C[2, 2]) - 1.0 / (0.6 / mu[0] + 0.4 / mu[1])) < 1e-10


def test_homogeneous_cell_returns_the_material():
    mesh = Mesh.gen_rectangle(0.3)
    cell = PeriodicCell(mesh)
    C = effective_tensor(
        cell,
        LinearElasticity.from_mesh(mesh, nu=0.25, plane="strain"),
        element_data={"E": torch.full((mesh.n_cells,), 3.0)},
    ).tensor
    assert float((C - isotropic_voigt(3.0, 0.25)).abs().max()) < 1e-12
    assert abs(float(poisson_ratio(C)) - 0.25 / 0.75) < 1e-12  # plane strain: nu / (1 - nu)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_two_phase_conductivity_lies_within_hashin_shtrikman(seed):
    mesh = Mesh.gen_grid((16, 16), element_type="quad")
    cell = PeriodicCell(mesh)
    phase = torch.rand(mesh.n_cells, generator=torch.Generator().manual_seed(seed)) < 0.5
    f2 = float(phase.double().mean())
    k1, k2 = 1.0, 20.0
    K = effective_tensor(cell, Diffusion.from_mesh(mesh), element_data={"kappa": torch.where(phase, k2, k1)}).tensor
    lower, upper = hashin_shtrikman_conductivity(k1, k2, f2, 2)
    # the bounds for anisotropic composites (trace form), which reduce to lower <= k* <= upper when isotropic
    eye = torch.eye(2)
    assert float(torch.linalg.inv(K - k1 * eye).trace()) <= 2 / (f2 * (k2 - k1)) + (1 - f2) / (f2 * k1)
    assert float(torch.linalg.inv(k2 * eye - K).trace()) <= 2 / ((1 - f2) * (k2 - k1)) - f2 / ((1 - f2) * k2)
    eigenvalues = torch.linalg.eigvalsh(K)
    assert (
        1.0 / ((1 - f2) / k1 + f2 / k2) < float(eigenvalues.min())
        and float(eigenvalues.max()) < (1 - f2) * k1 + f2 * k2
    )
    assert lower < float(eigenvalues.mean()) < upper


def checkerboard(n, k1=1.0, k2=10.0):
    mesh = Mesh.gen_grid((n, n), element_type="quad")
    c = centroids(mesh)
    kappa = torch.where((c[:, 0] < 0.5) ^ (c[:, 1] < 0.5), k2, k1)
    return float(
        effective_tensor(PeriodicCell(mesh), Diffusion.from_mesh(mesh), element_data={"kappa": kappa}).tensor[0, 0]
    )


def aitken(a, b, c):
    """The limit of a sequence converging geometrically, from three terms (on meshes h, h/2, h/4)."""
    return c - (c - b) ** 2 / ((c - b) - (b - a))


def test_checkerboard_conductivity_tends_to_the_geometric_mean():
    values = [checkerboard(n) for n in (8, 16, 32)]
    exact = math.sqrt(10.0)
    errors = [v - exact for v in values]
    assert errors[0] > errors[1] > errors[2] > 0  # from above: conforming elements are too stiff
    assert abs(aitken(*values) - exact) < 0.02


@pytest.mark.slow
def test_checkerboard_extrapolated_to_a_few_parts_in_ten_thousand():
    values = [checkerboard(n) for n in (32, 64, 128)]
    assert abs(aitken(*values) - math.sqrt(10.0)) < 3e-3


def test_effective_tensor_gradient_wrt_density():
    mesh = Mesh.gen_grid((5, 5), element_type="quad")
    cell = PeriodicCell(mesh)
    form = LinearElasticity.from_mesh(mesh, nu=0.3, plane="stress")
    rho0 = 0.3 + 0.6 * torch.rand(mesh.n_cells, generator=torch.Generator().manual_seed(3))

    def loss(rho):
        C = effective_tensor(cell, form, element_data={"E": 1e-3 + rho**3}).tensor
        return poisson_ratio(C) + 0.1 * C[2, 2]

    check = finite_difference_check(loss, rho0, n_probes=4)
    assert float(check.digits.min()) >= 8, check.table()
    assert taylor_test(loss, rho0, eps0=1e-2, n_halvings=3).min_rate > 1.9


def test_auxetic_example_runs_small(monkeypatch):
    from .docpages import run_example

    result = run_example("auxetic_cell.py", monkeypatch, 12, 15)
    assert result["nu"] < 0.3  # the solid's 0.3 falls within 15 steps on a 12 x 12 cell
    assert abs(result["volume"] - 0.35) < 0.01 or result["volume"] < 0.35
