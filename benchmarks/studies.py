"""Per-step cost of the two worked studies at the chapter's sizes.

    python -m benchmarks.studies [--quick] [--threads 1] [--json out.json]

Runs, on one mesh each (generated once, outside the timings):

- coefficient identification on the gmsh rectangle at chara_length 0.04 (790 nodes),
  5000 Adam steps, without and with the smoothness penalty;
- thermal topology optimisation at chara_length 0.025 (3708 cells), 60 OC steps,
  unfiltered (the chapter's run) and with the density and the sensitivity filter;

and prints one table: the median and 90th percentile of the wall time per step (each
study times its own steps: assembly, solve, adjoint, optimiser update), the budget,
the solver work per step (numeric factorisations; symbolic analyses happen once per
pattern), and each run's result. The machine is shared, so it also prints the load
average before and after; compare medians only between runs at a similar load.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from tmcore import Mesh, solvers
from tmcore.studies import coefficient_identification, thermal_topology
from tmcore.topology.filters import cell_neighbours, checkerboard_indicator

IDENTIFICATION_MESH = 0.04
TOPOLOGY_MESH = 0.025
BUDGET_MS = {"identification": 5.0, "topology": 12.0}
SMOOTHNESS = 1e-8  # chosen among 1e-10 .. 1e-7 (docs/differentiability.md)


@dataclass
class Row:
    name: str
    study: str
    size: str
    steps: int
    median_ms: float
    p90_ms: float
    total_s: float
    factorizations_per_step: float
    analyses: int
    result: dict[str, float | str] = field(default_factory=dict)

    @property
    def budget_ms(self) -> float:
        return BUDGET_MS[self.study]

    @property
    def within_budget(self) -> bool:
        return self.median_ms <= self.budget_ms


def ms(seconds: torch.Tensor, q: float) -> float:
    return 1e3 * float(torch.quantile(seconds, q))


def study_row(
    name: str, study: str, size: str, steps: int, run: Callable[[], Any], numbers: Callable[[Any], dict]
) -> Row:
    """The row of one study run ``run()``: its wall time, the median and 90th percentile of the
    step times it measured itself, the solver work (numeric factorisations per step, symbolic
    analyses) and ``numbers(result)``."""
    solvers.stats.reset()
    start = time.perf_counter()
    result = run()
    total = time.perf_counter() - start
    factorizations, analyses = solvers.stats.factorizations, getattr(solvers.stats, "analyses", 0)
    per_step = result.seconds_per_step
    return Row(
        name,
        study,
        size,
        steps,
        ms(per_step, 0.5),
        ms(per_step, 0.9),
        total,
        factorizations / steps,
        analyses,
        numbers(result),
    )


def identification_row(name: str, mesh: Mesh, steps: int, smoothness: float) -> Row:
    def numbers(result) -> dict:
        report = result.kappa_error_report(centre_radius=0.15)
        return {
            "loss_first": float(result.loss[0]),
            "misfit_last": float(result.misfit[-1]),
            "orders": float(torch.log10(result.loss[0] / result.misfit[-1])),
            "u_rel_max_error": result.final_u_rel_max_error,
            "kappa_peak_error": report.peak,
            "kappa_peak_distance": report.peak_distance,
            "kappa_error_near_centre": report.near_centre,
            "kappa_error_away": report.away,
            "kappa_error_away_distance": report.away_peak_distance,
            "away_fraction_below_0.01": report.away_fraction_below,
        }

    run = functools.partial(coefficient_identification, mesh, steps=steps, smoothness=smoothness)
    return study_row(name, "identification", f"{mesh.n_points} nodes", steps, run, numbers)


def topology_row(name: str, mesh: Mesh, steps: int, filter: str | None, pairs: torch.Tensor) -> Row:  # noqa: A002
    def numbers(result) -> dict:
        return {
            "compliance_first": float(result.compliance[0]),
            "compliance_last": float(result.compliance[-1]),
            "volume_mean": float(result.volume[-1]),
            "volume_measure": float(result.weighted_volume[-1]),
            "max_volume_error": float((result.volume - 0.4).abs().max()),
            "checkerboard": checkerboard_indicator(pairs, result.rho),
        }

    run = functools.partial(thermal_topology, mesh, steps=steps, snapshot_steps=None, filter=filter)
    return study_row(name, "topology", f"{mesh.n_cells} cells", steps, run, numbers)


def describe(row: Row) -> str:
    r = row.result
    if row.study == "identification":
        return (
            f"loss {r['loss_first']:.2e} -> {r['misfit_last']:.2e} ({r['orders']:.1f} orders), "
            f"u err {r['u_rel_max_error']:.1e}, kappa err peak {r['kappa_peak_error']:.3f} at "
            f"d={r['kappa_peak_distance']:.2f}, "
            f"d<0.15 {r['kappa_error_near_centre']:.3f}, d>=0.15 {r['kappa_error_away']:.3f} (at "
            f"d={r['kappa_error_away_distance']:.2f}; "
            f"{100 * r['away_fraction_below_0.01']:.0f}% < 0.01)"
        )
    return (
        f"C {r['compliance_first']:.3e} -> {r['compliance_last']:.3e}, volume mean {r['volume_mean']:.12f} / "
        f"measure {r['volume_measure']:.5f}, checkerboard {r['checkerboard']:.3f}"
    )


def table(rows: Sequence[Row]) -> str:
    header = "| run | size | steps | median ms/step | p90 | budget | total s | factorisations/step | result |"
    lines = [header, "|" + "---|" * 9]
    for row in rows:
        flag = "ok" if row.within_budget else "OVER"
        lines.append(
            f"| {row.name} | {row.size} | {row.steps} | {row.median_ms:.2f} | {row.p90_ms:.2f} | "
            f"<= {row.budget_ms:g} ({flag}) | {row.total_s:.1f} | {row.factorizations_per_step:.3f} | {describe(row)} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.studies", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="300 identification and 20 topology steps (timings only)")
    parser.add_argument("--id-steps", type=int, default=None, help="Adam steps (default 5000)")
    parser.add_argument("--topo-steps", type=int, default=None, help="OC steps (default 60)")
    parser.add_argument(
        "--smoothness",
        type=float,
        default=SMOOTHNESS,
        help=f"penalty weight of the second identification run (default {SMOOTHNESS:g}; 0 skips it)",
    )
    parser.add_argument("--no-filters", action="store_true", help="skip the filtered topology runs")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch.set_num_threads (default 1: small solves run fastest on one thread)",
    )
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    args.id_steps = args.id_steps or (300 if args.quick else 5000)
    args.topo_steps = args.topo_steps or (20 if args.quick else 60)
    if args.id_steps < 1 or args.topo_steps < 1 or args.threads < 1:
        parser.error("step counts and --threads must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> list[Row]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    print(
        f"# studies benchmark: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__} with {torch.get_num_threads()} thread(s), "
        f"CHOLMOD {'yes' if getattr(solvers, 'cholmod_available', lambda: False)() else 'no'}; "
        f"load average before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}",
        flush=True,
    )
    id_mesh = Mesh.gen_rectangle(chara_length=IDENTIFICATION_MESH)
    topo_mesh = Mesh.gen_rectangle(chara_length=TOPOLOGY_MESH)
    pairs = cell_neighbours(topo_mesh)
    rows = [identification_row("identification", id_mesh, args.id_steps, 0.0)]
    if args.smoothness > 0:
        rows.append(
            identification_row(
                f"identification, smoothness {args.smoothness:g}", id_mesh, args.id_steps, args.smoothness
            )
        )
    rows.append(topology_row("topology (chapter, unfiltered)", topo_mesh, args.topo_steps, None, pairs))
    if not args.no_filters:
        rows.append(topology_row("topology, density filter", topo_mesh, args.topo_steps, "density", pairs))
        rows.append(topology_row("topology, sensitivity filter", topo_mesh, args.topo_steps, "sensitivity", pairs))
    load_after = os.getloadavg()
    print(table(rows))
    print(
        f"# load average after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}; solver backends "
        f"used: {dict(solvers.stats.by_backend)}"
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(
                {
                    "load_before": load_before,
                    "load_after": load_after,
                    "threads": args.threads,
                    "rows": [{**row.__dict__, "budget_ms": row.budget_ms} for row in rows],
                },
                handle,
                indent=2,
            )
    return rows


if __name__ == "__main__":
    main()
    sys.exit(0)
