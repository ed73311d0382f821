"""Memory and time of a long transient run with its adjoint, with and without checkpointing.

    python -m benchmarks.transient_memory [--steps 1000] [--cells 100] [--out reports/benchmarks]

Each configuration runs in a fresh process: a Crank-Nicolson heat run on a (cells+1)^2
node quad grid (100 -> 10,201 nodes), kappa per cell requiring grad, the loss on the final
state, then the backward. Reported per configuration: the bytes of the tensors autograd
keeps for the backward (distinct storages, outside checkpointed segments), the process's
peak resident memory above the state before the forward, and the forward/backward
times (see :func:`child_environment` for the allocator setting that makes the resident
memory meaningful). A markdown table goes to stdout and to ``<out>/transient_memory.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from flows.artifacts import atomic_write_text
from flows.reports import markdown_table

CONFIGS = [("none", None), ("every 32", 32), ("auto (sqrt N)", "auto"), ("every 100", 100)]


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as refs:  # resets VmHWM to the current RSS (Linux)
        refs.write("5")


def measure(steps: int, cells: int, checkpoint) -> dict:
    import torch

    from tmcore import Mesh
    from tmcore.forms import Diffusion, Mass
    from tmcore.methods.transient import TimeStepper

    torch.set_default_dtype(torch.float64)
    mesh = Mesh.gen_grid((cells, cells), element_type="quad")
    kappa = torch.ones(mesh.n_cells, requires_grad=True)
    x, y = mesh.points[:, 0], mesh.points[:, 1]
    u0 = torch.sin(torch.pi * x) * torch.sin(torch.pi * y)
    M = Mass.from_mesh(mesh)(scalar_data={"rho": 1.0})
    K = Diffusion.from_mesh(mesh)(element_data={"kappa": kappa})
    stepper = TimeStepper(M, K, 0.1 / steps, "crank-nicolson", mask=mesh.boundary_mask)
    for warm_up in (None, 2):  # first-use allocations of both paths (checkpoint's included)
        stepper.run(u0, 6, checkpoint=warm_up).final.sum().backward(retain_graph=True)
    kappa.grad = None
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    _reset_peak()
    base = _peak_rss_bytes()
    start = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        trajectory = stepper.run(u0, steps, checkpoint=checkpoint)
    forward = time.perf_counter() - start
    after_forward = _peak_rss_bytes() - base
    start = time.perf_counter()
    (trajectory.final**2).sum().backward()
    backward = time.perf_counter() - start
    return {
        "nodes": mesh.n_points,
        "steps": steps,
        "segments": trajectory.segments,
        "saved_mib": sum(storages.values()) / 2**20,
        "peak_forward_mib": after_forward / 2**20,
        "peak_total_mib": (_peak_rss_bytes() - base) / 2**20,
        "forward_s": forward,
        "backward_s": backward,
        "forward_solves": stepper.counters.forward_solves,
        "adjoint_solves": stepper.counters.adjoint_solves,
        "factorizations": stepper.counters.factorizations,
        "grad_norm": float(kappa.grad.norm()),
        "backend": stepper.factor.backend,
    }


def child_environment() -> dict:
    """One thread, and glibc's mmap threshold fixed at 16 KiB: by default glibc raises it after
    freeing large blocks, and the heap then fragments (freed per-step temporaries interleaved
    with the kept states), so resident memory would overstate what is alive by a factor of 2-10.
    With the threshold fixed below the size of one state (29 KiB at 61x61 nodes, 80 KiB at
    100x100), every state is mapped and unmapped on its own, and the resident memory follows
    the live memory."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "16384"}


def measure_in_fresh_process(steps: int, cells: int, checkpoint) -> dict:
    """:func:`measure` in a new interpreter with :func:`child_environment`, so that no earlier
    run's heap is reused (which would understate the resident memory of the later one)."""
    command = [
        sys.executable,
        "-m",
        "benchmarks.transient_memory",
        "--steps",
        str(steps),
        "--cells",
        str(cells),
        "--one",
        json.dumps(checkpoint),
    ]
    root = Path(__file__).resolve().parents[1]
    output = subprocess.run(
        command, check=True, capture_output=True, text=True, env=child_environment(), cwd=root
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def table_row(label: str, r: dict) -> dict[str, str]:
    """One configuration's row of the report, keyed by the column titles."""
    return {
        "checkpointing": label,
        "segments": str(r["segments"]),
        "saved by autograd (MiB)": f"{r['saved_mib']:.1f}",
        "peak RSS after forward (MiB)": f"{r['peak_forward_mib']:.1f}",
        "peak RSS fwd+bwd (MiB)": f"{r['peak_total_mib']:.1f}",
        "forward (s)": f"{r['forward_s']:.2f}",
        "backward (s)": f"{r['backward_s']:.2f}",
        "forward solves": str(r["forward_solves"]),
        "adjoint solves": str(r["adjoint_solves"]),
        "|grad|": f"{r['grad_norm']:.10e}",
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--cells", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("reports/benchmarks"))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one is not None:
        checkpoint = json.loads(args.one)
        print(json.dumps(measure(args.steps, args.cells, checkpoint)))
        return 0
    rows = []
    for label, checkpoint in CONFIGS:
        rows.append((label, measure_in_fresh_process(args.steps, args.cells, checkpoint)))
    first = rows[0][1]
    text = (
        f"Crank-Nicolson, {first['nodes']} nodes, {first['steps']} steps, backend {first['backend']}; one "
        "factorisation per run.\n\n" + markdown_table([table_row(label, r) for label, r in rows])
    )
    print(text, end="")
    atomic_write_text(args.out / "transient_memory.md", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
