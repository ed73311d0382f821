"""The Makefile's commands work from a checkout whose path has spaces and non-ASCII letters.

A copy of the Makefile runs in such a folder with a stand-in ``.venv/bin/python`` that records
its arguments and ``PREFECT_HOME``: an unquoted ``$(CURDIR)`` splits the path into words for the
shell (``/bin/sh: 1: with: not found``), and the stand-in shows whether each target got the
checkout's own Prefect home in one piece.
"""

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

STAND_IN = """#!/bin/sh
printf 'PREFECT_HOME=%s\\n' "$PREFECT_HOME" >> "$(dirname "$0")/../../calls.log"
printf 'ARGS=%s\\n' "$*" >> "$(dirname "$0")/../../calls.log"
"""


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A folder named with a space and non-ASCII letters holding the Makefile, pyproject.toml and a
    set-up .venv whose python is the stand-in (its install stamp newer than pyproject.toml)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    folder = tmp_path / "dir with spaces and ümläuts"
    (folder / ".venv" / "bin").mkdir(parents=True)
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy2(ROOT / name, folder / name)
    python = folder / ".venv" / "bin" / "python"
    python.write_text(STAND_IN)
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    stamp = folder / ".venv" / ".installed"
    stamp.touch()
    later = (folder / "pyproject.toml").stat().st_mtime + 10
    os.utime(stamp, (later, later))
    return folder


@pytest.mark.parametrize(
    ("target", "module"),
    [
        ("figures", "flows.differentiability"),
        ("figures QUICK=1", "flows.differentiability --quick"),
        ("serve", "flows.serve"),
    ],
)
def test_make_targets_run_from_a_path_with_spaces_and_non_ascii_letters(checkout, target, module):
    result = subprocess.run(
        ["make", *target.split()],
        cwd=checkout,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "LC_ALL": "C.UTF-8"},
    )
    assert result.returncode == 0, result.stderr
    calls = (checkout / "calls.log").read_text(encoding="utf-8").splitlines()
    assert f"PREFECT_HOME={checkout / '.prefect'}" in calls
    assert f"ARGS=-m {module}" in calls
