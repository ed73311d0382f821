"""Time per Newton iteration of finite-strain hyperelasticity at given numbers of unknowns.

Run: python examples/hyperelastic_timing.py [unknowns ...] [--backend NAME]   (default 1e4 1e5, splu)

A square of plane-strain bilinear quads (compressible Neo-Hookean, mu = 1, lam = 2), clamped
on the left, stretched by 20 % with a prescribed displacement of its right edge in one
increment. Prints, per size, the Newton updates, the seconds per update (residual, tangent
assembly, factorisation and solve, line search) and the split between assembly and solve.
Times are wall-clock on whatever machine runs it (one thread with OMP_NUM_THREADS=1).
"""

import sys
import time

import torch

from tmcore import Mesh, dof_mask
from tmcore.methods.hyperelastic import Hyperelasticity

torch.set_default_dtype(torch.float64)
args = [a for a in sys.argv[1:] if not a.startswith("--")]
backend = sys.argv[sys.argv.index("--backend") + 1] if "--backend" in sys.argv else "splu"
if backend in args:
    args.remove(backend)
sizes = [int(float(a)) for a in args] or [10_000, 100_000]
for unknowns in sizes:
    side = max(int(round((unknowns / 2) ** 0.5)) - 1, 2)
    mesh = Mesh.gen_grid((side, side), element_type="quad")
    fixed = dof_mask(mesh.nodes_of("left"), 2) | dof_mask(mesh.nodes_of("right"), 2, which=0)
    problem = Hyperelasticity(mesh, fixed, backend=backend)
    pulled = torch.where(mesh.points[problem.fixed_index // 2, 0] == 1.0, 0.2, 0.0)
    material = {"mu": 1.0, "lam": 2.0}
    problem.solve(material, g=pulled)
    record = problem.records[0]
    updates = record.iterations + 1  # + the first step, which carries the boundary's jump
    params = problem.pack(material)
    u = torch.zeros(mesh.n_points * 2)
    begin = time.perf_counter()
    problem._internal(u, params)
    residual = time.perf_counter() - begin
    begin = time.perf_counter()
    problem._tangent(u, params)
    tangent = time.perf_counter() - begin
    print(
        f"{mesh.n_points * 2} unknowns ({side} x {side} quads): {updates} Newton updates, "
        f"{record.seconds / updates:.3f} s per update (residual assembly {residual:.3f} s, "
        f"tangent assembly {tangent:.3f} s); "
        f"residuals {' '.join(f'{r:.1e}' for r in record.residuals)}"
    )
