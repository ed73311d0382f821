"""A plain torch.nn MLP on the coordinates predicts kappa; training it on the observed u recovers the field.

The chapter's identification problem (tmcore.studies.IdentificationProblem): -div(kappa grad u) = 1
on the unit square (gmsh, chara_length 0.04, 790 nodes), u = 0 on the boundary, observed
u_obs = u(kappa_true) with kappa_true = 1 + 0.6 sin(2 pi x) cos(2 pi y). Instead of one
parameter per node, kappa(x) = 1 + tanh(net(x)) with a 2-32-32-1 tanh network (1185 weights)
whose last layer starts at zero, so training starts from kappa = 1 like the chapter's theta = 0;
Adam (learning rate 2e-2, cosine decay) trains the weights on sum (u - u_obs)^2. The gradient reaches every
weight through one adjoint solve per step (checked against finite differences).

Run: python examples/neural_coefficient.py [steps]   (default 1500)
"""

import sys

import torch
from torch import nn

from tmcore import Mesh
from tmcore.methods.gradcheck import finite_difference_check
from tmcore.methods.neural import train, weights_function
from tmcore.studies import IdentificationProblem

STEPS = int(sys.argv[1]) if len(sys.argv) > 1 else 1500

torch.manual_seed(0)
mesh = Mesh.gen_rectangle(chara_length=0.04)
problem = IdentificationProblem(mesh)  # u_obs from kappa_true, u = 0 on the boundary, f = 1
inputs = 2.0 * mesh.points.double() - 1.0  # coordinates scaled to [-1, 1]

net = nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1)).double()


def kappa_of(net) -> torch.Tensor:
    return 1.0 + torch.tanh(net(inputs).squeeze(-1))


def loss_of(net) -> torch.Tensor:
    return problem.misfit(problem.solve(kappa_of(net)))


# the gradient w.r.t. every weight against five-point finite differences, at the freshly initialised
# network; then the last layer is zeroed, so training starts from the uniform field
loss_of_weights, weights = weights_function(net, loss_of)
check = finite_difference_check(loss_of_weights, weights, n_probes=6, seed=1)
with torch.no_grad():
    net[-1].weight.zero_()
    net[-1].bias.zero_()
    kappa_start_error = float((kappa_of(net) - problem.kappa_true).abs().mean())

optimizer = torch.optim.Adam(net.parameters(), lr=2e-2)
scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=STEPS, eta_min=1e-4)
history = train(lambda: loss_of(net), optimizer, STEPS, scheduler)
losses, times = history.losses, history.seconds

with torch.no_grad():
    kappa = kappa_of(net)
    u = problem.solve(kappa)
u_rel_max_error = problem.rel_max_error(u)
kappa_error = (kappa - problem.kappa_true).abs()
kappa_max_error = float(kappa_error.max())
kappa_mean_error = float(kappa_error.mean())
print(f"gradient check (weights): median {check.median_digits:.1f}, worst {float(check.digits.min()):.1f} digits")
print(
    f"nodes {mesh.n_points}, weights {weights.numel()}, steps {STEPS}: loss {losses[0]:.3e} -> {losses[-1]:.3e}, "
    f"rel max error of u {u_rel_max_error:.2e}, |kappa - kappa_true| mean {kappa_start_error:.4f} -> "
    f"{kappa_mean_error:.4f}, "
    f"max {kappa_max_error:.3f}, "
    f"median {1e3 * sorted(times)[len(times) // 2]:.1f} ms/step"
)
