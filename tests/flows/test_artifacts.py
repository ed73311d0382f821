"""The artifact store: hashing, content addressing, verified reads, atomic writes, schemas."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import xarray as xr

from flows import tasks
from flows.artifacts import ArtifactError, Store, atomic_write, atomic_write_bytes, content_hash, hash_array
from flows.benchmarks import Check
from flows.validation import benchmark_table
from tmcore import Mesh
from tmcore.core.mesh.io import mesh_from_xarray, mesh_to_xarray

PROVENANCE = (
    "schema_version",
    "parameters",
    "inputs",
    "tmcore_version",
    "torch_version",
    "device",
    "run_seconds",
    "run_created",
)


# -- hashing ------------------------------------------------------------------------------------


def test_tensors_hash_by_value_dtype_and_shape():
    a = torch.arange(6, dtype=torch.float64)
    assert hash_array(a) == hash_array(a.clone()) == hash_array(a.numpy().copy())
    assert hash_array(a) != hash_array(a.float())
    assert hash_array(a) != hash_array(a.reshape(2, 3))
    b = a.clone()
    b[3] = np.nextafter(3.0, 4.0)  # one ulp
    assert hash_array(a) != hash_array(b)
    assert hash_array(a[::2]) == hash_array(a[::2].contiguous())  # views hash like their values
    assert hash_array(np.array(["x", "y"], dtype=object)) == hash_array(np.array(["x", "y"]))


def test_content_hash_ignores_run_attributes_only():
    ds = xr.Dataset({"u": (("node",), np.linspace(0, 1, 5))}, attrs={"device": "cpu", "run_seconds": 1.0})
    same = ds.assign_attrs(run_seconds=2.0, run_created="tomorrow")
    assert content_hash(ds) == content_hash(same)
    assert content_hash(ds) != content_hash(ds.assign_attrs(device="cuda"))
    assert content_hash(ds) != content_hash(ds.assign(u=ds["u"] * (1 + 1e-16) + 1e-300))
    assert content_hash(ds) != content_hash(ds.rename({"u": "v"}))


# -- the store ----------------------------------------------------------------------------------


def _dataset(seconds: float = 0.5) -> xr.Dataset:
    return xr.Dataset({"u": (("node",), np.arange(4.0))}, attrs={"run_seconds": seconds})


def test_put_is_content_addressed_and_reads_back(store):
    ref = store.put_dataset(_dataset(), "fields")
    assert ref["path"] == f"objects/{ref['sha256'][:2]}/{ref['sha256']}.nc"
    assert store.verify(ref)
    assert store.put_dataset(_dataset(), "fields") == ref  # same bytes: same file
    other = store.put_dataset(_dataset(seconds=9.0), "fields")
    assert other["sha256"] != ref["sha256"] and other["content"] == ref["content"]
    back = store.open_dataset(ref, "fields")
    assert back["u"].values.tolist() == [0.0, 1.0, 2.0, 3.0] and back.attrs["kind"] == "fields"
    with pytest.raises(ArtifactError, match="expected a mesh"):
        store.open_dataset(ref, "mesh")


def test_missing_and_corrupt_artifacts_fail_verification_and_corrupt_ones_are_kept_aside(store):
    ref = store.put_dataset(_dataset(), "fields")
    path = store.path(ref)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="does not match its sha256"):
        store.open_dataset(ref)
    assert not path.exists()
    (kept,) = (store.root / "quarantine").iterdir()
    assert kept.read_bytes() == bytes(data)  # moved aside, not deleted
    assert not store.verify(ref)  # now missing
    with pytest.raises(ArtifactError, match="is missing"):
        store.read_bytes(ref)


def test_store_root_from_argument_environment_or_default(tmp_path, monkeypatch):
    monkeypatch.delenv("TMCORE_ARTIFACTS", raising=False)
    assert str(Store().root) == "data/artifacts"
    monkeypatch.setenv("TMCORE_ARTIFACTS", str(tmp_path / "env"))
    assert Store().root == tmp_path / "env"
    assert Store(tmp_path / "arg").root == tmp_path / "arg"


# -- atomic writes ------------------------------------------------------------------------------


def test_atomic_write_leaves_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "out" / "table.nc"
    atomic_write_bytes(target, b"old")

    def crash(handle):
        handle.write(b"half of the new byt")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, crash)
    assert target.read_bytes() == b"old"
    assert [p.name for p in target.parent.iterdir()] == ["table.nc"]  # the temporary file is gone


def test_atomic_write_survives_a_killed_process(tmp_path):
    """A process killed mid-write (os._exit: no cleanup at all) leaves the final name untouched."""
    target = tmp_path / "figure.png"
    atomic_write_bytes(target, b"complete old figure")
    script = textwrap.dedent(
        f"""
        import os
        from flows.artifacts import atomic_write

        def die(handle):
            handle.write(b"partial")
            handle.flush()
            os._exit(9)

        atomic_write({str(target)!r}, die)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert result.returncode == 9
    assert target.read_bytes() == b"complete old figure"
    leftovers = [p.name for p in tmp_path.iterdir() if p != target]
    assert leftovers and all(name.startswith(".figure.png.") and name.endswith(".tmp") for name in leftovers)


