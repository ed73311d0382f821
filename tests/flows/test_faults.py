"""Faults a flow survives: a SIGKILL mid-write, a truncated artifact, two runs racing on one
store, a crash in the middle of a long study, and a poisoned result record.

The subprocess tests run ``tests/flows/pipeline.py`` (mesh -> assemble -> solve) against the
session's test server; the reruns happen in this process.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import pickle
import signal
import subprocess
import time
from pathlib import Path

import pytest

from flows import caching, tasks
from flows.artifacts import Store, iter_refs, sha256_file
from flows.differentiability import identification_study

from .pipeline import STAGES, pipeline
from .processes import spawn

ROOT = Path(__file__).resolve().parents[2]


def _spawn(prefect_api: str, *args: str, log: Path) -> subprocess.Popen:
    return spawn("tests.flows.pipeline", args, log, ROOT, {**os.environ, "PREFECT_API_URL": prefect_api})


def _wait_for(paths: list[Path], processes: list[subprocess.Popen], logs: list[Path], timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(path.exists() for path in paths):
        for process, log in zip(processes, logs):
            assert process.poll() is None, f"the subprocess exited early:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {paths}"
        time.sleep(0.05)


def _result(log: Path) -> dict:
    lines = [line for line in log.read_text().splitlines() if line.startswith("RESULT ")]
    assert lines, log.read_text()[-3000:]
    return json.loads(lines[-1][len("RESULT ") :])


def _same_sources_as_the_subprocesses() -> None:
    """Hash the tmcore sources afresh, as the subprocesses just did: the cache key holds that
    hash, and this process may have cached it before someone edited tmcore (a Cached
    rerun needs the same key; with other sources it rightly recomputes)."""
    caching.tmcore_hash.cache_clear()


def _objects(store: Store) -> tuple[list[Path], list[Path]]:
    """(complete files, dot-named temporary files) under ``objects/``."""
    files = [p for p in (store.root / "objects").rglob("*") if p.is_file()]
    return [p for p in files if not p.name.startswith(".")], [p for p in files if p.name.startswith(".")]


def _recorded_stages(store: Store) -> dict[str, dict]:
    """Stage name -> its index entry."""
    return {path.stem.rsplit("-", 1)[0]: json.loads(path.read_text()) for path in (store.root / "index").glob("*.json")}


@pytest.mark.parametrize("killed", ["system", "fields"], ids=["assemble", "solve"])
def test_sigkill_mid_netcdf_write_leaves_no_partial_file_and_the_rerun_resumes(prefect_api, tmp_path, killed):
    """SIGKILL while a stage's netCDF file is half-written: no partial file under a final name,
    and the rerun recomputes from that stage on while the stages before it stay Cached."""
    store, marker, log = Store(tmp_path / "store"), tmp_path / "marker", tmp_path / "run.log"
    process = _spawn(prefect_api, str(store.root), "--stall", killed, str(marker), log=log)
    try:
        _wait_for([marker], [process], [log])
        os.killpg(process.pid, signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    complete, temporary = _objects(store)
    headed_for = Path(marker.read_text())
    assert not headed_for.exists()  # the final name never appeared
    assert [p.parent for p in temporary] == [headed_for.parent] and temporary[0].name.startswith(f".{headed_for.name}.")
    assert 0 < temporary[0].stat().st_size  # the half-written bytes are there, under a name nothing reads
    for path in complete:
        assert sha256_file(path) == path.name.split(".")[0], path  # every final name holds complete bytes
    before = STAGES[: STAGES.index({"system": "assemble", "fields": "solve"}[killed])]
    assert sorted(_recorded_stages(store)) == sorted(before)  # only finished stages were recorded
    kept = {p: p.stat().st_mtime_ns for p in complete}

    _same_sources_as_the_subprocesses()
    rerun = pipeline(store=str(store.root))
    assert rerun["states"] == {name: "Cached" if name in before else "Completed" for name in STAGES}
    for ref in iter_refs(rerun["refs"]):
        assert store.verify(ref), ref
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in kept.items())  # earlier artifacts not rewritten
    assert sorted(_recorded_stages(store)) == sorted(STAGES)


def test_a_truncated_artifact_is_logged_moved_aside_and_recomputed(prefect_api, tmp_path, caplog):
    store = Store(tmp_path / "store")
    first = pipeline(store=str(store.root))
    ref = first["refs"]["assemble"]
    path = store.path(ref)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])  # a truncated copy, as a full disk or a killed copy leaves it
    with caplog.at_level(logging.WARNING, logger="flows.artifacts"):
        second = pipeline(store=str(store.root))
    assert second["states"] == {"generate_mesh": "Cached", "assemble": "Completed", "solve": "Cached"}
    assert any("failed its sha256 check" in r.getMessage() and ref["sha256"] in r.getMessage() for r in caplog.records)
    (kept,) = (store.root / "quarantine").iterdir()
    assert kept.read_bytes() == data[: len(data) // 3]  # moved aside, not deleted
    assert second["refs"]["assemble"]["content"] == ref["content"] and store.verify(second["refs"]["assemble"])


def test_two_processes_running_the_same_flow_on_one_store_both_complete(prefect_api, tmp_path):
    """Both runs race through the same stage keys at once; both complete, every recorded and
    returned artifact is valid, one index entry per stage, and a third run is all Cached."""
    store, go = Store(tmp_path / "store"), tmp_path / "go"
    ready = [tmp_path / f"ready-{i}" for i in range(2)]
    logs = [tmp_path / f"run-{i}.log" for i in range(2)]
    processes = [
        _spawn(prefect_api, str(store.root), "--cells", "6", "--ready", str(r), "--go", str(go), log=log)
        for r, log in zip(ready, logs)
    ]
    try:
        _wait_for(ready, processes, logs)
        go.write_text("go")  # both are imported and waiting: they start within milliseconds
        for process, log in zip(processes, logs):
            assert process.wait(timeout=240) == 0, log.read_text()[-3000:]
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    results = [_result(log) for log in logs]
    for result in results:
        assert set(result["states"].values()) <= {"Completed", "Cached"}
        for ref in iter_refs(result["refs"]):
            assert store.verify(ref), ref  # nothing either run returned was lost or damaged
    for name in STAGES:  # the same content by construction
        assert results[0]["refs"][name]["content"] == results[1]["refs"][name]["content"]
    recorded = _recorded_stages(store)
    assert sorted(recorded) == sorted(STAGES)
    for entry in recorded.values():
        assert all(store.verify(ref) for ref in iter_refs(entry["result"]))
    assert not _objects(store)[1]  # no temporary file left behind
    _same_sources_as_the_subprocesses()
    third = pipeline(store=str(store.root), cells=6)
    assert set(third["states"].values()) == {"Cached"}


def test_a_study_that_crashes_resumes_from_its_last_checkpoint(prefect_api, tmp_path, monkeypatch):
    """identification, 7 steps, a checkpoint every 2: a crash after step 5 (last checkpoint at
    step 4) and a rerun that runs steps 4-6 only and ends with the uninterrupted run's arrays."""
    options = {"steps": 7, "chara_length": 0.2}
    reference = identification_study(**options, checkpoint_every=None, store=str(tmp_path / "reference"))

    calls: list[int] = []
    crash = {"at": 4}
    original = tasks.Progress.__call__

    def progress(self, step, value):
        calls.append(step)
        if step == crash["at"]:
            raise RuntimeError(f"injected crash after step {step + 1}")
        return original(self, step, value)

    monkeypatch.setattr(tasks.Progress, "__call__", progress)
    store = Store(tmp_path / "store")
    state = identification_study(**options, checkpoint_every=2, store=str(store.root), return_state=True)
    assert state.is_failed() and calls == [0, 1, 2, 3, 4]
    (pointer,) = (store.root / "checkpoints").glob("identify_coefficient-*.json")
    assert json.loads(pointer.read_text())["step"] == 4
    assert (
        len(list((store.root / "objects").rglob("*.nc"))) == 2
    )  # the mesh and the latest checkpoint (step 2's is gone)

    calls.clear()
    crash["at"] = None
    resumed = identification_study(**options, checkpoint_every=2, store=str(store.root))
    assert calls == [4, 5, 6]  # resumed at the checkpoint, not from step 0
    assert (
        not pointer.exists() and len(list((store.root / "objects").rglob("*.nc"))) == 3
    )  # finished: checkpoint discarded
    for name in ("history", "fields"):  # the content hash covers every array bit for bit
        assert resumed[name]["content"] == reference[name]["content"], name
    assert resumed["mesh"]["content"] == reference["mesh"]["content"]


