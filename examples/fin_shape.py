"""Shape optimisation of a cooling fin: move the nodes, differentiate w.r.t. the shape.

Run: python examples/fin_shape.py [steps]

The fin occupies 0 <= y <= H(x) on 0 <= x <= 2 with H(x) = 0.5 (1 + sum_k a_k cos(k pi x / 2)),
k = 1..4: the same area for every a. Heat is produced uniformly and leaves through the
base x = 0. Gradient descent on a, with dJ/da from autograd through the node
coordinates (Jacobians, weights and shape gradients recomputed from the points), finds
a tapered fin.
"""

import sys

import torch

from tmcore.methods.shape import Fin, optimise_fin

STEPS = int(sys.argv[1]) if len(sys.argv) > 1 else 30
torch.set_default_dtype(torch.float64)

fin = Fin(n_modes=4, length=2.0, h0=0.5, shape=(40, 10))
result = optimise_fin(fin, steps=STEPS, max_step=0.2)
base, tip = fin.height(result.a, torch.tensor([0.0, fin.length])).tolist()
print(
    f"compliance {result.compliance[0]:.5f} -> {result.compliance[-1]:.5f} ({result.improvement:.2f}x) in "
    f"{len(result.compliance) - 1} steps; a = {[round(v, 3) for v in result.a.tolist()]}; "
    f"height at the base {base:.3f}, at the tip {tip:.3f}; area {float(fin.area(result.a)):.6f}"
)
