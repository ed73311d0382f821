"""Checkpoint and resume of the long studies: a run interrupted after any checkpoint and
resumed from it (through a netCDF artifact, no pickle) ends bitwise where an uninterrupted
run ends."""

from __future__ import annotations

import pytest
import torch

from flows.artifacts import state_from_dataset, state_to_dataset
from tmcore import Mesh
from tmcore.studies import coefficient_identification, thermal_topology

IDENT_FIELDS = ("loss", "misfit", "u_rel_max_error", "kappa", "kappa_true", "u", "u_obs")
TOPO_FIELDS = ("compliance", "volume", "weighted_volume", "rho")


class Crash(Exception):
    pass


@pytest.fixture(scope="module")
def mesh() -> Mesh:
    return Mesh.gen_rectangle(chara_length=0.2)


def _through_the_store(store, state):
    """A state as the flows keep it: a checkpoint artifact (netCDF), read back and verified."""
    return store.latest_checkpoint("study-test") if store.put_checkpoint("study-test", state) else None


def _interrupted(study, mesh, store, steps, every, crash_after, **options):
    """Run ``study`` with checkpoints, crash in the callback of step ``crash_after``; the saved states."""
    states = []

    def callback(step, value):
        if step == crash_after:
            raise Crash(step)

    with pytest.raises(Crash):
        study(
            mesh,
            steps=steps,
            checkpoint_every=every,
            checkpoint=lambda s: states.append(_through_the_store(store, s)),
            callback=callback,
            **options,
        )
    return states


def _assert_bitwise(a, b, names, snapshots=True):
    for name in names:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and torch.equal(x, y), name
    if snapshots:
        assert sorted(a.snapshots) == sorted(b.snapshots)
        for step in a.snapshots:
            assert torch.equal(a.snapshots[step], b.snapshots[step]), step


def test_identification_resumes_bitwise_from_every_checkpoint(mesh, store):
    steps, every = 9, 3
    whole = coefficient_identification(mesh, steps=steps, snapshot_every=2)
    states = _interrupted(coefficient_identification, mesh, store, steps, every, crash_after=7, snapshot_every=2)
    assert [s["step"] for s in states] == [3, 6]  # after steps 3 and 6; never after the last
    for state in states:
        assert state["optimizer"]["state"][0]["step"].dtype == torch.float32  # Adam's own dtype survives the file
        resumed = coefficient_identification(mesh, steps=steps, snapshot_every=2, resume_from=state)
        _assert_bitwise(resumed, whole, IDENT_FIELDS)


@pytest.mark.parametrize(
    "options",
    [{}, {"filter": "density"}, {"filter": "sensitivity", "volume_weighting": "measure"}],
    ids=["plain", "density-filter", "sensitivity-filter"],
)
def test_topology_resumes_bitwise(mesh, store, options):
    steps = 6
    whole = thermal_topology(mesh, steps=steps, snapshot_steps=(0, 2, 5), **options)
    (state,) = _interrupted(thermal_topology, mesh, store, steps, 4, crash_after=4, snapshot_steps=(0, 2, 5), **options)
    assert state["step"] == 4 and state["optimizer"]["state"][0]["step"] == 4
    resumed = thermal_topology(mesh, steps=steps, snapshot_steps=(0, 2, 5), resume_from=state, **options)
    _assert_bitwise(resumed, whole, TOPO_FIELDS)
    assert resumed.steps == steps and (resumed.design is None) == (whole.design is None)


def test_a_state_round_trips_through_netcdf_exactly(mesh):
    optimizer_state = {
        "state": {
            0: {
                "step": torch.tensor(3.0),
                "exp_avg": torch.randn(5, dtype=torch.float64),
                "flag": torch.tensor([True, False]),
            }
        },
        "param_groups": [
            {"lr": 0.1 + 2e-17, "betas": (0.9, 0.999), "eps": 1e-8, "foreach": None, "maximize": False, "params": [0]}
        ],
    }
    state = {
        "step": 7,
        "name": "x",
        "nan": float("nan"),
        "ints": torch.arange(4),
        "optimizer": optimizer_state,
        "empty": {},
    }
    back = state_from_dataset(state_to_dataset(state))
    assert back["step"] == 7 and back["name"] == "x" and back["nan"] != back["nan"] and back["empty"] == {}
    group = back["optimizer"]["param_groups"][0]
    assert group == optimizer_state["param_groups"][0] and isinstance(group["betas"], tuple)
    saved = back["optimizer"]["state"][0]
    for name, value in optimizer_state["state"][0].items():
        assert saved[name].dtype == value.dtype and torch.equal(saved[name], value), name
    assert torch.equal(back["ints"], state["ints"])
    with pytest.raises(TypeError, match="a state may hold"):
        state_to_dataset({"f": lambda: 0})
    with pytest.raises(TypeError, match="dtypes"):
        state_to_dataset({"z": torch.ones(2, dtype=torch.complex64)})


