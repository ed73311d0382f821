"""Inverse homogenisation (Sigmund 1994): a periodic 2-D cell with a negative effective Poisson's ratio.

Run: python examples/auxetic_cell.py [n [iterations]] [--png PATH]

The unit cell is n x n bilinear quads (default 40), plane stress, modified SIMP
E = Emin + rho~^3 (1 - Emin) with nu = 0.3 and a cone filter of radius 2 elements that wraps
around the periodic cell (a circular convolution). The design is a quarter of the cell,
made symmetric about its diagonal and mirrored about both mid-lines, so C* has square
symmetry (orthotropic, C*_1111 = C*_2222) and the in-plane Poisson's ratio is
nu* = C*_1122 / C*_1111. Sigmund's problem in its plainest form,

    min_rho  nu*(rho) = C*_1122 / C*_1111   subject to   mean(rho~) <= 0.35,   C*_1111 >= 0.01,

with the effective tensor C* from tmcore.methods.homogenisation and its gradient by autograd
(one adjoint solve for the three cell problems), solved by MMA (tmcore.topology.mma). The
start is the uniform density 0.35 with a void disc in the middle. (Xia and Breitkopf's
weighted form C*_1122 - 0.8^k (C*_1111 + C*_2222) drove this start to an empty cell; without
the stiffness constraint the design tends to nu* = -1 by rotating blocks on grey hinges,
C*_1111 ~ 6e-5: a mechanism, not a material.)
Prints the achieved tensor and Poisson's ratio
nu*_12 = -S*_21 / S*_11; ``--png`` writes the cell tiled 3 x 3.
"""

import argparse

import torch
import torch.nn.functional as F

from tmcore import Mesh
from tmcore.forms import LinearElasticity
from tmcore.methods.homogenisation import effective_tensor, poisson_ratio
from tmcore.methods.periodic import PeriodicCell
from tmcore.topology.mma import MMA

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("n", type=int, nargs="?", default=40, help="cells per side of the unit cell, even (default 40)")
parser.add_argument("iterations", type=int, nargs="?", default=200, help="MMA iterations (default 200)")
parser.add_argument("--png", help="write the cell tiled 3 x 3 to this file")
options = parser.parse_args()
n, iterations, png = options.n, options.iterations, options.png
VF, EMIN, PENAL, RADIUS, C_MIN = 0.35, 1e-9, 3.0, 2.0, 0.01

torch.set_default_dtype(torch.float64)
mesh = Mesh.gen_grid((n, n), element_type="quad")
cell = PeriodicCell(mesh)
form = LinearElasticity.from_mesh(mesh, nu=0.3, plane="stress")

# the periodic cone filter: weights max(0, r - distance) on the lattice, normalised, applied circularly
reach = int(RADIUS)
offsets = torch.arange(-reach, reach + 1, dtype=torch.float64)
kernel = (RADIUS - torch.sqrt(offsets[:, None] ** 2 + offsets[None, :] ** 2)).clamp_min(0.0)
kernel = (kernel / kernel.sum())[None, None]


def smooth(x: torch.Tensor) -> torch.Tensor:
    """rho~ (n n,) of the design x (n n,), cells x-fastest from the bottom row."""
    image = F.pad(x.reshape(1, 1, n, n), (reach,) * 4, mode="circular")
    return F.conv2d(image, kernel).reshape(-1)


def full(z: torch.Tensor) -> torch.Tensor:
    """The design (n n,) of the quarter z (n/2, n/2): symmetric about the diagonal, mirrored about both
    mid-lines, so the cell has square symmetry (an orthotropic C* with C*_1111 = C*_2222)."""
    z = 0.5 * (z + z.T)
    half = torch.cat([z, z.flip(1)], dim=1)
    return torch.cat([half, half.flip(0)], dim=0).reshape(-1)


def tensor_of(z: torch.Tensor) -> torch.Tensor:
    rho = smooth(full(z))
    return effective_tensor(cell, form, element_data={"E": EMIN + rho**PENAL * (1.0 - EMIN)}).tensor


if n % 2:
    raise SystemExit(f"n must be even (the design is a mirrored quarter), got {n}")
centre = (mesh.points[mesh.elements].mean(dim=1) - 0.5).reshape(n, n, 2)[: n // 2, : n // 2]
z = torch.where(centre.norm(dim=-1) < 1.0 / 6.0, 1e-3, VF).requires_grad_(True)
optimizer = MMA([z], n_constraints=2, lower=1e-3, upper=1.0, move_limit=0.2)
history = []
for k in range(iterations):

    def closure():
        C = tensor_of(z)
        objective = C[0, 1] / C[0, 0] + 1.0  # nu* + 1 (square symmetry: nu*_12 = C*_1122 / C*_1111 > -1)
        volume = (smooth(full(z)).mean() - VF) / VF
        stiffness = 1.0 - C[0, 0] / C_MIN  # C*_1111 >= C_MIN: no floppy mechanism of grey hinges
        return objective, torch.stack([volume, stiffness])

    objective, _ = optimizer.step(closure)
    history.append(float(objective))
    if optimizer.state[z]["change"] < 1e-3 and k > 50:
        break

with torch.no_grad():
    C = tensor_of(z)
    nu = float(poisson_ratio(C))
    volume = float(smooth(full(z)).mean())
print(
    f"auxetic cell {n}x{n}: {k + 1} MMA iterations, volume {volume:.4f}, nu*_12 = {nu:.4f}, "
    f"nu*_21 = {float(poisson_ratio(C, 1, 0)):.4f}"
)
print("C* (Voigt, plane stress) =")
for row in C.tolist():
    print("  " + "  ".join(f"{value:+.5e}" for value in row))

if png:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rho = smooth(full(z.detach())).reshape(n, n).numpy()  # row j: y = j
    tiled = __import__("numpy").tile(rho, (3, 3))
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    ax.imshow(1.0 - tiled, cmap="gray", origin="lower", vmin=0.0, vmax=1.0, extent=(0, 3, 0, 3))
    for t in (1, 2):
        ax.axhline(t, color="tab:red", lw=0.6, ls=":")
        ax.axvline(t, color="tab:red", lw=0.6, ls=":")
    ax.set_title(f"auxetic cell, {n}x{n}, tiled 3x3: nu* = {nu:.3f}, volume {volume:.2f}")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(png, dpi=150)
    print(f"wrote {png}")
