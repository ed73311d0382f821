"""The two worked studies as library functions: short runs, histories, argument checks."""

import importlib.util

import pytest
import torch

from tmcore import Mesh
from tmcore.gradcheck import finite_difference_check
from tmcore.studies import IdentificationProblem, coefficient_identification, thermal_topology


@pytest.fixture(scope="module")
def id_mesh() -> Mesh:
    return Mesh.gen_rectangle(chara_length=0.1)


@pytest.fixture(scope="module")
def topo_mesh() -> Mesh:
    return Mesh.gen_rectangle(chara_length=0.05)


@pytest.fixture(scope="module")
def identification(id_mesh):
    calls = []
    result = coefficient_identification(id_mesh, steps=50, callback=lambda step, loss: calls.append((step, loss)), snapshot_every=10)
    return result, calls


@pytest.fixture(scope="module")
def topology(topo_mesh):
    calls = []
    result = thermal_topology(topo_mesh, steps=10, snapshot_steps=(0, 5, -1), callback=lambda step, c: calls.append((step, c)))
    return result, calls


# -- identification ---------------------------------------------------------------------------


def test_identification_loss_falls(identification, id_mesh):
    result, _ = identification
    n = id_mesh.n_points
    assert result.loss.shape == result.u_rel_max_error.shape == result.seconds_per_step.shape == (50,)
    for name in ("kappa", "kappa_true", "u", "u_obs"):
        assert getattr(result, name).shape == (n,)
    assert result.loss[-1] < 1e-2 * result.loss[0]
    assert result.u_rel_max_error[-1] < 0.2 * result.u_rel_max_error[0]
    # without smoothness the objective is the misfit
    assert torch.equal(result.loss, result.misfit)
    assert bool((result.seconds_per_step > 0).all())


def test_identification_final_fields_are_consistent(identification, id_mesh):
    result, _ = identification
    problem = IdentificationProblem(id_mesh)
    assert torch.allclose(result.u_obs, problem.u_obs, rtol=0, atol=0)
    assert torch.allclose(result.u, problem.solve(result.kappa), rtol=1e-12, atol=1e-15)
    assert bool((result.kappa > 0).all()) and bool((result.kappa < 2).all())
    x, y = id_mesh.points[:, 0], id_mesh.points[:, 1]
    assert torch.allclose(result.kappa_true, 1 + 0.6 * torch.sin(2 * torch.pi * x) * torch.cos(2 * torch.pi * y))
    # boundary values are the Dirichlet zero
    assert float(result.u[id_mesh.boundary_mask].abs().max()) == 0.0
    # the final state is better than the one the last step started from
    assert result.final_u_rel_max_error < float(result.u_rel_max_error[0])


def test_identification_callback_and_snapshots(identification):
    result, calls = identification
    assert [step for step, _ in calls] == list(range(50))
    assert [loss for _, loss in calls] == result.loss.tolist()
    assert sorted(result.snapshots) == [0, 10, 20, 30, 40]
    # step 0 starts from theta = 0, i.e. kappa = 1
    assert torch.equal(result.snapshots[0], torch.ones_like(result.kappa))


def test_smoothness_changes_result(id_mesh):
    plain = coefficient_identification(id_mesh, steps=20)
    smooth = coefficient_identification(id_mesh, steps=20, smoothness=1e-3)
    # theta = 0 at step 0: the penalty vanishes there
    assert float(smooth.loss[0]) == pytest.approx(float(plain.loss[0]), rel=1e-14)
    assert bool((smooth.loss[1:] > smooth.misfit[1:]).all())
    assert float((smooth.kappa - plain.kappa).abs().max()) > 1e-3
    # a smoother theta: the penalised run has a smaller gradient norm of kappa
    problem = IdentificationProblem(id_mesh)
    theta = lambda kappa: torch.atanh(kappa - 1)  # noqa: E731
    assert problem.regularisation(theta(smooth.kappa)) < problem.regularisation(theta(plain.kappa))


@pytest.mark.parametrize("smoothness", [0.0, 1e-2])
def test_identification_gradient_matches_finite_differences(smoothness):
    mesh = Mesh.gen_rectangle(chara_length=0.2)
    problem = IdentificationProblem(mesh, smoothness=smoothness)
    theta = 0.3 * torch.sin(3 * mesh.points[:, 0]) * torch.cos(2 * mesh.points[:, 1])
    check = finite_difference_check(problem.objective, theta, n_probes=5)
    assert float(check.digits.min()) > 7


