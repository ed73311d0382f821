"""The differentiability figures as a Prefect flow, and each study as a flow of its own.

    python -m flows.differentiability [--quick] [--identification-steps N] [--topology-steps N]
                                      [--store DIR] [--out DIR] [--dask-address ADDR]

``differentiability-figures`` runs, as cached tasks::

    generate_mesh x3 -> identify_coefficient (gmsh 0.04, 5000 Adam steps)
                     -> optimise_topology    (gmsh 0.025, 60 OC steps)
                     -> gradient_check.map   (gmsh 0.2; identification and topology gradients)
                     -> render_figures       (three PNGs)

then publishes (every run, cached or not) the PNGs and the gradient-check table
(``gradient_check.nc`` + ``.md``) to ``out`` (default ``reports/figures``), and the same as
markdown/table artifacts in the Prefect UI. A second run with the same parameters
recomputes nothing: every task is Cached.

Parameters are typed with ranges (:mod:`flows.parameters`): Prefect refuses a run with a
step count below 1, a mesh size outside [0.002, 0.5] and so on before any task starts.
The studies checkpoint every ``checkpoint_every`` steps and resume after a crash.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import xarray as xr
from prefect import flow, unmapped

from . import tasks
from .artifacts import Store
from .caching import Bound
from .parameters import Checkpoints, Exponent, LearningRate, MeshSize, NonNegative, Probes, Steps, VolumeFraction
from .reports import figures_markdown, markdown_table, table_rows, ui_markdown, ui_table, write_table
from .runners import task_runner

logger = logging.getLogger(__name__)

DEFAULT_OUT = Path("reports") / "figures"
STEPS = {"identification": 5000, "topology": 60}
QUICK_STEPS = {"identification": 300, "topology": 20}
MESHES = {"identification": 0.04, "topology": 0.025, "gradcheck": 0.2}
CHECKPOINT_EVERY = 250  # steps between checkpoints of a study (5000 Adam steps: 19 checkpoints of a few ms each)


def gradient_table(store: Store, checks: Sequence[dict]) -> xr.Dataset:
    """One gradient-check table (dim probe) from the per-target tables."""
    parts = [store.open_dataset(ref, "gradcheck") for ref in checks]
    table = xr.concat(parts, dim="probe", combine_attrs="drop")
    table.attrs = {
        "title": "autograd vs five-point central differences",
        "sources": json.dumps([{"path": ref["path"], "sha256": ref["sha256"]} for ref in checks]),
        "median_digits": float(table["digits"].median()),
        "min_digits": float(table["digits"].min()),
    }
    return table


def summary(store: Store, artifacts: dict) -> dict[str, float]:
    """The key numbers of a figures run, read back from its artifacts."""
    ident = store.open_dataset(artifacts["identification"]["history"], "history")
    ident_fields = store.open_dataset(artifacts["identification"]["fields"], "fields")
    topo = store.open_dataset(artifacts["topology"]["history"], "history")
    checks = gradient_table(store, artifacts["gradient_checks"])
    u_error = abs(ident_fields["u"] - ident_fields["u_obs"]).max() / abs(ident_fields["u_obs"]).max()
    return {
        "identification_steps": ident.sizes["step"],
        "loss_first": float(ident["loss"][0]),
        "loss_last": float(ident["loss"][-1]),
        "u_rel_max_error_final": float(u_error),
        "kappa_max_abs_error": float(abs(ident_fields["kappa"] - ident_fields["kappa_true"]).max()),
        "identification_ms_per_step": 1e3 * float(ident.attrs.get("run_median_seconds_per_step", float("nan"))),
        "topology_steps": topo.sizes["step"],
        "compliance_first": float(topo["compliance"][0]),
        "compliance_last": float(topo["compliance"][-1]),
        "volume": float(topo["volume"][-1]),
        "topology_ms_per_step": 1e3 * float(topo.attrs.get("run_median_seconds_per_step", float("nan"))),
        "gradcheck_median_digits": float(checks.attrs["median_digits"]),
        "gradcheck_min_digits": float(checks.attrs["min_digits"]),
    }


def publish(store: Store, out: Path, artifacts: dict) -> dict[str, Any]:
    """Copy the figures and write the gradient-check table to ``out``; UI artifacts."""
    out = Path(out)
    figures = {name: store.copy_to(ref, out / name) for name, ref in artifacts["figures"].items()}
    table = gradient_table(store, artifacts["gradient_checks"])
    netcdf, markdown = write_table(
        table, "probe", out / "gradient_check", "Gradient check",
        notes=f"Autograd against five-point central differences; median {table.attrs['median_digits']:.1f}, "
        f"worst {table.attrs['min_digits']:.1f} significant digits.",
    )
    pngs = {name: path.read_bytes() for name, path in figures.items()}
    ui_markdown("differentiability-figures", figures_markdown("Differentiability figures", pngs, str(out)), "the three figures")
    ui_table("gradient-check", table_rows(table, "probe"), "autograd vs central differences (dim probe)")
    return {"figures": {name: str(path) for name, path in figures.items()}, "gradient_check": {"netcdf": str(netcdf), "markdown": str(markdown)}}


@flow(name="differentiability-figures", task_runner=task_runner(), log_prints=True)
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
    paths, the artifact references and the key numbers."""
    artifacts = Store(store)
    generate_mesh = Bound(tasks.generate_mesh, artifacts)
    meshes = {
        name: generate_mesh.submit(kind="rectangle", chara_length=h)
        for name, h in (("identification", identification_mesh), ("topology", topology_mesh), ("gradcheck", gradcheck_mesh))
    }
    identification = Bound(tasks.identify_coefficient, artifacts).submit(
        mesh=meshes["identification"], steps=identification_steps, checkpoint_every=checkpoint_every
    )
    topology = Bound(tasks.optimise_topology, artifacts).submit(mesh=meshes["topology"], steps=topology_steps, checkpoint_every=checkpoint_every)
    checks = Bound(tasks.gradient_check, artifacts).map(
        mesh=unmapped(meshes["gradcheck"]), target=list(tasks.GRADIENT_TARGETS), n_probes=unmapped(n_probes)
    )
    figures = Bound(tasks.render_figures, artifacts).submit(
        identification_mesh=meshes["identification"], identification=identification,
        topology_mesh=meshes["topology"], topology=topology,
    )
    futures = {"generate_mesh": list(meshes.values()), "identify_coefficient": [identification],
               "optimise_topology": [topology], "gradient_check": list(checks), "render_figures": [figures]}
    refs = {
        "meshes": {name: future.result() for name, future in meshes.items()},
        "identification": identification.result(),
        "topology": topology.result(),
        "gradient_checks": [future.result() for future in checks],
        "figures": figures.result(),
    }
    states = {name: [future.state.name for future in group] for name, group in futures.items()}
    published = publish(artifacts, Path(out), refs)
    return {**published, "artifacts": refs, "states": states, "summary": summary(artifacts, refs), "store": str(artifacts.root)}


