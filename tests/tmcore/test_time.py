"""Implicit Euler and Crank-Nicolson: exact decay rates, adjoint gradients, factorisation reuse, checkpointing."""

import math

import pytest
import torch

from tmcore import ElementAssembler, Mesh, NodeAssembler, solvers
from tmcore.forms import Diffusion
from tmcore.methods.gradcheck import finite_difference_check, taylor_test
from tmcore.methods.transient import TimeStepper, crank_nicolson, implicit_euler, integrate

SCHEMES = ["implicit-euler", "crank-nicolson"]


class Mass(ElementAssembler):
    def forward(self, u, v):
        return u * v


class Load(NodeAssembler):
    def forward(self, v, f):
        return f * v


def _sine_problem(n: int):
    mesh = Mesh.gen_grid((n, n), element_type="quad")
    M = Mass.from_mesh(mesh)()
    K = Diffusion.from_mesh(mesh)(scalar_data={"kappa": 1.0})
    x, y = mesh.points[:, 0], mesh.points[:, 1]
    u0 = torch.sin(math.pi * x) * torch.sin(math.pi * y)
    return mesh, M, K, u0


def _discrete_eigenvalue(n: int) -> float:
    """Q1 on a uniform n x n grid: sin(pi x) sin(pi y) is an eigenvector of K v = lam M v with this lam."""
    h = 1.0 / n
    c = math.cos(math.pi * h)
    return 2 * 6 * (1 - c) / (h**2 * (2 + c))


def _amplification(scheme: str, z: float) -> float:
    return 1 / (1 + z) if scheme == "implicit-euler" else (1 - z / 2) / (1 + z / 2)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_sine_mode_decays_at_the_exact_discrete_rate(scheme):
    n, dt, steps = 16, 0.01, 25
    mesh, M, K, u0 = _sine_problem(n)
    traj = integrate(M, K, u0, dt, steps, scheme=scheme, mask=mesh.boundary_mask)
    factor = _amplification(scheme, dt * _discrete_eigenvalue(n)) ** steps
    assert (traj.final - factor * u0).abs().max() < 1e-12


@pytest.mark.parametrize("scheme, order", [("implicit-euler", 1), ("crank-nicolson", 2)])
def test_time_error_falls_at_the_scheme_order_and_matches_the_continuous_rate(scheme, order):
    n, T = 32, 0.05
    mesh, M, K, u0 = _sine_problem(n)
    lam_h = _discrete_eigenvalue(n)
    centre = int(torch.argmax(u0))
    errors = []
    for steps in (10, 20, 40):
        traj = integrate(M, K, u0, T / steps, steps, scheme=scheme, mask=mesh.boundary_mask, checkpoint=None)
        amplitude = float(traj.final[centre] / u0[centre])
        errors.append(abs(amplitude - math.exp(-lam_h * T)))  # time error alone
    # against the PDE: the continuous rate 2 pi^2, up to O(h^2) in space and O(dt^order) in time
    assert amplitude == pytest.approx(math.exp(-2 * math.pi**2 * T), rel={1: 2e-2, 2: 1e-2}[order])
    rates = [math.log2(errors[i] / errors[i + 1]) for i in range(2)]
    assert all(abs(rate - order) < 0.15 for rate in rates), rates


def _transient_loss(mesh, scheme, checkpoint=None, n_steps=12, g=None):
    """A final-time misfit and a running objective as functions of (kappa per cell, u0)."""
    M = Mass.from_mesh(mesh)()
    laplace = Diffusion.from_mesh(mesh)
    x, y = mesh.points[:, 0], mesh.points[:, 1]
    target = 0.1 * x * (1 - x) * y
    f = Load.from_mesh(mesh)(point_data={"f": 1.0 + x})

    def loss(kappa, u0):
        K = laplace(element_data={"kappa": kappa})
        traj = integrate(
            M,
            K,
            u0,
            0.02,
            n_steps,
            scheme=scheme,
            mask=mesh.boundary_mask,
            dirichlet_value=g,
            source=f,
            objective=lambda step, t, u: 0.02 * (u**2).sum(),
            checkpoint=checkpoint,
        )
        return ((traj.final - target) ** 2).sum() + 0.1 * traj.objective

    return loss


@pytest.fixture(scope="module")
def small_mesh():
    mesh = Mesh.gen_grid((5, 5), element_type="triangle")
    return mesh


