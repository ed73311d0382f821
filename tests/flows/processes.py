"""The subprocesses of the flow tests: ``python -m <module>`` started as a terminal starts a job."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path


def spawn(module: str, args: tuple[str, ...], log: Path, cwd: Path, env: Mapping[str, str]) -> subprocess.Popen:
    """``python -m module *args`` in its own process group (so a signal to the group reaches it
    and its children, as Ctrl-C does in a terminal), stdout and stderr to the file ``log``."""
    with open(log, "wb") as output:
        return subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=cwd,
            env=dict(env),
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