@flow(name="coefficient-identification", task_runner=task_runner())
def identification_study(
    steps: Steps = STEPS["identification"],
    chara_length: MeshSize = MESHES["identification"],
    lr: LearningRate = 3e-2,
    smoothness: NonNegative = 0.0,
    store: str | None = None,
    checkpoint_every: Checkpoints = CHECKPOINT_EVERY,
) -> dict:
    """The coefficient identification on its own: mesh -> history and fields artifacts."""
    artifacts = Store(store)
    mesh = Bound(tasks.generate_mesh, artifacts)(kind="rectangle", chara_length=chara_length)
    study = Bound(tasks.identify_coefficient, artifacts)(mesh=mesh, steps=steps, lr=lr, smoothness=smoothness, checkpoint_every=checkpoint_every)
    return {"mesh": mesh, **study}


@flow(name="thermal-topology", task_runner=task_runner())
def topology_study(
    steps: Steps = STEPS["topology"],
    chara_length: MeshSize = MESHES["topology"],
    vf: VolumeFraction = 0.4,
    p: Exponent = 3.0,
    store: str | None = None,
    checkpoint_every: Checkpoints = 20,
) -> dict:
    """The thermal topology optimisation on its own: mesh -> history and fields artifacts."""
    artifacts = Store(store)
    mesh = Bound(tasks.generate_mesh, artifacts)(kind="rectangle", chara_length=chara_length)
    return {"mesh": mesh, **Bound(tasks.optimise_topology, artifacts)(mesh=mesh, steps=steps, vf=vf, p=p, checkpoint_every=checkpoint_every)}


