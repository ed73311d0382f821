"""Gradient checks: autograd against five-point central differences, a batch fanned out with ``.map``.

Each target (the identification loss in theta, the thermal compliance in rho) is probed
at ``n_probes`` entries on the gmsh rectangle of edge length ``chara_length``; the worst
probe must agree to at least ``min_digits`` significant digits.
"""

from __future__ import annotations

from collections.abc import Sequence

from prefect import unmapped

from .. import tasks
from . import Check, Context, register


@register("gradients")
def gradients(
    context: Context,
    targets: Sequence[str] = tasks.GRADIENT_TARGETS,
    chara_length: float = 0.2,
    n_probes: int = 5,
    seeds: Sequence[int] = (0,),
    min_digits: float = 7.0,
) -> list[Check]:
    mesh = context.stage(tasks.generate_mesh).submit(kind="rectangle", chara_length=chara_length)
    cases = [(target, seed) for target in targets for seed in seeds]
    tables = context.stage(tasks.gradient_check).map(
        mesh=unmapped(mesh), target=[t for t, _ in cases], seed=[s for _, s in cases], n_probes=unmapped(n_probes)
    )
    checks = []
    for (target, seed), table in zip(cases, tables):
        data = context.store.open_dataset(table.result(), "gradcheck")
        # the worst probe is held to min_digits, the median is reported
        for stat, quantity, low in (
            ("min", f"worst agreeing digits, {target} gradient ({n_probes} probes)", min_digits),
            ("median", f"median agreeing digits, {target} gradient", None),
        ):
            value = float(data.attrs[f"{stat}_digits"])
            checks.append(
                Check(
                    f"gradient-{target}-seed{seed}-{stat}-digits", "gradients", quantity, value, unit="digits", low=low
                )
            )
    return checks
