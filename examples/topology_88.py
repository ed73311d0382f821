"""Minimum-compliance topology optimisation of the 88-line code's benchmarks on tmcore.

Run: python examples/topology_88.py [mbb|cantilever|heat] [nelx nely] [--png PATH]

The half MBB beam (60 x 20, volume fraction 0.5), the cantilever (80 x 50, 0.4) and the
heat-conduction plate (40 x 40, 0.4), SIMP p = 3 and a density filter of radius 1.5
elements, solved with the Optimality Criteria update until no density moves by more
than 0.01. Prints the iterations, the final compliance and the time per iteration.
"""

import sys

import torch

from tmcore.studies import compliance_topology
from tmcore.topology import cantilever, heat_conduction, mbb_beam

PROBLEMS = {
    "mbb": (mbb_beam, (60, 20), 0.5),
    "cantilever": (cantilever, (80, 50), 0.4),
    "heat": (heat_conduction, (40, 40), 0.4),
}

args = [a for a in sys.argv[1:] if not a.startswith("--")]
png = sys.argv[sys.argv.index("--png") + 1] if "--png" in sys.argv else None
if png in args:
    args.remove(png)
name = args[0] if args else "mbb"
build, shape, vf = PROBLEMS[name]
if len(args) >= 3:
    shape = (int(args[1]), int(args[2]))

torch.set_default_dtype(torch.float64)
problem = build(*shape)
result = compliance_topology(problem, vf=vf, penal=3.0, radius=1.5)
print(
    f"{name} {shape[0]}x{shape[1]}: {result.iterations} iterations, compliance {result.final_compliance:.4f}, "
    f"volume {float(result.rho.mean()):.4f}, {1e3 * result.seconds_per_iteration:.1f} ms per iteration"
)

if png:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nelx, nely = shape
    image = result.rho.reshape(nely, nelx).flip(0).numpy()  # cells x fastest from the bottom row
    fig, ax = plt.subplots(figsize=(6, 6 * nely / nelx + 0.4))
    ax.imshow(1 - image, cmap="gray", vmin=0, vmax=1)
    ax.set_axis_off()
    ax.set_title(f"{name}: c = {result.final_compliance:.2f}, {result.iterations} iterations")
    fig.savefig(png, dpi=100, bbox_inches="tight", metadata={"Software": None})
