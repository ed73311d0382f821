"""The differentiability figures as a Prefect flow, and each study as a flow of its own.

    python -m flows.differentiability [--quick] [--identification-steps N] [--topology-steps N]
                                      [--store DIR] [--out DIR] [--dask-address ADDR]

``differentiability-figures`` runs, as cached tasks::

    generate_mesh x3 -> identify_coefficient (gmsh 0.04, 5000 Adam steps)
                     -> optimise_topology    (gmsh 0.025, 60 OC steps)
                     -> gradient_check.map   (gmsh 0.2; identification and topology gradients)
                     -> render_figures       (three PNGs)

then publishes (every run, cached or not) the PNGs and the gradient-check table
(``gradient_check.nc`` + ``.md``) to ``out`` (default ``reports/figures``), and in the
Prefect UI a summary (the key numbers beside the chapter's, links to every file by its
absolute path), the figures, the formatted gradient-check table and link artifacts. The
flow returns the same summary and logs it as its last line. A second run with the same
parameters recomputes nothing: every task is Cached.

Runs are named by their parameters (``figures-id5000-topo60``, task runs
``identify(h=0.04, 5000 steps)``) and tagged with the project, the checkout, the study and
quick/full (:func:`flows.runners.run_tags`).

Parameters are typed with ranges (:mod:`flows.parameters`): Prefect refuses a run with a
step count below 1, a mesh size outside [0.002, 0.5] and so on before any task starts.
The studies checkpoint every ``checkpoint_every`` steps, resume after a crash and retry
on transient failures (:mod:`flows.tasks`).
"""

from __future__ import annotations

import time

_STARTED = time.perf_counter()

from .runners import prepare_api  # noqa: E402  (light: no Prefect, torch or tmcore import)

if __name__ == "__main__":  # python -m flows.differentiability: start choosing the API while torch and tmcore import

    def _preflight() -> None:  # issue 17: store, --out, PREFECT_HOME checked before any work
        from .preflight import run_or_exit_argv

        run_or_exit_argv(default_out="reports/figures")

    _API = prepare_api(_preflight)

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
from collections.abc import Mapping, Sequence  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from prefect import flow, get_run_logger, tags, unmapped  # noqa: E402

from . import tasks  # noqa: E402
from .artifacts import Store, content_hash, content_identity, dataset_bytes, iter_refs  # noqa: E402
from .caching import Bound, memoised  # noqa: E402
from .cli import add_dask_argument, on_dask  # noqa: E402
from .parameters import Checkpoints, Exponent, LearningRate, MeshSize, NonNegative, Probes, Steps, VolumeFraction  # noqa: E402
from .reports import (  # noqa: E402
    figures_markdown,
    file_link,
    gradient_check_rows,
    markdown_table,
    significant,
    ui_concurrently,
    ui_link,
    ui_markdown,
    ui_table,
    write_markdown_table,
)
from .runners import api_settings, preload, run_tags, tag_flow_run, task_runner  # noqa: E402

DEFAULT_OUT = Path("reports") / "figures"
STEPS = {"identification": 5000, "topology": 60}
QUICK_STEPS = {"identification": 300, "topology": 20}
MESHES = {"identification": 0.04, "topology": 0.025, "gradcheck": 0.2}
CHECKPOINT_EVERY = 250  # steps between checkpoints of a study (5000 Adam steps: 19 checkpoints of a few ms each)

# The chapter's numbers (docs/differentiability.md, docs/flows.md), for the summary: each holds
# for the chapter's set-up (mesh size and steps) only. ``rel``: the relative tolerance of "agrees".
CHAPTER = {
    "identification": {
        "mesh": MESHES["identification"],
        "steps": STEPS["identification"],
        "loss_first": 9.79e-3,
        "loss_last_below": 1e-9,
    },
    "topology": {
        "mesh": MESHES["topology"],
        "steps": STEPS["topology"],
        "compliance_first": 5.924e-3,
        "compliance_last": 6.880e-4,
        "volume": 0.4,
    },
    # the reference implementation's finite-difference check on the same 44-node mesh
    "gradcheck": {"mesh": MESHES["gradcheck"], "median_digits": 9.4, "min_digits": 7.6},
}


