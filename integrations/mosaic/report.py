"""The report of a mosaic run on tmcore: our numbers beside the published ones, every status cell.

:func:`summarize` reads mosaic's result files of one problem and computes the numbers its
results pages rank by (definitions in :mod:`integrations.mosaic.published`);
:func:`report_dataset` gathers them, mosaic's status cells and the endpoint timings into one
xarray Dataset; :func:`write_report` writes ``<out>/mosaic.md`` and ``<out>/mosaic.nc`` and
copies mosaic's plots to ``<out>/<problem>/<suite>/<experiment>/*.png``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from flows.artifacts import atomic_write_bytes, atomic_write_text, dataset_bytes, dataset_from_bytes
from flows.reports import markdown_table

from .published import HARDWARE, PUBLISHED, RECOVERY_SETTINGS, SOURCE
from .recovery import CONFIGURATIONS as RECOVERY_CONFIGURATIONS

__all__ = [
    "combine",
    "dataset_from_file",
    "status_rows",
    "copy_plots",
    "failed_checks",
    "markdown",
    "report_dataset",
    "status_cells",
    "summarize",
    "write_report",
]

CALLS = ("apply", "vjp_after_apply", "vjp_alone", "jax_grad")  # the endpoint timings (harness.endpoint_timings)
FORWARD_ORDER = ("agreement", "baseline", "source_baseline")  # mosaic's ranking takes the first with errors
OPTIMIZATION_FINAL = ("final_error", "final_compliance")


def _results(root: Path, problem: str, suite: str, experiment: str) -> list[dict]:
    path = Path(root) / problem / suite / experiment / "result.json"
    if not path.exists():
        return []
    return json.loads(path.read_text(encoding="utf-8")).get("results") or []


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _cost(root: Path, problem: str, experiment: str) -> dict[int, float]:
    """{N: mean seconds} of a cost sweep (failed points left out)."""
    out = {}
    for row in _results(root, problem, "cost", experiment):
        metrics = row.get("metrics") or {}
        if metrics.get("status") != "failed" and _finite(metrics.get("mean")):
            out[int(float(row["sweep_value"]))] = float(metrics["mean"])
    return dict(sorted(out.items()))


def summarize(root: Path, problem: str) -> dict[str, Any]:
    """tmcore's numbers for one problem from the result files under ``root``.

    Keys: ``forward`` {experiment: max relative error over its sweep}, ``forward_mean``
    (mosaic's ranking number), ``cost_forward`` / ``cost_vjp`` {N: seconds}, ``fd_error``,
    ``fd_one_minus_cosine``, ``opt_initial``, ``opt_final``, ``opt_iters``, ``opt_converged``,
    ``opt_trace`` (the objective per iteration).
    """
    summary: dict[str, Any] = {"forward": {}}
    forward_dir = Path(root) / problem / "forward"
    for experiment in sorted(p.name for p in forward_dir.iterdir()) if forward_dir.is_dir() else []:
        errors = [
            r["metrics"]["error"]
            for r in _results(root, problem, "forward", experiment)
            if "error" in (r.get("metrics") or {})
        ]
        if errors:
            summary["forward"][experiment] = float(np.max(errors))
    summary["forward_mean"] = float("nan")
    for experiment in FORWARD_ORDER:
        errors = [
            r["metrics"]["error"]
            for r in _results(root, problem, "forward", experiment)
            if _finite((r.get("metrics") or {}).get("error")) and r["metrics"].get("valid", True)
        ]
        if errors:
            summary["forward_mean"] = float(np.mean(errors))
            break
    summary["cost_forward"] = _cost(root, problem, "spatial_cost")
    summary["cost_vjp"] = _cost(root, problem, "vjp_cost/by_N")
    best, cosine = float("inf"), float("nan")
    for row in _results(root, problem, "gradient", "fd_check"):
        for entry in ((row.get("metrics") or {}).get("eps_sweep") or {}).values():
            errors = entry.get("rel_error")
            median = float(np.median(errors if isinstance(errors, list) else [errors]))
            if math.isfinite(median) and median < best:
                best, cosine = median, float(entry.get("cosine", float("nan")))
    summary["fd_error"], summary["fd_one_minus_cosine"] = best, 1.0 - cosine
    summary.update(opt_initial=float("nan"), opt_final=float("nan"), opt_iters=0, opt_converged=False, opt_trace=[])
    optimization_dir = Path(root) / problem / "optimization"
    for experiment in sorted(p.name for p in optimization_dir.iterdir()) if optimization_dir.is_dir() else []:
        for row in _results(root, problem, "optimization", experiment):
            metrics = row.get("metrics") or {}
            key = next((k for k in OPTIMIZATION_FINAL if k in metrics), None)
            if key is None:
                continue
            trace = metrics.get("errors") or metrics.get("compliances") or []
            summary.update(
                opt_experiment=experiment,
                opt_final=float(metrics[key]),
                opt_initial=float(trace[0]) if trace else float("nan"),
                opt_iters=int(metrics.get("n_iters") or len(trace)),
                opt_converged=bool(metrics.get("converged", False)),
                opt_trace=[float(v) for v in trace],
            )
    return summary


def status_cells(status: Any) -> list[dict[str, str]]:
    """mosaic's status cells of tmcore, one row per experiment: experiment, status, reason."""
    rows = []
    for row in status.rows:
        cell = row.cells.get("tmcore")
        rows.append(
            {
                "experiment": row.label,
                "status": cell.status if cell else "missing",
                "reason": (cell.reason if cell else ""),
            }
        )
    return rows


def _published_rows(problem: str, suite: str, ours: tuple, label: str = "tmcore (this run)") -> list[tuple]:
    rows = [(label, *ours)] + [(solver, *values) for solver, values in PUBLISHED[problem][suite].items()]
    return rows


def _sci(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value == 0:
        return "0"
    if 1e3 <= abs(value) < 1e4:
        return f"{value:.0f}"  # .3g would write 1000.7 as 1e+03
    return f"{value:.3g}" if 1e-2 <= abs(value) < 1e4 else f"{value:.2e}"


def report_dataset(
    summaries: Mapping[str, Mapping[str, Any]],
    statuses: Mapping[str, Sequence[Mapping[str, str]]],
    endpoints: Mapping[str, Mapping[int, Mapping[str, float]]],
    seconds: Mapping[str, Mapping[str, float]],
    attrs: Mapping[str, Any],
    recoveries: Mapping[str, Mapping[str, Any]] | None = None,
):
    """One Dataset with everything the report shows: status and wall time (problem, experiment),
    cost (problem, pass, n), endpoint timings (problem, call, n), forward errors (problem,
    forward_experiment), FD numbers and optimisation numbers (problem), the optimisation
    objective (problem, iteration), and the conductivity-recovery study
    (:func:`integrations.mosaic.recovery.study`, per problem that has one): its initial
    objective (problem, recovery_configuration) and final objectives (problem,
    recovery_configuration, recovery_start; start 0: mosaic's, k >= 1: perturbed with seed k)."""
    import xarray as xr

    problems = list(summaries)
    experiments = sorted({row["experiment"] for rows in statuses.values() for row in rows})
    status = np.full((len(problems), len(experiments)), "", dtype=object)  # "": not an experiment of that problem
    reason = np.full_like(status, "")
    wall = np.full(status.shape, np.nan)
    for i, problem in enumerate(problems):
        for row in statuses.get(problem, []):
            j = experiments.index(row["experiment"])
            status[i, j], reason[i, j] = row["status"], row["reason"]
            wall[i, j] = seconds.get(problem, {}).get(row["experiment"], np.nan)
    sizes = sorted(
        {n for s in summaries.values() for n in (*s["cost_forward"], *s["cost_vjp"])}
        | {n for e in endpoints.values() for n in e}
    )
    cost = np.full((len(problems), 2, len(sizes)), np.nan)
    endpoint = np.full((len(problems), len(CALLS), len(sizes)), np.nan)
    for i, problem in enumerate(problems):
        for k, n in enumerate(sizes):
            cost[i, 0, k] = summaries[problem]["cost_forward"].get(n, np.nan)
            cost[i, 1, k] = summaries[problem]["cost_vjp"].get(n, np.nan)
            for c, call in enumerate(CALLS):
                endpoint[i, c, k] = endpoints.get(problem, {}).get(n, {}).get(call, np.nan)
    iterations = max([len(s["opt_trace"]) for s in summaries.values()] + [1])
    trace = np.full((len(problems), iterations), np.nan)
    for i, problem in enumerate(problems):
        values = summaries[problem]["opt_trace"]
        trace[i, : len(values)] = values
    recoveries = recoveries or {}
    configurations = list(RECOVERY_CONFIGURATIONS)
    starts = 1 + max([len(c["perturbed"]) for r in recoveries.values() for c in r["configurations"].values()] + [0])
    recovery_initial = np.full((len(problems), len(configurations)), np.nan)
    recovery_final = np.full((len(problems), len(configurations), starts), np.nan)
    for i, problem in enumerate(problems):
        for j, name in enumerate(configurations):
            entry = recoveries.get(problem, {}).get("configurations", {}).get(name)
            if entry is not None:
                recovery_initial[i, j] = entry["initial"]
                finals = [entry["final"], *entry["perturbed"]]
                recovery_final[i, j, : len(finals)] = finals
    perturbation = next((float(r["perturbation"]) for r in recoveries.values()), np.nan)
    forward_experiments = sorted({e for s in summaries.values() for e in s["forward"]})
    forward = np.array([[summaries[p]["forward"].get(e, np.nan) for e in forward_experiments] for p in problems])
    per_problem = {
        name: (("problem",), np.array([summaries[p].get(key, default) for p in problems], dtype=dtype))
        for name, key, dtype, default in (
            ("forward_mean_rel_error", "forward_mean", float, np.nan),
            ("fd_best_rel_error", "fd_error", float, np.nan),
            ("fd_one_minus_cosine", "fd_one_minus_cosine", float, np.nan),
            ("optimization_experiment", "opt_experiment", object, ""),
            ("optimization_initial", "opt_initial", float, np.nan),
            ("optimization_final", "opt_final", float, np.nan),
            ("optimization_iterations", "opt_iters", np.int64, 0),
            ("optimization_converged", "opt_converged", np.int8, 0),
        )
    }
    return xr.Dataset(
        {
            "status": (("problem", "experiment"), status),
            "status_reason": (("problem", "experiment"), reason),
            "wall_seconds": (
                ("problem", "experiment"),
                wall,
                {"units": "s", "long_name": "wall time of the experiment"},
            ),
            "cost_seconds": (
                ("problem", "pass", "n"),
                cost,
                {"units": "s", "long_name": "mosaic cost suite, mean of its trials"},
            ),
            "endpoint_seconds": (
                ("problem", "call", "n"),
                endpoint,
                {"units": "s", "long_name": "median endpoint wall time"},
            ),
            "forward_max_rel_error": (("problem", "forward_experiment"), forward),
            "optimization_objective": (("problem", "iteration"), trace),
            "recovery_initial": (("problem", "recovery_configuration"), recovery_initial),
            "recovery_final": (
                ("problem", "recovery_configuration", "recovery_start"),
                recovery_final,
                {
                    "long_name": "conductivity recovery: final objective after mosaic's L-BFGS iterations",
                    "perturbation": perturbation,
                },
            ),
            **per_problem,
        },
        coords={
            "problem": np.array(problems, dtype=object),
            "experiment": np.array(experiments, dtype=object),
            "pass": np.array(["forward", "vjp"], dtype=object),
            "call": np.array(CALLS, dtype=object),
            "n": np.array(sizes, dtype=np.int64),
            "forward_experiment": np.array(forward_experiments, dtype=object),
            "iteration": np.arange(iterations),
            "recovery_configuration": np.array(configurations, dtype=object),
            "recovery_start": np.arange(starts),
        },
        attrs={**attrs, "published_source": SOURCE, "hardware": HARDWARE},
    )


def copy_plots(results_root: Path, out: Path, problems: Sequence[str]) -> list[str]:
    """Copy mosaic's plots (png) of ``problems`` from its results tree into ``out`` (same layout);
    their paths relative to ``out``."""
    copied = []
    for problem in problems:
        for png in sorted((Path(results_root) / problem).rglob("*.png")):
            relative = png.relative_to(results_root)
            atomic_write_bytes(Path(out) / relative, png.read_bytes())
            copied.append(relative.as_posix())
    return copied


def dataset_from_file(path: Path):
    """A report Dataset read back from its netCDF file (loaded into memory)."""
    return dataset_from_bytes(Path(path).read_bytes())


def combine(datasets: Sequence[Any]):
    """Report Datasets of single problems as one (dim ``problem``; an experiment or size a
    problem does not have is NaN there); their notes joined."""
    import xarray as xr

    notes = [note for d in datasets for note in str(d.attrs.get("notes", "")).split("\n") if note]
    combined = xr.concat(list(datasets), dim="problem", join="outer", combine_attrs="drop_conflicts")
    return combined.assign_attrs(notes="\n".join(notes), mode=datasets[0].attrs.get("mode", ""))


def _cells(dataset, problem: str) -> list[tuple[str, str, str]]:
    """(experiment, status, reason) of one problem's experiments (those it has)."""
    d = dataset.sel(problem=problem)
    cells = []
    for e in d.experiment.values.tolist():
        status = d.status.sel(experiment=e).item()
        if isinstance(status, str) and status:
            cells.append((e, status, str(d.status_reason.sel(experiment=e).item())))
    return cells


def status_rows(dataset) -> list[dict[str, str]]:
    """Every status cell: problem, experiment, status, check (pass / FAIL), reason."""
    return [
        {
            "problem": p,
            "experiment": e,
            "status": status,
            "check": "pass" if status == "ok" else "FAIL",
            "reason": reason,
        }
        for p in dataset.problem.values.tolist()
        for e, status, reason in _cells(dataset, p)
    ]


def _series(dataset, name: str, problem: str, dim: str) -> dict:
    """{coordinate: value} of a 1-D slice, NaNs left out."""
    values = dataset[name].sel(problem=problem)
    return {k: float(v) for k, v in zip(values[dim].values.tolist(), values.values.tolist()) if v == v}


def failed_checks(dataset) -> list[str]:
    """ "<problem> <experiment>: <status>" for every status cell that is not ok."""
    return [
        f"{row['problem']} {row['experiment']}: {row['status']} {row['reason']}".rstrip()
        for row in status_rows(dataset)
        if row["status"] != "ok"
    ]


def markdown(dataset, plots: Sequence[str] = ()) -> str:
    """The report of a :func:`report_dataset` (its attrs ``mode`` and ``notes`` in the header);
    ``plots``: paths of mosaic's plots relative to the report, listed per problem."""
    notes = [n for n in str(dataset.attrs.get("notes", "")).split("\n") if n]
    lines = [
        f"# tmcore in mosaic 0.2.0 ({dataset.attrs.get('mode', '?')} run, {dataset.attrs.get('date', '')})",
        "",
        "mosaic's own harness (forward agreement, gradient, cost and optimisation suites, with its ICs, physics, FD",
        "steps, optimisers and status checks) run in-process on tmcore's Tesseracts (`integrations/mosaic/`,",
        "docs/mosaic.md). Every number below is computed from mosaic's result files with the definitions of its",
        "results pages.",
        "",
        f"**Hardware.** {HARDWARE} Wall times here are noisy (a shared machine) and not comparable one-to-one with",
        "the published ones; accuracy and gradient numbers do not depend on the hardware.",
        "",
        f"Published numbers: {SOURCE}.",
        "",
    ]
    if notes:
        lines += ["**Left out in this run.**", ""] + [f"- {note}" for note in notes] + [""]
    for problem in dataset.problem.values.tolist():
        d = dataset.sel(problem=problem)
        cells = _cells(dataset, problem)
        n_ok = sum(status == "ok" for _, status, _ in cells)
        lines += [f"## {problem}", "", f"### mosaic's status checks: {n_ok} of {len(cells)} ok", ""]
        lines.append(
            markdown_table(
                [
                    {
                        "experiment": e,
                        "mosaic status": status,
                        "check": "pass" if status == "ok" else "FAIL",
                        "reason": reason,
                        "wall (s)": _sci(float(d.wall_seconds.sel(experiment=e))),
                    }
                    for e, status, reason in cells
                ]
            )
        )
        forward = _series(dataset, "forward_max_rel_error", problem, "forward_experiment")
        lines += ["### Forward agreement", "", "Largest relative error against mosaic's reference over each sweep:", ""]
        lines.append(markdown_table([{"experiment": e, "max rel. error": _sci(v)} for e, v in forward.items()]))
        lines += ["Mean relative error, mosaic's ranking number:", ""]
        ours = (float(d.forward_mean_rel_error),)
        lines.append(
            markdown_table(
                [{"solver": s, "mean rel. error": _sci(v)} for s, v in _published_rows(problem, "forward", ours)]
            )
        )
        fwd = _series(dataset.sel(**{"pass": "forward"}), "cost_seconds", problem, "n")
        vjp = _series(dataset.sel(**{"pass": "vjp"}), "cost_seconds", problem, "n")
        lines += [
            "### Cost",
            "",
            "mosaic's cost suite: mean of 3 trials after a warm-up call. Its VJP time is one `jax.grad` through the",
            "Tesseract: an `apply` and a `vector_jacobian_product`. The forward and the VJP trials run minutes",
            "apart, so on a shared machine their ratio moves with the load (a VJP / forward below 1 is load, not",
            "speed): the endpoint table below times the calls side by side.",
            "",
        ]
        lines.append(
            markdown_table(
                [
                    {
                        "N": int(n),
                        "forward (s)": _sci(fwd.get(n)),
                        "VJP (s)": _sci(vjp.get(n)),
                        "VJP / forward": _sci(vjp[n] / fwd[n]) if n in fwd and n in vjp else "—",
                    }
                    for n in sorted(set(fwd) | set(vjp))
                ]
            )
        )
        n_f, n_v = max(fwd, default=None), max(vjp, default=None)
        ours = (n_f, fwd.get(n_f), n_v, vjp.get(n_v))
        lines += ["At the largest N each solver completed (published: their hardware; tmcore: 2 CPU cores):", ""]
        lines.append(
            markdown_table(
                [
                    {
                        "solver": s,
                        "forward": f"{_sci(tf)} s @ N={int(nf)}" if tf else "—",
                        "VJP": f"{_sci(tv)} s @ N={int(nv)}" if tv else "—",
                    }
                    for s, nf, tf, nv, tv in _published_rows(problem, "cost", ours)
                ]
            )
        )
        calls = {call: _series(dataset.sel(call=call), "endpoint_seconds", problem, "n") for call in CALLS}
        if calls["apply"]:
            lines += [
                "The endpoints alone, outside the harness (median of repeated calls): `apply`; the VJP right after an",
                "`apply` at the same inputs (what `jax.grad` adds to the apply: the adjoint solve with the kept",
                "factorisation); the VJP called alone (forward + adjoint); mosaic's own VJP measurement repeated here",
                "(`jax.grad` through the Tesseract, un-jitted) and what it spends outside our two endpoints (JAX's",
                "tracing and dispatch, the Tesseract runtime's input validation, twice), which no backend can remove",
                "(a difference of medians taken at different moments: on a loaded machine it can come out negative):",
                "",
            ]
            rows = []
            for n, t in sorted(calls["apply"].items()):
                after, grad = calls["vjp_after_apply"].get(n, np.nan), calls["jax_grad"].get(n, np.nan)
                rows.append(
                    {
                        "N": int(n),
                        "apply (s)": _sci(t),
                        "VJP after apply (s)": _sci(after),
                        "VJP after apply / apply": _sci(after / t),
                        "VJP alone (s)": _sci(calls["vjp_alone"].get(n)),
                        "jax.grad (s)": _sci(grad),
                        "jax.grad / apply": _sci(grad / t),
                        "outside the endpoints (s)": _sci(grad - t - after),
                    }
                )
            lines.append(markdown_table(rows))
        lines += ["### Gradient (FD check)", ""]
        ours = (float(d.fd_best_rel_error), float(d.fd_one_minus_cosine))
        lines.append(
            markdown_table(
                [
                    {"solver": s, "best-eps FD error": _sci(e), "1 - cosine": _sci(c)}
                    for s, e, c in _published_rows(problem, "gradient", ours)
                ]
            )
        )
        lines += [
            f"### Optimisation ({d.optimization_experiment.item()})",
            "",
            f"tmcore: objective {_sci(float(d.optimization_initial))} -> {_sci(float(d.optimization_final))} in "
            f"{int(d.optimization_iterations)} iterations.",
            "",
        ]
        ours = (float(d.optimization_final), bool(d.optimization_converged))
        lines.append(
            markdown_table(
                [
                    {"solver": s, "final objective": _sci(v), "converged": _sci(c)}
                    for s, v, c in _published_rows(problem, "optimization", ours)
                ]
            )
        )
        lines += _recovery_lines(d)
        mine = [p for p in plots if str(p).startswith(problem + "/")]
        if mine:
            lines += ["### mosaic's plots", ""] + [f"- [{p}]({p})" for p in mine] + [""]
    return "\n".join(lines) + "\n"


def _recovery_lines(d) -> list[str]:
    """The conductivity-recovery study of one problem's slice of the dataset (nothing when it has none)."""
    if "recovery_final" not in d or not np.isfinite(d.recovery_final.values).any():
        return []
    perturbation = float(d.recovery_final.attrs.get("perturbation", np.nan))
    lines = [
        "#### Conductivity recovery: configuration and round-off (integrations/mosaic/recovery.py)",
        "",
        f"{RECOVERY_SETTINGS} Below, mosaic's loop (its `_run_lbfgs`, IC and inputs) run on tmcore under both",
        f"configurations, from mosaic's start and from starts perturbed by a relative {_sci(perturbation)} (about 17",
        "float32 ulps of rho). The spread of the perturbed runs is what round-off alone does to the final objective:",
        "",
    ]
    rows = []
    for name in d.recovery_configuration.values.tolist():
        finals = d.recovery_final.sel(recovery_configuration=name).values
        perturbed = finals[1:][np.isfinite(finals[1:])]
        rows.append(
            {
                "configuration": name,
                "initial objective": _sci(float(d.recovery_initial.sel(recovery_configuration=name))),
                "final, mosaic's start": _sci(float(finals[0])),
                "final, perturbed starts (min / median / max)": " / ".join(
                    _sci(float(v)) for v in (perturbed.min(), np.median(perturbed), perturbed.max())
                )
                if perturbed.size
                else "—",
                "starts": int(perturbed.size),
            }
        )
    return lines + [markdown_table(rows)]


def write_report(out: Path, dataset, plots: Sequence[str] = (), name: str = "mosaic") -> tuple[Path, Path]:
    """``<out>/<name>.nc`` (the dataset) and ``<out>/<name>.md`` (:func:`markdown`), written atomically."""
    out = Path(out)
    netcdf = atomic_write_bytes(out / f"{name}.nc", dataset_bytes(dataset))
    return netcdf, atomic_write_text(out / f"{name}.md", markdown(dataset, plots))
