"""The chapter's two steps on TensorMesh 0.2.1, timed: the peer side of ``python -m benchmarks.steps``.

Runs in the peers' environment (``.venv-peers``, made by ``benchmarks/peers_setup.sh``), never in
``.venv``: it imports only TensorMesh, torch, NumPy and meshio, and of this repository only the
file ``flows/benchmarks/chapter.py`` (the chapter's steps, written once for tmcore and TensorMesh,
loaded by path: it needs nothing but torch).

    .venv-peers/bin/python benchmarks/peers.py --problem identification --mesh MESH.npz --steps 30 --warmup 3

MESH.npz holds ``points`` (n, 2), ``triangles`` (m, 3) and ``boundary`` (n,) bool, written by
``flows.benchmarks.steps.StepMesh.save``, so TensorMesh solves on exactly the nodes and cells that
tmcore and scikit-fem get. Prints one JSON object: ``seconds`` (per timed step), ``values``
(loss or compliance per timed step), ``first_values`` (the warm-up steps'), versions.

The step code (:func:`chapter_step` there) is the chapter's, with one change that TensorMesh
needs to run it on a CPU: its Condenser checks "same sparsity pattern" by the memory address and
version counter of the matrix's index tensors (``layout_signature``), so a matrix from an assembler built inside
``fem_solve`` (the topology step as written) fails that check on the second step. Here the
topology step builds a fresh ``Condenser(mesh.boundary_mask)`` inside ``fem_solve``. The
identification step builds its assemblers and Condenser once (as the benchmark defines that
step), which TensorMesh runs unchanged. ``OCOptimizer.step()`` reads ``rho.grad`` as the
chapter calls it. ``--one-condenser`` runs the topology step exactly as the chapter writes it, to
record that it fails (``AssertionError: the layout of the matrix is changed``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import meshio
import numpy as np
import torch
from tensormesh import Condenser, ElementAssembler, Mesh, NodeAssembler
from tensormesh.optimizer import OCOptimizer


def _chapter_module():
    """``flows/benchmarks/chapter.py`` (the chapter's steps, written once for any library with the
    chapter's API), loaded from its file: this environment has neither Prefect nor tmcore, so the
    ``flows`` package cannot be imported, and that module needs only torch."""
    path = Path(__file__).resolve().parent.parent / "flows" / "benchmarks" / "chapter.py"
    spec = importlib.util.spec_from_file_location("tmcore_benchmark_chapter", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CHAPTER = _chapter_module()
TENSORMESH = SimpleNamespace(
    ElementAssembler=ElementAssembler, NodeAssembler=NodeAssembler, Condenser=Condenser, OCOptimizer=OCOptimizer
)


def load_mesh(path: str) -> Mesh:
    """A TensorMesh Mesh of the arrays in ``path``; the boundary mask as its ``is_boundary`` point data."""
    with np.load(path) as data:
        points, triangles, boundary = data["points"], data["triangles"], data["boundary"]
    return Mesh(meshio.Mesh(points, [("triangle", triangles)], point_data={"is_boundary": boundary.astype(bool)}))


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
    step = CHAPTER.chapter_step(TENSORMESH, args.problem, mesh, fresh_condenser=not args.one_condenser)
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
