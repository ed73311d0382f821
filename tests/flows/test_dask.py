"""The same flow on a dask.distributed cluster: a small parameter sweep and a batch of gradient checks."""

from __future__ import annotations

import pytest

from flows.artifacts import Store
from flows.runners import task_runner
from flows.validation import validation_benchmark

SWEEP = {"mms": {"sizes": [4, 8]}, "gradients": {"n_probes": 2, "seeds": [0, 1]}}


def _contents(store: Store) -> dict[str, str]:
    """Stage identity -> content hashes of what it produced, from the store's index."""
    contents = {}
    for path in sorted((store.root / "index").glob("*.json")):
        entry = store.read_index(path.stem)
        contents[path.stem] = sorted(ref["content"] for ref in _refs(entry["result"]))
    return contents


def _refs(value):
    from flows.artifacts import iter_refs

    return list(iter_refs(value))


def _run(runner, store: Store, out):
    flow = validation_benchmark.with_options(task_runner=runner)
    return flow(suites=list(SWEEP), options=SWEEP, store=str(store.root), out=str(out), date="2030-02-01")


def test_runner_choice():
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    assert isinstance(task_runner(), ThreadPoolTaskRunner)
    assert isinstance(task_runner("tcp://127.0.0.1:8786"), DaskTaskRunner)
    assert isinstance(task_runner("local", max_workers=2), DaskTaskRunner)
    with pytest.raises(ValueError, match="max_workers"):
        task_runner(max_workers=0)


def test_command_lines_put_a_flow_on_dask_only_when_given_an_address():
    """flows.cli: what --dask-address does in every flow's command line."""
    import argparse

    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    from flows.cli import add_dask_argument, on_dask

    parser = argparse.ArgumentParser()
    add_dask_argument(parser)
    assert parser.parse_args([]).dask_address is None
    assert on_dask(validation_benchmark, None) is validation_benchmark
    assert on_dask(validation_benchmark, "") is validation_benchmark
    address = parser.parse_args(["--dask-address", "tcp://127.0.0.1:8786"]).dask_address
    moved = on_dask(validation_benchmark, address)
    assert isinstance(moved.task_runner, DaskTaskRunner) and moved.name == validation_benchmark.name
    assert isinstance(validation_benchmark.task_runner, ThreadPoolTaskRunner)


def test_sweep_on_a_local_dask_cluster_matches_the_thread_pool(prefect_api, tmp_path):
    dask_store, thread_store = Store(tmp_path / "dask"), Store(tmp_path / "threads")
    on_dask = _run(task_runner("local", max_workers=2), dask_store, tmp_path / "dask-report")
    on_threads = _run(task_runner(max_workers=2), thread_store, tmp_path / "thread-report")
    assert [row["status"] for row in on_dask["rows"]] == [row["status"] for row in on_threads["rows"]]
    assert all(row["status"] != "FAIL" for row in on_dask["rows"])
    # 3 meshes, 2 systems, 2 solutions, 4 gradient checks: the same stages, the same numbers
    assert _contents(dask_store) == _contents(thread_store)
    assert len(_contents(dask_store)) == 3 + 2 + 2 + 4


def test_sweep_on_dask_worker_processes(prefect_api, tmp_path, monkeypatch):
    """Worker processes, as on a real cluster: they reach the API through PREFECT_API_URL (~20 s)."""
    from prefect_dask import DaskTaskRunner

    monkeypatch.setenv("PREFECT_API_URL", prefect_api)  # the workers report to the test server
    runner = DaskTaskRunner(
        cluster_kwargs={"n_workers": 2, "threads_per_worker": 1, "processes": True, "dashboard_address": "127.0.0.1:0"}
    )
    result = _run(runner, Store(tmp_path / "store"), tmp_path / "report")
    assert all(row["status"] != "FAIL" for row in result["rows"])
