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
        ]
        for stage, data, quantity in (
            ("assembly", system_data, f"assembly time, {nodes} nodes ({system_data.attrs['device']})"),
            ("solve", fields, f"condense + solve time, {nodes} nodes"),
        ):
            seconds = float(data.attrs.get("run_seconds", float("nan")))
            checks.append(Check(f"mms-p1-n{n}-{stage}-seconds", "mms", quantity, seconds, unit="s"))
    (n0, *coarse), (n1, *fine) = errors[-2], errors[-1]
    for norm, order, e0, e1 in zip(("L2", "H1"), (2, 1), coarse, fine):  # P1: O(h^2) in L2, O(h) in H1
        checks.append(
            Check(
                f"mms-p1-{norm.lower()}-rate",
                "mms",
                f"{norm} convergence rate, grids {n0} -> {n1}",
                rate(e0, e1, n1 / n0),
                low=order - tolerance,
                high=order + tolerance,
                expected=float(order),
            )
        )
    return checks
