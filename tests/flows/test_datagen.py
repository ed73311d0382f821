"""The operator-learning data set: one chunked netCDF file, cached, deterministic, the same on Dask as on threads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flows.artifacts import Store, iter_refs
from flows.datagen import open_samples, operator_dataset
from flows.runners import task_runner
from tests.tmcore.docpages import run_example
from tmcore.core.mesh.io import mesh_from_xarray
from tmcore.methods.batch import random_fields

# 96 samples on an 8 x 8 grid (81 nodes), three shards of 32, chunks of 32 samples
SMALL = {"n_samples": 96, "cells": 8, "shard_size": 32, "batch_size": 32, "seed": 5, "sigma": 0.5}


def _contents(store: Store) -> dict[str, list[str]]:
    """Stage identity -> content hashes of what it produced, from the store's index."""
    return {
        path.stem: sorted(ref["content"] for ref in iter_refs(store.read_index(path.stem)["result"]))
        for path in sorted((store.root / "index").glob("*.json"))
    }


def _run(store: Store, runner=None, **overrides):
    flow = operator_dataset if runner is None else operator_dataset.with_options(task_runner=runner)
    return flow(**{**SMALL, **overrides}, store=str(store.root))


@pytest.fixture(scope="module")
def threaded(prefect_api, tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("datagen") / "threads")
    return store, _run(store, task_runner(max_workers=2))


def test_dataset_holds_the_samples_with_a_sample_dimension_and_opens_lazily(threaded):
    import dask.array

    store, result = threaded
    assert result["states"]["datagen_shard"] == ["Completed"] * 3
    data = open_samples(result["path"])
    assert dict(data.sizes) == {"sample": 96, "node": 81, "dim": 2, "cell": 128, "vertex": 3}
    assert isinstance(data["kappa"].data, dask.array.Array)
    assert data["kappa"].chunks == ((32, 32, 32), (81,)) and data["u"].chunks == ((32, 32, 32), (81,))
    # deterministic given the seed: sample i's kappa is exp(sigma * field(seed, i)), whichever shard made it
    points = torch.from_numpy(data["points"].values)
    expected = torch.exp(0.5 * random_fields(points, [0, 50, 95], seed=5, length_scale=0.25)).numpy()
    assert np.allclose(data["kappa"].isel(sample=[0, 50, 95]).values, expected, rtol=1e-14)
    # the dataset carries its mesh; u vanishes on the Dirichlet nodes and is positive inside (f = 1)
    mesh = mesh_from_xarray(data.load())
    assert mesh.n_points == 81
    mask = data["dirichlet_mask"].values.astype(bool)
    assert np.all(data["u"].values[:, mask] == 0.0) and np.all(data["u"].values[:, ~mask] > 0.0)


def test_a_second_run_is_cached_and_a_new_seed_recomputes_the_shards(threaded):
    store, first = threaded
    again = _run(store, task_runner(max_workers=2))
    assert again["states"] == {
        "generate_mesh": ["Cached"],
        "datagen_shard": ["Cached"] * 3,
        "datagen_merge": ["Cached"],
    }
    assert again["dataset"] == first["dataset"]
    other = _run(store, task_runner(max_workers=2), seed=6, n_samples=32)
    assert other["states"]["generate_mesh"] == ["Cached"] and other["states"]["datagen_shard"] == ["Completed"]
    assert other["dataset"]["content"] != first["dataset"]["content"]


def test_on_a_local_dask_cluster_the_artifacts_match_the_threaded_run(threaded, tmp_path):
    store, on_threads = threaded
    dask_store = Store(tmp_path / "dask")
    on_dask = _run(dask_store, task_runner("local", max_workers=2))
    assert on_dask["states"]["datagen_shard"] == ["Completed"] * 3  # computed on the cluster, not read from a cache
    assert on_dask["dataset"]["content"] == on_threads["dataset"]["content"]
    threaded_contents = {key: value for key, value in _contents(store).items() if key in _contents(dask_store)}
    assert _contents(dask_store) == threaded_contents
    assert len(_contents(dask_store)) == 1 + 3 + 1  # mesh, three shards, merge
    a, b = open_samples(on_dask["path"]).load(), open_samples(on_threads["path"]).load()
    assert np.array_equal(a["u"].values, b["u"].values) and np.array_equal(a["kappa"].values, b["kappa"].values)


def test_a_surrogate_learns_from_the_dataset(threaded, monkeypatch):
    """The flow's default data (1024 samples, 16 x 16 grid, sigma 1) and the training script, 300 steps."""
    store, _ = threaded
    result = _run(
        store, task_runner(max_workers=2), n_samples=1024, cells=16, shard_size=256, batch_size=64, seed=0, sigma=1.0
    )
    out = run_example("neural_surrogate.py", monkeypatch, result["path"], 300)
    assert out["n_samples"] == 1024 and out["n_chunks"] == 16
    assert out["losses"][-1] < 0.2 * out["losses"][0]
    # the network beats the linear map between the same coefficients, and both beat the mean
    assert out["mlp_error"] < 0.8 * out["linear_error"] < 0.8 * out["mean_error"], (
        out["mlp_error"],
        out["linear_error"],
        out["mean_error"],
    )


def test_parameters_are_checked_before_any_work(prefect_api, tmp_path):
    with pytest.raises(ValueError, match="n_samples must be an int >= 1"):
        _run(Store(tmp_path / "store"), n_samples=0)