# -- schemas (docs/artifacts.md) -----------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: Mesh.gen_rectangle(chara_length=0.3),
        lambda: Mesh.gen_rectangle(chara_length=0.4, order=2),
        lambda: Mesh.gen_grid((2, 2, 1)),
    ],
    ids=["triangle", "triangle6", "tetra"],
)
def test_mesh_schema_round_trips_through_netcdf(store, make):
    mesh = make()
    mesh.point_data["temperature"] = torch.linspace(0, 1, mesh.n_points, dtype=torch.float64)
    mesh.cell_data["material"] = torch.arange(mesh.n_cells) % 3
    ref = store.put_dataset(mesh_to_xarray(mesh), "mesh")
    ds = store.open_dataset(ref, "mesh")
    assert ds["points"].dims == ("node", "dim") and ds["cells"].dims == ("cell", "vertex")
    assert ds["boundary_mask"].dtype == bool and ds.attrs["cell_type"] == mesh.cell_type
    back = mesh_from_xarray(ds)
    assert back.cell_type == mesh.cell_type
    assert torch.equal(back.points, mesh.points) and torch.equal(back.elements, mesh.elements)
    assert torch.equal(back.boundary_mask, mesh.boundary_mask)
    assert sorted(back.facet_sets.keys()) == sorted(mesh.facet_sets.keys())
    for name in mesh.facet_sets.keys():
        assert torch.equal(back.facet_sets[name], mesh.facet_sets[name])
    assert torch.equal(back.point_data["temperature"], mesh.point_data["temperature"])
    assert torch.equal(back.cell_data["material"], mesh.cell_data["material"])


def _provenance(ds, device="cpu"):
    for name in PROVENANCE:
        assert name in ds.attrs, name
    assert ds.attrs["device"] == device
    json.loads(ds.attrs["parameters"]), json.loads(ds.attrs["inputs"])


def test_stage_outputs_follow_their_schemas(store):
    """Every stage called directly (``.fn``, no Prefect run): the documented dims, variables and provenance."""
    root = str(store.root)
    mesh = tasks.generate_mesh.fn(store=root, kind="grid", cells=4)
    system = tasks.assemble.fn(store=root, mesh=mesh, device="cpu")
    fields = tasks.solve.fn(store=root, mesh=mesh, system=system)
    ds = store.open_dataset(system, "system")
    assert set(ds.data_vars) == {"row", "col", "value", "load", "dirichlet_mask", "dirichlet_value"}
    assert ds["value"].dims == ("entry",) and ds.sizes["node"] == 25
    _provenance(ds)
    assert json.loads(ds.attrs["inputs"]) == {"mesh": mesh["content"]}
    ds = store.open_dataset(fields, "fields")
    assert ds["u"].dims == ("node",) and ds["l2_error"].dims == () and 0 < float(ds["l2_error"]) < 0.1
    _provenance(ds)

    rect = tasks.generate_mesh.fn(store=root, kind="rectangle", chara_length=0.2)
    ident = tasks.identify_coefficient.fn(store=root, mesh=rect, steps=3)
    history = store.open_dataset(ident["history"], "history")
    assert set(history.data_vars) == {"loss", "misfit", "u_rel_max_error"} and history.sizes["step"] == 3
    assert "seconds_per_step" not in history and history.attrs["run_median_seconds_per_step"] > 0
    final = store.open_dataset(ident["fields"], "fields")
    assert {"kappa", "kappa_true", "u", "u_obs"} <= set(final.data_vars) and final["kappa"].dims == ("node",)
    _provenance(history)

    topo = tasks.optimise_topology.fn(store=root, mesh=rect, steps=3)
    history = store.open_dataset(topo["history"], "history")
    assert set(history.data_vars) == {"compliance", "volume", "rho_snapshot"}
    assert history["rho_snapshot"].dims == ("snapshot_step", "cell") and history["snapshot_step"].values.tolist() == [
        0,
        2,
    ]
    assert store.open_dataset(topo["fields"], "fields")["rho"].dims == ("cell",)

    table = store.open_dataset(
        tasks.gradient_check.fn(store=root, mesh=rect, target="topology", n_probes=2), "gradcheck"
    )
    assert table.sizes["probe"] == 2 and table["target"].values.tolist() == ["topology", "topology"]
    assert (table["digits"] > 7).all() and table["index"].dtype == np.int64
    _provenance(table)


def test_benchmark_table_schema_round_trips(store):
    checks = [
        Check("rate", "mms", "L2 rate", 1.98, low=1.85, high=2.15, expected=2.0),
        Check("time", "mms", "solve", 0.1, unit="s"),
    ]
    ds = store.open_dataset(store.put_dataset(benchmark_table(checks), "benchmark"), "benchmark")
    assert ds["case"].values.tolist() == ["rate", "time"]
    assert ds["status"].values.tolist() == ["pass", "info"]
    assert ds["value"].dims == ("case",) and np.isnan(ds["low"].values[1])
    with pytest.raises(ValueError, match="unique"):
        benchmark_table(checks + checks[:1])