class _Payload:
    """Unpickling this runs code: it creates the file ``path``."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').write('pickle payload executed')",))


def pickle_record(path: Path) -> bytes:
    """A Prefect result record whose metadata names the pickle serializer, carrying a payload."""
    payload = base64.b64encode(pickle.dumps(_Payload(path))).decode()
    metadata = {
        "storage_key": None,
        "expiration": None,
        "serializer": {"type": "pickle", "picklelib": "pickle"},
        "prefect_version": "3",
        "storage_block_id": None,
    }
    return json.dumps({"metadata": metadata, "result": payload}).encode()


def test_a_poisoned_result_record_is_refused_and_never_unpickled(prefect_api, tmp_path):
    from prefect._internal.result_records import ResultRecord

    store = Store(tmp_path / "store")
    pipeline(store=str(store.root))
    entry = _recorded_stages(store)["generate_mesh"]
    record = store.results / entry["key"]
    assert record.is_file()

    # the threat is real: Prefect decodes a record with the serializer the record names
    control = tmp_path / "control-executed"
    ResultRecord.deserialize(pickle_record(control))
    assert control.exists()

    executed = tmp_path / "payload-executed"
    poisoned = pickle_record(executed)
    record.write_bytes(poisoned)
    rerun = pipeline(store=str(store.root))
    assert not executed.exists()  # the payload never ran
    assert rerun["states"] == {"generate_mesh": "Completed", "assemble": "Cached", "solve": "Cached"}
    assert [p.read_bytes() for p in (store.root / "quarantine").iterdir()] == [poisoned]  # kept for inspection
    assert _recorded_stages(store)["generate_mesh"]["key"] != entry["key"]
