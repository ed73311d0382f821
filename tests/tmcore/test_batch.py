"""Batched pipelines: a batch equals a loop, shares one analysis, and its gradient passes finite differences."""

import pytest
import torch

from tmcore import Condenser, Mesh, SparseMatrix, solvers
from tmcore.core.errors import SingularMatrixError, SolverError
from tmcore.core.linalg.sparse import SparsityPattern
from tmcore.forms import Diffusion, Source
from tmcore.methods.batch import DiffusionMap, diffusion_samples, in_batches, random_fields, solve_columns
from tmcore.methods.gradcheck import finite_difference_check

CHOLMOD = pytest.mark.skipif(not solvers.cholmod_available(), reason="scikit-sparse not installed")
PARDISO = pytest.mark.skipif(
    not solvers.pardiso_available(), reason="the MKL runtime (pip install mkl) is not installed"
)
BACKENDS = [
    "splu",
    "banded",
    "dense",
    "torch-cg",
    "amg",
    pytest.param("cholmod", marks=CHOLMOD),
    pytest.param("pardiso", marks=PARDISO),
]
TIGHT = {"amg": {"rtol": 1e-13}, "torch-cg": {"rtol": 1e-13}}


@pytest.fixture(scope="module")
def mesh():
    return Mesh.gen_grid((10, 10))


@pytest.fixture(scope="module")
def kappa(mesh):
    return torch.exp(0.5 * random_fields(mesh.points, 5, seed=3))


def _fresh(K: SparseMatrix) -> SparseMatrix:
    """K on a pattern object of its own: an empty solver cache."""
    pattern = SparsityPattern(K.pattern.rows.clone(), K.pattern.cols.clone(), K.pattern.shape)
    return SparseMatrix.from_pattern(pattern, K.values)


def _condensed_batch(mesh, kappa):
    K = Diffusion.from_mesh(mesh)(point_data={"kappa": kappa})
    b = Source.from_mesh(mesh)(point_data={"f": torch.ones(mesh.n_points)})
    return Condenser(mesh.boundary_mask)(K, b)


def test_batched_pipeline_matches_a_loop_of_single_solves(mesh, kappa):
    forward = DiffusionMap(mesh)
    batched = forward(kappa)
    looped = torch.stack([forward(k) for k in kappa])
    assert batched.shape == (5, mesh.n_points)
    assert torch.allclose(batched, looped, rtol=1e-12, atol=1e-16)
    assert float(batched.abs().max()) > 0.01  # a real solution, not zeros


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_solves_a_batch_like_superlu_one_by_one(mesh, kappa, backend):
    K_, b_ = _condensed_batch(mesh, kappa)
    u = K_.solve(b_, backend=backend, **TIGHT.get(backend, {}))
    for i in range(kappa.shape[0]):
        reference = SparseMatrix.from_pattern(K_.pattern, K_.values[i]).solve(b_, backend="splu")
        assert float((u[i] - reference).norm() / reference.norm()) <= 1e-10


@CHOLMOD
def test_a_batch_shares_one_symbolic_analysis_and_later_batches_reuse_it(mesh, kappa):
    K_, b_ = _condensed_batch(mesh, kappa)
    K_ = _fresh(K_)
    solvers.stats.reset()
    K_.solve(b_, backend="cholmod")
    assert (solvers.stats.analyses, solvers.stats.factorizations, solvers.stats.reuses) == (1, 5, 4)
    SparseMatrix.from_pattern(K_.pattern, 2.0 * K_.values).solve(b_, backend="cholmod")
    assert solvers.stats.analyses == 1 and solvers.stats.factorizations == 10


def test_the_backward_of_a_batch_reuses_its_factorisations(mesh, kappa):
    K_, b_ = _condensed_batch(mesh, kappa)
    values = K_.values.detach().clone().requires_grad_(True)
    solvers.stats.reset()
    u = SparseMatrix.from_pattern(K_.pattern, values).solve(b_)
    (u**2).sum().backward()
    assert solvers.stats.factorizations == 5 and solvers.stats.solves == 10
    assert values.grad.shape == values.shape


def test_a_batch_of_right_hand_sides_costs_one_factorisation(mesh, kappa):
    K_, b_ = _condensed_batch(mesh, kappa[0])
    loads = torch.stack([b_ * (1 + i) + 0.1 * i for i in range(6)])
    solvers.stats.reset()
    u = solve_columns(K_, loads)
    assert solvers.stats.factorizations == 1
    assert u.shape == loads.shape
    for i in range(6):
        assert torch.allclose(u[i], K_.solve(loads[i]), rtol=1e-13, atol=1e-16)


