"""The chapter's worked example 2 (thermal-compliance topology optimisation), as written, on tmcore.

Run: python examples/seed_example2.py [steps]   (the chapter uses 60)
"""
import sys
import time

import torch
from tmcore import Mesh, ElementAssembler, NodeAssembler, Condenser
from tmcore.optimizer import OCOptimizer

STEPS = int(sys.argv[1]) if len(sys.argv) > 1 else 60

device = "cuda" if torch.cuda.is_available() else "cpu"
mesh = Mesh.gen_rectangle(chara_length=0.025).to(device)
cond = Condenser(mesh.boundary_mask)
elements = mesh.cells["triangle"]
n_elem = elements.shape[0]


class SIMPLaplace(ElementAssembler):
    def forward(self, gradu, gradv, kappa):
        return kappa * (gradu @ gradv)


class Source(NodeAssembler):
    def forward(self, v, f):
        return v * f


x, y = mesh.points[:, 0], mesh.points[:, 1]
sigma = 0.08
f_field = torch.exp(-((x - 0.5) ** 2 + (y - 0.5) ** 2) / (2 * sigma ** 2))

V, p_simp, kmin = 0.4, 3.0, 1e-3
rho = torch.full((n_elem,), V, dtype=torch.float64, device=device, requires_grad=True)
optim = OCOptimizer(rho, vf=V, move_limit=0.15)


def fem_solve(rho):
    kappa = kmin + (1.0 - kmin) * rho ** p_simp
    K = SIMPLaplace.from_mesh(mesh)(element_data={"kappa": kappa}).double()
    b = Source.from_mesh(mesh)(point_data={"f": f_field}).double()
    K_, b_ = cond(K, b)
    return cond.recover(K_.solve(b_)), b


compliances, times = [], []
for step in range(STEPS):
    start = time.perf_counter()
    optim.zero_grad()
    u, b = fem_solve(rho)
    compliance = (b * u).sum()
    compliance.backward()
    optim.step()
    times.append(time.perf_counter() - start)
    compliances.append(compliance.item())

print(f"nodes {mesh.n_points}, cells {n_elem}, steps {STEPS}: compliance {compliances[0]:.4e} -> "
      f"{compliances[-1]:.4e}, mean density {rho.mean().item():.12f}, "
      f"median {1e3 * sorted(times)[len(times) // 2]:.1f} ms/step")
