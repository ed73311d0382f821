"""The Optimality Criteria (OC) update for density-based topology optimisation.

For an objective J(rho) whose sensitivity dJ/drho is <= 0 (a compliance: more material,
lower compliance) and the volume constraint

    V(rho) = sum_e w_e rho_e / sum_e w_e = vf,

the OC fixed point scales each density by B_e = (-dJ/drho_e / (lambda w_e))^damping.
One step computes

    rho_new(lambda) = clamp(rho * B(lambda), max(rho - move, rho_min), min(rho + move, rho_max))

and picks the Lagrange multiplier lambda > 0 so that V(rho_new) = vf. V(rho_new(lambda))
is continuous and non-increasing in lambda, so lambda is bracketed from the densities
themselves (below the bracket every density sits at its upper limit, above it at its
lower one) and found by a safeguarded regula falsi (Illinois) on log lambda, which
falls back to bisection when it stalls. The step stops once |V - vf| <= volume_tol.

The weights w are the cells' measures for a volume in the geometric sense
(``volume_weights=mesh.cell_measures()``) or, by default, all one: V is then the plain
mean of the densities. The plain mean is what the chapter's "volume fraction 0.4,
held exactly" refers to; the two agree on a uniform mesh and differ slightly on an
unstructured one.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tmcore.core.checks import check_count, check_real, is_real

__all__ = ["CheckedOptimizer", "OCOptimizer"]

logger = logging.getLogger(__name__)


class CheckedOptimizer(torch.optim.Optimizer):
    """A ``torch.optim.Optimizer`` whose param groups are validated as they are added (the
    constructor's and any later ``add_param_group``): a subclass writes ``_check_group(group)``,
    which raises TypeError/ValueError naming the option; a rejected group is not kept."""

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (options default to the constructor's), checked like the constructor's."""
        super().add_param_group(param_group)
        try:
            self._check_group(self.param_groups[-1])
        except (TypeError, ValueError):
            self.param_groups.pop()
            raise

    @staticmethod
    def _check_group(group: dict[str, Any]) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class OCOptimizer(CheckedOptimizer):
    """Optimality Criteria optimiser for densities under a volume constraint.

    Args:
        params: the density tensor (m,), an iterable of tensors, or param groups (dicts
            that may override any option below). Each density tensor holds its own
            volume constraint.
        vf: target volume fraction, in (0, 1) and strictly between rho_min and rho_max.
        move_limit: largest change of a density in one step, in (0, 1].
        damping: exponent of the OC multiplier, in (0, 1] (0.5 is the classic choice).
        rho_min, rho_max: bounds of the densities, 0 <= rho_min < vf < rho_max.
        volume_weights: None for the plain mean (the chapter's volume), or a positive
            tensor with the shape of the densities, e.g. ``mesh.cell_measures()``, for
            the measure-weighted volume.
        volume_tol: the step stops when |V - vf| <= volume_tol (> 0).
        max_iterations: cap on the multiplier search per step.

    ``step()`` reads ``rho.grad`` (the sensitivity, <= 0 where it matters: positive
    entries count as zero and send those densities to their lower limit) and updates rho
    in place. After a step, ``optimizer.state[rho]`` holds ``step`` (count), ``volume``,
    ``lagrange_multiplier``, ``change`` (max |delta rho|) and ``iterations``. When the
    move limit does not let the volume reach vf in one step (a start far from vf), the
    step goes as far as it can and logs a warning.
    """

    def __init__(
        self,
        params,
        vf: float,
        move_limit: float = 0.2,
        damping: float = 0.5,
        rho_min: float = 1e-3,
        rho_max: float = 1.0,
        volume_weights: Tensor | None = None,
        volume_tol: float = 1e-12,
        max_iterations: int = 200,
    ):
        if isinstance(params, Tensor):
            params = [params]
        defaults = dict(
            vf=vf,
            move_limit=move_limit,
            damping=damping,
            rho_min=rho_min,
            rho_max=rho_max,
            volume_weights=volume_weights,
            volume_tol=volume_tol,
            max_iterations=max_iterations,
        )
        super().__init__(params, defaults)

    # -- groups ------------------------------------------------------------------------

    @staticmethod
    def _check_group(group: dict[str, Any]) -> None:
        vf, rho_min, rho_max = group["vf"], group["rho_min"], group["rho_max"]
        if not (is_real(vf) and 0.0 < vf < 1.0):
            raise ValueError(f"vf must be a volume fraction in (0, 1), got {vf!r}")
        if not (is_real(group["move_limit"]) and 0.0 < group["move_limit"] <= 1.0):
            raise ValueError(f"move_limit must lie in (0, 1], got {group['move_limit']!r}")
        if not (is_real(group["damping"]) and 0.0 < group["damping"] <= 1.0):
            raise ValueError(f"damping must lie in (0, 1], got {group['damping']!r}")
        if not (is_real(rho_min) and is_real(rho_max) and 0.0 <= rho_min < vf < rho_max):
            raise ValueError(f"need 0 <= rho_min < vf < rho_max, got rho_min={rho_min}, vf={vf}, rho_max={rho_max}")
        check_real("volume_tol", group["volume_tol"], 0.0, what="a positive number")
        check_count("max_iterations", group["max_iterations"])
        weights = group["volume_weights"]
        if weights is not None:
            if not isinstance(weights, Tensor) or not weights.is_floating_point():
                raise TypeError(f"volume_weights must be None or a floating-point tensor, got {type(weights).__name__}")
            if not bool(torch.isfinite(weights).all()) or not bool((weights > 0).all()):
                raise ValueError("volume_weights must be finite and positive (cell measures, say)")
        for rho in group["params"]:
            if not rho.is_floating_point():
                raise TypeError(f"densities must be a floating-point tensor, got {rho.dtype}")
            if weights is not None and weights.shape != rho.shape:
                raise ValueError(
                    f"volume_weights must have the shape of the densities {tuple(rho.shape)}, got "
                    f"{tuple(weights.shape)}"
                )
            values = rho.detach()
            low, high = float(values.min()), float(values.max())
            if not bool(torch.isfinite(values).all()) or low < rho_min or high > rho_max:
                raise ValueError(
                    f"densities must lie in [rho_min, rho_max] = [{rho_min}, {rho_max}], got [{low:.3g}, {high:.3g}]"
                )

    # -- the step ----------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure=None):
        """One OC update of every density tensor; returns the closure's result if one is given.

        ``closure`` is either torch's (zero the gradients, evaluate, call backward, return the
        loss) or the driver's ``evaluate`` (zero the gradients, return ``(objective,
        constraints)``; :mod:`tmcore.topology.driver`): then this step back-propagates the
        objective itself. OC holds its own volume constraint, so the constraints are not used.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
                if isinstance(loss, tuple):
                    loss[0].backward()
        for group in self.param_groups:
            for rho in group["params"]:
                if rho.grad is None:
                    raise RuntimeError(
                        "OCOptimizer.step() found no gradient on the densities: call loss.backward() first"
                    )
                self._update(rho, rho.grad, group)
        return loss

    @staticmethod
    def volume(rho: Tensor, volume_weights: Tensor | None = None) -> float:
        """V(rho): the plain mean, or sum(w rho) / sum(w) with weights."""
        if volume_weights is None:
            return float(rho.detach().mean())
        w = volume_weights.to(rho)
        return float((w * rho.detach()).sum() / w.sum())

    def _update(self, rho: Tensor, grad: Tensor, group: dict) -> None:
        """One OC step of the densities ``rho`` (m,) with their gradient ``grad`` (m,), in place.

        The step runs in float64 NumPy on the host, whatever rho's device: it is a scalar search
        whose every pass needs the volume as a number, and each pass (a product by lambda^-eta, a
        clamp, a dot product) costs about 10 us at 3e3 densities there against about 40 us in torch
        calls. The new densities are copied back into rho in its dtype, on its device.
        """
        if grad.shape != rho.shape:
            raise ValueError(f"the gradient has shape {tuple(grad.shape)} but the densities {tuple(rho.shape)}")
        x = rho.detach().to(device="cpu", dtype=torch.float64).numpy()
        g = grad.detach().to(device="cpu", dtype=torch.float64).numpy()
        if not np.isfinite(g).all():
            raise ValueError("the density gradient contains NaN or inf")
        if not np.isfinite(x).all():
            raise ValueError("the densities contain NaN or inf (changed in place since the optimiser was built?)")
        if (g >= 0).all() and (g > 0).any():
            raise ValueError(
                "the density gradient is positive everywhere: OC minimises a compliance whose sensitivity is "
                "<= 0 (more material, lower compliance). Did you pass the negated objective, or a quantity to maximise?"
            )
        weights = group["volume_weights"]
        w = np.ones_like(x) if weights is None else weights.detach().to(device="cpu", dtype=torch.float64).numpy()
        fraction = w / w.sum()  # V(x) = fraction . x
        sensitivity = np.maximum(-g, 0.0) / w
        if not (sensitivity > 0).any():
            raise ValueError(
                "the density gradient is zero everywhere: OC has no sensitivity to redistribute material by "
                "(does the loss depend on the densities, and did backward() reach them?)"
            )
        eta, vf, tol = group["damping"], group["vf"], group["volume_tol"]
        lower = np.maximum(x - group["move_limit"], group["rho_min"])
        upper = np.minimum(x + group["move_limit"], group["rho_max"])
        slope = x * sensitivity**eta  # rho (s / lambda)^eta = slope lambda^-eta; 0 where s = 0

        def excess(log_lam: float) -> tuple[np.ndarray, float]:
            factor = math.exp(min(-eta * log_lam, 709.0))  # lambda^-eta, kept finite
            with np.errstate(over="ignore"):  # a product beyond float's range is clamped to the upper limit
                new = np.minimum(np.maximum(slope * factor, lower), upper)
            return new, float(fraction @ new) - vf

        active = (sensitivity > 0) & (x > 0)
        if not active.any():
            raise ValueError("every density with a sensitivity is zero: the multiplicative OC update cannot move them")
        # below a: every active density at its upper limit; above b: at its lower one
        log_s, log_x = np.log(sensitivity[active]), np.log(x[active])
        a = float((log_s + (log_x - np.log(upper[active])) / eta).min()) - 1e-9
        b = float((log_s + (log_x - np.log(np.maximum(lower[active], 1e-300))) / eta).max()) + 1e-9
        new_a, fa = excess(a)
        new_b, fb = excess(b)
        iterations = 0
        if fa <= tol:  # even the upper limits fall short of vf (or just reach it)
            new, log_lam = new_a, a
        elif fb >= -tol:  # even the lower limits exceed vf (or just reach it)
            new, log_lam = new_b, b
        else:
            new, _, log_lam, iterations = self._illinois(excess, a, fa, b, fb, tol, group["max_iterations"])
        rounded = torch.from_numpy(new).to(rho)
        new = rounded.detach().to(device="cpu", dtype=torch.float64).numpy() if rho.dtype != torch.float64 else new
        volume = float(fraction @ new)
        if abs(volume - vf) > max(tol, 1e-10):
            logger.warning(
                "OCOptimizer: volume %.12g misses vf=%.6g by %.2e this step (move limit %.3g, %d iterations)",
                volume,
                vf,
                volume - vf,
                group["move_limit"],
                iterations,
            )
        state = self.state[rho]
        state["step"] = state.get("step", 0) + 1
        state["change"] = float(np.abs(new - x).max())
        rho.copy_(rounded)
        state["volume"] = volume
        state["lagrange_multiplier"] = math.exp(log_lam)
        state["iterations"] = iterations

    @staticmethod
    def _illinois(excess, a: float, fa: float, b: float, fb: float, tol: float, max_iterations: int):
        """Root of the non-increasing ``excess`` in (a, b), fa > 0 > fb, by the Illinois variant of regula
        falsi; a bisection step whenever two steps failed to halve the bracket.
        Returns (densities, excess, log lambda, iterations)."""
        side = 0
        widths = [b - a]
        new, f, t = None, math.inf, a
        for iteration in range(1, max_iterations + 1):
            t = (a * fb - b * fa) / (fb - fa)
            if (len(widths) >= 3 and widths[-1] > 0.5 * widths[-3]) or not a < t < b:
                t = 0.5 * (a + b)
            new, f = excess(t)
            if abs(f) <= tol:
                break
            if f > 0:
                a, fa = t, f
                if side == 1:
                    fb *= 0.5
                side = 1
            else:
                b, fb = t, f
                if side == -1:
                    fa *= 0.5
                side = -1
            widths.append(b - a)
            if widths[-1] <= 1e-15 * max(1.0, abs(a), abs(b)):
                break
        return new, f, t, iteration
