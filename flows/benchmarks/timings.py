"""Per-step times of the chapter's two worked examples (short runs; measurements, no bounds).

Times come from the run that computed the study artifacts: the nightly deployment runs
with ``use_cache=False`` so they are measured afresh.
"""

from __future__ import annotations

from .. import tasks
from . import Check, Context, register


@register("timings")
def timings(context: Context, identification_steps: int = 20, topology_steps: int = 10) -> list[Check]:
    generate_mesh = context.stage(tasks.generate_mesh)
    meshes = {name: generate_mesh.submit(kind="rectangle", chara_length=h) for name, h in (("identification", 0.04), ("topology", 0.025))}
    studies = {
        "identification": context.stage(tasks.identify_coefficient).submit(mesh=meshes["identification"], steps=identification_steps),
        "topology": context.stage(tasks.optimise_topology).submit(mesh=meshes["topology"], steps=topology_steps),
    }
    checks = []
    for name, future in studies.items():
        mesh = context.store.open_dataset(meshes[name].result(), "mesh")
        history = context.store.open_dataset(future.result()["history"], "history")
        size = f"{mesh.sizes['node']} nodes" if name == "identification" else f"{mesh.sizes['cell']} cells"
        ms = 1e3 * float(history.attrs.get("run_median_seconds_per_step", float("nan")))
        checks.append(Check(f"seed-{name}-ms-per-step", "timings", f"median time per step, {name} ({size})", ms, unit="ms"))
    return checks