@pytest.mark.parametrize("scheme", SCHEMES)
def test_gradients_wrt_kappa_and_initial_state_pass_fd_and_taylor(small_mesh, scheme):
    loss = _transient_loss(small_mesh, scheme, checkpoint=4)
    gen = torch.Generator().manual_seed(0)
    kappa0 = 1.0 + torch.rand(small_mesh.n_cells, generator=gen, dtype=torch.float64)
    u00 = torch.rand(small_mesh.n_points, generator=gen, dtype=torch.float64)
    fd_k = finite_difference_check(lambda k: loss(k, u00), kappa0, n_probes=5)
    fd_u = finite_difference_check(
        lambda u: loss(kappa0, u), u00, indices=torch.nonzero(~small_mesh.boundary_mask).flatten()[:5]
    )
    assert fd_k.median_digits > 8, fd_k.table()
    assert fd_u.median_digits > 8, fd_u.table()
    assert taylor_test(lambda k: loss(k, u00), kappa0, eps0=0.1).min_rate > 1.9
    assert taylor_test(lambda u: loss(kappa0, u), u00, eps0=0.1).min_rate > 1.9


def test_gradient_wrt_dirichlet_values(small_mesh):
    mask = small_mesh.boundary_mask
    g0 = 0.5 + 0.1 * torch.arange(int(mask.sum()), dtype=torch.float64)
    kappa = torch.ones(small_mesh.n_cells, dtype=torch.float64)
    u0 = torch.zeros(small_mesh.n_points, dtype=torch.float64)

    def loss(g):
        return _transient_loss(small_mesh, "crank-nicolson", checkpoint=3, g=g)(kappa, u0)

    check = finite_difference_check(loss, g0, n_probes=4)
    assert check.median_digits > 8, check.table()


def test_checkpointing_gives_the_same_gradients_with_one_factorisation(small_mesh):
    gen = torch.Generator().manual_seed(3)
    kappa0 = 1.0 + torch.rand(small_mesh.n_cells, generator=gen, dtype=torch.float64)
    u00 = torch.rand(small_mesh.n_points, generator=gen, dtype=torch.float64)
    grads = {}
    for checkpoint in (None, 1, 5, "auto"):
        kappa, u0 = kappa0.clone().requires_grad_(True), u00.clone().requires_grad_(True)
        before = solvers.stats.factorizations
        _transient_loss(small_mesh, "crank-nicolson", checkpoint=checkpoint, n_steps=20)(kappa, u0).backward()
        assert solvers.stats.factorizations - before == 1  # the step matrix, forward and backward
        grads[checkpoint] = (kappa.grad, u0.grad)
    for checkpoint in (1, 5, "auto"):
        for a, b in zip(grads[None], grads[checkpoint]):
            assert torch.allclose(a, b, rtol=1e-12, atol=1e-15)


def test_one_adjoint_solve_per_step_and_recomputation_counted(small_mesh):
    M = Mass.from_mesh(small_mesh)()
    u0 = torch.ones(small_mesh.n_points, dtype=torch.float64)
    for checkpoint, forward in ((None, 30), (6, 60)):
        kappa = torch.ones(small_mesh.n_cells, dtype=torch.float64, requires_grad=True)
        K = Diffusion.from_mesh(small_mesh)(element_data={"kappa": kappa})
        stepper = TimeStepper(M, K, 0.01, "implicit-euler", mask=small_mesh.boundary_mask)
        stepper.run(u0, 30, checkpoint=checkpoint).final.sum().backward()
        assert (stepper.counters.factorizations, stepper.counters.adjoint_solves, stepper.counters.forward_solves) == (
            1,
            30,
            forward,
        )
        assert kappa.grad is not None and bool(torch.isfinite(kappa.grad).all())


def saved_bytes(fn):
    """(bytes of the distinct storages autograd saves for the backward while fn runs, fn's result).

    Tensors saved inside torch.utils.checkpoint segments are not seen: checkpoint drops them.
    """
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(storages.values()), out


