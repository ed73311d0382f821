"""The store under attack and under load: paths that try to leave it, files that carry
pickles, result records that name a pickle serializer, two processes writing one object."""

from __future__ import annotations

import base64
import hashlib
import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from flows.artifacts import sha256_bytes, sha256_file
from flows.caching import Stage, cache_key, check_result_record, record

ROOT = Path(__file__).resolve().parents[2]


def _ref(path: str, sha: str = "0" * 64, kind: str = "mesh") -> dict:
    return {"kind": kind, "path": path, "sha256": sha, "content": sha}


# -- paths from parameters cannot leave the store --------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "../outside.txt",
        "objects/../../outside.txt",
        "objects/00/../../../outside.txt",
        "/etc/passwd",
        "objects\\00\\" + "0" * 64 + ".nc",
        "objects/00/" + "0" * 64 + ".nc/../../../x",
        "objects/11/" + "0" * 64 + ".nc",  # the right form, the wrong folder
        "objects/00/" + "1" * 64 + ".nc",  # a name that is not the reference's sha256
        "objects/00/" + "0" * 64 + ".NC",
        "",
    ],
)
def test_reference_paths_that_leave_the_object_layout_are_refused(store, tmp_path, path):
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    ref = _ref(path)
    for action in (store.path, store.verify, store.read_bytes, store.open_dataset):
        with pytest.raises(ValueError, match="is not an object of the store"):
            action(ref)
    assert outside.read_text() == "keep me"  # verify() would have moved a mismatching file to quarantine
    assert not (store.root / "quarantine").exists()


def test_a_sha256_that_is_itself_a_path_is_refused(store):
    with pytest.raises(ValueError, match="is not an object of the store"):
        store.path(_ref("objects/../" + "0" * 62 + ".nc", sha="../" + "0" * 61))


@pytest.mark.parametrize("key", ["../evil", "a/b", ".hidden", "a\\b", "", "x" * 300, "a..b", None])
def test_index_and_checkpoint_keys_are_plain_names(store, key):
    with pytest.raises(ValueError, match="keys are plain file names"):
        store.read_index(key)
    with pytest.raises(ValueError, match="keys are plain file names"):
        store.write_index(key, {})
    with pytest.raises(ValueError, match="keys are plain file names"):
        store.latest_checkpoint(key)
    assert not store.root.exists()


@pytest.mark.parametrize("suffix", ["/../x", ".n/c", "..", ".toolongsuffix"])
def test_suffixes_cannot_build_paths(store, suffix):
    with pytest.raises(ValueError, match="suffix must be"):
        store.put_bytes(b"data", "figure", suffix)


def test_a_corrupt_file_in_the_way_of_a_write_is_moved_aside_not_overwritten(store):
    ref = store.put_bytes(b"the real bytes", "figure", ".png")
    store.path(ref).write_bytes(b"rot")
    again = store.put_bytes(b"the real bytes", "figure", ".png")
    assert again == ref and store.verify(ref)
    assert [p.read_bytes() for p in (store.root / "quarantine").iterdir()] == [b"rot"]


# -- no pickle on any load path --------------------------------------------------------------------


class _Payload:
    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').write('executed')",))


def test_an_artifact_holding_a_pickle_is_never_unpickled(store, tmp_path):
    """Even a pickle stored under its correct sha256 name (an attacker who can write the store)
    only fails to parse as netCDF."""
    marker = tmp_path / "executed"
    data = pickle.dumps(_Payload(marker))
    sha = sha256_bytes(data)
    path = store.root / "objects" / sha[:2] / f"{sha}.nc"
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    ref = _ref(f"objects/{sha[:2]}/{sha}.nc", sha=sha, kind="fields")
    with pytest.raises(Exception) as raised:
        store.open_dataset(ref, "fields")
    assert not isinstance(raised.value, (pickle.UnpicklingError, AttributeError))
    assert not marker.exists()


def test_a_checkpoint_holding_a_pickle_is_ignored(store, tmp_path):
    marker = tmp_path / "executed"
    ref = store.put_bytes(pickle.dumps(_Payload(marker)), "checkpoint", ".nc")
    pointer = store.root / "checkpoints" / "identify_coefficient-abc.json"
    pointer.parent.mkdir(parents=True)
    pointer.write_text(json.dumps({"checkpoint": ref, "step": 3}))
    assert store.latest_checkpoint("identify_coefficient-abc") is None
    assert not marker.exists()


def _record(serializer: dict, result: str) -> bytes:
    metadata = {
        "storage_key": None,
        "expiration": None,
        "serializer": serializer,
        "prefect_version": "3",
        "storage_block_id": None,
    }
    return json.dumps({"metadata": metadata, "result": result}).encode()


JSON = {
    "type": "json",
    "jsonlib": "json",
    "object_encoder": "prefect.serializers.prefect_json_object_encoder",
    "object_decoder": "prefect.serializers.prefect_json_object_decoder",
    "dumps_kwargs": {},
    "loads_kwargs": {},
}
RESULT = {"kind": "mesh", "path": "objects/ab/x.nc", "sha256": "ab", "content": "cd"}


