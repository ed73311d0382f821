"""Time one MMA update (asymptotes, approximations, dual subproblem) of tmcore's MMA against
mmapy's ``mmasub`` (Svanberg's MATLAB code in NumPy, primal-dual interior-point subsolver) on
the same data, and check that both land on the same point.

    python examples/mma_vs_mmapy.py [n ...] [--constraints m] [--device cuda]

The data mimic a compliance problem: n densities at random in (0.2, 0.8), an objective
gradient <= 0, m volume-like constraints with positive gradients. Prints, per n, the median
time of one update over a few repeats and the largest difference between the two updates.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tmcore.topology.mma import MMA


def problem(n: int, m: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = 0.2 + 0.6 * torch.rand(n, generator=generator, dtype=torch.float64)
    df0 = -(0.1 + torch.rand(n, generator=generator, dtype=torch.float64)) * 10.0 / n
    dg = (0.5 + torch.rand(m, n, generator=generator, dtype=torch.float64)) / n
    g = torch.linspace(-0.01, 0.02, m, dtype=torch.float64)
    return x, df0, dg, g


def ours(x, df0, dg, g, device: str, repeats: int):
    times, result = [], None
    for _ in range(repeats):
        p = x.clone().to(device).requires_grad_(True)
        opt = MMA([p], n_constraints=g.numel(), move_limit=0.5, objective_scale=1.0)
        a, b, gv = df0.to(device), dg.to(device), g.to(device)

        def closure():
            # linear stand-ins whose gradients are the data
            return (a * p).sum() + 10.0, (b @ p) - (b @ p).detach() + gv

        if device != "cpu":
            torch.cuda.synchronize()
        start = time.perf_counter()
        opt.step(closure)
        if device != "cpu":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        result = p.detach().cpu()
    return statistics.median(times), result


def theirs(x, df0, dg, g, repeats: int):
    import numpy as np
    from mmapy import mmasub

    n, m = x.numel(), g.numel()
    col = lambda t: t.numpy().reshape(-1, 1)  # noqa: E731
    xval = col(x)
    args = dict(
        xmin=np.zeros((n, 1)),
        xmax=np.ones((n, 1)),
        xold1=xval.copy(),
        xold2=xval.copy(),
        f0val=10.0 + float(df0 @ x),
        df0dx=col(df0),
        fval=col(g),
        dfdx=dg.numpy(),
        low=np.zeros((n, 1)),
        upp=np.ones((n, 1)),
        a0=1.0,
        a=np.zeros((m, 1)),
        c=1000.0 * np.ones((m, 1)),
        d=np.ones((m, 1)),
        move=0.5,
    )
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = mmasub(m, n, 1, xval, **args)
        times.append(time.perf_counter() - start)
        result = torch.from_numpy(out[0].reshape(-1))
    return statistics.median(times), result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", nargs="*", type=int, default=[1200, 7500, 30000, 120000])
    parser.add_argument("--constraints", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    options = parser.parse_args(argv)
    rows = []
    for n in options.sizes:
        x, df0, dg, g = problem(n, options.constraints)
        t_ours, x_ours = ours(x, df0, dg, g, options.device, options.repeats)
        try:
            t_theirs, x_theirs = theirs(x, df0, dg, g, options.repeats)
            difference = float((x_ours - x_theirs).abs().max())
        except ImportError:
            t_theirs, difference = float("nan"), float("nan")
        rows.append((n, t_ours, t_theirs, difference))
        print(
            f"n {n:>7d}  m {options.constraints}  tmcore {1e3 * t_ours:8.2f} ms ({options.device})  "
            f"mmapy {1e3 * t_theirs:8.2f} ms  max |x_tmcore - x_mmapy| {difference:.1e}"
        )
    return rows


if __name__ == "__main__":
    torch.set_default_dtype(torch.float64)
    results = main()