def test_checkpointing_bounds_the_graph_memory():
    mesh = Mesh.gen_grid((40, 40), element_type="quad")
    M = Mass.from_mesh(mesh)()
    kappa = torch.ones(mesh.n_cells, dtype=torch.float64, requires_grad=True)
    K = Diffusion.from_mesh(mesh)(element_data={"kappa": kappa})
    stepper = TimeStepper(M, K, 1e-3, "crank-nicolson", mask=mesh.boundary_mask)
    u0 = torch.rand(mesh.n_points, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    steps = 100
    full_bytes, full = saved_bytes(lambda: stepper.run(u0, steps, checkpoint=None))
    n_free = int((~mesh.boundary_mask).sum())
    per_step = 8 * (mesh.n_points + n_free)  # the state entering each step and the step's free solution
    shared = 8 * (K.values.numel() + 2 * mesh.n_points)  # the step matrix's values, index vectors
    assert steps * per_step <= full_bytes <= steps * per_step + shared
    chunked_bytes, chunked = saved_bytes(lambda: stepper.run(u0, steps, checkpoint="auto"))
    assert chunked.segments == math.ceil(steps / math.ceil(math.sqrt(steps)))
    assert chunked_bytes <= shared  # checkpointed segments keep nothing per step for the backward
    assert torch.equal(full.final, chunked.final)


def test_checkpointing_bounds_the_resident_memory():
    """The process's resident memory, each run measured in its own fresh process."""
    from benchmarks.transient_memory import measure_in_fresh_process

    full, chunked = measure_in_fresh_process(300, 60, None), measure_in_fresh_process(300, 60, "auto")
    predicted = 300 * 8 * (61 * 61 + 59 * 59) / 2**20  # two vectors per step, MiB
    assert full["saved_mib"] == pytest.approx(predicted, rel=0.05)
    assert full["peak_forward_mib"] > 0.8 * predicted
    assert chunked["peak_forward_mib"] < 0.3 * full["peak_forward_mib"], (full, chunked)
    assert chunked["grad_norm"] == pytest.approx(full["grad_norm"], rel=1e-12)


@pytest.mark.slow(
    reason="the issue's memory study: 1000 steps at 1e4 nodes, twice, in fresh processes (about a minute)"
)
def test_thousand_steps_at_ten_thousand_nodes_fit_in_a_few_states():
    from benchmarks.transient_memory import measure_in_fresh_process

    full, chunked = measure_in_fresh_process(1000, 100, None), measure_in_fresh_process(1000, 100, "auto")
    assert full["nodes"] == 10201 and chunked["segments"] == 32
    assert full["peak_forward_mib"] > 140  # 1000 x 2 vectors of 1e4 doubles
    assert chunked["peak_total_mib"] < 0.2 * full["peak_forward_mib"]
    assert chunked["grad_norm"] == pytest.approx(full["grad_norm"], rel=1e-12)


def test_sources_as_tensor_per_level_and_callable_agree(small_mesh):
    M = Mass.from_mesh(small_mesh)()
    K = Diffusion.from_mesh(small_mesh)(scalar_data={"kappa": 1.0})
    b = Load.from_mesh(small_mesh)(point_data={"f": torch.ones(small_mesh.n_points, dtype=torch.float64)})
    u0 = torch.zeros(small_mesh.n_points, dtype=torch.float64)
    levels = torch.stack([b * math.cos(k * 0.05) for k in range(9)])
    a = crank_nicolson(M, K, u0, 0.05, 8, source=levels, mask=small_mesh.boundary_mask, save_steps=(0, 4, -1))
    c = crank_nicolson(M, K, u0, 0.05, 8, source=lambda t: b * math.cos(t), mask=small_mesh.boundary_mask)
    assert torch.allclose(a.final, c.final, rtol=1e-13, atol=1e-15)
    assert sorted(a.states) == [0, 4, 8] and torch.equal(a.states[8], a.final)
    steady = implicit_euler(M, K, u0, 10.0, 30, source=b, mask=small_mesh.boundary_mask)
    K_ff = K.to_dense()[~small_mesh.boundary_mask][:, ~small_mesh.boundary_mask]
    expected = torch.linalg.solve(K_ff, b[~small_mesh.boundary_mask])
    assert torch.allclose(steady.final[~small_mesh.boundary_mask], expected, rtol=1e-10)


def test_stepper_checks_its_arguments(small_mesh):
    M = Mass.from_mesh(small_mesh)()
    K = Diffusion.from_mesh(small_mesh)(scalar_data={"kappa": 1.0})
    with pytest.raises(ValueError, match=r"scheme must be one of \['crank-nicolson', 'implicit-euler'\]"):
        TimeStepper(M, K, 0.1, "rk4")
    with pytest.raises(ValueError, match="dt must be a positive finite number"):
        TimeStepper(M, K, 0.0)
    other = Diffusion.from_mesh(Mesh.gen_grid((2, 2)))(scalar_data={"kappa": 1.0})
    with pytest.raises(ValueError, match="M and K must share a sparsity pattern"):
        TimeStepper(M, other, 0.1)
    stepper = TimeStepper(M, K, 0.1, mask=small_mesh.boundary_mask)
    with pytest.raises(ValueError, match="n_steps must be an int >= 1"):
        stepper.run(torch.zeros(small_mesh.n_points, dtype=torch.float64), 0)
    with pytest.raises(ValueError, match=r"u0 must be a floating-point \(36,\) tensor"):
        stepper.run(torch.zeros(3), 2)
    with pytest.raises(ValueError, match="checkpoint must be None, 'auto' or a segment length"):
        stepper.run(torch.zeros(small_mesh.n_points, dtype=torch.float64), 2, checkpoint=0)


def test_transient_example_runs_as_written(monkeypatch):
    from .docpages import run_example

    losses = run_example("transient_heat.py", monkeypatch, 4, 8)["losses"]
    assert len(losses) == 4 and losses[-1] < losses[0]


def test_guide_page_runs_and_prints_what_it_shows():
    from .docpages import run_page

    run_page("time.md")