def test_one_kappa_with_a_batch_of_boundary_data_factorises_once(mesh, kappa):
    g = torch.stack([torch.full((int(mesh.boundary_mask.sum()),), float(i)) for i in range(4)])
    forward = DiffusionMap(mesh, dirichlet_value=g)
    solvers.stats.reset()
    u = forward(kappa[0])
    assert solvers.stats.factorizations == 1
    assert u.shape == (4, mesh.n_points)
    # the value on the boundary, and linearity in g: u_i - u_0 solves the homogeneous problem with g = i
    assert torch.allclose(u[3][mesh.boundary_mask], torch.full_like(g[3], 3.0))
    assert torch.allclose(u[2] - u[0], 2.0 * (u[1] - u[0]), rtol=1e-10, atol=1e-13)


def _batch_loss(mesh, which: str):
    """A scalar loss of a (B, ...) input and the point to check it at."""
    boundary = int(mesh.boundary_mask.sum())
    weights = torch.linspace(0.5, 1.5, mesh.n_points)
    kappa0 = torch.exp(0.4 * random_fields(mesh.points, 3, seed=1))
    if which == "kappa":
        forward = DiffusionMap(mesh)
        return lambda k: (forward(k) * weights).sum(), kappa0
    if which == "cell kappa":
        forward = DiffusionMap(mesh, where="cell")
        return lambda k: (forward(k) * weights).sum(), torch.exp(
            0.4 * torch.randn(3, mesh.n_cells, generator=torch.Generator().manual_seed(0))
        )
    if which == "dirichlet":
        return lambda g: (DiffusionMap(mesh, dirichlet_value=g)(kappa0) ** 2 * weights).sum(), torch.rand(
            3, boundary, generator=torch.Generator().manual_seed(0)
        )
    if which == "source":
        laplace, cond = Diffusion.from_mesh(mesh), Condenser(mesh.boundary_mask)
        source = Source.from_mesh(mesh)

        def loss(f):
            K_, b_ = cond(laplace(point_data={"kappa": kappa0}), source(point_data={"f": f}))
            return (cond.recover(K_.solve(b_)) ** 2 * weights).sum()

        return loss, 1.0 + torch.rand(3, mesh.n_points, generator=torch.Generator().manual_seed(0))
    raise ValueError(which)