def test_identification_accepts_custom_fields(id_mesh):
    result = coefficient_identification(id_mesh, kappa_true=lambda p: 1.0 + 0.3 * p[:, 0], f=2.0, steps=3)
    assert torch.allclose(result.kappa_true, 1.0 + 0.3 * id_mesh.points[:, 0])
    assert result.loss.shape == (3,)


def test_identification_to_xarray(identification):
    result, _ = identification
    if importlib.util.find_spec("xarray") is None:
        with pytest.raises(ImportError, match="xarray"):
            result.to_xarray()
    else:
        ds = result.to_xarray()
        assert ds["loss"].shape == (50,)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"steps": 0}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"steps": True}, "steps"),
        ({"lr": 0.0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"smoothness": -1.0}, "smoothness"),
        ({"callback": 3}, "callback"),
        ({"snapshot_every": 0}, "snapshot_every"),
        ({"kappa_true": torch.ones(3, dtype=torch.float64)}, "kappa_true"),
        ({"kappa_true": -1.0}, "kappa_true"),
        ({"f": torch.ones(2, 2, dtype=torch.float64)}, "f"),
    ],
)
def test_identification_rejects_bad_arguments(id_mesh, kwargs, name):
    with pytest.raises(ValueError, match=name):
        coefficient_identification(id_mesh, **{"steps": 1, **kwargs})


def test_identification_rejects_non_mesh():
    with pytest.raises(TypeError, match="mesh"):
        coefficient_identification("mesh", steps=1)


# -- topology ---------------------------------------------------------------------------------


def test_topology_compliance_falls_volume_held(topology, topo_mesh):
    result, _ = topology
    assert result.compliance.shape == result.volume.shape == result.seconds_per_step.shape == (10,)
    assert result.rho.shape == (topo_mesh.n_cells,)
    assert result.compliance[-1] < 0.5 * result.compliance[0]
    assert bool((result.compliance[1:] < result.compliance[:-1]).all())
    assert float((result.volume - 0.4).abs().max()) < 1e-9
    assert abs(float(result.rho.mean()) - 0.4) < 1e-9
    assert float(result.rho.min()) >= 1e-3 - 1e-15 and float(result.rho.max()) <= 1.0


def test_topology_snapshots_and_callback(topology):
    result, calls = topology
    assert sorted(result.snapshots) == [0, 5, 9]
    assert torch.equal(result.snapshots[0], torch.full_like(result.rho, 0.4))
    # a snapshot is the density its step solved with, so it differs from the final one
    assert not torch.equal(result.snapshots[9], result.rho)
    assert [step for step, _ in calls] == list(range(10))
    assert [c for _, c in calls] == result.compliance.tolist()


def test_topology_uniform_start_matches_chapter_scale(topology):
    # uniform rho = 0.4 on any fine mesh of the unit square: compliance near the chapter's 5.9e-3
    result, _ = topology
    assert float(result.compliance[0]) == pytest.approx(5.92e-3, rel=0.02)


def test_topology_skips_snapshots_past_the_end(topo_mesh, caplog):
    with caplog.at_level("WARNING", logger="tmcore.studies.topology"):
        result = thermal_topology(topo_mesh, steps=2)  # default snapshots (0, 5, 59)
    assert sorted(result.snapshots) == [0]
    assert "outside a run of 2 steps" in caplog.text


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"vf": 0.0}, "vf"),
        ({"vf": 1.0}, "vf"),
        ({"p": 0.0}, "p"),
        ({"kmin": 0.0}, "kmin"),
        ({"kmin": 1.5}, "kmin"),
        ({"sigma": -0.1}, "sigma"),
        ({"steps": 0}, "steps"),
        ({"steps": "10"}, "steps"),
        ({"move_limit": 0.0}, "move_limit"),
        ({"move_limit": 1.5}, "move_limit"),
        ({"callback": "print"}, "callback"),
        ({"snapshot_steps": (0, 1.5)}, "snapshot_steps"),
    ],
)
def test_topology_rejects_bad_arguments(topo_mesh, kwargs, name):
    with pytest.raises(ValueError, match=name):
        thermal_topology(topo_mesh, **{"steps": 1, **kwargs})
