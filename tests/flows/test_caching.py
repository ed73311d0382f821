"""The cache key: what it sees, what it ignores, and how damaged artifacts force a new generation."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import xarray as xr

from flows import caching, tasks
from flows.caching import Stage, cache_key, canonical, record


def _ref(content="c" * 64, path="objects/ab/x.nc"):
    return {"kind": "mesh", "path": path, "sha256": "s" * 64, "content": content}


def test_canonical_parameters():
    assert canonical(_ref(path="objects/aa/1.nc")) == canonical(_ref(path="elsewhere/2.nc"))  # where is not what
    assert canonical(_ref("a" * 64)) != canonical(_ref("b" * 64))
    assert canonical({"b": 1, "a": (0.1, None)}) == {"a": [0.1, None], "b": 1}
    assert canonical(0.1) != canonical(float(np.nextafter(0.1, 1.0)))  # one ulp apart
    assert canonical(float("nan")) == {"float": "nan"}
    assert canonical(np.int64(3)) == 3 and canonical(np.float32(0.5)) == 0.5
    t = torch.ones(3, dtype=torch.float64)
    assert canonical(t) == canonical(t.clone()) != canonical(t.float())
    with pytest.raises(TypeError, match="cannot key"):
        canonical(object())


def _stage(source="source-1", name="solve"):
    def fn(store, mesh, steps: int = 10, device: str = "auto"):
        return None

    return Stage(name, fn, source, {"device": tasks.resolve_device})


def test_identity_sees_name_parameters_inputs_source_and_tmcore(monkeypatch):
    stage = _stage()
    base = {"store": "/a", "mesh": _ref()}
    key = stage.identity(base)
    assert key.startswith("solve-")
    assert stage.identity({**base, "store": "/elsewhere"}) == key  # the store is not keyed
    assert stage.identity({**base, "steps": 10}) == key  # defaults are filled in
    assert (
        stage.identity({**base, "device": tasks.resolve_device("auto")}) == key
    )  # "auto" keyed as what it resolves to
    assert stage.identity({**base, "steps": 11}) != key
    assert stage.identity({**base, "mesh": _ref("d" * 64)}) != key
    assert _stage(source="source-2").identity(base) != key
    assert _stage(name="assemble").identity(base) != key
    monkeypatch.setattr(caching, "tmcore_hash", lambda: "an edited tmcore")
    assert stage.identity(base) != key


def test_source_hashes_follow_file_contents_and_names(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "b.py").write_text("y = 2\n")
    files = lambda: sorted(tmp_path.glob("*.py"))  # noqa: E731
    first = caching._hash_files(tmp_path, files())
    assert caching._hash_files(tmp_path, reversed(files())) == first
    (tmp_path / "b.py").write_text("y = 3\n")
    assert caching._hash_files(tmp_path, files()) != first
    assert len(caching.tmcore_hash()) == 64 and caching.module_hash("flows.figures") != caching.module_hash(
        "flows.problems"
    )
    # every task hashes its own source (and its declared modules): all different
    sources = {t.fn.__stage__.source for t in (tasks.generate_mesh, tasks.assemble, tasks.solve, tasks.render_figures)}
    assert len(sources) == 4


def test_generations_follow_the_recorded_artifacts(store):
    stage = _stage()
    ref = store.put_dataset(xr.Dataset({"u": (("node",), np.arange(3.0))}), "fields")
    parameters = {"store": str(store.root), "mesh": _ref()}
    identity = stage.identity(parameters)

    fresh = cache_key(stage, parameters)
    assert fresh.startswith(identity + "-") and cache_key(stage, parameters) != fresh  # nothing recorded: never a hit
    record(stage, parameters, {"fields": ref}, fresh)
    assert cache_key(stage, parameters) == fresh  # intact: the recorded key, so Prefect finds its record

    store.path(ref).write_bytes(b"garbage")
    renewed = cache_key(stage, parameters)
    assert renewed != fresh and renewed.startswith(identity + "-")
    assert not store.path(ref).exists() and len(list((store.root / "quarantine").iterdir())) == 1

    record(
        stage,
        parameters,
        {"fields": store.put_dataset(xr.Dataset({"u": (("node",), np.arange(3.0))}), "fields")},
        renewed,
    )
    assert cache_key(stage, parameters) == renewed
    store.path(ref).unlink()  # deleted
    assert cache_key(stage, parameters) != renewed

    with pytest.raises(RuntimeError, match="does not belong"):
        record(stage, parameters, {}, "solve-someone-else")
    record(stage, parameters, {}, None)  # outside a transaction: nothing recorded, no error


def test_an_unreadable_index_entry_is_a_miss(store):
    stage = _stage()
    parameters = {"store": str(store.root), "mesh": _ref()}
    path = store.root / "index" / f"{stage.identity(parameters)}.json"
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert cache_key(stage, parameters).startswith(stage.identity(parameters))
    assert path.exists()  # left in place; the next run of the stage overwrites it


def test_source_hashes_read_files_without_importing(tmp_path, monkeypatch):
    """A package's hash follows its files (an edited tmcore must invalidate), found without importing it."""
    package = tmp_path / "hashed_pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('imported')\n")
    (package / "sub" / "mod.py").write_text("x = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    first = caching._source_hash("hashed_pkg")
    (package / "sub" / "mod.py").write_text("x = 2\n")
    assert caching._source_hash("hashed_pkg") != first
    (package / "sub" / "mod.py").write_text("x = 1\n")
    assert caching._source_hash("hashed_pkg") == first
    assert "hashed_pkg" not in sys.modules


def test_a_cache_key_imports_neither_torch_nor_tmcore():
    """A fully cached run decides from keys alone: importing the flows and keying a stage must not
    import torch, tmcore or matplotlib (seconds of a cached run), and the key still holds torch's version."""
    code = (
        "import sys\n"
        "from flows import differentiability, tasks, caching\n"
        "key = tasks.generate_mesh.fn.__stage__.identity({'store': 's', 'chara_length': 0.2})\n"
        "print(sorted(m for m in ('torch', 'tmcore', 'matplotlib') if m in sys.modules))\n"
        "import torch\n"
        "print(caching.torch_version() == torch.__version__, len(caching.tmcore_hash()))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:2] == ["[]", "True 64"]


def _double(store, source):
    """A memoised function: the source artifact's bytes twice, as a new artifact."""
    _double.calls += 1
    return {"twice": store.put_bytes(store.read_bytes(source) * 2, "summary", ".json")}


def test_memoised_results_are_computed_once_per_input_and_verified(store):
    _double.calls = 0
    source = store.put_bytes(b'{"a": 1}', "summary", ".json")
    first = caching.memoised(store, "double", _double, source=source)
    assert store.read_bytes(first["twice"]) == b'{"a": 1}{"a": 1}' and _double.calls == 1
    assert caching.memoised(store, "double", _double, source=source) == first and _double.calls == 1  # from the index
    # its artifact damaged: moved aside and computed again (never returned unverified)
    store.path(first["twice"]).write_bytes(b"tampered")
    again = caching.memoised(store, "double", _double, source=source)
    assert again == first and _double.calls == 2 and store.read_bytes(again["twice"]) == b'{"a": 1}{"a": 1}'
    assert any((store.root / "quarantine").iterdir())
    # another input (other bytes, even with the same content hash): computed for it
    other = dict(store.put_bytes(b'{"a":  1}', "summary", ".json"), content=source["content"])
    caching.memoised(store, "double", _double, source=other)
    assert _double.calls == 3


def test_memoised_functions_return_references(store):
    with pytest.raises(TypeError, match="returns artifact references"):
        caching.memoised(store, "nothing", lambda store: {"n": 1})
