"""The store heals (issue 17): entries that cannot be verified, read or moved are replaced on the
next run or stop it with one message; the quarantine log says what failed; preflight checks."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from flows import preflight
from flows.artifacts import ArtifactError
from flows.caching import Stage, cache_key, record

ROOT = Path(__file__).resolve().parents[2]


def _stage() -> Stage:
    def fn(store=None, x=1):
        return x

    return Stage("heal", fn, "0" * 64)


def _recorded(store, result) -> tuple[Stage, dict, str]:
    stage, parameters = _stage(), {"store": str(store.root), "x": 1}
    key = cache_key(stage, parameters)
    record(stage, parameters, result, key)
    return stage, parameters, key


def test_an_index_entry_pointing_outside_the_store_is_replaced_by_the_next_run(store, caplog):
    bad = {"kind": "mesh", "path": "../../../../etc/passwd", "sha256": "0" * 64, "content": "0" * 64}
    stage, parameters, key = _recorded(store, bad)
    with caplog.at_level(logging.WARNING):
        fresh = cache_key(stage, parameters)  # before: ValueError from cache_key_fn, on every run, forever
    assert fresh != key and "names an artifact outside the store's objects" in caplog.text
    assert not (store.root / "index" / f"{stage.identity(parameters)}.json").exists()
    assert len(list((store.root / "quarantine").iterdir())) == 1  # the entry, kept for inspection
    good = store.put_dataset(xr.Dataset({"u": ("node", np.arange(3.0))}), "fields")
    record(stage, parameters, good, fresh)
    assert cache_key(stage, parameters) == fresh  # healed: the next run is Cached


def test_a_result_record_of_unreadable_json_is_logged_as_such_not_as_a_sha256_failure(store, caplog):
    good = store.put_dataset(xr.Dataset({"u": ("node", np.arange(3.0))}), "fields")
    stage, parameters, key = _recorded(store, good)
    store.results.mkdir(parents=True, exist_ok=True)
    (store.results / key).write_text('{"metadata": {"serial')  # truncated JSON
    with caplog.at_level(logging.WARNING):
        assert cache_key(stage, parameters) != key
    assert "not a JSON document" in caplog.text and "sha256" not in caplog.text


def _immutable(path: Path) -> bool:
    if shutil.which("chattr") is None:
        return False
    return subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0


def test_a_corrupt_object_that_cannot_be_moved_gives_one_message_saying_what_to_do(store, caplog):
    ref = store.put_dataset(xr.Dataset({"u": ("node", np.arange(3.0))}), "fields")
    path = store.path(ref)
    path.write_bytes(b"corrupt")
    if not _immutable(path):
        pytest.skip("chattr +i is not available here (needs root and a filesystem that supports it)")
    try:
        with pytest.raises(
            ArtifactError,
            match=r"failed its sha256 check but cannot be moved to .*quarantine.*"
            r"delete it by hand \(if it is immutable: chattr -i",
        ):
            store.verify(ref)
        stage, parameters, key = _recorded(store, ref)
        with caplog.at_level(logging.WARNING):
            assert cache_key(stage, parameters) != key  # a new generation, not an exception from cache_key_fn
        with pytest.raises(ArtifactError, match="cannot be moved"):  # the recomputed write says it again, and stops
            store.put_dataset(xr.Dataset({"u": ("node", np.arange(3.0))}), "fields")
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=False)


def test_an_unreadable_object_is_quarantined_with_its_reason(store, caplog, monkeypatch):
    ref = store.put_dataset(xr.Dataset({"u": ("node", np.arange(3.0))}), "fields")

    def unreadable(path):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("flows.artifacts.sha256_file", unreadable)
    with caplog.at_level(logging.WARNING):
        assert store.verify(ref) is False
    assert "could not be read (PermissionError: Permission denied)" in caplog.text


# -- preflight ------------------------------------------------------------------------------


@pytest.mark.parametrize("root", ["/", "/etc", "/usr/share", "~"])
def test_a_system_directory_is_never_a_store(root):
    with pytest.raises(preflight.PreflightError, match="is a system directory"):
        preflight.check_store(root)


def test_a_non_empty_folder_that_is_not_a_store_is_refused(tmp_path, store):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("x")
    with pytest.raises(
        preflight.PreflightError, match=r"non-empty folder that is not an artifact store \(it holds thesis.tex\)"
    ):
        preflight.check_store(tmp_path / "mine")
    store.put_dataset(xr.Dataset({"u": ("node", np.arange(3.0))}), "fields")
    assert preflight.check_store(store.root) == store.root  # an existing store is fine, and so is a new folder
    assert preflight.check_store(tmp_path / "new" / "store") == tmp_path / "new" / "store"


def test_unwritable_out_and_prefect_home_are_named(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(
        preflight.PreflightError, match=rf"--out {blocker}/figs cannot be created: {blocker} is not a directory"
    ):
        preflight.check(store=tmp_path / "s", out=blocker / "figs")
    monkeypatch.setenv("PREFECT_HOME", str(blocker / "prefect"))
    with pytest.raises(preflight.PreflightError, match=rf"PREFECT_HOME {blocker}/prefect cannot be created"):
        preflight.check(store=tmp_path / "s", out=tmp_path / "out")


@pytest.mark.parametrize("module", ["flows.differentiability", "flows.validation"])
def test_the_commands_fail_fast_with_one_line(module):
    start = time.perf_counter()
    # /proc: a system tree where nothing can be written even if a command ignored the check
    out = subprocess.run(
        [sys.executable, "-m", module, "--store", "/proc/tmcore-store"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: store /proc/tmcore-store is a system directory; pass --store a folder of its own (e.g. data/artifacts)"
    ]
    assert time.perf_counter() - start < 60
