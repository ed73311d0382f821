"""Benchmark scripts: ``python -m benchmarks.<name>`` from the repository root."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path


def write_report(folder: Path, name: str, text: str) -> Path:
    """Write ``text`` to ``<folder>/<today>-<name>.md`` (atomically), echo it and the path to
    stdout, and return the path."""
    from flows.artifacts import atomic_write_text

    path = Path(folder) / f"{dt.date.today().isoformat()}-{name}.md"
    atomic_write_text(path, text)
    sys.stdout.write(text + f"\nwritten: {path}\n")
    return path
