"""Bad inputs of issue 6 that tests/tmcore/test_errors.py (and test_io.py, test_solvers.py)
do not cover yet, each with the message it must carry. The rest of the list is tested there."""

from __future__ import annotations

import math

import pytest
import torch

from tmcore import AssemblyError, Condenser, Mesh, MeshError, SingularMatrixError, SolverError
from tmcore.core.linalg.solvers import cholmod_available
from tmcore.forms import Diffusion, Laplace
from tmcore.topology.optimizers import OCOptimizer

F64 = torch.float64


@pytest.fixture(scope="module")
def mesh() -> Mesh:
    return Mesh.gen_grid((4, 4))


# -- meshes ------------------------------------------------------------------------------------------


def test_inverted_and_flat_tetrahedra():
    points = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=F64)
    with pytest.raises(MeshError, match=r"1 inverted cells \(negative orientation"):
        Mesh(points, {"tetra": torch.tensor([[0, 2, 1, 3]])})
    flat = points.clone()
    flat[3, 2] = 0.0  # all four vertices in the plane z = 0
    with pytest.raises(MeshError, match=r"1 degenerate cells \(zero measure\)"):
        Mesh(flat, {"tetra": torch.tensor([[0, 1, 2, 3]])})


def test_points_of_integer_or_complex_dtype():
    cells = {"triangle": torch.tensor([[0, 1, 2]])}
    with pytest.raises(MeshError, match=r"points must be real, got dtype torch.complex128"):
        Mesh(torch.zeros(3, 2, dtype=torch.complex128), cells)


# -- assemblers --------------------------------------------------------------------------------------


def test_data_on_another_device(mesh):
    """A tensor on another device is named with both devices ('meta' stands in for a GPU here)."""
    kappa = torch.ones(mesh.n_points, dtype=F64, device="meta")
    with pytest.raises(
        AssemblyError, match=r"point_data\['kappa'\] is on meta but the mesh is on cpu; move one with \.to\(\)"
    ):
        Diffusion.from_mesh(mesh)(point_data={"kappa": kappa})


def test_nan_written_into_the_points_after_construction(mesh):
    """Points changed in place after the checks ran: the NaN still never becomes a solution."""
    broken = Mesh.gen_grid((3, 3))
    broken.points[4, 0] = float("nan")
    with pytest.raises((AssemblyError, MeshError, SolverError), match=r"NaN"):
        K = Laplace.from_mesh(broken)()
        cond = Condenser(broken.boundary_mask)
        K_, b_ = cond(K, torch.ones(broken.n_points, dtype=F64))
        K_.solve(b_)


# -- solves ------------------------------------------------------------------------------------------


def test_a_problem_without_any_fixed_node_is_singular(mesh):
    cond = Condenser(torch.zeros(mesh.n_points, dtype=torch.bool))  # no Dirichlet node: pure Neumann
    K_, b_ = cond(Laplace.from_mesh(mesh)(), torch.ones(mesh.n_points, dtype=F64))
    with pytest.raises(SingularMatrixError, match="is a Dirichlet condition missing"):
        K_.solve(b_)


@pytest.mark.skipif(not cholmod_available(), reason="scikit-sparse (CHOLMOD) not installed")
def test_indefinite_matrix_given_to_cholesky(mesh):
    K = Laplace.from_mesh(mesh)()
    cond = Condenser(mesh.boundary_mask)
    K_, b_ = cond(K, torch.ones(mesh.n_points, dtype=F64))
    shifted = K_.values.clone()
    diagonal = K_.pattern.rows == K_.pattern.cols
    shifted[diagonal] -= 3.0  # eigenvalues of K_ (1.17 ... 6.83) shifted: some negative, some positive, none zero
    indefinite = type(K_).from_pattern(K_.pattern, shifted)
    with pytest.raises(SingularMatrixError, match="CHOLMOD: the matrix is not positive definite"):
        indefinite.solve(b_, backend="cholmod")
    assert torch.isfinite(indefinite.solve(b_, backend="splu")).all()  # an LU backend takes it


def test_complex_right_hand_side(mesh):
    K = Laplace.from_mesh(mesh)()
    K_, b_ = Condenser(mesh.boundary_mask)(K, torch.ones(mesh.n_points, dtype=F64))
    with pytest.raises(TypeError, match="solve needs real floating-point values and b"):
        K_.solve(b_.to(torch.complex128))


# -- Condenser ---------------------------------------------------------------------------------------


def test_condenser_mask_of_wrong_shape(mesh):
    with pytest.raises(
        ValueError, match=r"mask must be an \(n,\) bool tensor, got dtype torch.bool and shape \(25, 1\)"
    ):
        Condenser(mesh.boundary_mask[:, None])
    with pytest.raises(TypeError, match="mask must be a torch.Tensor of dtype bool, got list"):
        Condenser(mesh.boundary_mask.tolist())


# -- OCOptimizer -------------------------------------------------------------------------------------


@pytest.mark.parametrize("vf", [math.nan, math.inf, True, "0.4", None])
def test_oc_volume_fraction_that_is_not_a_number(vf):
    with pytest.raises(ValueError, match=r"vf must be a volume fraction in \(0, 1\)"):
        OCOptimizer([torch.full((4,), 0.5, dtype=F64, requires_grad=True)], vf=vf)


@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad=True")
def test_oc_nan_density_is_outside_the_bounds():
    rho = torch.full((4,), 0.5, dtype=F64)
    rho[1] = math.nan
    with pytest.raises(ValueError, match=r"densities must lie in \[rho_min, rho_max\]"):
        OCOptimizer([rho.requires_grad_()], vf=0.4)
