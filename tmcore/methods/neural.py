"""Coupling ``torch.nn`` networks to the pipeline: nothing to wrap, one helper to check it.

A network is an ordinary ``nn.Module``; its output goes where any tensor goes:
``point_data={"kappa": net(x)}`` (a coefficient per node), ``element_data={"alpha":
net(centroids)}`` (a modifier per cell), ``Condenser(mask, dirichlet_value=net(x_d))``
(boundary values). ``loss.backward()`` then fills the network's ``.grad`` through one
adjoint solve, and any ``torch.optim`` optimiser trains it.

:func:`weights_function` turns "a loss of a network" into "a loss of one flat weight
vector", so :mod:`tmcore.methods.gradcheck` can compare the gradient w.r.t. every weight with
finite differences. :func:`train` is the plain optimisation loop the examples share.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from tmcore.core.checks import check_count

__all__ = ["weights_function", "cell_centroids", "train", "TrainingHistory"]


def weights_function(
    module: nn.Module, objective: Callable[[Callable[..., Tensor]], Tensor]
) -> tuple[Callable[[Tensor], Tensor], Tensor]:
    """(f, w0): f(w) is ``objective(net)`` with the module's parameters taken from the flat vector w.

    ``objective`` receives a callable that behaves like the module (``net(x)``) and returns
    a scalar; it is differentiable in w. ``w0`` (P,) is a detached copy of the current
    parameters in ``module.parameters()`` order. The module itself is not changed.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    if not callable(objective):
        raise TypeError(f"objective must be callable as objective(net), got {type(objective).__name__}")
    named = list(module.named_parameters())
    if not named:
        raise ValueError(f"{type(module).__name__} has no parameters")
    names = [name for name, _ in named]
    shapes = [p.shape for _, p in named]
    sizes = [p.numel() for _, p in named]
    w0 = torch.cat([p.detach().reshape(-1) for _, p in named]).clone()

    def f(w: Tensor) -> Tensor:
        if w.shape != w0.shape:
            raise ValueError(f"the weight vector must have shape {tuple(w0.shape)}, got {tuple(w.shape)}")
        parameters = {name: chunk.view(shape) for name, chunk, shape in zip(names, torch.split(w, sizes), shapes)}

        def net(*args, **kwargs):
            return torch.func.functional_call(module, parameters, args, kwargs)

        return objective(net)

    return f, w0


def cell_centroids(points: Tensor, cells: Tensor) -> Tensor:
    """Centroids (m, dim) of cells (m, k) with nodes ``points`` (n, dim): per-cell network inputs."""
    if points.ndim != 2 or cells.ndim != 2:
        raise ValueError(
            f"points must be (n, dim) and cells (m, k), got {tuple(points.shape)} and {tuple(cells.shape)}"
        )
    return points[cells].mean(dim=1)


@dataclass
class TrainingHistory:
    """Per step of :func:`train`: the loss before the update and the wall time in seconds."""

    losses: list[float]
    seconds: list[float]


def train(loss: Callable[[], Tensor], optimizer: torch.optim.Optimizer, steps: int, scheduler=None) -> TrainingHistory:
    """``steps`` rounds of zero_grad, ``loss().backward()``, ``optimizer.step()`` (and
    ``scheduler.step()`` when given); returns the losses and step times."""
    if not callable(loss):
        raise TypeError(f"loss must be callable as loss(), got {type(loss).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    check_count("steps", steps)
    history = TrainingHistory([], [])
    for _ in range(steps):
        start = time.perf_counter()
        optimizer.zero_grad()
        value = loss()
        value.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        history.seconds.append(time.perf_counter() - start)
        history.losses.append(value.item())
    return history
