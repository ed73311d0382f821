"""The differentiability figures: both worked studies, a gradient check, three PNGs.

    python -m flows.figures_script [--quick] [--out reports/figures]

Runs the coefficient identification on the rectangle at chara_length 0.04 (5000 Adam
steps; 300 with --quick), the thermal topology optimisation at chara_length 0.025 (60 OC
steps; 20 with --quick) and a central-difference check of the identification gradient at
5 interior nodes of the chara_length 0.2 mesh; then writes

    param_id_loss.png     loss and relative max error of u per step
    param_id_fields.png   true kappa, recovered kappa, their absolute difference
    topology_thermal.png  the densities at iteration 0, 5 and the last, with compliance

Figures are written atomically and their bytes depend only on the numbers plotted
(fixed style, size, dpi and PNG metadata), so two runs give identical files.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib.style
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.tri import Triangulation

from tmcore import Mesh
from tmcore.gradcheck import FiniteDifferenceCheck, finite_difference_check
from tmcore.studies import (
    IdentificationProblem,
    IdentificationResult,
    TopologyResult,
    coefficient_identification,
    thermal_topology,
)

logger = logging.getLogger("flows.figures_script")

DEFAULT_OUT = Path("reports") / "figures"
IDENTIFICATION_MESH = 0.04
TOPOLOGY_MESH = 0.025
GRADCHECK_MESH = 0.2
STEPS = {"identification": 5000, "topology": 60}
QUICK_STEPS = {"identification": 300, "topology": 20}

DPI = 120
# no "Software" chunk: the bytes do not depend on the matplotlib version string
PNG_METADATA = {"Software": None}


# -- the computations -------------------------------------------------------------------------


def progress(study: str, total: int, every: int):
    """A study callback logging ``study: step k/total, value`` every ``every`` steps and at the end."""

    def callback(step: int, value: float) -> None:
        if step % every == 0 or step == total - 1:
            logger.info("%s: step %d/%d, %.4e", study, step + 1, total, value)

    return callback


def gradient_check(chara_length: float = GRADCHECK_MESH, n_probes: int = 5, seed: int = 0) -> FiniteDifferenceCheck:
    """Autograd vs central differences of the identification loss w.r.t. theta at theta = 0,
    probed at ``n_probes`` interior nodes drawn with ``seed``."""
    mesh = Mesh.gen_rectangle(chara_length=chara_length)
    problem = IdentificationProblem(mesh)
    interior = torch.nonzero(~mesh.boundary_mask).flatten()
    generator = torch.Generator().manual_seed(seed)
    nodes = interior[torch.randperm(interior.numel(), generator=generator)[:n_probes]]
    theta = torch.zeros(mesh.n_points, dtype=torch.float64)
    return finite_difference_check(problem.objective, theta, indices=nodes)


@dataclass
class Studies:
    identification_mesh: Mesh
    identification: IdentificationResult
    topology_mesh: Mesh
    topology: TopologyResult
    gradcheck: FiniteDifferenceCheck


def run_studies(identification_steps: int, topology_steps: int) -> Studies:
    """Both studies and the gradient check, logging progress."""
    id_mesh = Mesh.gen_rectangle(chara_length=IDENTIFICATION_MESH)
    logger.info("identification mesh: %d nodes, %d cells", id_mesh.n_points, id_mesh.n_cells)
    every = max(1, min(500, identification_steps // 10))
    identification = coefficient_identification(
        id_mesh, steps=identification_steps, callback=progress("identification", identification_steps, every)
    )
    topo_mesh = Mesh.gen_rectangle(chara_length=TOPOLOGY_MESH)
    logger.info("topology mesh: %d nodes, %d cells", topo_mesh.n_points, topo_mesh.n_cells)
    snapshot_steps = sorted({0, min(5, topology_steps - 1), topology_steps - 1})
    topology = thermal_topology(
        topo_mesh,
        steps=topology_steps,
        snapshot_steps=snapshot_steps,
        callback=progress("topology", topology_steps, max(1, topology_steps // 6)),
    )
    logger.info("gradient check on the chara_length %g mesh", GRADCHECK_MESH)
    return Studies(id_mesh, identification, topo_mesh, topology, gradient_check())


# -- the figures ------------------------------------------------------------------------------


def save_figure(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically (temporary file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            fig.savefig(handle, format="png", dpi=DPI, metadata=PNG_METADATA)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def triangulation(mesh: Mesh) -> Triangulation:
    if mesh.cell_type != "triangle" or mesh.dim != 2:
        raise ValueError(f"figures need a 2-D triangle mesh, got {mesh.cell_type!r} in {mesh.dim}-D")
    points = mesh.points.detach().cpu().numpy()
    return Triangulation(points[:, 0], points[:, 1], mesh.elements.cpu().numpy())


def frame(ax, tri: Triangulation) -> None:
    """Equal aspect, no ticks, limits at the mesh's bounding box."""
    ax.set_xlim(float(tri.x.min()), float(tri.x.max()))
    ax.set_ylim(float(tri.y.min()), float(tri.y.max()))
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