def gradient_table(store: Store, checks: Sequence[dict]) -> Any:
    """One gradient-check table (dim probe) from the per-target tables.

    Its attribute ``sources`` lists the per-target tables by
    :func:`~flows.artifacts.content_identity` (kind and content hash), never by file path or
    file sha256: those change with the tables' ``run_*`` attributes (time, duration, host),
    and the published ``gradient_check.nc`` must repeat byte for byte across cold runs.
    """
    import xarray as xr

    parts = [store.open_dataset(ref, "gradcheck") for ref in checks]
    table = xr.concat(parts, dim="probe", combine_attrs="drop")
    table.attrs = {
        "title": "autograd vs five-point central differences",
        "sources": json.dumps([content_identity(ref) for ref in checks]),
        "median_digits": float(table["digits"].median()),
        "min_digits": float(table["digits"].min()),
    }
    return table


def identification_numbers(store: Store, study: Mapping[str, Any]) -> dict[str, float]:
    """Key numbers of an identification run, read back from its history and fields."""
    history = store.open_dataset(study["history"], "history")
    fields = store.open_dataset(study["fields"], "fields")
    u_error = abs(fields["u"] - fields["u_obs"]).max() / abs(fields["u_obs"]).max()
    return {
        "identification_steps": history.sizes["step"],
        "loss_first": float(history["loss"][0]),
        "loss_last": float(history["loss"][-1]),
        "u_rel_max_error_final": float(u_error),
        "kappa_max_abs_error": float(abs(fields["kappa"] - fields["kappa_true"]).max()),
        "identification_ms_per_step": 1e3 * float(history.attrs.get("run_median_seconds_per_step", float("nan"))),
    }


def topology_numbers(store: Store, study: Mapping[str, Any]) -> dict[str, float]:
    """Key numbers of a topology run, read back from its history."""
    history = store.open_dataset(study["history"], "history")
    return {
        "topology_steps": history.sizes["step"],
        "compliance_first": float(history["compliance"][0]),
        "compliance_last": float(history["compliance"][-1]),
        "volume": float(history["volume"][-1]),
        "topology_ms_per_step": 1e3 * float(history.attrs.get("run_median_seconds_per_step", float("nan"))),
    }


def summary(store: Store, artifacts: dict) -> dict[str, float]:
    """The key numbers of a figures run, read back from its artifacts."""
    return _numbers(store, artifacts, gradient_table(store, artifacts["gradient_checks"]))


def _numbers(store: Store, artifacts: Mapping[str, Any], checks: Any) -> dict[str, float]:
    return {
        **identification_numbers(store, artifacts["identification"]),
        **topology_numbers(store, artifacts["topology"]),
        "gradcheck_median_digits": float(checks.attrs["median_digits"]),
        "gradcheck_min_digits": float(checks.attrs["min_digits"]),
    }


def _summarise(store: Store, identification: Mapping, topology: Mapping, gradient_checks: Sequence) -> dict:
    """The gradient-check table (a ``gradcheck`` artifact, the bytes ``gradient_check.nc`` is
    published with) and a ``summary`` artifact (JSON: its rows for people and the key numbers)."""
    artifacts = {"identification": identification, "topology": topology}
    table = gradient_table(store, gradient_checks)
    text = json.dumps(
        {"numbers": _numbers(store, artifacts, table), "rows": gradient_check_rows(table, tasks.GRADCHECK_MIN_DIGITS)},
        sort_keys=True,
    )
    return {
        "table": store.put_bytes(dataset_bytes(table), "gradcheck", ".nc", content=content_hash(table)),
        "summary": store.put_bytes(text.encode(), "summary", ".json"),
    }