@pytest.mark.parametrize(
    "data, reason",
    [
        (_record(JSON, json.dumps(RESULT)), None),
        (_record({"type": "pickle", "picklelib": "pickle"}, "gASVAAAAAAAAAA=="), "serializer is 'pickle'"),
        (_record({"type": "compressed/pickle"}, "eJw="), "serializer is 'compressed/pickle'"),
        (_record({**JSON, "jsonlib": "pickle"}, json.dumps(RESULT)), "JSON library is 'pickle'"),
        (_record({**JSON, "object_decoder": "os.system"}, json.dumps(RESULT)), "object decoder is 'os.system'"),
        (_record({**JSON, "loads_kwargs": {"cls": "x"}}, json.dumps(RESULT)), "load options"),
        (_record(JSON, json.dumps({"__class__": "subprocess.Popen", "data": ["touch", "x"]})), "__class__"),
        (
            _record(JSON, json.dumps({"x": [{"__exc_type__": "builtins.SystemExit", "message": "1"}]})),
            "__class__/__exc_type__",
        ),
        (_record(JSON, json.dumps({**RESULT, "content": "other"})), "differs from the index entry"),
        (_record(JSON, json.dumps(RESULT))[:40], "not a JSON document"),
        (json.dumps({"data": "gAR9lC4=", "serializer": {"type": "pickle"}}).encode(), "current layout"),
        (b"\x80\x04\x95", "not a JSON document"),
    ],
    ids=[
        "json",
        "pickle",
        "compressed-pickle",
        "jsonlib",
        "decoder",
        "loads-kwargs",
        "class",
        "exc-type",
        "tampered",
        "truncated",
        "legacy-blob",
        "raw-pickle",
    ],
)
def test_result_records_are_checked_as_plain_json(tmp_path, data, reason):
    path = tmp_path / "record"
    path.write_bytes(data)
    problem = check_result_record(path, RESULT)
    if reason is None:
        assert problem is None
    else:
        assert problem is not None and reason in problem
    assert check_result_record(tmp_path / "absent", RESULT) is None


def test_cache_key_moves_a_poisoned_record_aside_and_starts_a_new_generation(store, tmp_path, caplog):
    def fn(store, steps: int = 1):
        return None

    stage = Stage("solve", fn, "source")
    parameters = {"store": str(store.root)}
    ref = store.put_dataset(xr.Dataset({"u": (("node",), np.arange(3.0))}), "fields")
    key = cache_key(stage, parameters)
    record(stage, parameters, {"fields": ref}, key)
    good = _record(JSON, json.dumps({"fields": ref}))
    (store.results).mkdir(parents=True)
    (store.results / key).write_bytes(good)
    assert cache_key(stage, parameters) == key  # a sound record: the hit stands

    marker = tmp_path / "executed"
    poisoned = _record(
        {"type": "pickle", "picklelib": "pickle"}, base64.b64encode(pickle.dumps(_Payload(marker))).decode()
    )
    (store.results / key).write_bytes(poisoned)
    with caplog.at_level("WARNING", logger="flows.caching"):
        renewed = cache_key(stage, parameters)
    assert renewed != key and renewed.startswith(stage.identity(parameters))
    assert not (store.results / key).exists() and not marker.exists()
    assert [p.read_bytes() for p in (store.root / "quarantine").iterdir()] == [poisoned]
    assert any("serializer is 'pickle'" in r.getMessage() for r in caplog.records)


def test_a_recorded_key_that_is_a_path_is_refused(store):
    def fn(store):
        return None

    stage = Stage("solve", fn, "source")
    parameters = {"store": str(store.root)}
    ref = store.put_dataset(xr.Dataset({"u": (("node",), np.arange(3.0))}), "fields")
    identity = stage.identity(parameters)
    store.write_index(identity, {"key": f"{identity}-/../../../../etc/passwd", "result": {"fields": ref}})
    assert cache_key(stage, parameters).startswith(identity + "-")
    assert not (store.root / "quarantine").exists()


# -- two processes, one object ----------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from flows.artifacts import Store, atomic_write_bytes, sha256_file

    root, go, rounds = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    store = Store(root)
    payload = bytes(range(256)) * (8 << 10)  # 2 MiB, the same in both processes
    ref = {"kind": "figure", "path": sys.argv[4], "sha256": sys.argv[5], "content": sys.argv[5]}
    while not go.exists():
        time.sleep(0.001)
    for i in range(rounds):
        atomic_write_bytes(store.path(ref), payload)  # what put_bytes does when the file is absent
        assert store.put_bytes(payload, "figure", ".png") == ref
        assert sha256_file(store.path(ref)) == ref["sha256"], "a reader saw a partial file"
        store.write_index("figure-0123", {"key": "figure-0123-00000000", "result": ref, "round": i})
        assert store.read_index("figure-0123")["result"] == ref
    """
)


def test_two_processes_writing_the_same_object_at_once_leave_one_valid_file(store, tmp_path):
    payload = bytes(range(256)) * (8 << 10)
    sha = hashlib.sha256(payload).hexdigest()
    relative = f"objects/{sha[:2]}/{sha}.png"
    go = tmp_path / "go"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(store.root), str(go), "25", relative, sha],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _ in range(2)
    ]
    go.write_text("go")
    for process in processes:
        output, _ = process.communicate(timeout=120)
        assert process.returncode == 0, output.decode()[-3000:]
    files = [p for p in store.root.rglob("*") if p.is_file()]
    assert sorted(p.relative_to(store.root).as_posix() for p in files) == sorted([relative, "index/figure-0123.json"])
    assert sha256_file(store.root / relative) == sha
    assert json.loads((store.root / "index" / "figure-0123.json").read_text())["round"] == 24