# -- the command ------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m flows.differentiability", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short studies (300 and 20 steps): a smoke run, not the chapter's figures")
    parser.add_argument("--identification-steps", type=int, default=None, help="Adam steps (default 5000; 300 with --quick)")
    parser.add_argument("--topology-steps", type=int, default=None, help="OC steps (default 60; 20 with --quick)")
    parser.add_argument("--store", default=None, help="artifact store (default $TMCORE_ARTIFACTS or data/artifacts)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help=f"folder for the figures and the table (default {DEFAULT_OUT})")
    parser.add_argument("--dask-address", default=None, help="run the tasks on this dask.distributed scheduler ('local': a LocalCluster)")
    args = parser.parse_args(argv)
    steps = QUICK_STEPS if args.quick else STEPS
    args.identification_steps = steps["identification"] if args.identification_steps is None else args.identification_steps
    args.topology_steps = steps["topology"] if args.topology_steps is None else args.topology_steps
    for name in ("identification_steps", "topology_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def task_counts(states: dict[str, list[str]]) -> str:
    """"8 Cached" or "5 Completed, 3 Cached": the task runs of a flow run by final state."""
    counts: dict[str, int] = {}
    for names in states.values():
        for name in names:
            counts[name] = counts.get(name, 0) + 1
    return ", ".join(f"{n} {name}" for name, n in sorted(counts.items()))


def report(result: dict[str, Any]) -> str:
    """The lines the command prints: where the files are and the key numbers."""
    numbers = result["summary"]
    store = Store(result["store"])
    table = gradient_table(store, result["artifacts"]["gradient_checks"])
    folder = Path(next(iter(result["figures"].values()))).parent.resolve()
    lines = [
        "gradient check (autograd vs five-point central differences):",
        markdown_table(table_rows(table, "probe", ["target", "index", "autograd", "finite_difference", "rel_diff", "digits"])).rstrip(),
        f"identification ({numbers['identification_steps']} steps): loss {numbers['loss_first']:.3e} -> {numbers['loss_last']:.3e}, "
        f"rel max error of u {numbers['u_rel_max_error_final']:.2e}, max |kappa error| {numbers['kappa_max_abs_error']:.3f}, "
        f"median {numbers['identification_ms_per_step']:.1f} ms/step",
        f"topology ({numbers['topology_steps']} steps): compliance {numbers['compliance_first']:.4e} -> {numbers['compliance_last']:.4e} "
        f"({numbers['compliance_first'] / numbers['compliance_last']:.1f}x), volume {numbers['volume']:.12f}, "
        f"median {numbers['topology_ms_per_step']:.1f} ms/step",
        f"gradient check: median {numbers['gradcheck_median_digits']:.1f}, worst {numbers['gradcheck_min_digits']:.1f} significant digits",
        f"tasks: {task_counts(result['states'])}",
        f"artifacts in {store.root.resolve()}",
        f"figures written to {folder}/: {', '.join(Path(p).name for p in result['figures'].values())}",
        f"gradient-check table: {Path(result['gradient_check']['markdown']).resolve()} (+ .nc)",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    figures_flow = differentiability_figures
    if args.dask_address:
        figures_flow = figures_flow.with_options(task_runner=task_runner(args.dask_address))
    result = figures_flow(
        identification_steps=args.identification_steps, topology_steps=args.topology_steps, store=args.store, out=args.out
    )
    print(report(result), flush=True)
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
