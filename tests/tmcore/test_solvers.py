"""The sparse solve: correctness, factorisation reuse in the backward, several right-hand sides, batches."""

import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.linalg
import torch

from tmcore import Condenser, Mesh, SparseMatrix
from tmcore.core.errors import SingularMatrixError, SolverError
from tmcore.core.linalg import solvers
from tmcore.core.linalg.sparse import SparsityPattern
from tmcore.forms import Diffusion, Source


@pytest.fixture(scope="module")
def system():
    mesh = Mesh.gen_rectangle(chara_length=0.1)
    x = mesh.points[:, 0]
    K = Diffusion.from_mesh(mesh)(point_data={"kappa": 1.0 + x})
    b = Source.from_mesh(mesh)(point_data={"f": torch.ones(mesh.n_points)})
    return Condenser(mesh.boundary_mask)(K, b)


def test_solution_matches_scipy(system):
    K, b = system
    expected = scipy.sparse.linalg.spsolve(K.to_scipy().tocsc(), b.numpy())
    u = K.solve(b)
    assert np.abs(u.numpy() - expected).max() <= 1e-13 * np.abs(expected).max()


@pytest.mark.parametrize("backend", ["splu", "dense"])
def test_backends_agree(system, backend):
    K, b = system
    reference = K.solve(b, backend="splu")
    assert torch.allclose(K.solve(b, backend=backend), reference, rtol=1e-12, atol=1e-15)


def test_backward_reuses_the_forward_factorisation(system):
    K, b = system
    values = K.values.detach().clone().requires_grad_(True)
    rhs = b.clone().requires_grad_(True)
    solvers.stats.reset()
    u = SparseMatrix.from_pattern(K.pattern, values).solve(rhs)
    (u**2).sum().backward()
    assert solvers.stats.factorizations == 1
    assert solvers.stats.solves == 2  # forward and adjoint, one factorisation
    assert values.grad is not None and rhs.grad is not None


def test_adjoint_formulas(system):
    """dL/db = lam with A^T lam = dL/du and dL/dA_ij = -lam_i u_j, checked against dense algebra."""
    K, b = system
    values = K.values.detach().clone().requires_grad_(True)
    rhs = b.clone().requires_grad_(True)
    weights = torch.linspace(0.5, 1.5, b.shape[0])
    u = SparseMatrix.from_pattern(K.pattern, values).solve(rhs)
    (weights * u).sum().backward()
    dense = K.to_dense().detach()
    lam = torch.linalg.solve(dense.T, weights)
    u_dense = torch.linalg.solve(dense, b)
    assert torch.allclose(rhs.grad, lam, rtol=1e-11, atol=1e-14)
    expected = -lam[K.pattern.rows] * u_dense[K.pattern.cols]
    assert torch.allclose(values.grad, expected, rtol=1e-10, atol=1e-16)


def test_several_right_hand_sides_share_one_factorisation(system):
    K, b = system
    columns = torch.stack([b, 2 * b, torch.ones_like(b)], dim=1)
    solvers.stats.reset()
    u = K.solve(columns)
    assert solvers.stats.factorizations == 1
    assert u.shape == columns.shape
    for j in range(3):
        assert torch.allclose(u[:, j], K.solve(columns[:, j]), rtol=1e-13, atol=1e-16)


def test_batch_of_matrices(system):
    K, b = system
    batch = SparseMatrix.from_pattern(K.pattern, torch.stack([K.values, 2 * K.values]))
    u = batch.solve(b)
    assert u.shape == (2, b.shape[0])
    assert torch.allclose(u[1], 0.5 * u[0], rtol=1e-12)


def test_pure_neumann_problem_is_reported_singular():
    mesh = Mesh.gen_grid((6, 6))
    K = Diffusion.from_mesh(mesh)(scalar_data={"kappa": 1.0})
    with pytest.raises(SingularMatrixError, match="singular"):
        K.solve(torch.ones(mesh.n_points))


def test_exactly_singular_matrix_is_reported():
    A = SparseMatrix.from_scipy(scipy.sparse.csr_array(np.array([[1.0, 2.0], [2.0, 4.0]])))
    with pytest.raises(SingularMatrixError):
        A.solve(torch.ones(2, dtype=torch.float64))


def test_nonsymmetric_system():
    rng = np.random.default_rng(0)
    dense = rng.standard_normal((30, 30)) + 10 * np.eye(30)
    dense[np.abs(dense) < 0.8] = 0.0
    np.fill_diagonal(dense, 10 + rng.random(30))
    A = SparseMatrix.from_scipy(scipy.sparse.csr_array(dense))
    b = torch.as_tensor(rng.standard_normal(30))
    assert np.allclose(A.solve(b).numpy(), np.linalg.solve(dense, b.numpy()), rtol=1e-12, atol=1e-13)
    assert torch.allclose(A.T.to_dense(), torch.as_tensor(dense.T))