def run_summary(store: Store, artifacts: Mapping[str, Any]) -> dict[str, Any]:
    """What a figures run publishes besides the figures: ``table`` (the reference of the
    gradient-check table), ``rows`` (its rows for people, :func:`flows.reports.gradient_check_rows`)
    and ``numbers`` (:func:`summary`).

    Computed from the artifacts once per content and kept in the store
    (:func:`flows.caching.memoised`): a cached run reads two small verified files instead of
    opening the studies' and the gradient checks' netCDF files (which cost it the import of
    xarray, dask and dask.distributed: 1.2 s of this process's time, measured).
    """
    refs = memoised(
        store,
        "figures-summary",
        _summarise,
        sources=("flows.differentiability", "flows.reports"),
        identification=artifacts["identification"],
        topology=artifacts["topology"],
        gradient_checks=list(artifacts["gradient_checks"]),
    )
    return {"table": refs["table"], **json.loads(store.read_bytes(refs["summary"]))}


# -- the summary beside the chapter's numbers ---------------------------------------------------


def _verdict(applies: bool, agrees: bool, setup: str) -> str:
    if not applies:
        return f"n/a ({setup})"
    return "agrees" if agrees else "DIFFERS"


def _close(value: float, reference: float, rel: float) -> bool:
    return math.isfinite(value) and abs(value - reference) <= rel * abs(reference)


def _row(quantity: str, value: str, chapter: str, check: str) -> dict[str, str]:
    return {"quantity": quantity, "this run": value, "chapter": chapter, "check": check}


class _AgainstChapter:
    """How this run's set-up compares with the chapter's for ``study``: a first-step value is
    checked on the chapter's mesh, an end-of-run value on its mesh and steps; ``other`` (why the
    settings are not the chapter's) turns every check off."""

    def __init__(self, study: str, numbers: Mapping[str, float], meshes: Mapping[str, float], other: str):
        self.study, self.ref = study, CHAPTER[study]
        self.steps, h = int(numbers[f"{study}_steps"]), meshes[study]
        self.same_mesh = h == self.ref["mesh"] and not other
        self.full = self.same_mesh and self.steps == self.ref["steps"]
        self.mesh_note = other or f"h={h:g}, chapter h={self.ref['mesh']:g}"
        self.steps_note = other or f"{self.steps} steps, chapter {self.ref['steps']}"

    def first_and_last(
        self, quantity: str, first: float, last: float, chapter: tuple[str, str], agrees: tuple[bool, bool]
    ) -> list[dict[str, str]]:
        """The rows of ``quantity`` at step 1 and after the run's steps (4 significant digits),
        beside the chapter's values ``chapter`` (the last without its steps), checked by ``agrees``."""
        end_note = self.mesh_note if not self.same_mesh else self.steps_note
        return [
            _row(
                f"{self.study}: {quantity} at step 1",
                significant(first, 4),
                chapter[0],
                _verdict(self.same_mesh, agrees[0], self.mesh_note),
            ),
            _row(
                f"{self.study}: {quantity} after {self.steps} steps",
                significant(last, 4),
                f"{chapter[1]} after {self.ref['steps']}",
                _verdict(self.full, agrees[1], end_note),
            ),
        ]


