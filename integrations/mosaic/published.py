"""The other solvers' numbers as mosaic 0.2.0 publishes them (its results pages).

Source: ``docs/results_thermal_mesh.qmd`` and ``docs/results_structural_mesh.qmd`` of
pasteurlabs/mosaic at the v0.2.0 release commit (a535cb3), "Auto-generated 2026-06-15 19:21
UTC": the "Solver ranking" table of each suite, computed by mosaic's
``docs/generate_results.py`` from its result files. Hardware, as those pages state: GitHub
Actions runners, each solver in its container on its intended device: GPU-capable solvers
(JAX-FEM, torch-fem, TopOpt.jl) on a Tesla T4 GPU node, CPU-only solvers (deal.II, FEniCS,
Firedrake) on a CPU node. Ours: 2 shared CPU cores, no GPU, in-process (no container).

What each number is (mosaic's definitions, which :mod:`integrations.mosaic.report` applies to
our results too):

forward        mean relative error against the checked-in reference over the first forward
               experiment that has errors, in the order agreement, baseline, source_baseline
cost           mean forward (``cost/spatial_cost``) and VJP (``cost/vjp_cost/by_N``) wall
               time in seconds at the largest N the solver completed; the VJP time is one
               ``jax.grad`` through the Tesseract: an ``apply`` and a ``vector_jacobian_product``
gradient      ``gradient/fd_check``: the smallest (over eps) median-over-directions relative
               FD error, and 1 - cosine at that eps
optimization   final objective: ``final_error`` (thermal conductivity recovery, 200 L-BFGS
               iterations) or ``final_compliance`` (structural topology optimisation), and
               whether the optimiser stopped before its budget
"""

from __future__ import annotations

__all__ = ["HARDWARE", "PUBLISHED", "RECOVERY_SETTINGS", "SOURCE"]

SOURCE = "mosaic 0.2.0 results pages (docs/results_<problem>.qmd at a535cb3, generated 2026-06-15)"
HARDWARE = (
    "mosaic: GitHub Actions runners, one container per solver; GPU-capable solvers on a Tesla T4 "
    "GPU node, CPU-only solvers on a CPU node. tmcore here: 2 shared CPU cores, no GPU, in-process."
)

# what the published thermal optimisation numbers are of (their page's "Settings" block)
RECOVERY_SETTINGS = (
    "The published conductivity-recovery numbers were made with the experiment's settings of 2026-06 (results "
    'page: physics `"Lz": 1.0`); mosaic 0.2.0 (commit 7f7a3ef) makes the slab Lz = Lx/nx = 0.125 thick, which '
    "multiplies the temperatures by 8 and the objective by 64, so the harness's number above is not comparable "
    "with them."
)

# problem -> suite -> solver -> values; cost: (N_forward, forward_s, N_vjp, vjp_s)
PUBLISHED: dict[str, dict[str, dict[str, tuple]]] = {
    "thermal-mesh": {
        "forward": {
            "deal.II": (1.74e-08,),
            "FEniCS": (1.74e-08,),
            "Firedrake": (1.74e-08,),
            "JAX-FEM": (1.74e-08,),
            "torch-fem": (1.74e-08,),
        },
        "cost": {
            "FEniCS": (512, 11.8, 512, 29.0),
            "torch-fem": (1024, 13.3, 1024, 29.1),
            "deal.II": (1024, 83.9, None, None),
            "JAX-FEM": (1024, 85.8, 512, 33.8),
            "Firedrake": (1024, 116.0, 1024, 244.0),
        },
        "gradient": {
            "FEniCS": (1.83e-05, 2.21e-10),
            "Firedrake": (1.83e-05, 2.21e-10),
            "JAX-FEM": (1.83e-05, 2.21e-10),
            "torch-fem": (1.83e-05, 2.21e-10),
        },
        "optimization": {
            "torch-fem": (6.87e02, False),
            "JAX-FEM": (9.22e02, False),
            "FEniCS": (4.67e04, False),
            "Firedrake": (1.29e05, False),
        },
    },
    "structural-mesh": {
        "forward": {
            "deal.II": (0.0,),
            "FEniCS": (0.0,),
            "Firedrake": (0.0,),
            "TopOpt.jl": (5.53e-03,),
        },
        "cost": {
            "TopOpt.jl": (16, 0.0127, 16, 0.0342),
            "Firedrake": (16, 0.103, 16, 0.285),
            "FEniCS": (16, 0.138, 16, 0.472),
            "JAX-FEM": (16, 0.154, 16, 0.52),
            "deal.II": (16, 1.54, None, None),
        },
        "gradient": {
            "FEniCS": (2.10e-05, 1.96e-10),
            "Firedrake": (2.10e-05, 1.96e-10),
            "TopOpt.jl": (2.10e-05, 1.96e-10),
        },
        "optimization": {
            "JAX-FEM": (1.00e-03, False),
            "FEniCS": (1.00e-03, False),
            "Firedrake": (1.00e-03, False),
            "TopOpt.jl": (1.00e-03, False),
        },
    },
}
