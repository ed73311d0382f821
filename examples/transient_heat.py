"""Identify a conductivity from the temperature at the final time of a transient run.

Run: python examples/transient_heat.py [adam_steps] [n_time_steps]

A unit square (40 x 40 quads) starts at u = sin(pi x) sin(pi y) and cools with u = 0 on
its boundary; the conductivity is 1 with a disc of 3 in the lower left. From the
temperature at t = 0.05 alone, Adam fits a per-cell log-conductivity. Each Adam step is
one Crank-Nicolson run (one factorisation, checkpointed) and one backward pass with one
adjoint solve per time step.
"""

import sys
import time

import torch

from tmcore import ElementAssembler, Mesh
from tmcore.methods.transient import TimeStepper

STEPS = int(sys.argv[1]) if len(sys.argv) > 1 else 40
N_TIME = int(sys.argv[2]) if len(sys.argv) > 2 else 50
torch.set_default_dtype(torch.float64)


class Mass(ElementAssembler):
    def forward(self, u, v):
        return u * v


class Diffusion(ElementAssembler):
    def forward(self, gradu, gradv, kappa):
        return kappa * (gradu @ gradv)


mesh = Mesh.gen_grid((40, 40), element_type="quad")
centres = mesh.points[mesh.elements].mean(1)
kappa_true = 1.0 + 2.0 * ((centres - torch.tensor([0.3, 0.3])).norm(dim=1) < 0.2).double()
x, y = mesh.points[:, 0], mesh.points[:, 1]
u0 = torch.sin(torch.pi * x) * torch.sin(torch.pi * y)
M = Mass.from_mesh(mesh)()
diffusion = Diffusion.from_mesh(mesh)
dt = 0.05 / N_TIME


def final_temperature(kappa):
    stepper = TimeStepper(M, diffusion(element_data={"kappa": kappa}), dt, "crank-nicolson", mask=mesh.boundary_mask)
    return stepper.run(u0, N_TIME, checkpoint="auto").final


with torch.no_grad():
    observed = final_temperature(kappa_true)
log_kappa = torch.zeros(mesh.n_cells, requires_grad=True)
optimizer = torch.optim.Adam([log_kappa], lr=0.05)
losses, seconds = [], []
for step in range(STEPS):
    start = time.perf_counter()
    optimizer.zero_grad()
    loss = ((final_temperature(log_kappa.exp()) - observed) ** 2).sum()
    loss.backward()
    optimizer.step()
    seconds.append(time.perf_counter() - start)
    losses.append(float(loss.detach()))
print(
    f"loss {losses[0]:.3e} -> {losses[-1]:.3e} in {STEPS} Adam steps of {N_TIME} time steps; "
    f"{sorted(seconds)[len(seconds) // 2]:.3f} s per step"
)