def test_matvec_transpose_and_conversions(system):
    K, b = system
    dense = K.to_dense()
    assert torch.allclose(K @ b, dense @ b)
    cols = torch.stack([b, -b], 1)
    assert torch.allclose(K @ cols, dense @ cols)
    assert torch.equal(K.T.to_dense(), dense.T)
    assert K.float().values.dtype == torch.float32 and isinstance(K.float(), SparseMatrix)
    assert K.float().double().pattern is K.pattern
    assert (K.to_scipy() != scipy.sparse.csr_array(dense.numpy())).nnz == 0


def test_matvec_of_batches_with_one_or_several_columns(system):
    K, b = system
    n = b.shape[0]
    batch = SparseMatrix.from_pattern(K.pattern, torch.stack([K.values, 2 * K.values, -K.values]))
    dense = batch.to_dense()  # (3, n, n)
    x = torch.rand(3, n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(batch @ x, dense @ x)  # one x per matrix, two columns
    assert torch.allclose(batch @ x[..., 0], (dense @ x[..., :1])[..., 0])  # one x per matrix
    assert torch.allclose(batch @ x[0], dense @ x[0])  # one x for the whole batch
    assert torch.allclose(batch @ b, dense @ b)
    with pytest.raises(ValueError, match="cannot multiply"):
        batch @ torch.ones(n + 1)


# -- every backend ------------------------------------------------------------------------------

BACKENDS = [
    "splu",
    "dense",
    "amg",
    "torch-cg",
    pytest.param(
        "cholmod", marks=pytest.mark.skipif(not solvers.cholmod_available(), reason="scikit-sparse not installed")
    ),
]
TIGHT = {"amg": {"rtol": 1e-13}, "torch-cg": {"rtol": 1e-13}}


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_agrees_with_superlu(system, backend):
    K, b = system
    reference = K.solve(b, backend="splu")
    u = K.solve(b, backend=backend, **TIGHT.get(backend, {}))
    assert float((u - reference).norm() / reference.norm()) <= 1e-10


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_through_every_backend_pass_finite_differences(system, backend):
    from tmcore.methods.gradcheck import finite_difference_check

    K, b = system
    target = torch.linspace(0.0, 0.05, b.shape[0])
    _, transpose = K.pattern.transpose

    def loss(values):
        symmetric = 0.5 * (values + values[transpose])  # perturbations keep the matrix symmetric (SPD backends)
        u = SparseMatrix.from_pattern(K.pattern, symmetric).solve(b, backend=backend, **TIGHT.get(backend, {}))
        return ((u - target) ** 2).sum()

    check = finite_difference_check(loss, K.values.detach().clone(), n_probes=6, seed=2)
    assert check.median_digits >= 8.0, check.table()


def test_amg_reuses_its_hierarchy_for_new_values_but_not_for_a_new_pattern(system):
    K, b = system
    pattern = SparsityPattern(K.pattern.rows.clone(), K.pattern.cols.clone(), K.pattern.shape)  # fresh cache
    solvers.stats.reset()
    first = SparseMatrix.from_pattern(pattern, K.values).solve(b, backend="amg", rtol=1e-12)
    second = SparseMatrix.from_pattern(pattern, 1.1 * K.values).solve(b, backend="amg", rtol=1e-12)
    assert solvers.stats.analyses == 1 and solvers.stats.reuses == 1
    assert torch.allclose(second, first / 1.1, rtol=1e-9)  # the reused hierarchy gives the new matrix's answer
    # the same values on another (equal-content) pattern object build their own hierarchy
    other = SparsityPattern(K.pattern.rows.clone(), K.pattern.cols.clone(), K.pattern.shape)
    SparseMatrix.from_pattern(other, K.values).solve(b, backend="amg")
    assert solvers.stats.analyses == 2


def test_a_reused_hierarchy_for_swapped_values_still_gives_the_right_answer():
    """torch-sla's cache fingerprints by sum |values| and returns stale answers here
    (two coefficients swapped: the same sum, a stale hierarchy, relative residual 0.2); ours must not."""
    mesh = Mesh.gen_grid((30, 30))
    x = mesh.points[:, 0]
    cond = Condenser(mesh.boundary_mask)
    kappa = 1.0 + 10.0 * (x > 0.5)
    laplace = Diffusion.from_mesh(mesh)
    b = torch.ones(mesh.n_points)
    K1_, b_ = cond(laplace(point_data={"kappa": kappa}), b)
    K2_, _ = cond(laplace(point_data={"kappa": kappa.flip(0)}), b)  # the same multiset of values, swapped
    for K_ in (K1_, K2_):
        u = K_.solve(b_, backend="amg", rtol=1e-12)
        assert torch.allclose(u, K_.solve(b_, backend="splu"), rtol=1e-9, atol=1e-14)


def test_iterative_backends_raise_when_they_do_not_converge(system):
    from tmcore.core.errors import SolverError

    K, b = system
    with pytest.raises(SolverError, match=r"did not converge: relative residual .* after \d+ iterations"):
        K.solve(b, backend="torch-cg", maxiter=3)


def test_cholmod_reuses_its_symbolic_analysis(system):
    if not solvers.cholmod_available():
        pytest.skip("scikit-sparse not installed")
    K, b = system
    pattern = SparsityPattern(K.pattern.rows.clone(), K.pattern.cols.clone(), K.pattern.shape)
    solvers.stats.reset()
    for scale in (1.0, 2.0, 3.0):
        SparseMatrix.from_pattern(pattern, scale * K.values).solve(b, backend="cholmod")
    assert solvers.stats.analyses == 1 and solvers.stats.reuses == 2 and solvers.stats.factorizations == 3


def test_auto_choice_by_size_sparsity_and_symmetry(system, monkeypatch):
    K, _ = system
    # SPD with a narrow band after RCM: the banded Cholesky
    assert solvers.choose_backend(K.pattern, K.values) == "banded"
    monkeypatch.setattr(solvers, "BANDED_WORK_LIMIT", 0)
    direct = "cholmod" if solvers.cholmod_available() else "splu"
    assert solvers.choose_backend(K.pattern, K.values) == direct
    # above the direct limit: AMG for an SPD matrix, SuperLU for a nonsymmetric one
    monkeypatch.setattr(solvers, "DIRECT_LIMIT", 100)
    monkeypatch.setattr(solvers, "CHOLMOD_LIMIT", 100)
    assert solvers.choose_backend(K.pattern, K.values) == "amg"
    nonsymmetric = K.values * (1.0 + 1e-3 * torch.rand(K.values.shape, generator=torch.Generator().manual_seed(0)))
    assert solvers.choose_backend(K.pattern, nonsymmetric) == "splu"
    monkeypatch.undo()
    # 3-D sparsity: factorisations fill in early, AMG takes over at DIRECT_LIMIT_3D unknowns
    cube = Mesh.gen_grid((20, 20, 20))
    Kc_, _ = Condenser(cube.boundary_mask)(
        Diffusion.from_mesh(cube)(scalar_data={"kappa": 1.0}), torch.ones(cube.n_points)
    )
    assert Kc_.pattern.shape[0] > solvers.DIRECT_LIMIT_3D
    assert solvers.choose_backend(Kc_.pattern, Kc_.values) == "amg"
    # below it the banded Cholesky while the band is narrow, else SuperLU's symmetric mode (faster
    # than CHOLMOD on small 3-D systems here)
    small = Mesh.gen_grid((6, 6, 6))
    Ks_, _ = Condenser(small.boundary_mask)(
        Diffusion.from_mesh(small)(scalar_data={"kappa": 1.0}), torch.ones(small.n_points)
    )
    assert solvers.choose_backend(Ks_.pattern, Ks_.values) == "banded"
    monkeypatch.setattr(solvers, "BANDED_WORK_LIMIT", 0)
    assert solvers.choose_backend(Ks_.pattern, Ks_.values) == "splu"


def test_second_derivatives_through_a_solve_are_exact():
    """gradgradcheck: Hessian-vector products through solve (create_graph=True) against finite differences."""
    mesh = Mesh.gen_grid((3, 3))
    K_, b_ = Condenser(mesh.boundary_mask)(
        Diffusion.from_mesh(mesh)(scalar_data={"kappa": 1.0}), torch.ones(mesh.n_points)
    )
    pattern = K_.pattern

    def solve(values, rhs):
        return SparseMatrix.from_pattern(pattern, values).solve(rhs)

    values = K_.values.detach().clone().requires_grad_(True)
    rhs = (b_ + torch.linspace(0, 1, b_.shape[0])).requires_grad_(True)
    assert torch.autograd.gradcheck(solve, (values, rhs))
    assert torch.autograd.gradgradcheck(solve, (values, rhs))


def test_auto_falls_back_to_a_direct_solver_when_amg_fails(monkeypatch):
    """2-D elasticity (18 non-zeros per row) looks 3-D to 'auto', which tries AMG (once its band is
    too wide for the banded Cholesky); RS-AMG breaks down on it."""
    from tmcore import dof_mask
    from tmcore.forms import LinearElasticity

    monkeypatch.setattr(solvers, "BANDED_WORK_LIMIT", 0)
    mesh = Mesh.gen_grid((160, 16), upper=(10.0, 1.0), element_type="quad")
    K = LinearElasticity.from_mesh(mesh)(scalar_data={"E": 1.0})
    f = torch.zeros(2 * mesh.n_points)
    f[1::2] = -1.0 / mesh.n_points
    K_, f_ = Condenser(dof_mask(mesh.nodes_of("left"), 2))(K, f)
    assert solvers.choose_backend(K_.pattern, K_.values) == "amg"
    with pytest.raises(SolverError, match="AMG"):
        K_.solve(f_, backend="amg")  # asked for explicitly: the failure is reported
    solvers.stats.reset()
    u = K_.solve(f_)  # automatic: falls back to a direct factorisation
    assert solvers.stats.by_backend.get("amg") == 1 and (
        solvers.stats.by_backend.get("splu") or solvers.stats.by_backend.get("cholmod")
    )
    reference = K_.solve(f_, backend="splu")
    assert float((u - reference).norm() / reference.norm()) < 1e-9
    solvers.stats.reset()
    K_.solve(f_)  # the pattern remembers: no second try of AMG
    assert "amg" not in solvers.stats.by_backend
