"""The chapter's two steps on TensorMesh 0.2.1, timed: the peer side of ``python -m benchmarks.steps``.

Runs in the peers' environment (``.venv-peers``, made by ``benchmarks/peers_setup.sh``), never in
``.venv``: it imports only TensorMesh, torch, NumPy and meshio, and nothing of this repository.

    .venv-peers/bin/python benchmarks/peers.py --problem identification --mesh MESH.npz --steps 30 --warmup 3

MESH.npz holds ``points`` (n, 2), ``triangles`` (m, 3) and ``boundary`` (n,) bool, written by
``flows.benchmarks.steps.StepMesh.save``, so TensorMesh solves on exactly the nodes and cells that
tmcore and scikit-fem get. Prints one JSON object: ``seconds`` (per timed step), ``values``
(loss or compliance per timed step), ``first_values`` (the warm-up steps'), versions.

The code is the chapter's, with one change that TensorMesh needs to run it on a CPU: its
Condenser checks "same sparsity pattern" by the memory address and version counter of the
matrix's index tensors (``layout_signature``), so a matrix from an assembler built inside
``fem_solve`` (the topology step as written) fails that check on the second step. Here the
topology step builds a fresh ``Condenser(mesh.boundary_mask)`` inside ``fem_solve``. The
identification step builds its assemblers and Condenser once (as the benchmark defines that
step), which TensorMesh runs unchanged. ``OCOptimizer.step()`` reads ``rho.grad`` as the
chapter calls it. ``--one-condenser`` runs the topology step exactly as the chapter writes it, to
record that it fails (``AssertionError: the layout of the matrix is changed``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import meshio
import numpy as np
import torch
from tensormesh import Condenser, ElementAssembler, Mesh, NodeAssembler
from tensormesh.optimizer import OCOptimizer

# the chapter's constants (the same as flows.benchmarks.steps)
ADAM_LR = 3e-2
VF, P_SIMP, KMIN, SIGMA, MOVE_LIMIT = 0.4, 3.0, 1e-3, 0.08, 0.15


class WeightedLaplace(ElementAssembler):
    def forward(self, gradu, gradv, kappa):
        return kappa * (gradu @ gradv)


class Source(NodeAssembler):
    def forward(self, v, f):
        return v * f


def load_mesh(path: str) -> Mesh:
    """A TensorMesh Mesh of the arrays in ``path``; the boundary mask as its ``is_boundary`` point data."""
    with np.load(path) as data:
        points, triangles, boundary = data["points"], data["triangles"], data["boundary"]
    return Mesh(meshio.Mesh(points, [("triangle", triangles)], point_data={"is_boundary": boundary.astype(bool)}))


def identification_step(mesh: Mesh):
    cond = Condenser(mesh.boundary_mask)
    laplace, source = WeightedLaplace.from_mesh(mesh), Source.from_mesh(mesh)

    def fem_solve(kappa, f_vals):
        K = laplace(point_data={"kappa": kappa}).double()
        b = source(point_data={"f": f_vals}).double()
        K_, b_ = cond(K, b)
        return cond.recover(K_.solve(b_))

    x, y = mesh.points[:, 0], mesh.points[:, 1]
    kappa_true = 1.0 + 0.6 * torch.sin(2 * torch.pi * x) * torch.cos(2 * torch.pi * y)
    f_vals = torch.ones(mesh.n_points, dtype=torch.float64)
    with torch.no_grad():
        u_obs = fem_solve(kappa_true, f_vals)
    theta = torch.zeros(mesh.n_points, dtype=torch.float64, requires_grad=True)
    optim = torch.optim.Adam([theta], lr=ADAM_LR)

    def step() -> float:
        optim.zero_grad()
        kappa = 1.0 + torch.tanh(theta)
        u = fem_solve(kappa, f_vals)
        loss = ((u - u_obs) ** 2).sum()
        loss.backward()
        optim.step()
        return loss.item()

    return step


def topology_step(mesh: Mesh, fresh_condenser: bool = True):
    n_elem = mesh.cells["triangle"].shape[0]
    x, y = mesh.points[:, 0], mesh.points[:, 1]
    f_field = torch.exp(-((x - 0.5) ** 2 + (y - 0.5) ** 2) / (2 * SIGMA**2))
    rho = torch.full((n_elem,), VF, dtype=torch.float64, requires_grad=True)
    optim = OCOptimizer(rho, vf=VF, move_limit=MOVE_LIMIT)
    chapter_cond = Condenser(mesh.boundary_mask)

    def fem_solve(rho):
        kappa = KMIN + (1.0 - KMIN) * rho**P_SIMP
        K = WeightedLaplace.from_mesh(mesh)(element_data={"kappa": kappa}).double()
        b = Source.from_mesh(mesh)(point_data={"f": f_field}).double()
        # the one change: a fresh Condenser per step (see the docstring); --one-condenser: the chapter's code
        cond = Condenser(mesh.boundary_mask) if fresh_condenser else chapter_cond
        K_, b_ = cond(K, b)
        return cond.recover(K_.solve(b_)), b

    def step() -> float:
        optim.zero_grad()
        u, b = fem_solve(rho)
        compliance = (b * u).sum()
        compliance.backward()
        optim.step()
        return compliance.item()

    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problem", choices=("identification", "topology"), required=True)
    parser.add_argument("--mesh", required=True, help=".npz with points, triangles, boundary")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--one-condenser", action="store_true", help="topology: the chapter's one Condenser (fails on the second step)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    mesh = load_mesh(args.mesh)
    if args.problem == "identification":
        step = identification_step(mesh)
    else:
        step = topology_step(mesh, fresh_condenser=not args.one_condenser)
    first_values = [step() for _ in range(args.warmup)]
    seconds, values = [], []
    for _ in range(args.steps):
        start = time.perf_counter()
        values.append(step())
        seconds.append(time.perf_counter() - start)
    import tensormesh

    json.dump(
        {
            "implementation": "TensorMesh 0.2.1",
            "problem": args.problem,
            "n_nodes": int(mesh.n_points),
            "seconds": seconds,
            "values": [v if math.isfinite(v) else None for v in values],
            "first_values": first_values,
            "versions": {"tensormesh": getattr(tensormesh, "__version__", "?"), "torch": torch.__version__},
            "threads": torch.get_num_threads(),
        },
        sys.stdout,
    )
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
