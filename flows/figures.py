"""matplotlib rendering of the differentiability figures from artifact datasets.

Every function takes xarray Datasets of the store's schemas (docs/artifacts.md) and
returns a ``Figure``; :func:`png_bytes` renders one with the Agg backend. The bytes depend
only on the numbers plotted: fixed style, size and dpi, and no "Software" PNG chunk.

    param_id_loss.png     loss and relative max error of u per Adam step
    param_id_fields.png   true kappa, recovered kappa, their absolute difference
    topology_thermal.png  the densities at the snapshot iterations, with their compliance
"""

from __future__ import annotations

import io

import matplotlib.style
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.tri import Triangulation

DPI = 120
PNG_METADATA = {"Software": None}  # the bytes do not depend on the matplotlib version string


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes (Agg, fixed dpi and metadata)."""
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata=PNG_METADATA)
    return buffer.getvalue()


def triangulation(mesh) -> Triangulation:
    """A matplotlib triangulation of a mesh dataset of 2-D triangles."""
    if mesh.attrs.get("cell_type") != "triangle" or mesh.sizes.get("dim") != 2:
        raise ValueError(
            f"figures need a 2-D triangle mesh, got {mesh.attrs.get('cell_type')!r} in {mesh.sizes.get('dim')}-D"
        )
    points = mesh["points"].values
    return Triangulation(points[:, 0], points[:, 1], mesh["cells"].values)


def frame(ax, tri: Triangulation) -> None:
    """Equal aspect, no ticks, limits at the mesh's bounding box."""
    ax.set_xlim(float(tri.x.min()), float(tri.x.max()))
    ax.set_ylim(float(tri.y.min()), float(tri.y.max()))
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


def identification_loss_figure(history) -> Figure:
    fig = Figure(figsize=(10.0, 3.8), layout="constrained")
    steps = np.arange(history.sizes["step"])
    ax_loss, ax_error = fig.subplots(1, 2)
    ax_loss.semilogy(steps, history["loss"].values, color="C0", linewidth=1.0)
    ax_loss.set_title(r"loss $\|u_\theta - u_{\rm obs}\|_2^2$")
    ax_error.semilogy(steps, history["u_rel_max_error"].values, color="C3", linewidth=1.0)
    ax_error.set_title(r"relative max error $\max|u_\theta - u_{\rm obs}| \,/\, \max|u_{\rm obs}|$")
    for ax in (ax_loss, ax_error):
        ax.set_xlabel("Adam step")
        ax.grid(True, which="both", alpha=0.3)
    return fig


def identification_fields_figure(mesh, fields, steps: int) -> Figure:
    tri = triangulation(mesh)
    true, recovered = fields["kappa_true"].values, fields["kappa"].values
    error = np.abs(recovered - true)
    low, high = float(min(true.min(), recovered.min())), float(max(true.max(), recovered.max()))
    fig = Figure(figsize=(13.0, 4.0), layout="constrained")
    axes = fig.subplots(1, 3)
    panels = [
        (true, r"true $\kappa$", "viridis", (low, high)),
        (recovered, rf"recovered $\kappa$ ({steps} Adam steps)", "viridis", (low, high)),
        (error, rf"$|\kappa - \kappa_{{\rm true}}|$ (max {error.max():.3f})", "magma", (0.0, float(error.max()))),
    ]
    for ax, (values, title, cmap, (vmin, vmax)) in zip(axes, panels):
        image = ax.tripcolor(tri, values, shading="gouraud", cmap=cmap, vmin=vmin, vmax=vmax)
        ax.set_title(title)
        frame(ax, tri)
        fig.colorbar(image, ax=ax, shrink=0.85)
    return fig


def topology_figure(mesh, history) -> Figure:
    tri = triangulation(mesh)
    if "rho_snapshot" not in history or history.sizes.get("snapshot_step", 0) == 0:
        raise ValueError("the topology history holds no density snapshots to draw")
    steps = [int(s) for s in history["snapshot_step"].values]
    fig = Figure(figsize=(3.6 * len(steps) + 0.8, 3.9), layout="constrained")
    axes = fig.subplots(1, len(steps), squeeze=False)[0]
    image = None
    for i, (ax, step) in enumerate(zip(axes, steps)):
        rho = history["rho_snapshot"].values[i]
        image = ax.tripcolor(tri, facecolors=rho, cmap="gray_r", vmin=0.0, vmax=1.0)
        ax.set_title(f"iteration {step}\nC = {float(history['compliance'].values[step]):.3e}")
        frame(ax, tri)
    fig.colorbar(image, ax=list(axes), shrink=0.85, label=r"density $\rho$")
    return fig


def render_all(
    identification_mesh, identification_history, identification_fields, topology_mesh, topology_history
) -> dict[str, bytes]:
    """The three PNGs by file name."""
    with matplotlib.style.context("default"):
        return {
            "param_id_loss.png": png_bytes(identification_loss_figure(identification_history)),
            "param_id_fields.png": png_bytes(
                identification_fields_figure(
                    identification_mesh, identification_fields, identification_history.sizes["step"]
                )
            ),
            "topology_thermal.png": png_bytes(topology_figure(topology_mesh, topology_history)),
        }
