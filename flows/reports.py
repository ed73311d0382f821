"""Reports: tables as markdown and netCDF under ``reports/``, and the Prefect UI artifacts.

Publishing is cheap and runs in the flow body on every run (cached or not), so the UI
and ``reports/`` always show the current results.
"""

from __future__ import annotations

import base64
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .artifacts import atomic_write_bytes, atomic_write_text, dataset_bytes

logger = logging.getLogger(__name__)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return f"{value:.6g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"
    return str(value)


def table_rows(dataset, dim: str, columns: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The rows of a table dataset (one dimension ``dim``) as dicts of Python scalars; the
    coordinate of ``dim``, if any, comes first."""
    if columns is None:
        columns = ([dim] if dim in dataset.coords else []) + [name for name in dataset.data_vars if dataset[name].dims == (dim,)]
    columns = list(columns)
    values = {name: dataset[name].values.tolist() for name in columns}
    return [{name: values[name][i] for name in columns} for i in range(dataset.sizes[dim])]


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A GitHub-flavoured markdown table of rows with the same keys."""
    if not rows:
        return "(no rows)\n"
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_table(dataset, dim: str, path: str | Path, title: str, notes: str = "") -> tuple[Path, Path]:
    """``<path>.nc`` (netCDF) and ``<path>.md`` (markdown) of a table dataset, written atomically."""
    path = Path(path)
    netcdf = atomic_write_bytes(path.with_suffix(".nc"), dataset_bytes(dataset))
    text = f"# {title}\n\n" + (notes.strip() + "\n\n" if notes.strip() else "") + markdown_table(table_rows(dataset, dim))
    return netcdf, atomic_write_text(path.with_suffix(".md"), text)


def figures_markdown(title: str, pngs: Mapping[str, bytes], where: str) -> str:
    """Markdown with each PNG inline (data URI), for a Prefect markdown artifact."""
    parts = [f"# {title}", "", f"Written to `{where}`.", ""]
    for name, data in pngs.items():
        parts += [f"## {name}", "", f"![{name}](data:image/png;base64,{base64.b64encode(data).decode()})", ""]
    return "\n".join(parts)


def ui_markdown(key: str, markdown: str, description: str) -> None:
    """A markdown artifact in the Prefect UI (a warning, not a failure, if the API refuses it)."""
    try:
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(markdown=markdown, key=key, description=description)
    except Exception as error:
        logger.warning("markdown artifact %r not created: %s", key, error)


def ui_table(key: str, rows: Sequence[Mapping[str, Any]], description: str) -> None:
    """A table artifact in the Prefect UI (non-finite floats shown as text)."""
    clean = [{k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in row.items()} for row in rows]
    try:
        from prefect.artifacts import create_table_artifact

        create_table_artifact(table=clean, key=key, description=description)
    except Exception as error:
        logger.warning("table artifact %r not created: %s", key, error)