def test_checkpoint_arguments_are_checked(mesh):
    with pytest.raises(ValueError, match="checkpoint_every=2 needs checkpoint, a callable"):
        coefficient_identification(mesh, steps=3, checkpoint_every=2)
    with pytest.raises(ValueError, match="checkpoint was given but checkpoint_every is None"):
        thermal_topology(mesh, steps=3, checkpoint=print)
    with pytest.raises(ValueError, match=r"checkpoint_every must be an int >= 1, got 0"):
        coefficient_identification(mesh, steps=3, checkpoint_every=0, checkpoint=print)


def test_a_checkpoint_from_another_run_is_refused(mesh):
    states = []
    coefficient_identification(mesh, steps=3, checkpoint_every=1, checkpoint=states.append)
    state = states[-1]
    with pytest.raises(
        ValueError, match=r"resume_from was made with other parameters \(lr: checkpoint 0.03, now 0.1\)"
    ):
        coefficient_identification(mesh, steps=3, lr=0.1, resume_from=state)
    with pytest.raises(
        ValueError, match=r"resume_from is a checkpoint of 'coefficient_identification', not of 'thermal_topology'"
    ):
        thermal_topology(mesh, steps=3, resume_from=state)
    with pytest.raises(ValueError, match=r"resume_from holds step 2, outside 0..steps \(1\)"):
        coefficient_identification(mesh, steps=1, resume_from=state)
    other = Mesh.gen_rectangle(chara_length=0.3)
    with pytest.raises(ValueError, match=r"n_points: checkpoint \d+, now \d+"):
        coefficient_identification(other, steps=3, resume_from=state)
    broken = {**state, "theta": state["theta"].clone()}
    broken["theta"][0] = float("nan")
    with pytest.raises(ValueError, match=r"resume_from\['theta'\] contains NaN or inf"):
        coefficient_identification(mesh, steps=3, resume_from=broken)
    with pytest.raises(
        ValueError, match=r"resume_from is not a checkpoint of coefficient_identification: it lacks \['optimizer'\]"
    ):
        coefficient_identification(mesh, steps=3, resume_from={k: v for k, v in state.items() if k != "optimizer"})


def test_states_handed_out_are_copies(mesh):
    states = []
    coefficient_identification(mesh, steps=4, checkpoint_every=1, checkpoint=states.append)
    assert [s["step"] for s in states] == [1, 2, 3]
    assert not torch.equal(states[0]["theta"], states[1]["theta"])  # later steps did not change an earlier state
    assert not torch.equal(states[0]["optimizer"]["state"][0]["exp_avg"], states[2]["optimizer"]["state"][0]["exp_avg"])


def test_the_store_keeps_the_latest_checkpoint_only_and_skips_a_damaged_one(mesh, store, caplog):
    states = []
    coefficient_identification(mesh, steps=4, checkpoint_every=1, checkpoint=states.append)
    key = "identify_coefficient-0123abcd"
    first = store.put_checkpoint(key, states[0])
    second = store.put_checkpoint(key, states[1])
    assert not store.path(first).exists() and store.verify(second)  # superseded: deleted
    assert store.latest_checkpoint(key)["step"] == 2
    data = store.path(second).read_bytes()
    store.path(second).write_bytes(data[: len(data) // 2])
    with caplog.at_level("WARNING", logger="flows.artifacts"):
        assert store.latest_checkpoint(key) is None  # a damaged checkpoint: start over, never resume from it
    assert "failed its sha256 check" in caplog.text and "starting over" in caplog.text
    assert [p.read_bytes() for p in (store.root / "quarantine").iterdir()] == [data[: len(data) // 2]]
    store.put_checkpoint(key, states[2])
    store.discard_checkpoint(key)
    assert store.latest_checkpoint(key) is None and not list((store.root / "objects").rglob("*.nc"))