def comparison_rows(numbers: Mapping[str, float], meshes: Mapping[str, float], other: str = "") -> list[dict[str, str]]:
    """Rows ``quantity | this run | chapter | check`` for the numbers present in ``numbers``.

    A row is checked only where the run's set-up is the chapter's (same mesh size, and the
    same steps for end-of-run values); first-step values need the mesh only. Agreement:
    4 significant digits (relative 5e-4) for compliances, 3 for the first loss, the
    chapter's bound for the last loss, 1e-9 for the volume, the tolerance for the gradient
    check's worst probe (:data:`flows.tasks.GRADCHECK_MIN_DIGITS`). ``other``: why the
    study's own settings are not the chapter's (a learning rate, a volume fraction): then
    nothing is checked against the chapter.
    """
    rows: list[dict[str, str]] = []

    def row(quantity: str, value: str, chapter: str, check: str) -> None:
        rows.append(_row(quantity, value, chapter, check))

    if "loss_first" in numbers:
        setup = _AgainstChapter("identification", numbers, meshes, other)
        first, last, ref = numbers["loss_first"], numbers["loss_last"], setup.ref
        chapter = (significant(ref["loss_first"], 3), f"< {ref['loss_last_below']:g}")
        agrees = (_close(first, ref["loss_first"], 5e-3), last < ref["loss_last_below"])
        rows += setup.first_and_last("loss", first, last, chapter, agrees)
        row("identification: max |u - u_obs| / max |u_obs|", significant(numbers["u_rel_max_error_final"], 3), "", "")
        row("identification: max |kappa - kappa_true|", significant(numbers["kappa_max_abs_error"], 3), "", "")
        row("identification: median ms per Adam step", f"{numbers['identification_ms_per_step']:.2f}", "", "")
    if "compliance_first" in numbers:
        setup = _AgainstChapter("topology", numbers, meshes, other)
        first, last, ref = numbers["compliance_first"], numbers["compliance_last"], setup.ref
        chapter = (significant(ref["compliance_first"], 4), significant(ref["compliance_last"], 4))
        agrees = (_close(first, ref["compliance_first"], 5e-4), _close(last, ref["compliance_last"], 5e-4))
        rows += setup.first_and_last("compliance", first, last, chapter, agrees)
        row(
            "topology: mean density",
            f"{numbers['volume']:.12f}",
            f"{ref['volume']:g}",
            _verdict(not other, abs(numbers["volume"] - ref["volume"]) < 1e-9, other),
        )
        row("topology: median ms per OC step", f"{numbers['topology_ms_per_step']:.2f}", "", "")
    if "gradcheck_min_digits" in numbers:
        ref = CHAPTER["gradcheck"]
        row(
            "gradient check: median agreeing digits",
            f"{numbers['gradcheck_median_digits']:.1f}",
            f"{ref['median_digits']:g} (reference implementation)",
            "",
        )
        row(
            "gradient check: worst agreeing digits",
            f"{numbers['gradcheck_min_digits']:.1f}",
            f"{ref['min_digits']:g} (reference implementation)",
            "pass"
            if numbers["gradcheck_min_digits"] >= tasks.GRADCHECK_MIN_DIGITS
            else f"FAIL (< {tasks.GRADCHECK_MIN_DIGITS:g})",
        )
    return rows


def summary_line(numbers: Mapping[str, float], where: str = "") -> str:
    """The summary as one log line."""
    parts = []
    if "loss_first" in numbers:
        parts.append(
            f"identification ({numbers['identification_steps']} steps): loss {numbers['loss_first']:.3e} -> "
            f"{numbers['loss_last']:.3e}, max |kappa error| {numbers['kappa_max_abs_error']:.3f}"
        )
    if "compliance_first" in numbers:
        parts.append(
            f"topology ({numbers['topology_steps']} steps): compliance {numbers['compliance_first']:.4e} -> "
            f"{numbers['compliance_last']:.4e}, mean density {numbers['volume']:.6f}"
        )
    if "gradcheck_min_digits" in numbers:
        verdict = "pass" if numbers["gradcheck_min_digits"] >= tasks.GRADCHECK_MIN_DIGITS else "FAIL"
        parts.append(
            f"gradient check: median {numbers['gradcheck_median_digits']:.1f}, "
            f"worst {numbers['gradcheck_min_digits']:.1f} "
            f"digits ({verdict})"
        )
    return "summary: " + "; ".join(parts) + (f"; {where}" if where else "")


def summary_markdown(
    title: str,
    numbers: Mapping[str, float],
    meshes: Mapping[str, float],
    store: Store,
    refs: Any,
    files: Mapping[str, str | Path] | None = None,
    extra: str = "",
    other: str = "",
) -> str:
    """The summary artifact: the comparison table, the published files and every store file, by absolute path."""
    parts = [f"# {title}", "", markdown_table(comparison_rows(numbers, meshes, other))]
    if extra:
        parts += [extra, ""]
    if files:
        parts += (
            ["## Published files", ""]
            + [f"- {file_link(path)}: `{Path(path).resolve()}`" for path in files.values()]
            + [""]
        )
    root = store.root.resolve()
    parts += [f"## Artifact store `{root}`", ""]
    parts += [f"- {ref['kind']}: {file_link(root / ref['path'], ref['path'])}" for ref in iter_refs(refs)]
    return "\n".join(parts) + "\n"


