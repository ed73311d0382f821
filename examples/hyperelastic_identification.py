"""Identify a spatially varying shear modulus from the deformed shape of a hyperelastic plate.

Run: python examples/hyperelastic_identification.py [nx [iterations]] [--png PATH]

A 2 x 1 plate (nx x nx/2 bilinear quads, plane strain, compressible Neo-Hookean with
lam = 2 mu) clamped on its left edge is pulled and bent by a dead traction on its right
edge, (0.6, -0.2) mu0 per unit length, in 3 increments: it stretches by about a third and
its tip drops by about 0.6. The "measured" shape is the final state computed with a true
shear modulus that has a stiff inclusion (mu = 1 + 2 exp(-|x - (1.2, 0.5)|^2 / 0.08)) and
a soft one (mu = 1 - 0.5 exp(-|x - (0.5, 0.5)|^2 / 0.05)). Starting from mu = 1, the
modulus per cell (as log mu) is recovered by L-BFGS on

    J(mu) = |u(mu) - u_measured|^2 / |u_measured|^2 + alpha sum_{neighbours} (log mu_i - log mu_j)^2,

the gradient through the load path by one adjoint solve per increment the loss sees
(here the last). Prints the misfit and the error in mu; ``--png`` draws the true and
recovered moduli on the deformed plate.
"""

import argparse

import torch

from tmcore import Mesh, dof_mask
from tmcore.forms import Traction
from tmcore.methods.hyperelastic import Hyperelasticity
from tmcore.topology.filters import cell_neighbours

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("nx", type=int, nargs="?", default=24, help="quads along the plate's length, even (default 24)")
parser.add_argument("iterations", type=int, nargs="?", default=40, help="L-BFGS iterations (default 40)")
parser.add_argument("--png", help="draw the true and recovered moduli on the deformed plate to this file")
options = parser.parse_args()
nx, iterations, png = options.nx, options.iterations, options.png
ALPHA = 1e-5

torch.set_default_dtype(torch.float64)
mesh = Mesh.gen_grid((nx, nx // 2), upper=(2.0, 1.0), element_type="quad")
problem = Hyperelasticity(mesh, dof_mask(mesh.nodes_of("left"), 2))
traction = torch.tensor([0.6, -0.2]).expand(mesh.n_points, 2)
load = Traction.from_mesh(mesh, facets="right")(point_data={"t": traction})
ramp = torch.tensor([1 / 3, 2 / 3, 1.0])[:, None] * load
c = mesh.points[mesh.elements].mean(dim=1)
mu_true = (
    1.0
    + 2.0 * torch.exp(-((c - torch.tensor([1.2, 0.5])) ** 2).sum(1) / 0.08)
    - 0.5 * torch.exp(-((c - torch.tensor([0.5, 0.5])) ** 2).sum(1) / 0.05)
)
pairs = cell_neighbours(mesh)


def final_state(mu: torch.Tensor) -> torch.Tensor:
    return problem.load_path({"mu": mu, "lam": 2.0 * mu}, loads=ramp)[-1]


with torch.no_grad():
    measured = final_state(mu_true)
scale = float((measured**2).sum())

log_mu = torch.zeros(mesh.n_cells, requires_grad=True)
optimizer = torch.optim.LBFGS(
    [log_mu],
    lr=1.0,
    max_iter=iterations,
    history_size=20,
    line_search_fn="strong_wolfe",
    tolerance_grad=1e-12,
    tolerance_change=1e-14,
)
history = []


def closure():
    optimizer.zero_grad()
    misfit = ((final_state(log_mu.exp()) - measured) ** 2).sum() / scale
    loss = misfit + ALPHA * ((log_mu[pairs[:, 0]] - log_mu[pairs[:, 1]]) ** 2).sum()
    loss.backward()
    history.append((loss.item(), misfit.item()))
    return loss


optimizer.step(closure)
mu = log_mu.detach().exp()
error = float((mu - mu_true).norm() / mu_true.norm())
print(
    f"plate {nx}x{nx // 2}: {len(history)} evaluations, misfit {history[0][1]:.3e} -> {history[-1][1]:.3e}, "
    f"relative error in mu {float((1.0 - mu_true).norm() / mu_true.norm()):.3f} -> {error:.3f}"
)
tip = measured.reshape(-1, 2)[mesh.nodes_of("right")].mean(0)
print(f"measured tip displacement ({float(tip[0]):.3f}, {float(tip[1]):.3f})")

if png:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    deformed = (mesh.points + measured.reshape(-1, 2)).numpy()
    polygons = deformed[mesh.elements.numpy()]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True)
    for ax, values, title in (
        (axes[0], mu_true, "true shear modulus"),
        (axes[1], mu, f"recovered (error {error:.1%})"),
    ):
        collection = PolyCollection(polygons, array=values.numpy(), cmap="viridis", edgecolors="none")
        collection.set_clim(float(mu_true.min()), float(mu_true.max()))
        ax.add_collection(collection)
        ax.plot(*mesh.points[mesh.boundary_mask].numpy().T, ".", color="0.7", ms=1)
        ax.autoscale()
        ax.set_aspect("equal")
        ax.set_title(title)
    fig.colorbar(collection, ax=axes, shrink=0.8, label="mu / mu0")
    fig.savefig(png, dpi=150)
    print(f"wrote {png}")
