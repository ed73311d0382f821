"""Manufactured-solution convergence: P1 triangles on structured grids of the unit square.

-lap u = f with u = sin(pi x) sin(pi y) (flows.problems "poisson-mms"), solved on grids of
``sizes`` cells per side through the generate_mesh -> assemble -> solve stages (a
parameter sweep, fanned out with ``.map``). The observed rates between the two finest
grids must be 2 (L2) and 1 (H1) within ``tolerance``; the errors and the assembly and
solve times per size are reported as measurements.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from prefect import unmapped

from .. import tasks
from . import Check, Context, register

DEFAULT_SIZES = (8, 16, 32)


def rate(coarse: float, fine: float, ratio: float) -> float:
    """log(e_coarse / e_fine) / log(h_coarse / h_fine)."""
    if coarse <= 0 or fine <= 0:
        return float("nan")
    return math.log(coarse / fine) / math.log(ratio)


@register("mms")
def mms(
    context: Context, sizes: Sequence[int] = DEFAULT_SIZES, tolerance: float = 0.15, device: str = "auto"
) -> list[Check]:
    sizes = sorted(int(n) for n in sizes)
    if len(sizes) < 2 or sizes[0] < 1:
        raise ValueError(f"the mms suite needs at least two positive grid sizes, got {sizes}")
    meshes = context.stage(tasks.generate_mesh).map(kind=unmapped("grid"), cells=sizes)
    systems = context.stage(tasks.assemble).map(mesh=meshes, problem=unmapped("poisson-mms"), device=unmapped(device))
    solutions = context.stage(tasks.solve).map(mesh=meshes, system=systems)
    checks, errors = [], []
    for n, system, solution in zip(sizes, systems, solutions):
        system_data = context.store.open_dataset(system.result(), "system")
        fields = context.store.open_dataset(solution.result(), "fields")
        l2, h1 = float(fields["l2_error"]), float(fields["h1_error"])
        errors.append((n, l2, h1))
        nodes = system_data.sizes["node"]
        checks += [
            Check(f"mms-p1-n{n}-l2-error", "mms", f"L2 error, {n}x{n} grid ({nodes} nodes)", l2),
            Check(f"mms-p1-n{n}-h1-error", "mms", f"H1 seminorm error, {n}x{n} grid", h1),
            Check(
                f"mms-p1-n{n}-assembly-seconds",
                "mms",
                f"assembly time, {nodes} nodes ({system_data.attrs['device']})",
                float(system_data.attrs.get("run_seconds", float("nan"))),
                unit="s",
            ),
            Check(
                f"mms-p1-n{n}-solve-seconds",
                "mms",
                f"condense + solve time, {nodes} nodes",
                float(fields.attrs.get("run_seconds", float("nan"))),
                unit="s",
            ),
        ]
    (n0, l2_0, h1_0), (n1, l2_1, h1_1) = errors[-2], errors[-1]
    checks += [
        Check(
            "mms-p1-l2-rate",
            "mms",
            f"L2 convergence rate, grids {n0} -> {n1}",
            rate(l2_0, l2_1, n1 / n0),
            low=2 - tolerance,
            high=2 + tolerance,
            expected=2.0,
        ),
        Check(
            "mms-p1-h1-rate",
            "mms",
            f"H1 convergence rate, grids {n0} -> {n1}",
            rate(h1_0, h1_1, n1 / n0),
            low=1 - tolerance,
            high=1 + tolerance,
            expected=1.0,
        ),
    ]
    return checks
