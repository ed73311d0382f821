"""The chapter's worked example 1 (coefficient identification), as written, on tmcore.

Run: python examples/seed_example1.py [steps]   (the chapter uses 5000)
"""
import sys
import time

import torch
from tmcore import Mesh, ElementAssembler, NodeAssembler, Condenser

STEPS = int(sys.argv[1]) if len(sys.argv) > 1 else 5000

device = "cuda" if torch.cuda.is_available() else "cpu"
mesh = Mesh.gen_rectangle(chara_length=0.04).to(device)
cond = Condenser(mesh.boundary_mask)


class WeightedLaplace(ElementAssembler):
    def forward(self, gradu, gradv, kappa):
        return kappa * (gradu @ gradv)


class Source(NodeAssembler):
    def forward(self, v, f):
        return v * f


def fem_solve(kappa, f_vals):
    K = WeightedLaplace.from_mesh(mesh)(point_data={"kappa": kappa}).double()
    b = Source.from_mesh(mesh)(point_data={"f": f_vals}).double()
    K_, b_ = cond(K, b)
    return cond.recover(K_.solve(b_))


pts = mesh.points
x, y = pts[:, 0], pts[:, 1]
kappa_true = 1.0 + 0.6 * torch.sin(2 * torch.pi * x) * torch.cos(2 * torch.pi * y)
f_vals = torch.ones(mesh.n_points, dtype=torch.float64, device=device)
with torch.no_grad():
    u_obs = fem_solve(kappa_true, f_vals)

theta = torch.zeros(mesh.n_points, dtype=torch.float64, device=device, requires_grad=True)
optim = torch.optim.Adam([theta], lr=3e-2)
losses, times = [], []
for step in range(STEPS):
    start = time.perf_counter()
    optim.zero_grad()
    kappa = 1.0 + torch.tanh(theta)
    u = fem_solve(kappa, f_vals)
    loss = ((u - u_obs) ** 2).sum()
    loss.backward()
    optim.step()
    times.append(time.perf_counter() - start)
    losses.append(loss.item())

with torch.no_grad():
    u = fem_solve(1.0 + torch.tanh(theta), f_vals)
    rel_err = float((u - u_obs).abs().max() / u_obs.abs().max())
print(f"nodes {mesh.n_points}, steps {STEPS}: loss {losses[0]:.3e} -> {losses[-1]:.3e}, "
      f"rel max error of u {rel_err:.2e}, median {1e3 * sorted(times)[len(times) // 2]:.1f} ms/step")
