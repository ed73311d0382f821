"""The two worked studies as library functions: short runs, histories, argument checks."""

import importlib.util

import pytest
import torch

from tmcore import Mesh
from tmcore.methods.gradcheck import finite_difference_check
from tmcore.studies import IdentificationProblem, IdentificationResult, coefficient_identification, thermal_topology
from tmcore.topology.filters import HelmholtzFilter


@pytest.fixture(scope="module")
def id_mesh() -> Mesh:
    return Mesh.gen_rectangle(chara_length=0.1)


@pytest.fixture(scope="module")
def topo_mesh() -> Mesh:
    return Mesh.gen_rectangle(chara_length=0.05)


@pytest.fixture(scope="module")
def identification(id_mesh):
    calls = []
    result = coefficient_identification(
        id_mesh, steps=50, callback=lambda step, loss: calls.append((step, loss)), snapshot_every=10
    )
    return result, calls


@pytest.fixture(scope="module")
def topology(topo_mesh):
    calls = []
    result = thermal_topology(
        topo_mesh, steps=10, snapshot_steps=(0, 5, -1), callback=lambda step, c: calls.append((step, c))
    )
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


def test_identification_kappa_error_report(identification, id_mesh):
    result, _ = identification
    assert torch.equal(result.points, id_mesh.points)
    report = result.kappa_error_report(centre_radius=0.2, threshold=0.05)
    error = result.kappa_error
    distance = (id_mesh.points - 0.5).norm(dim=1)
    assert report.peak == float(error.max()) == max(report.near_centre, report.away)
    assert report.peak_distance == pytest.approx(float(distance[error.argmax()]), abs=1e-12)
    assert report.near_centre == float(error[distance < 0.2].max())
    assert report.away == float(error[distance >= 0.2].max())
    assert report.away_peak_distance >= 0.2
    assert report.away_fraction_below == pytest.approx(float((error[distance >= 0.2] < 0.05).double().mean()))
    with pytest.raises(ValueError, match="leaves no nodes on one side"):
        result.kappa_error_report(centre_radius=5.0)
    with pytest.raises(ValueError, match="centre_radius"):
        result.kappa_error_report(centre_radius=-1.0)
    bare = IdentificationResult(
        **{
            name: getattr(result, name)
            for name in ("loss", "misfit", "u_rel_max_error", "seconds_per_step", "kappa", "kappa_true", "u", "u_obs")
        }
    )
    with pytest.raises(ValueError, match="no node coordinates"):
        bare.kappa_error_report()


@pytest.fixture
def one_thread():
    """Small solves run fastest on one thread; under load on the shared 2-core machine two were far slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.slow  # 2 x 5000 Adam steps on the chapter's mesh: about 30 s on one idle core
def test_identification_reproduces_the_chapter_and_smoothness_removes_the_centre_blob(one_thread):
    mesh = Mesh.gen_rectangle(chara_length=0.04)
    plain = coefficient_identification(mesh, steps=5000)
    assert float(plain.loss[0] / plain.loss[-1]) > 1e7
    assert plain.final_u_rel_max_error <= 1e-4
    blob = plain.kappa_error_report(centre_radius=0.15)
    assert blob.peak_distance < 0.15 and blob.near_centre > 0.05  # the chapter's centre blob
    smooth = coefficient_identification(mesh, steps=5000, smoothness=1e-8)
    report = smooth.kappa_error_report(centre_radius=0.15)
    assert report.near_centre < 0.01 and report.near_centre < 0.1 * blob.near_centre
    assert float(smooth.loss[0] / smooth.misfit[-1]) > 1e7
    assert smooth.final_u_rel_max_error <= 1e-4
    assert report.peak < 0.025


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


def test_topology_reports_both_volumes(topology, topo_mesh):
    # the chapter's volume is the plain mean; on the unstructured mesh the measure-weighted one differs
    result, _ = topology
    measures = topo_mesh.cell_measures()
    weighted = float((measures * result.rho).sum() / measures.sum())
    assert float(result.weighted_volume[-1]) == pytest.approx(weighted, abs=1e-14)
    assert abs(weighted - 0.4) > 1e-3
    held = thermal_topology(topo_mesh, steps=5, snapshot_steps=None, volume_weighting="measure")
    assert float((held.weighted_volume - 0.4).abs().max()) <= 1e-10
    assert abs(float(held.volume[-1]) - 0.4) > 1e-3
    assert float(held.compliance[-1]) < 0.7 * float(held.compliance[0])


@pytest.mark.parametrize("volume_weighting", ["mean", "measure"])
def test_topology_density_filter_on_the_unstructured_mesh(topo_mesh, volume_weighting):
    result = thermal_topology(
        topo_mesh,
        steps=8,
        snapshot_steps=(0, -1),
        filter="density",
        filter_radius=0.03,
        volume_weighting=volume_weighting,
    )
    filt = HelmholtzFilter(topo_mesh, 0.03)
    assert torch.allclose(result.rho, filt(result.design), rtol=1e-12)
    assert torch.allclose(result.snapshots[0], torch.full_like(result.rho, 0.4), rtol=1e-12)
    assert float(result.compliance[-1]) < 0.5 * float(result.compliance[0])
    if volume_weighting == "measure":
        # the filter keeps the measure-weighted volume: the physical densities hold it too
        assert float((result.weighted_volume - 0.4).abs().max()) <= 1e-10
    else:
        # the design's plain mean is held; the physical one drifts with the mesh's non-uniformity
        assert abs(float(result.design.mean()) - 0.4) <= 1e-10
        assert 1e-5 < abs(float(result.volume[-1]) - 0.4) < 1e-2


def test_topology_sensitivity_filter_keeps_the_chapter_volume(topo_mesh):
    result = thermal_topology(topo_mesh, steps=8, snapshot_steps=None, filter="sensitivity")
    assert result.design is None
    assert float((result.volume - 0.4).abs().max()) <= 1e-10
    assert float(result.compliance[-1]) < 0.5 * float(result.compliance[0])


def test_topology_reproduces_the_chapter():
    # the chapter's mesh and 60 OC steps (about half a second)
    mesh = Mesh.gen_rectangle(chara_length=0.025)
    result = thermal_topology(mesh, steps=60, snapshot_steps=None)
    assert float(result.compliance[0]) == pytest.approx(5.9e-3, rel=0.01)
    assert float(result.compliance[-1]) <= 7.0e-4
    assert float((result.volume - 0.4).abs().max()) <= 1e-10
    assert float(result.weighted_volume[-1]) == pytest.approx(0.4022, abs=5e-4)


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
        ({"filter": "cone"}, "filter"),
        ({"filter": True}, "filter"),
        ({"filter": "density", "filter_radius": -0.1}, "filter_radius"),
        ({"filter_radius": 0.1}, "filter_radius"),
        ({"volume_weighting": "area"}, "volume_weighting"),
    ],
)
def test_topology_rejects_bad_arguments(topo_mesh, kwargs, name):
    with pytest.raises(ValueError, match=name):
        thermal_topology(topo_mesh, **{"steps": 1, **kwargs})