def identification_loss_figure(result: IdentificationResult) -> Figure:
    fig = Figure(figsize=(10.0, 3.8), layout="constrained")
    steps = torch.arange(result.steps).numpy()
    ax_loss, ax_error = fig.subplots(1, 2)
    ax_loss.semilogy(steps, result.loss.numpy(), color="C0", linewidth=1.0)
    ax_loss.set_title(r"loss $\|u_\theta - u_{\rm obs}\|_2^2$")
    ax_error.semilogy(steps, result.u_rel_max_error.numpy(), color="C3", linewidth=1.0)
    ax_error.set_title(r"relative max error $\max|u_\theta - u_{\rm obs}| \,/\, \max|u_{\rm obs}|$")
    for ax in (ax_loss, ax_error):
        ax.set_xlabel("Adam step")
        ax.grid(True, which="both", alpha=0.3)
    return fig


def identification_fields_figure(mesh: Mesh, result: IdentificationResult) -> Figure:
    tri = triangulation(mesh)
    true, recovered = result.kappa_true.cpu().numpy(), result.kappa.cpu().numpy()
    error = abs(recovered - true)
    low, high = float(min(true.min(), recovered.min())), float(max(true.max(), recovered.max()))
    fig = Figure(figsize=(13.0, 4.0), layout="constrained")
    axes = fig.subplots(1, 3)
    panels = [
        (true, r"true $\kappa$", "viridis", (low, high)),
        (recovered, rf"recovered $\kappa$ ({result.steps} Adam steps)", "viridis", (low, high)),
        (error, rf"$|\kappa - \kappa_{{\rm true}}|$ (max {error.max():.3f})", "magma", (0.0, float(error.max()))),
    ]
    for ax, (values, title, cmap, (vmin, vmax)) in zip(axes, panels):
        image = ax.tripcolor(tri, values, shading="gouraud", cmap=cmap, vmin=vmin, vmax=vmax)
        ax.set_title(title)
        frame(ax, tri)
        fig.colorbar(image, ax=ax, shrink=0.85)
    return fig


def topology_figure(mesh: Mesh, result: TopologyResult) -> Figure:
    tri = triangulation(mesh)
    steps = sorted(result.snapshots)
    if not steps:
        raise ValueError("the topology result holds no density snapshots to draw")
    fig = Figure(figsize=(3.6 * len(steps) + 0.8, 3.9), layout="constrained")
    axes = fig.subplots(1, len(steps), squeeze=False)[0]
    image = None
    for ax, step in zip(axes, steps):
        image = ax.tripcolor(tri, facecolors=result.snapshots[step].cpu().numpy(), cmap="gray_r", vmin=0.0, vmax=1.0)
        ax.set_title(f"iteration {step}\nC = {float(result.compliance[step]):.3e}")
        frame(ax, tri)
    fig.colorbar(image, ax=list(axes), shrink=0.85, label=r"density $\rho$")
    return fig


