"""Gradient checks: central finite differences on chosen entries and the Taylor remainder test.

Both take a function ``loss(x) -> scalar tensor`` and a point ``x``; they compare
``torch.autograd`` against perturbations of x, so they check the whole pipeline
(assembly, condensation, the adjoint solve) rather than one piece.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["FiniteDifferenceCheck", "TaylorTest", "finite_difference_check", "taylor_test", "significant_digits"]


def significant_digits(a: Tensor, b: Tensor) -> Tensor:
    """Agreeing significant digits -log10(|a - b| / max(|a|, |b|)), capped at 16."""
    scale = torch.maximum(a.abs(), b.abs())
    rel = (a - b).abs() / torch.where(scale > 0, scale, torch.ones_like(scale))
    return (-torch.log10(rel.clamp_min(1e-16))).clamp_max(16.0)


# central stencils: offsets, coefficients, denominator (times h)
_STENCILS = {
    2: ((1, -1), (1.0, -1.0), 2.0),
    4: ((2, 1, -1, -2), (-1.0, 8.0, -8.0, 1.0), 12.0),
}


def _gradient(loss: Callable[[Tensor], Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    x = x.detach().clone().requires_grad_(True)
    value = loss(x)
    if not isinstance(value, Tensor) or value.numel() != 1:
        raise ValueError(f"loss must return a scalar tensor, got {getattr(value, 'shape', type(value).__name__)}")
    (grad,) = torch.autograd.grad(value, x)
    return value.detach(), grad


@dataclass
class FiniteDifferenceCheck:
    """Autograd against central differences at ``indices`` (flat indices into x)."""

    indices: Tensor
    autograd: Tensor
    finite_difference: Tensor
    step: float

    @property
    def abs_diff(self) -> Tensor:
        return (self.autograd - self.finite_difference).abs()

    @property
    def rel_diff(self) -> Tensor:
        scale = torch.maximum(self.autograd.abs(), self.finite_difference.abs())
        return self.abs_diff / torch.where(scale > 0, scale, torch.ones_like(scale))

    @property
    def digits(self) -> Tensor:
        return significant_digits(self.autograd, self.finite_difference)

    @property
    def median_digits(self) -> float:
        return float(self.digits.median())

    def table(self, label: str = "index") -> str:
        """A plain-text table: index, autograd, fd, |diff|, relative diff, digits."""
        lines = [f"{label:>8} {'autograd':>16} {'fd':>16} {'|diff|':>10} {'rel diff':>10} {'digits':>6}"]
        for i, a, f, d, r, s in zip(
            self.indices.tolist(),
            self.autograd.tolist(),
            self.finite_difference.tolist(),
            self.abs_diff.tolist(),
            self.rel_diff.tolist(),
            self.digits.tolist(),
        ):
            lines.append(f"{i:>8d} {a:>16.9e} {f:>16.9e} {d:>10.2e} {r:>10.2e} {s:>6.1f}")
        lines.append(f"median significant digits: {self.median_digits:.1f}")
        return "\n".join(lines)


def finite_difference_check(
    loss: Callable[[Tensor], Tensor],
    x: Tensor,
    indices: Sequence[int] | Tensor | None = None,
    n_probes: int = 5,
    step: float | None = None,
    seed: int = 0,
    accuracy: int = 4,
) -> FiniteDifferenceCheck:
    """Compare d loss / d x[i] from autograd with central differences.

    indices: flat indices to probe; by default ``n_probes`` drawn with ``seed``.
    accuracy: 2 for (L(x+h) - L(x-h)) / 2h, 4 (default) for the five-point stencil
    (-L(x+2h) + 8 L(x+h) - 8 L(x-h) + L(x-2h)) / 12h, whose O(h^4) truncation error
    leaves 10-11 digits in float64 where the two-point one leaves about 8-9.
    step: h; by default eps^(1/(accuracy+1)) * max(1, |x_i|), which balances
    truncation against round-off.
    """
    if accuracy not in _STENCILS:
        raise ValueError(f"accuracy must be one of {sorted(_STENCILS)}, got {accuracy!r}")
    offsets, coefficients, denominator = _STENCILS[accuracy]
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    _, grad = _gradient(loss, x)
    flat = x.detach().reshape(-1)
    if indices is None:
        generator = torch.Generator().manual_seed(seed)
        indices = torch.randperm(flat.numel(), generator=generator)[: min(n_probes, flat.numel())]
    indices = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
    if indices.numel() and (indices.min() < 0 or indices.max() >= flat.numel()):
        raise ValueError(f"indices must lie in [0, {flat.numel()}), got {indices.tolist()}")
    eps = torch.finfo(x.dtype).eps
    fd = []
    steps = []
    with torch.no_grad():
        for i in indices.tolist():
            h = step if step is not None else eps ** (1 / (accuracy + 1)) * max(1.0, abs(float(flat[i])))
            total = 0.0
            for offset, coefficient in zip(offsets, coefficients):
                shifted = flat.clone()
                shifted[i] += offset * h
                total += coefficient * float(loss(shifted.reshape(x.shape)))
            fd.append(total / (denominator * h))
            steps.append(h)
    return FiniteDifferenceCheck(
        indices,
        grad.reshape(-1)[indices].cpu(),
        torch.tensor(fd, dtype=torch.float64),
        max(steps) if steps else float("nan"),
    )


@dataclass
class TaylorTest:
    """Remainders |J(x + e h) - J(x) - e dJ.h| for halving e, and their observed orders."""

    epsilons: Tensor
    remainders: Tensor

    @property
    def rates(self) -> Tensor:
        """log2 of successive remainder ratios: ~2 for a correct gradient, ~1 for a wrong one."""
        return torch.log2(self.remainders[:-1] / self.remainders[1:])

    @property
    def min_rate(self) -> float:
        return float(self.rates.min())

    def table(self) -> str:
        lines = [f"{'eps':>10} {'remainder':>12} {'rate':>6}"]
        rates = [float("nan")] + self.rates.tolist()
        for e, r, q in zip(self.epsilons.tolist(), self.remainders.tolist(), rates):
            lines.append(f"{e:>10.3e} {r:>12.4e} {q:>6.2f}")
        return "\n".join(lines)


def taylor_test(
    loss: Callable[[Tensor], Tensor],
    x: Tensor,
    direction: Tensor | None = None,
    eps0: float = 1e-2,
    n_halvings: int = 5,
    seed: int = 0,
) -> TaylorTest:
    """The Taylor remainder test of pyadjoint: the remainder must fall at rate 2 as eps halves.

    direction: perturbation h shaped like x; by default uniform random in [-1, 1] times
    max(1, |x|). Pick eps0 so that J(x + eps0 h) is still meaningful (e.g. a positive
    coefficient stays positive).
    """
    value, grad = _gradient(loss, x)
    if direction is None:
        generator = torch.Generator().manual_seed(seed)
        direction = (2 * torch.rand(x.shape, generator=generator, dtype=torch.float64) - 1).to(x)
        direction = direction * x.detach().abs().clamp_min(1.0)
    if direction.shape != x.shape:
        raise ValueError(f"direction must have the shape of x {tuple(x.shape)}, got {tuple(direction.shape)}")
    slope = float((grad * direction).sum())
    epsilons = eps0 * 0.5 ** torch.arange(n_halvings + 1, dtype=torch.float64)
    remainders = []
    with torch.no_grad():
        for eps in epsilons.tolist():
            remainders.append(abs(float(loss(x.detach() + eps * direction) - value) - eps * slope))
    return TaylorTest(epsilons, torch.tensor(remainders, dtype=torch.float64))
