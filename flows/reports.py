"""Reports: tables as markdown and netCDF under ``reports/``, and the Prefect UI artifacts.

Publishing is cheap and runs in the flow body on every run (cached or not), so the UI
and ``reports/`` always show the current results.
"""

from __future__ import annotations

import base64
import logging
import math
from collections.abc import Callable, Mapping, Sequence
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


def significant(value: Any, digits: int = 4) -> str:
    """A float to ``digits`` significant digits in scientific notation (``-1.235e-05``, so a
    column lines up); ints and text unchanged."""
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.{digits - 1}e}"
    return str(value)


def gradient_check_rows(dataset, min_digits: float) -> list[dict[str, str]]:
    """The rows of a gradient-check table (dim ``probe``) for people: values to 4 significant
    digits, the relative difference to 2, the agreeing digits to one decimal, and ``pass``
    or ``FAIL`` against ``min_digits``."""
    rows = []
    for row in table_rows(
        dataset, "probe", ["target", "entity", "index", "autograd", "finite_difference", "rel_diff", "digits"]
    ):
        digits = float(row["digits"])
        rows.append(
            {
                "target": str(row["target"]),
                "probe": f"{row['entity']} {row['index']}",
                "autograd": significant(row["autograd"]),
                "finite difference": significant(row["finite_difference"]),
                "rel. diff": f"{float(row['rel_diff']):.2e}",
                "digits": f"{digits:.1f}",
                f"≥ {min_digits:g} digits": "pass" if math.isfinite(digits) and digits >= min_digits else "FAIL",
            }
        )
    return rows


def file_link(path: str | Path, text: str | None = None) -> str:
    """A markdown link to a local file by its absolute path (``file://`` URL)."""
    path = Path(path).resolve()
    return f"[{text or path.name}]({path.as_uri()})"


def table_rows(dataset, dim: str, columns: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The rows of a table dataset (one dimension ``dim``) as dicts of Python scalars; the
    coordinate of ``dim``, if any, comes first."""
    if columns is None:
        columns = ([dim] if dim in dataset.coords else []) + [
            name for name in dataset.data_vars if dataset[name].dims == (dim,)
        ]
    columns = list(columns)
    values = {name: dataset[name].values.tolist() for name in columns}
    return [{name: values[name][i] for name in columns} for i in range(dataset.sizes[dim])]


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A GitHub-flavoured markdown table of rows with the same keys."""
    if not rows:
        return "(no rows)\n"
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row[c]).replace("|", "\\|") for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_table(
    dataset, dim: str, path: str | Path, title: str, notes: str = "", rows: Sequence[Mapping[str, Any]] | None = None
) -> tuple[Path, Path]:
    """``<path>.nc`` (netCDF, every value) and ``<path>.md`` (markdown: ``rows``, by default
    the dataset's rows) of a table dataset, written atomically."""
    path = Path(path)
    netcdf = atomic_write_bytes(path.with_suffix(".nc"), dataset_bytes(dataset))
    rows = table_rows(dataset, dim) if rows is None else rows
    return netcdf, write_markdown_table(path.with_suffix(".md"), title, rows, notes)


def write_markdown_table(path: str | Path, title: str, rows: Sequence[Mapping[str, Any]], notes: str = "") -> Path:
    """A markdown file (atomically): ``# title``, ``notes`` and the table of ``rows``."""
    text = f"# {title}\n\n" + (notes.strip() + "\n\n" if notes.strip() else "") + markdown_table(rows)
    return atomic_write_text(path, text)


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


def ui_link(key: str, path: str | Path, text: str, description: str) -> None:
    """A link artifact in the Prefect UI to a local file by its absolute path."""
    try:
        from prefect.artifacts import create_link_artifact

        create_link_artifact(link=Path(path).resolve().as_uri(), link_text=text, key=key, description=description)
    except Exception as error:
        logger.warning("link artifact %r not created: %s", key, error)


def ui_table(key: str, rows: Sequence[Mapping[str, Any]], description: str) -> None:
    """A table artifact in the Prefect UI (non-finite floats shown as text)."""
    clean = [
        {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in row.items()} for row in rows
    ]
    try:
        from prefect.artifacts import create_table_artifact

        create_table_artifact(table=clean, key=key, description=description)
    except Exception as error:
        logger.warning("table artifact %r not created: %s", key, error)


def ui_concurrently(calls: Sequence[Callable[[], Any]]) -> None:
    """Run UI artifact calls (:func:`ui_markdown`, :func:`ui_link`, ...) at once, each in a thread
    of its own with the caller's context (the flow or task run they belong to): one request each,
    so the API serves them side by side instead of one after another (7 artifacts of a figures
    run: 0.3 s one by one here)."""
    import concurrent.futures
    import contextvars

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(calls)), thread_name_prefix="ui") as pool:
        futures = [pool.submit(contextvars.copy_context().run, call) for call in calls]
    for future in futures:
        future.result()
