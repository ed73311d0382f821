"""Newton's method for -div(c (1 + u^2) grad u) = f and its implicit-function gradient.

Run: python examples/nonlinear_diffusion.py [cells_per_side]

Solves on the unit square with u = 0 on the boundary, then differentiates a misfit
w.r.t. the coefficient field c with one adjoint solve (not through the Newton
iterations) and checks it against finite differences.
"""

import sys

import torch

from tmcore import Mesh
from tmcore.methods.gradcheck import finite_difference_check
from tmcore.methods.nonlinear import NonlinearDiffusion

N = int(sys.argv[1]) if len(sys.argv) > 1 else 32
torch.set_default_dtype(torch.float64)

mesh = Mesh.gen_grid((N, N), element_type="triangle")
x, y = mesh.points[:, 0], mesh.points[:, 1]
problem = NonlinearDiffusion(mesh, lambda u, c: c * (1.0 + u**2))
f = 20.0 * torch.ones(mesh.n_points)
target = 0.5 * torch.sin(torch.pi * x) * torch.sin(torch.pi * y)


def loss(c):
    return ((problem(c, f) - target) ** 2).mean()


c0 = 1.0 + 0.5 * x
check = finite_difference_check(loss, c0, n_probes=5)
print(
    f"{mesh.n_points} nodes: Newton took {problem.stats.last_iterations} iterations; "
    f"gradient vs finite differences: median {check.median_digits:.1f}, worst {float(check.digits.min()):.1f} digits"
)
