"""Generalised eigenproblems: eigenvalues against a dense solver, sensitivities against finite differences,
including the double eigenvalue of a square plate."""

import logging

import numpy as np
import pytest
import scipy.linalg
import torch

from tmcore import Condenser, Mesh
from tmcore.core.assembly import VectorElementAssembler, dof_mask
from tmcore.forms import LinearElasticity
from tmcore.methods.eigen import eigen_clusters, eigsh
from tmcore.methods.gradcheck import finite_difference_check


class VectorMass(VectorElementAssembler):
    """rho u . v: the consistent mass matrix of a vector field."""

    def forward(self, u, v, rho):
        return rho * (u @ v)


def plate(nx: int, ny: int | None = None):
    """A plane-stress plate of nx x ny unit quads clamped on its whole boundary; returns
    (E, rho) -> (K_ff, M_ff) for per-cell modulus and density."""
    ny = nx if ny is None else ny
    mesh = Mesh.gen_grid((nx, ny), upper=(float(nx), float(ny)), element_type="quad")
    stiffness = LinearElasticity.from_mesh(mesh, nu=0.3, plane="stress")
    mass = VectorMass.from_mesh(mesh)
    cond = Condenser(dof_mask(mesh.boundary_mask, 2))
    zero = torch.zeros(2 * mesh.n_points, dtype=torch.float64)

    def matrices(E, rho):
        K, _ = cond(stiffness(element_data={"E": E}), zero)
        M, _ = cond(mass(element_data={"rho": rho}), zero)
        return K, M

    return mesh, matrices


def test_eigenvalues_match_a_dense_solver_and_vectors_are_m_orthonormal():
    mesh, matrices = plate(6, 4)
    generator = torch.Generator().manual_seed(1)
    E = 1.0 + torch.rand(mesh.n_cells, generator=generator, dtype=torch.float64)
    rho = 1.0 + torch.rand(mesh.n_cells, generator=generator, dtype=torch.float64)
    K, M = matrices(E, rho)
    lam, phi = eigsh(K, M, k=5)
    reference = scipy.linalg.eigh(K.to_dense().numpy(), M.to_dense().numpy(), eigvals_only=True)[:5]
    assert np.allclose(lam.numpy(), reference, rtol=1e-10, atol=0)
    gram = phi.T @ (M @ phi)
    assert torch.allclose(gram, torch.eye(5, dtype=gram.dtype), atol=1e-10)
    residual = K @ phi - (M @ phi) * lam
    assert float(residual.abs().max()) < 1e-8 * float(lam.max())


def test_simple_eigenvalue_sensitivities_agree_with_finite_differences():
    mesh, matrices = plate(6, 4)
    generator = torch.Generator().manual_seed(2)
    E0 = 1.0 + torch.rand(mesh.n_cells, generator=generator, dtype=torch.float64)
    rho0 = 1.0 + torch.rand(mesh.n_cells, generator=generator, dtype=torch.float64)
    weights = torch.tensor([1.0, -0.5, 0.25])

    def loss_of_E(E):
        return eigsh(*matrices(E, rho0), k=3)[0] @ weights

    def loss_of_rho(rho):
        return eigsh(*matrices(E0, rho), k=3)[0] @ weights

    for loss, x in ((loss_of_E, E0), (loss_of_rho, rho0)):
        check = finite_difference_check(loss, x, n_probes=6)
        assert check.digits.min() >= 8, check.table()


def test_square_plate_double_eigenvalue_sum_is_differentiable():
    mesh, matrices = plate(8)
    E0 = torch.ones(mesh.n_cells, dtype=torch.float64)
    rho0 = torch.ones(mesh.n_cells, dtype=torch.float64)
    lam, _ = eigsh(*matrices(E0, rho0), k=4)
    clusters = eigen_clusters(lam, 1e-6)
    assert clusters[0] == [0, 1], f"the fundamental pair of a square plate is double: {lam.tolist()}"
    assert abs(float(lam[1] - lam[0])) <= 1e-10 * float(lam[0])

    def cluster_sum(E):
        lam, _ = eigsh(*matrices(E, rho0), k=2)
        return lam.sum()

    # cells off the symmetry lines, where a perturbation splits the pair
    check = finite_difference_check(cluster_sum, E0, indices=[0, 9, 21, 30, 45], accuracy=4)
    assert check.digits.min() >= 8, check.table()


def test_a_single_member_of_a_double_eigenvalue_has_no_derivative_and_says_so(caplog):
    mesh, matrices = plate(8)
    E0 = torch.ones(mesh.n_cells, dtype=torch.float64, requires_grad=True)
    rho0 = torch.ones(mesh.n_cells, dtype=torch.float64)
    with caplog.at_level(logging.WARNING, logger="tmcore.methods.eigen"):
        lam, _ = eigsh(*matrices(E0, rho0), k=2)
        lam[0].backward()
    assert "not symmetric in the repeated eigenvalues" in caplog.text
    # the one-sided difference quotients of lambda_1 disagree: a kink, not a slope
    h = 1e-6
    with torch.no_grad():
        step = torch.zeros_like(E0)
        step[10] = h
        up = eigsh(*matrices(E0 + step, rho0), k=2)[0][0]
        down = eigsh(*matrices(E0 - step, rho0), k=2)[0][0]
        centre = eigsh(*matrices(E0.detach(), rho0), k=2)[0][0]
    right, left = (up - centre) / h, (centre - down) / h
    assert abs(float(right - left)) > 1e-3 * abs(float(right))
    # the gradient returned is that of the cluster mean: the average of the one-sided slopes
    assert float(E0.grad[10]) == pytest.approx(0.5 * float(right + left), rel=1e-4)


def test_pattern_mismatch_and_bad_k_are_refused():
    mesh, matrices = plate(3)
    K, M = matrices(torch.ones(mesh.n_cells), torch.ones(mesh.n_cells))
    with pytest.raises(ValueError, match="k must be"):
        eigsh(K, M, k=0)
    other, _ = plate(4)[1](torch.ones(16), torch.ones(16))
    with pytest.raises(ValueError, match="share one sparsity pattern"):
        eigsh(K, other, k=1)


def test_frequency_example_raises_lambda_1_under_the_volume_constraint(monkeypatch):
    from .docpages import run_example

    result = run_example("frequency_topology.py", monkeypatch, 20, 10, "--steps", 15)["results"]
    history = result["history"][:, 0]
    assert float(history[-1]) > 3.0 * float(history[0])
    assert float(history[-1]) >= float(history[:-1].max()) * 0.999  # no mode collapse late in the run
    rho = result["design"].physical(result["x"].detach())
    assert float(rho.mean()) <= 0.5 + 1e-4
