"""The operator-learning data set as a Prefect flow: N (kappa, u) pairs in one chunked netCDF file.

    python -m flows.datagen [--samples 1024] [--seed 0] [--cells 16] [--sigma 1.0] [--shard-size 256]
                            [--batch-size 64] [--store DIR] [--out FILE] [--dask-address ADDR]

``operator-dataset`` runs, as cached tasks::

    generate_mesh            structured grid of the unit square, ``cells`` per side
      -> datagen_shard.map   samples [0, s), [s, 2s), ...: kappa = exp(sigma * field) per node,
                             u = S(kappa) (-div(kappa grad u) = f, u = 0 on the boundary),
                             solved ``batch_size`` at a time (tmcore.methods.batch.diffusion_samples)
      -> datagen_merge       one dataset: kappa and u on (sample, node), chunked on disk

Sample i's kappa depends only on (seed, i) and the field parameters, so the data set is
deterministic given its parameters, whichever runner or worker computed which shard.
Every stage is cached like the others (flows.caching): a second run with the same
parameters is all Cached; more samples or another seed recompute only what changed.

The shards fan out over the flow's task runner: threads by default, a dask.distributed
cluster with ``--dask-address tcp://scheduler:8786`` (or ``$TMCORE_DASK_ADDRESS``). On a
cluster the store must be a folder every worker sees at the same path (``--store
/shared/artifacts`` or ``$TMCORE_ARTIFACTS``); docs/batched.md has the recipe.

The file opens lazily: ``open_samples(path)`` gives dask-backed arrays, one chunk per
``chunk`` samples (default: the batch size), so a training loop reads a chunk at a time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from prefect import flow, unmapped

from tmcore.core.checks import check_count, check_real
from tmcore.core.mesh.io import mesh_from_xarray
from tmcore.methods.batch import diffusion_samples

from . import tasks
from .artifacts import Store, provenance
from .caching import Bound, cached_task
from .cli import add_dask_argument, on_dask
from .runners import task_runner

DATA_VARS = ("kappa", "u")


@cached_task("datagen_shard", sources=("tmcore.methods.batch",))
def datagen_shard(
    store: str,
    mesh: dict,
    start: int,
    stop: int,
    seed: int = 0,
    length_scale: float = 0.25,
    sigma: float = 1.0,
    f: float = 1.0,
    batch_size: int = 64,
) -> dict:
    """Samples [start, stop): kappa and u on (sample, node), a ``fields`` artifact."""
    artifacts = Store(store)
    mesh_ = mesh_from_xarray(artifacts.open_dataset(mesh, "mesh"))
    begin = time.perf_counter()
    kappa, u = diffusion_samples(
        mesh_, range(start, stop), seed=seed, length_scale=length_scale, sigma=sigma, f=f, batch_size=batch_size
    )
    seconds = time.perf_counter() - begin
    parameters = {
        "start": start,
        "stop": stop,
        "seed": seed,
        "length_scale": length_scale,
        "sigma": sigma,
        "f": f,
        "batch_size": batch_size,
    }
    dataset = xr.Dataset(
        {"kappa": (("sample", "node"), kappa.numpy()), "u": (("sample", "node"), u.numpy())},
        coords={"sample": np.arange(start, stop, dtype=np.int64)},
        attrs=provenance(parameters, {"mesh": mesh}, seconds=seconds),
    )
    return artifacts.put_dataset(dataset, "fields")


@cached_task("datagen_merge")
def datagen_merge(store: str, mesh: dict, shards: list, chunk: int = 64) -> dict:
    """The shards as one dataset (sample, node) with the mesh (points, cells, dirichlet mask),
    kappa and u stored in chunks of ``chunk`` samples."""
    artifacts = Store(store)
    parts = [artifacts.open_dataset(ref, "fields") for ref in shards]
    samples = xr.concat([part[list(DATA_VARS)] for part in parts], dim="sample", combine_attrs="drop")
    if not np.array_equal(samples["sample"].values, np.arange(samples.sizes["sample"])):
        raise ValueError(
            f"the shards must cover samples 0..N-1 in order, got {samples['sample'].values.tolist()[:10]}..."
        )
    mesh_ = mesh_from_xarray(artifacts.open_dataset(mesh, "mesh"))
    first = json.loads(parts[0].attrs["parameters"])
    dataset = samples.assign(
        points=(("node", "dim"), mesh_.points.numpy()),
        cells=(("cell", "vertex"), mesh_.elements.numpy().astype(np.int64)),
        dirichlet_mask=(("node",), mesh_.boundary_mask.numpy().astype(np.int8)),
    )
    dataset["kappa"].attrs = {"long_name": "conductivity per node", "definition": "exp(sigma * random field)"}
    dataset["u"].attrs = {
        "long_name": "solution per node",
        "definition": "-div(kappa grad u) = f, u = 0 where dirichlet_mask",
    }
    chunk = max(1, min(int(chunk), dataset.sizes["sample"]))
    for name in DATA_VARS:
        dataset[name].encoding = {"chunksizes": (chunk, dataset.sizes["node"]), "zlib": False, "contiguous": False}
    parameters = {key: first[key] for key in ("seed", "length_scale", "sigma", "f")}
    parameters.update(n_samples=dataset.sizes["sample"], chunk=chunk)
    inputs = {"mesh": mesh, **{f"shard{i}": ref for i, ref in enumerate(shards)}}
    dataset.attrs = {
        "title": "operator-learning samples: kappa -> u",
        "cell_type": mesh_.cell_type,
        **provenance(parameters, inputs),
    }
    return artifacts.put_dataset(dataset, "fields")


def open_samples(path: str | Path, chunks: dict | None = None) -> xr.Dataset:
    """The data set at ``path`` opened lazily: kappa and u as dask arrays in the file's chunks
    (``chunks={"sample": 128}`` to read bigger pieces)."""
    return xr.open_dataset(path, engine="netcdf4", chunks={} if chunks is None else chunks)


@flow(name="operator-dataset", task_runner=task_runner(), log_prints=True)
def operator_dataset(
    n_samples: int = 1024,
    seed: int = 0,
    cells: int = 16,
    length_scale: float = 0.25,
    sigma: float = 1.0,
    f: float = 1.0,
    shard_size: int = 256,
    batch_size: int = 64,
    chunk: int | None = None,
    store: str | None = None,
    out: str | None = None,
) -> dict[str, Any]:
    """N (kappa, u) pairs on a ``cells`` x ``cells`` grid as one netCDF dataset; returns its
    reference, its path in the store (and a copy at ``out`` if given) and the task states.

    Args:
        n_samples: number of (kappa, u) pairs N; sample i depends only on (seed, i), so more samples keep the first N.
        seed: seed of the random fields (an int >= 0); each sample draws from (seed, its index).
        cells: grid cells per side of the unit square (16: 289 nodes, 512 triangles).
        length_scale: correlation length of log kappa on the unit square (squared-exponential covariance).
        sigma: standard deviation of log kappa: kappa = exp(sigma * field), field of zero mean and unit variance.
        f: uniform source term of -div(kappa grad u) = f, with u = 0 on the boundary.
        shard_size: samples per task (one cached datagen_shard each); the unit of parallel work and of recomputation.
        batch_size: samples per batched solve inside a shard (memory grows with it).
        chunk: samples per chunk of kappa and u in the netCDF file, the unit a reader loads (empty: batch_size).
        store: artifact store folder, relative to where the run executes (empty: $TMCORE_ARTIFACTS or data/artifacts).
        out: file to copy the data set to as well (empty: only in the store; the run prints its path there).
    """
    check_count("n_samples", n_samples)
    check_count("seed", seed, 0)
    check_count("cells", cells)
    check_count("shard_size", shard_size)
    check_count("batch_size", batch_size)
    check_real("length_scale", length_scale, 0.0)
    check_real("sigma", sigma, 0.0, low_open=False)
    chunk = batch_size if chunk is None else check_count("chunk", chunk)
    artifacts = Store(store)
    mesh = Bound(tasks.generate_mesh, artifacts).submit(kind="grid", cells=cells)
    starts = list(range(0, n_samples, shard_size))
    shards = Bound(datagen_shard, artifacts).map(
        mesh=unmapped(mesh),
        start=starts,
        stop=[min(s + shard_size, n_samples) for s in starts],
        seed=unmapped(seed),
        length_scale=unmapped(length_scale),
        sigma=unmapped(sigma),
        f=unmapped(f),
        batch_size=unmapped(batch_size),
    )
    merged = Bound(datagen_merge, artifacts).submit(mesh=mesh, shards=list(shards), chunk=min(chunk, n_samples))
    reference = merged.result()
    path = artifacts.path(reference).resolve()
    published = str(artifacts.copy_to(reference, out)) if out else None
    states = {
        "generate_mesh": [mesh.state.name],
        "datagen_shard": [s.state.name for s in shards],
        "datagen_merge": [merged.state.name],
    }
    print(
        f"operator dataset: {n_samples} samples on {reference['path']} ({len(starts)} shards); "
        + (f"copied to {published}" if published else f"at {path}")
    )
    return {
        "mesh": mesh.result(),
        "shards": [s.result() for s in shards],
        "dataset": reference,
        "path": str(path),
        "published": published,
        "states": states,
        "store": str(artifacts.root),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m flows.datagen", description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=1024, help="number of (kappa, u) pairs (default 1024)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random fields (default 0)")
    parser.add_argument("--cells", type=int, default=16, help="grid cells per side of the unit square (default 16)")
    parser.add_argument(
        "--length-scale", type=float, default=0.25, help="correlation length of log kappa (default 0.25)"
    )
    parser.add_argument("--sigma", type=float, default=1.0, help="standard deviation of log kappa (default 1.0)")
    parser.add_argument("--shard-size", type=int, default=256, help="samples per task (default 256)")
    parser.add_argument(
        "--batch-size", type=int, default=64, help="samples per batched solve, and per chunk on disk (default 64)"
    )
    parser.add_argument(
        "--store",
        default=None,
        help="artifact store (default $TMCORE_ARTIFACTS or data/artifacts); shared by all workers",
    )
    parser.add_argument("--out", default=None, help="also copy the dataset to this file")
    add_dask_argument(parser)
    args = parser.parse_args(argv)
    return on_dask(operator_dataset, args.dask_address)(
        n_samples=args.samples,
        seed=args.seed,
        cells=args.cells,
        length_scale=args.length_scale,
        sigma=args.sigma,
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        store=args.store,
        out=args.out,
    )


if __name__ == "__main__":
    main()
    sys.exit(0)
