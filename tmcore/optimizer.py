"""The Optimality Criteria (OC) update for density-based topology optimisation.

For a compliance J(rho) with sensitivity dJ/drho <= 0 and the volume constraint
sum(w rho) / sum(w) = vf, the OC fixed point multiplies each density by
B_e = (-dJ/drho_e / (lambda w_e))^damping, clamps the change to ``move_limit`` and the
bounds [rho_min, rho_max], and finds the Lagrange multiplier lambda by bisection so the
constraint holds (to ``volume_tol``) after every step.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor

__all__ = ["OCOptimizer"]

logger = logging.getLogger(__name__)


class OCOptimizer(torch.optim.Optimizer):
    """Optimality Criteria optimiser for densities with a volume constraint.

    Args:
        params: the density tensor (m,) (or an iterable of tensors / param groups).
        vf: target volume fraction in (0, 1).
        move_limit: largest change of a density in one step.
        damping: exponent of the OC multiplier (0.5 is the classic choice).
        rho_min, rho_max: bounds of the densities.
        volume_weights: (m,) cell measures for a weighted volume (e.g.
            ``mesh.cell_measures()``); None is the plain mean, which is what the
            chapter's "volume held at 0.4" refers to and equals the weighted volume on a
            uniform mesh.
        volume_tol: bisection stops when |volume - vf| is below it.

    ``step()`` reads ``rho.grad`` (the compliance sensitivity, which must be <= 0 where
    it matters) and updates rho in place.
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
    ):
        if isinstance(params, Tensor):
            params = [params]
        if not (isinstance(vf, (int, float)) and 0.0 < vf < 1.0):
            raise ValueError(f"vf must be a volume fraction in (0, 1), got {vf!r}")
        if not 0.0 < move_limit <= 1.0:
            raise ValueError(f"move_limit must lie in (0, 1], got {move_limit!r}")
        if not 0.0 < damping <= 1.0:
            raise ValueError(f"damping must lie in (0, 1], got {damping!r}")
        if not 0.0 <= rho_min < vf < rho_max:
            raise ValueError(f"need 0 <= rho_min < vf < rho_max, got rho_min={rho_min}, vf={vf}, rho_max={rho_max}")
        defaults = dict(vf=vf, move_limit=move_limit, damping=damping, rho_min=rho_min, rho_max=rho_max, volume_weights=volume_weights, volume_tol=volume_tol)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for rho in group["params"]:
                low, high = float(rho.detach().min()), float(rho.detach().max())
                if low < rho_min or high > rho_max:
                    raise ValueError(f"densities must lie in [rho_min, rho_max] = [{rho_min}, {rho_max}], got [{low:.3g}, {high:.3g}]")
                weights = group["volume_weights"]
                if weights is not None and weights.shape != rho.shape:
                    raise ValueError(f"volume_weights must have the shape of the densities {tuple(rho.shape)}, got {tuple(weights.shape)}")

    @torch.no_grad()
    def step(self, closure=None):
        """One OC update of every density tensor; returns the closure's loss if one is given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for rho in group["params"]:
                if rho.grad is None:
                    raise RuntimeError("OCOptimizer.step() found no gradient on the densities: call loss.backward() first")
                self._update(rho, rho.grad, group)
        return loss

    @staticmethod
    def _volume(rho: Tensor, weights: Tensor | None) -> Tensor:
        return rho.mean() if weights is None else (weights * rho).sum() / weights.sum()

    def _update(self, rho: Tensor, grad: Tensor, group: dict) -> None:
        if not torch.isfinite(grad).all():
            raise ValueError("the density gradient contains NaN or inf")
        if bool((grad >= 0).all()) and bool((grad > 0).any()):
            raise ValueError(
                "the density gradient is positive everywhere: OC minimises a compliance whose sensitivity is "
                "<= 0 (more material, lower compliance). Did you pass the negated objective, or a quantity to maximise?"
            )
        weights = group["volume_weights"]
        w = torch.ones_like(rho) if weights is None else weights.to(rho)
        sensitivity = (-grad).clamp_min(0.0) / w
        if not bool((sensitivity > 0).any()):
            raise ValueError(
                "the density gradient is zero everywhere: OC has no sensitivity to redistribute material by "
                "(does the loss depend on the densities, and did backward() reach them?)"
            )
        lower = (rho - group["move_limit"]).clamp_min(group["rho_min"])
        upper = (rho + group["move_limit"]).clamp_max(group["rho_max"])

        def candidate(lam: float) -> Tensor:
            return torch.minimum(torch.maximum(rho * (sensitivity / lam) ** group["damping"], lower), upper)

        vf = group["vf"]
        # volume(lam) decreases in lam: bracket, then bisect in log space
        lo, hi = 1e-30, 1e30
        positive = sensitivity[sensitivity > 0]
        if positive.numel():
            lo, hi = float(positive.min()) * 1e-12, float(positive.max()) * 1e12
        new = candidate(math.sqrt(lo * hi))
        for _ in range(400):
            mid = math.sqrt(lo * hi)
            new = candidate(mid)
            excess = float(self._volume(new, weights)) - vf
            if abs(excess) <= group["volume_tol"] or hi / lo < 1 + 1e-15:
                break
            if excess > 0:
                lo = mid
            else:
                hi = mid
        volume = float(self._volume(new, weights))
        if abs(volume - vf) > max(group["volume_tol"], 1e-10):
            logger.warning(
                "OCOptimizer: volume %.6g cannot reach vf=%.6g within the move limit %.3g this step",
                volume, vf, group["move_limit"],
            )
        rho.copy_(new)
        self.state[rho]["volume"] = volume
        self.state[rho]["lagrange_multiplier"] = mid