@pytest.mark.parametrize("which", ["kappa", "cell kappa", "dirichlet", "source"])
def test_gradient_wrt_the_whole_batch_passes_finite_differences(mesh, which):
    loss, x = _batch_loss(mesh, which)
    check = finite_difference_check(loss, x, n_probes=9, seed=4)
    rows = {int(i) // x.shape[1] for i in check.indices}
    assert len(rows) > 1, "the probes should hit several members of the batch"
    assert check.median_digits >= 9.0, check.table()


@pytest.mark.parametrize("backend", ["dense", "torch-cg"])
def test_gradients_through_the_batched_torch_backends_pass_finite_differences(mesh, backend):
    forward = DiffusionMap(mesh, backend=backend, **TIGHT.get(backend, {}))
    weights = torch.linspace(0.5, 1.5, mesh.n_points)
    kappa0 = torch.exp(0.4 * random_fields(mesh.points, 3, seed=1))
    check = finite_difference_check(lambda k: (forward(k) * weights).sum(), kappa0, n_probes=6, seed=0)
    assert check.median_digits >= 9.0, check.table()


def test_a_batch_mixing_symmetric_and_nonsymmetric_matrices_solves_each_right(mesh, kappa):
    K_, b_ = _condensed_batch(mesh, kappa[:2])
    skew = torch.rand(K_.values.shape[1], generator=torch.Generator().manual_seed(0)) * 1e-3 * K_.values[1].abs()
    values = torch.stack([K_.values[0], K_.values[1] + skew])
    u = SparseMatrix.from_pattern(K_.pattern, values).solve(b_)
    for i in range(2):
        dense = SparseMatrix.from_pattern(K_.pattern, values[i]).to_dense()
        assert torch.allclose(u[i], torch.linalg.solve(dense, b_), rtol=1e-11, atol=1e-15)


def test_a_singular_member_of_the_batch_is_reported(mesh, kappa):
    K_, b_ = _condensed_batch(mesh, kappa[:3])
    values = K_.values.clone()
    values[1] = 0.0
    with pytest.raises(SingularMatrixError):
        SparseMatrix.from_pattern(K_.pattern, values).solve(b_)


def test_the_residual_check_names_the_failing_member(mesh, kappa):
    K_, b_ = _condensed_batch(mesh, kappa[:3])
    u = K_.solve(b_).unsqueeze(-1).clone()
    u[2] *= 1.01
    with pytest.raises(SolverError, match=r"matrix 2 of a batch of 3"):
        solvers._check_residual(K_.values, K_.pattern, b_.expand(3, -1).unsqueeze(-1), u, solvers.RESIDUAL_TOL)


def test_random_fields_are_a_function_of_seed_and_sample_index(mesh):
    all_at_once = random_fields(mesh.points, 6, seed=7)
    assert all_at_once.shape == (6, mesh.n_points)
    assert torch.equal(random_fields(mesh.points, [4, 1], seed=7), all_at_once[[4, 1]])
    assert not torch.allclose(random_fields(mesh.points, 1, seed=8)[0], all_at_once[0])
    many = random_fields(mesh.points, 400, seed=0)
    assert abs(float(many.mean())) < 0.1 and abs(float(many.var()) - 1.0) < 0.2
    with pytest.raises(ValueError, match="length_scale"):
        random_fields(mesh.points, 2, length_scale=0.0)


def test_diffusion_samples_and_in_batches(mesh):
    kappa, u = diffusion_samples(mesh, 7, seed=2, batch_size=3)
    assert kappa.shape == u.shape == (7, mesh.n_points)
    assert torch.allclose(u, DiffusionMap(mesh)(kappa), rtol=1e-12, atol=1e-16)
    assert torch.equal(in_batches(lambda x: 2 * x, kappa, 2), 2 * kappa)
    with pytest.raises(ValueError, match="batch_size"):
        in_batches(lambda x: x, kappa, 0)


def test_input_errors_name_the_argument(mesh, kappa):
    forward = DiffusionMap(mesh)
    with pytest.raises(ValueError, match=r"kappa must have shape \(121,\) or \(B, 121\)"):
        forward(kappa[:, :-1])
    with pytest.raises(ValueError, match="where"):
        DiffusionMap(mesh, where="edge")
    K_, b_ = _condensed_batch(mesh, kappa)
    with pytest.raises(ValueError, match="one matrix"):
        solve_columns(K_, b_.expand(2, -1))
    with pytest.raises(ValueError, match=r"values must have shape \(B,"):
        solvers.factorize(K_.pattern, K_.values[0])


# -- the parallel PARDISO path ---------------------------------------------------------------


@PARDISO
def test_auto_factorises_an_spd_batch_in_parallel_and_reuses_the_analyses(mesh, kappa, monkeypatch):
    from tmcore.core.linalg import pardiso

    monkeypatch.setenv(pardiso.ENV_THREADS, "2")
    monkeypatch.setattr(solvers, "BANDED_WORK_LIMIT", 0)  # narrow bands go to the banded Cholesky, not PARDISO
    K_, b_ = _condensed_batch(mesh, kappa)
    K_ = _fresh(K_)
    solvers.stats.reset()
    u = K_.solve(b_)
    assert solvers.stats.by_backend == {"pardiso": 5}
    assert (solvers.stats.analyses, solvers.stats.factorizations) == (2, 5)  # one analysis per worker thread
    del u
    import gc

    gc.collect()  # the batch gives its handles back to the pattern's pool
    SparseMatrix.from_pattern(K_.pattern, 1.5 * K_.values).solve(b_)
    assert solvers.stats.analyses == 2 and solvers.stats.reuses == 2  # the second batch analysed nothing


@PARDISO
def test_pardiso_reports_an_indefinite_matrix_and_solves_one_matrix_like_superlu(mesh, kappa):
    K_, b_ = _condensed_batch(mesh, kappa[:2])
    single = SparseMatrix.from_pattern(K_.pattern, K_.values[0])
    assert torch.allclose(single.solve(b_, backend="pardiso"), single.solve(b_, backend="splu"), rtol=1e-12, atol=1e-16)
    off_diagonal = K_.pattern.rows != K_.pattern.cols
    indefinite = torch.where(off_diagonal, 3.0 * K_.values, K_.values)  # symmetric, positive diagonal, indefinite
    with pytest.raises(SingularMatrixError, match="not positive definite"):
        SparseMatrix.from_pattern(K_.pattern, indefinite).solve(b_, backend="pardiso")
    with pytest.raises(ValueError, match="symmetric"):
        SparseMatrix.from_pattern(K_.pattern, K_.values[0] * (1 + 1e-3 * torch.rand(K_.pattern.nnz))).solve(
            b_, backend="pardiso"
        )


# -- the banded Cholesky on a batch: side by side on MKL, one by one on SciPy ------------------


def test_batch_workers_follow_the_environment_then_torchs_thread_count(monkeypatch):
    from tmcore.core.linalg import pardiso

    previous = torch.get_num_threads()
    monkeypatch.delenv(pardiso.ENV_THREADS, raising=False)
    try:
        torch.set_num_threads(1)
        assert pardiso.threads() == 1
        torch.set_num_threads(2)
        assert pardiso.threads() == 2
        monkeypatch.setenv(pardiso.ENV_THREADS, "3")
        assert pardiso.threads() == 3
        monkeypatch.setenv(pardiso.ENV_THREADS, "0")
        with pytest.raises(ValueError, match=r"\$TMCORE_SOLVER_THREADS must be a positive integer, got '0'"):
            pardiso.threads()
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("workers", [pytest.param("2", marks=PARDISO), pytest.param("1", marks=PARDISO), "SciPy"])
def test_a_banded_batch_matches_single_solves_and_reports_its_singular_member(mesh, kappa, monkeypatch, workers):
    from tmcore.core.linalg import pardiso

    if workers == "SciPy":  # no MKL: SciPy's dpbtrf, one matrix after another
        monkeypatch.setattr(pardiso, "available", lambda: False)
    else:
        monkeypatch.setenv(pardiso.ENV_THREADS, workers)
    K_, b_ = _condensed_batch(mesh, kappa)
    assert solvers.factorize(K_.pattern, K_.values, "banded").workers == 1  # too little work for a second thread
    monkeypatch.setattr(solvers, "PARALLEL_BAND_WORK", 0)  # these small matrices side by side too
    factor = solvers.factorize(K_.pattern, K_.values, "banded")
    assert (factor.workers, factor.mkl) == {"2": (2, True), "1": (1, True), "SciPy": (1, False)}[workers]
    assert not solvers.factorize(K_.pattern, K_.values[:1], "banded").mkl  # one matrix: SciPy's arithmetic
    values = K_.values.detach().clone().requires_grad_(True)
    u = SparseMatrix.from_pattern(K_.pattern, values).solve(b_, backend="banded")
    for i in range(kappa.shape[0]):
        reference = SparseMatrix.from_pattern(K_.pattern, K_.values[i]).solve(b_, backend="splu")
        assert float((u[i].detach() - reference).norm() / reference.norm()) <= 1e-12
    if workers == "1":  # MKL's routine on one thread or two: the same bits
        monkeypatch.setenv(pardiso.ENV_THREADS, "2")
        assert torch.equal(SparseMatrix.from_pattern(K_.pattern, K_.values).solve(b_, backend="banded"), u.detach())
    (u**2).sum().backward()  # the adjoint solves go through the same factors
    for i in (0, 4):
        single = K_.values[i].detach().clone().requires_grad_(True)
        (SparseMatrix.from_pattern(K_.pattern, single).solve(b_, backend="splu") ** 2).sum().backward()
        assert torch.allclose(values.grad[i], single.grad, rtol=1e-10, atol=1e-14)
    off_diagonal = K_.pattern.rows != K_.pattern.cols
    broken = K_.values.detach().clone()
    broken[3] = torch.where(off_diagonal, 3.0 * broken[3], broken[3])  # symmetric, positive diagonal, indefinite
    with pytest.raises(SingularMatrixError, match=r"matrix 3 of a batch of 5: .*not positive definite"):
        SparseMatrix.from_pattern(K_.pattern, broken).solve(b_, backend="banded")


def test_the_batched_guide_runs_and_prints_what_it_shows():
    """docs/batched.md: its python blocks run in order and print the text blocks that follow them."""
    from .docpages import run_page

    run_page("batched.md", minimum_blocks=3)