def publish(store: Store, out: Path, artifacts: dict, outcome: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Copy the figures and the gradient-check table (``.nc``, and its rows as ``.md``) to
    ``out``; the UI's figures, gradient-check table and link artifacts. ``outcome``: the
    run's :func:`run_summary` (computed here if not given)."""
    out = Path(out)
    outcome = run_summary(store, artifacts) if outcome is None else outcome
    figures = {name: store.copy_to(ref, out / name) for name, ref in artifacts["figures"].items()}
    rows, numbers = outcome["rows"], outcome["numbers"]
    notes = (
        f"Autograd against five-point central differences; median {numbers['gradcheck_median_digits']:.1f}, "
        f"worst {numbers['gradcheck_min_digits']:.1f} significant digits; "
        f"a probe passes at {tasks.GRADCHECK_MIN_DIGITS:g} or more."
    )
    netcdf = store.copy_to(outcome["table"], out / "gradient_check.nc")
    markdown = write_markdown_table(out / "gradient_check.md", "Gradient check", rows, notes=notes)
    pngs = {name: path.read_bytes() for name, path in figures.items()}
    figures_text = figures_markdown("Differentiability figures", pngs, str(out.resolve()))
    table_text = f"gradient-check table, {markdown.resolve()} (+ .nc)"
    calls = [
        partial(ui_markdown, "differentiability-figures", figures_text, "the three figures"),
        partial(ui_table, "gradient-check", rows, f"autograd vs central differences: {notes}"),
        partial(ui_link, "gradient-check-table", markdown, markdown.name, table_text),
        partial(ui_link, "artifact-store", store.root, str(store.root.resolve()), "the artifact store of this run"),
    ]
    for name, path in figures.items():
        key = "figure-" + Path(name).stem.replace("_", "-")
        calls.append(partial(ui_link, key, path, name, f"figure {name}, {path.resolve()}"))
    ui_concurrently(calls)
    return {
        "figures": {name: str(path) for name, path in figures.items()},
        "gradient_check": {"netcdf": str(netcdf), "markdown": str(markdown), "rows": rows},
    }


def _log_summary(line: str) -> None:
    try:
        get_run_logger().info(line)
    except Exception:  # outside a run
        pass


@flow(
    name="differentiability-figures",
    task_runner=task_runner(),
    log_prints=True,
    flow_run_name="figures-id{identification_steps}-topo{topology_steps}",
)
def differentiability_figures(
    identification_steps: Steps = STEPS["identification"],
    topology_steps: Steps = STEPS["topology"],
    identification_mesh: MeshSize = MESHES["identification"],
    topology_mesh: MeshSize = MESHES["topology"],
    gradcheck_mesh: MeshSize = MESHES["gradcheck"],
    n_probes: Probes = 5,
    store: str | None = None,
    out: str = str(DEFAULT_OUT),
    checkpoint_every: Checkpoints = CHECKPOINT_EVERY,
) -> dict[str, Any]:
    """Both worked studies, the gradient checks and the three PNGs; returns the published
    paths, the artifact references, the key numbers and the summary line.

    Args:
        identification_steps: Adam steps of the coefficient identification (the chapter: 5000; a quick run: 300).
        topology_steps: Optimality-Criteria steps of the topology optimisation (the chapter: 60; quick: 20).
        identification_mesh: gmsh edge length of the identification mesh on the unit square (0.04: 790 nodes).
        topology_mesh: gmsh edge length of the topology mesh (0.025: 1935 nodes, 3708 triangles).
        gradcheck_mesh: gmsh edge length of the gradient-check mesh (0.2: 44 nodes).
        n_probes: entries per gradient checked against five-point central differences.
        store: artifact store folder, relative to where the run executes (empty: $TMCORE_ARTIFACTS or data/artifacts).
        out: folder the PNGs and the gradient-check table are published to.
        checkpoint_every: steps between checkpoints of each study (empty: none); a retry resumes from the latest.
    """
    artifacts = Store(store)
    quick = identification_steps < STEPS["identification"] or topology_steps < STEPS["topology"]
    labels = tag_flow_run(run_tags("figures", quick=quick))
    with tags(*labels):
        generate_mesh = Bound(tasks.generate_mesh, artifacts)
        meshes = {
            name: generate_mesh.submit(kind="rectangle", chara_length=h)
            for name, h in (
                ("identification", identification_mesh),
                ("topology", topology_mesh),
                ("gradcheck", gradcheck_mesh),
            )
        }
        identify = tasks.study_run(tasks.identify_coefficient, "identify", identification_mesh, identification_steps)
        identification = Bound(identify, artifacts).submit(
            mesh=meshes["identification"], steps=identification_steps, checkpoint_every=checkpoint_every
        )
        optimise = tasks.study_run(tasks.optimise_topology, "topology", topology_mesh, topology_steps)
        topology = Bound(optimise, artifacts).submit(
            mesh=meshes["topology"], steps=topology_steps, checkpoint_every=checkpoint_every
        )
        checks = Bound(tasks.gradient_check, artifacts).map(
            mesh=unmapped(meshes["gradcheck"]), target=list(tasks.GRADIENT_TARGETS), n_probes=unmapped(n_probes)
        )
        figures = Bound(tasks.render_figures, artifacts).submit(
            identification_mesh=meshes["identification"],
            identification=identification,
            topology_mesh=meshes["topology"],
            topology=topology,
        )
        futures = {
            "generate_mesh": list(meshes.values()),
            "identify_coefficient": [identification],
            "optimise_topology": [topology],
            "gradient_check": list(checks),
            "render_figures": [figures],
        }
        refs = {
            "meshes": {name: future.result() for name, future in meshes.items()},
            "identification": identification.result(),
            "topology": topology.result(),
            "gradient_checks": [future.result() for future in checks],
            "figures": figures.result(),
        }
    states = {name: [future.state.name for future in group] for name, group in futures.items()}
    outcome = run_summary(artifacts, refs)
    published = publish(artifacts, Path(out), refs, outcome)
    numbers = outcome["numbers"]
    meshes_used = {"identification": identification_mesh, "topology": topology_mesh, "gradcheck": gradcheck_mesh}
    files = {
        **published["figures"],
        "gradient_check.md": published["gradient_check"]["markdown"],
        "gradient_check.nc": published["gradient_check"]["netcdf"],
    }
    table = markdown_table(outcome["rows"])
    text = summary_markdown(
        "Differentiability figures: summary",
        numbers,
        meshes_used,
        artifacts,
        refs,
        files,
        extra="## Gradient check\n\n" + table,
    )
    ui_markdown("differentiability-summary", text, "key numbers beside the chapter's, and where every file is")
    line = summary_line(numbers, f"figures in {Path(out).resolve()}")
    _log_summary(line)
    return {
        **published,
        "artifacts": refs,
        "states": states,
        "summary": numbers,
        "summary_line": line,
        "summary_markdown": text,
        "mesh_sizes": meshes_used,
        "store": str(artifacts.root),
        "tags": labels,
    }


# a study run on its own: the title of its summary and the function reading its key numbers
_ON_ITS_OWN = {
    "identification": ("Coefficient identification", identification_numbers),
    "topology": ("Thermal topology", topology_numbers),
}


def _study_on_its_own(
    store: str | None, study: str, task: Any, chara_length: float, parameters: dict[str, Any], other: str
) -> dict:
    """One study (a key of ``_ON_ITS_OWN``) run by ``task(mesh=..., **parameters)`` on a mesh of
    edge length ``chara_length``: the mesh, history and fields artifacts, and the summary beside
    the chapter's (``other``: why the settings are not the chapter's; empty: they are)."""
    artifacts = Store(store)
    labels = tag_flow_run(run_tags(study, quick=parameters["steps"] < STEPS[study]))
    with tags(*labels):
        mesh = Bound(tasks.generate_mesh, artifacts)(kind="rectangle", chara_length=chara_length)
        refs = Bound(task, artifacts)(mesh=mesh, **parameters)
    title, numbers_of = _ON_ITS_OWN[study]
    numbers = numbers_of(artifacts, refs)
    text = summary_markdown(
        f"{title}: summary", numbers, {study: chara_length}, artifacts, {"mesh": mesh, **refs}, other=other
    )
    ui_markdown(f"{study}-summary", text, "key numbers beside the chapter's")
    line = summary_line(numbers)
    _log_summary(line)
    return {"mesh": mesh, **refs, "summary": numbers, "summary_line": line}


@flow(
    name="coefficient-identification",
    task_runner=task_runner(),
    flow_run_name="identification-h{chara_length}-{steps}steps",
)
def identification_study(
    steps: Steps = STEPS["identification"],
    chara_length: MeshSize = MESHES["identification"],
    lr: LearningRate = 3e-2,
    smoothness: NonNegative = 0.0,
    store: str | None = None,
    checkpoint_every: Checkpoints = CHECKPOINT_EVERY,
) -> dict:
    """The coefficient identification on its own: mesh -> history and fields artifacts, and a summary.

    Args:
        steps: Adam steps (the chapter: 5000).
        chara_length: gmsh edge length of the mesh on the unit square (0.04: 790 nodes).
        lr: Adam's learning rate.
        smoothness: weight of the penalty on |grad theta|^2 added to the misfit (0: none).
        store: artifact store folder, relative to where the run executes (empty: $TMCORE_ARTIFACTS or data/artifacts).
        checkpoint_every: steps between checkpoints (empty: none); a crashed or retried study resumes from the latest.
    """
    # the chapter's numbers are for lr 3e-2 without a penalty: other settings are not compared
    other = "" if (lr, smoothness) == (3e-2, 0.0) else f"lr {lr:g}, smoothness {smoothness:g}; chapter 0.03, 0"
    run = tasks.study_run(tasks.identify_coefficient, "identify", chara_length, steps)
    parameters = {"steps": steps, "lr": lr, "smoothness": smoothness, "checkpoint_every": checkpoint_every}
    return _study_on_its_own(store, "identification", run, chara_length, parameters, other)


@flow(name="thermal-topology", task_runner=task_runner(), flow_run_name="topology-h{chara_length}-{steps}steps")
def topology_study(
    steps: Steps = STEPS["topology"],
    chara_length: MeshSize = MESHES["topology"],
    vf: VolumeFraction = 0.4,
    p: Exponent = 3.0,
    store: str | None = None,
    checkpoint_every: Checkpoints = 20,
) -> dict:
    """The thermal topology optimisation on its own: mesh -> history and fields artifacts, and a summary.

    Args:
        steps: Optimality-Criteria steps (the chapter: 60).
        chara_length: gmsh edge length of the mesh on the unit square (0.025: 1935 nodes).
        vf: volume fraction, the mean density held by every step (the chapter: 0.4).
        p: SIMP exponent of the conductivity kmin + (1 - kmin) rho^p.
        store: artifact store folder, relative to where the run executes (empty: $TMCORE_ARTIFACTS or data/artifacts).
        checkpoint_every: steps between checkpoints (empty: none); a crashed or retried study resumes from the latest.
    """
    other = "" if (vf, p) == (0.4, 3.0) else f"vf {vf:g}, p {p:g}; chapter 0.4, 3"
    run = tasks.study_run(tasks.optimise_topology, "topology", chara_length, steps)
    parameters = {"steps": steps, "vf": vf, "p": p, "checkpoint_every": checkpoint_every}
    return _study_on_its_own(store, "topology", run, chara_length, parameters, other)


# -- the command ------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m flows.differentiability", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="short studies (300 and 20 steps): a smoke run, not the chapter's figures"
    )
    parser.add_argument(
        "--identification-steps", type=int, default=None, help="Adam steps (default 5000; 300 with --quick)"
    )
    parser.add_argument("--topology-steps", type=int, default=None, help="OC steps (default 60; 20 with --quick)")
    parser.add_argument("--store", default=None, help="artifact store (default $TMCORE_ARTIFACTS or data/artifacts)")
    parser.add_argument(
        "--out", default=str(DEFAULT_OUT), help=f"folder for the figures and the table (default {DEFAULT_OUT})"
    )
    add_dask_argument(parser)
    args = parser.parse_args(argv)
    steps = QUICK_STEPS if args.quick else STEPS
    args.identification_steps = (
        steps["identification"] if args.identification_steps is None else args.identification_steps
    )
    args.topology_steps = steps["topology"] if args.topology_steps is None else args.topology_steps
    for name in ("identification_steps", "topology_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def task_counts(states: dict[str, list[str]]) -> str:
    """ "8 Cached" or "5 Completed, 3 Cached": the task runs of a flow run by final state."""
    counts: dict[str, int] = {}
    for names in states.values():
        for name in names:
            counts[name] = counts.get(name, 0) + 1
    return ", ".join(f"{n} {name}" for name, n in sorted(counts.items()))


def report(result: dict[str, Any]) -> str:
    """The lines the command prints: the gradient-check table, the key numbers beside the
    chapter's, where the files are."""
    store = Store(result["store"])
    folder = Path(next(iter(result["figures"].values()))).parent.resolve()
    lines = [
        "gradient check (autograd vs five-point central differences):",
        markdown_table(result["gradient_check"]["rows"]).rstrip(),
        "key numbers beside the chapter's:",
        markdown_table(comparison_rows(result["summary"], result["mesh_sizes"])).rstrip(),
        f"tasks: {task_counts(result['states'])}",
        f"artifacts in {store.root.resolve()}",
        f"figures written to {folder}/: {', '.join(Path(p).name for p in result['figures'].values())}",
        f"gradient-check table: {Path(result['gradient_check']['markdown']).resolve()} (+ .nc)",
        result["summary_line"],
    ]
    return "\n".join(lines)


# Imported while the command waits for the API server (the process is idle then; measured on a
# cached run: 0.3-0.4 s less in the flow): Prefect's parameter serialisation imports FastAPI, and
# xarray imports dask.array (when dask is installed) the first time it decodes a string variable,
# as in the gradient-check tables every run publishes.
PRELOAD = ("fastapi",)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    api = globals().get("_API")
    if api is not None:
        loading = preload(PRELOAD)
        kind, url = api.result()
        loading.join()
    else:
        kind, url = "", None
    ready = time.perf_counter()
    if kind == "server":
        print(f"using the Prefect server at {url}", flush=True)
    elif kind == "unreachable":
        print(f"no Prefect server answers at PREFECT_API_URL={url}; using a temporary one", flush=True)
    figures_flow = on_dask(differentiability_figures, args.dask_address)
    with api_settings(kind):
        result = figures_flow(
            identification_steps=args.identification_steps,
            topology_steps=args.topology_steps,
            store=args.store,
            out=args.out,
        )
    done = time.perf_counter()
    print(report(result), flush=True)
    if api is not None:
        print(
            f"time: {ready - _STARTED:.1f} s to import and reach the Prefect API ({kind or 'default'}), "
            f"{done - ready:.1f} s in the flow",
            flush=True,
        )
    return result


def drain_prefect_workers(timeout: float = 5.0) -> None:
    """Send Prefect's queued run logs and events now, while the API is still up.

    At exit the temporary server is stopped first (``atexit`` runs last-registered first)
    and ``logging.shutdown`` drains the log worker afterwards, against a stopped server:
    that drain waited its full 5 s time-out, about a third of a cached run (measured).
    Drained here, before the exit handlers, it takes milliseconds.
    """
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=timeout)
    EventsWorker.drain_all(timeout=timeout)


if __name__ == "__main__":
    from .runners import exit_now

    main()
    drain_prefect_workers()
    exit_now(0)
