"""A network predicts the Dirichlet values: boundary data recovered from interior observations.

-lap u = 1 on the unit square (gmsh, chara_length 0.05), u = g on the boundary with an
unknown g. We observe u at the interior nodes for g_true(x, y) = x^2 - y^2 + 0.5 sin(pi x) y
and let a 2-16-16-1 tanh network map each boundary node's coordinates to its value. Every
step passes the network's output as ``dirichlet_value`` to a freshly built Condenser; the
lifted right-hand side b_f - K_fd g and ``recover`` carry the gradient back to the weights
(checked against finite differences before training).

Run: python examples/neural_dirichlet.py [steps]   (default 800)
"""

import sys

import torch
from torch import nn

from tmcore import Condenser, ElementAssembler, Mesh, NodeAssembler
from tmcore.methods.gradcheck import finite_difference_check
from tmcore.methods.neural import train, weights_function

STEPS = int(sys.argv[1]) if len(sys.argv) > 1 else 800

torch.manual_seed(0)
mesh = Mesh.gen_rectangle(chara_length=0.05)
mask = mesh.boundary_mask
x, y = mesh.points[:, 0].double(), mesh.points[:, 1].double()
boundary_inputs = 2.0 * mesh.points[mask].double() - 1.0  # the network sees the boundary nodes' coordinates


class Laplace(ElementAssembler):
    def forward(self, gradu, gradv):
        return gradu @ gradv


class Source(NodeAssembler):
    def forward(self, v, f):
        return v * f


K = Laplace.from_mesh(mesh)().double()
b = Source.from_mesh(mesh)(point_data={"f": torch.ones(mesh.n_points, dtype=torch.float64)}).double()


def fem_solve(g_boundary: torch.Tensor) -> torch.Tensor:
    cond = Condenser(mask, dirichlet_value=g_boundary)  # one value per boundary node, in node order
    K_, b_ = cond(K, b)
    return cond.recover(K_.solve(b_))


g_true = (x**2 - y**2 + 0.5 * torch.sin(torch.pi * x) * y)[mask]
with torch.no_grad():
    u_obs = fem_solve(g_true)
interior = ~mask

net = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1)).double()


def loss_of(net) -> torch.Tensor:
    u = fem_solve(net(boundary_inputs).squeeze(-1))
    return ((u - u_obs)[interior] ** 2).sum()


loss_of_weights, weights = weights_function(net, loss_of)
check = finite_difference_check(loss_of_weights, weights, n_probes=8, seed=0)

optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
history = train(lambda: loss_of(net), optimizer, STEPS)
losses, times = history.losses, history.seconds

with torch.no_grad():
    g = net(boundary_inputs).squeeze(-1)
    u = fem_solve(g)
g_max_error = float((g - g_true).abs().max())
u_rel_max_error = float((u - u_obs).abs().max() / u_obs.abs().max())
print(f"gradient check (weights): median {check.median_digits:.1f}, worst {float(check.digits.min()):.1f} digits")
print(
    f"nodes {mesh.n_points} ({int(mask.sum())} on the boundary), steps {STEPS}: loss {losses[0]:.3e} -> "
    f"{losses[-1]:.3e}, "
    f"max |g - g_true| {g_max_error:.3e}, rel max error of u {u_rel_max_error:.2e}, "
    f"median {1e3 * sorted(times)[len(times) // 2]:.1f} ms/step"
)