def render(studies: Studies, out: Path) -> list[Path]:
    """The three PNGs under ``out``; returns their paths."""
    with matplotlib.style.context("default"):
        return [
            save_figure(identification_loss_figure(studies.identification), out / "param_id_loss.png"),
            save_figure(identification_fields_figure(studies.identification_mesh, studies.identification), out / "param_id_fields.png"),
            save_figure(topology_figure(studies.topology_mesh, studies.topology), out / "topology_thermal.png"),
        ]


# -- the command ------------------------------------------------------------------------------


def summary(studies: Studies) -> dict[str, float]:
    """The key numbers of a run."""
    ident, topo = studies.identification, studies.topology
    return {
        "identification_nodes": studies.identification_mesh.n_points,
        "identification_steps": ident.steps,
        "loss_first": float(ident.loss[0]),
        "loss_last": float(ident.loss[-1]),
        "u_rel_max_error_last": float(ident.u_rel_max_error[-1]),
        "u_rel_max_error_final": ident.final_u_rel_max_error,
        "kappa_max_abs_error": float((ident.kappa - ident.kappa_true).abs().max()),
        "identification_ms_per_step": 1e3 * ident.median_seconds_per_step,
        "topology_cells": studies.topology_mesh.n_cells,
        "topology_steps": topo.steps,
        "compliance_first": float(topo.compliance[0]),
        "compliance_last": float(topo.compliance[-1]),
        "volume": float(topo.volume[-1]),
        "topology_ms_per_step": 1e3 * topo.median_seconds_per_step,
        "gradcheck_median_digits": studies.gradcheck.median_digits,
        "gradcheck_min_digits": float(studies.gradcheck.digits.min()),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m flows.figures_script", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs (300 and 20 steps): a smoke test, not the chapter's figures")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"folder for the PNGs (default {DEFAULT_OUT})")
    # hidden: exact step counts, for tests
    parser.add_argument("--id-steps", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--topo-steps", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    steps = QUICK_STEPS if args.quick else STEPS
    args.id_steps = steps["identification"] if args.id_steps is None else args.id_steps
    args.topo_steps = steps["topology"] if args.topo_steps is None else args.topo_steps
    for name in ("id_steps", "topo_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Run everything, write the figures, print the gradient-check table and the key numbers."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    studies = run_studies(args.id_steps, args.topo_steps)
    print("[gradient check] identification loss w.r.t. theta at theta = 0, "
          f"chara_length {GRADCHECK_MESH}: autograd vs central differences")
    print(studies.gradcheck.table(label="node"))
    paths = render(studies, args.out)
    numbers = summary(studies)
    print(f"figures written to {args.out}/: {', '.join(p.name for p in paths)}")
    print(
        f"identification ({numbers['identification_nodes']} nodes, {numbers['identification_steps']} steps): "
        f"loss {numbers['loss_first']:.3e} -> {numbers['loss_last']:.3e}, "
        f"rel max error of u {numbers['u_rel_max_error_final']:.2e}, "
        f"max |kappa error| {numbers['kappa_max_abs_error']:.3f}, "
        f"median {numbers['identification_ms_per_step']:.1f} ms/step"
    )
    print(
        f"topology ({numbers['topology_cells']} cells, {numbers['topology_steps']} steps): "
        f"compliance {numbers['compliance_first']:.4e} -> {numbers['compliance_last']:.4e} "
        f"({numbers['compliance_first'] / numbers['compliance_last']:.1f}x), volume {numbers['volume']:.12f}, "
        f"median {numbers['topology_ms_per_step']:.1f} ms/step"
    )
    print(f"gradient check: median {numbers['gradcheck_median_digits']:.1f}, worst {numbers['gradcheck_min_digits']:.1f} significant digits")
    return numbers


if __name__ == "__main__":
    main()
    sys.exit(0)
