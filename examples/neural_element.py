"""A network predicts a stiffness modifier per element: locating a damaged zone from measured fields.

-div(alpha kappa0 grad u) = f on the unit square (gmsh, chara_length 0.04), u = 0 on the
boundary, with a known base conductivity kappa0 = 1 and an unknown modifier alpha per
element. The truth is a damaged zone, alpha_true = 1 - 0.6 exp(-|c - c0|^2 / (2 0.12^2)) at
the cell centroids c, c0 = (0.65, 0.4). Five load cases are measured (f = 1 and four
Gaussian heat sources, one per quadrant): one matrix against five right-hand sides, so
each step factorises once. A 2-32-32-1 tanh network maps each centroid to
alpha = 2 sigmoid(net(c)) in (0, 2), starting at alpha = 1 (zero last layer); the assembler
receives it as ``element_data`` and scales each element's stiffness by it. Adam trains
the weights on the misfit summed over the loads, each relative to its own |u_obs|^2.

Run: python examples/neural_element.py [steps]   (default 1000)
"""

import sys

import torch
from torch import nn

from tmcore import Condenser, ElementAssembler, Mesh, NodeAssembler
from tmcore.methods.batch import solve_columns
from tmcore.methods.gradcheck import finite_difference_check
from tmcore.methods.neural import cell_centroids, train, weights_function

STEPS = int(sys.argv[1]) if len(sys.argv) > 1 else 1000

torch.manual_seed(0)
mesh = Mesh.gen_rectangle(chara_length=0.04)
cond = Condenser(mesh.boundary_mask)
centroids = cell_centroids(mesh.points.double(), mesh.elements)
inputs = 2.0 * centroids - 1.0


class ModifiedLaplace(ElementAssembler):
    def forward(self, gradu, gradv, alpha, kappa0):
        return alpha * kappa0 * (gradu @ gradv)


class Source(NodeAssembler):
    def forward(self, v, f):
        return v * f


stiffness = ModifiedLaplace.from_mesh(mesh)
x = mesh.points.double()
centres = torch.tensor([[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]], dtype=torch.float64)
f = torch.cat(
    [
        torch.ones(1, mesh.n_points, dtype=torch.float64),
        10.0 * torch.exp(-((x[None] - centres[:, None]) ** 2).sum(-1) / (2 * 0.1**2)),
    ]
)  # (5, n): five loads
b = Source.from_mesh(mesh)(point_data={"f": f}).double()  # a batch of load vectors (5, n)


def fem_solve(alpha: torch.Tensor) -> torch.Tensor:
    """u (5, n) for the five loads: one matrix, one factorisation."""
    K = stiffness(element_data={"alpha": alpha}, scalar_data={"kappa0": 1.0}).double()
    K_, b_ = cond(K, b)
    return cond.recover(solve_columns(K_, b_))


alpha_true = 1.0 - 0.6 * torch.exp(
    -((centroids - torch.tensor([0.65, 0.4], dtype=torch.float64)) ** 2).sum(1) / (2 * 0.12**2)
)
with torch.no_grad():
    u_obs = fem_solve(alpha_true)
scale = (u_obs**2).sum(1)

net = nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1)).double()


def alpha_of(net) -> torch.Tensor:
    return 2.0 * torch.sigmoid(net(inputs).squeeze(-1))


def loss_of(net) -> torch.Tensor:
    return (((fem_solve(alpha_of(net)) - u_obs) ** 2).sum(1) / scale).sum()


# the gradient w.r.t. every weight against five-point finite differences, at the freshly initialised
# network; then the last layer is zeroed, so training starts from the uniform field
loss_of_weights, weights = weights_function(net, loss_of)
check = finite_difference_check(loss_of_weights, weights, n_probes=6, seed=0)
with torch.no_grad():
    net[-1].weight.zero_()
    net[-1].bias.zero_()
    alpha_start_error = float((alpha_of(net) - alpha_true).abs().mean())

optimizer = torch.optim.Adam(net.parameters(), lr=2e-2)
scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=STEPS, eta_min=1e-4)
history = train(lambda: loss_of(net), optimizer, STEPS, scheduler)
losses, times = history.losses, history.seconds

with torch.no_grad():
    alpha = alpha_of(net)
alpha_error = (alpha - alpha_true).abs()
weakest = int(alpha.argmin())
print(f"gradient check (weights): median {check.median_digits:.1f}, worst {float(check.digits.min()):.1f} digits")
print(
    f"cells {mesh.n_cells}, 5 loads, steps {STEPS}: loss {losses[0]:.3e} -> {losses[-1]:.3e}, "
    f"|alpha - alpha_true| mean {alpha_start_error:.4f} -> {float(alpha_error.mean()):.4f}, max "
    f"{float(alpha_error.max()):.3f}, "
    f"weakest cell at ({float(centroids[weakest, 0]):.2f}, {float(centroids[weakest, 1]):.2f}) with alpha "
    f"{float(alpha[weakest]):.2f} "
    f"(truth: (0.65, 0.40), 0.40), median {1e3 * sorted(times)[len(times) // 2]:.1f} ms/step"
)
