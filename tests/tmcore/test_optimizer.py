"""OCOptimizer: the update against hand-computed cases, the volume held every step, bounds and
move limits, param groups, state_dict and the optimiser protocol."""

import io
import logging

import pytest
import torch

from tmcore.topology.optimizers import OCOptimizer

F64 = torch.float64


def densities(values) -> torch.Tensor:
    return torch.tensor(values, dtype=F64, requires_grad=True)


def oc_step(rho: torch.Tensor, grad, **options) -> OCOptimizer:
    optimizer = OCOptimizer(rho, **options)
    rho.grad = torch.tensor(grad, dtype=F64)
    optimizer.step()
    return optimizer


# -- the update against hand computations ----------------------------------------------------


def test_oc_step_hand_computed_interior():
    # damping 1/2: rho_new = 0.5 sqrt(s / lambda) = 0.5 [1, 2, 3, 4] / sqrt(lambda); mean 0.5 needs
    # sqrt(lambda) = 2.5, so rho_new = [0.2, 0.4, 0.6, 0.8] and lambda = 6.25 (no bound is active)
    rho = densities([0.5] * 4)
    optimizer = oc_step(rho, [-1.0, -4.0, -9.0, -16.0], vf=0.5, move_limit=1.0)
    assert torch.allclose(rho.detach(), torch.tensor([0.2, 0.4, 0.6, 0.8], dtype=F64), rtol=0, atol=1e-12)
    state = optimizer.state[rho]
    assert state["lagrange_multiplier"] == pytest.approx(6.25, rel=1e-10)
    assert state["volume"] == pytest.approx(0.5, abs=1e-14)
    assert state["step"] == 1
    assert state["change"] == pytest.approx(0.3, abs=1e-12)
    assert 1 <= state["iterations"] <= 20


def test_oc_step_hand_computed_upper_bound_active():
    # s = [1, 1, 1, 100]: the last density wants 0.5 * 10 / sqrt(lambda) > 1 and is clamped to
    # rho_max = 1; the other three share 2 - 1 = 1, so 3 * 0.5 / sqrt(lambda) = 1: rho = 1/3 each
    rho = densities([0.5] * 4)
    optimizer = oc_step(rho, [-1.0, -1.0, -1.0, -100.0], vf=0.5, move_limit=1.0)
    assert torch.allclose(rho.detach(), torch.tensor([1 / 3, 1 / 3, 1 / 3, 1.0], dtype=F64), rtol=0, atol=1e-12)
    assert optimizer.state[rho]["lagrange_multiplier"] == pytest.approx(2.25, rel=1e-10)


def test_oc_step_hand_computed_move_limit_active():
    # the unclamped update [0.2, 0.4, 0.6, 0.8] is cut to 0.5 -+ 0.15: [0.35, 0.4, 0.6, 0.65], mean 0.5
    rho = densities([0.5] * 4)
    oc_step(rho, [-1.0, -4.0, -9.0, -16.0], vf=0.5, move_limit=0.15)
    assert torch.allclose(rho.detach(), torch.tensor([0.35, 0.4, 0.6, 0.65], dtype=F64), rtol=0, atol=1e-12)


def test_oc_step_hand_computed_weighted_volume():
    # weights w = [1, 3]: s / w = [4, 1] -> rho = 0.5 [2, 1] / sqrt(lambda); (rho_1 + 3 rho_2) / 4 = 0.5
    # gives sqrt(lambda) = 1.25: rho = [0.8, 0.4] (plain mean 0.6, weighted volume 0.5)
    rho = densities([0.5, 0.5])
    weights = torch.tensor([1.0, 3.0], dtype=F64)
    optimizer = oc_step(rho, [-4.0, -3.0], vf=0.5, move_limit=1.0, volume_weights=weights)
    assert torch.allclose(rho.detach(), torch.tensor([0.8, 0.4], dtype=F64), rtol=0, atol=1e-12)
    assert optimizer.state[rho]["volume"] == pytest.approx(0.5, abs=1e-14)
    assert OCOptimizer.volume(rho, weights) == pytest.approx(0.5, abs=1e-14)
    assert OCOptimizer.volume(rho) == pytest.approx(0.6, abs=1e-12)


def test_oc_damping_one_is_linear_in_the_sensitivity():
    # damping 1: rho_new = 0.5 s / lambda = [0.25, 0.75] for s = [1, 3] and lambda = 2
    rho = densities([0.5, 0.5])
    optimizer = oc_step(rho, [-1.0, -3.0], vf=0.5, move_limit=1.0, damping=1.0)
    assert torch.allclose(rho.detach(), torch.tensor([0.25, 0.75], dtype=F64), rtol=0, atol=1e-12)
    assert optimizer.state[rho]["lagrange_multiplier"] == pytest.approx(2.0, rel=1e-10)


def test_oc_positive_gradient_entries_go_to_the_lower_limit():
    rho = densities([0.5, 0.5, 0.5])
    oc_step(rho, [0.3, -1.0, -1.0], vf=0.5, move_limit=0.2)
    assert float(rho.detach()[0]) == pytest.approx(0.3, abs=1e-15)
    assert float(rho.detach().mean()) == pytest.approx(0.5, abs=1e-12)


# -- the volume, bounds and move limit over many steps -----------------------------------------


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("move_limit", [0.05, 0.2, 1.0])
def test_oc_holds_the_volume_for_twenty_steps(weighted, move_limit):
    generator = torch.Generator().manual_seed(7)
    m = 500
    weights = (0.2 + torch.rand(m, generator=generator, dtype=F64)) if weighted else None
    rho = torch.full((m,), 0.3, dtype=F64, requires_grad=True)
    optimizer = OCOptimizer(rho, vf=0.3, move_limit=move_limit, volume_weights=weights)
    for _ in range(20):
        previous = rho.detach().clone()
        # a compliance-like sensitivity: strongly varying, a few exact zeros
        rho.grad = -(torch.rand(m, generator=generator, dtype=F64) ** 6) * (
            torch.rand(m, generator=generator, dtype=F64) > 0.05
        )
        optimizer.step()
        assert abs(OCOptimizer.volume(rho, weights) - 0.3) <= 1e-10
        assert abs(optimizer.state[rho]["volume"] - 0.3) <= 1e-10
        assert float(rho.detach().min()) >= 1e-3 and float(rho.detach().max()) <= 1.0
        assert float((rho.detach() - previous).abs().max()) <= move_limit + 1e-15
    assert optimizer.state[rho]["step"] == 20


def test_oc_compliance_of_a_parallel_bar_model_decreases():
    # J(rho) = sum c_e / rho_e (springs in series): an exact sensitivity -c / rho^2
    c = torch.tensor([1.0, 2.0, 4.0, 8.0, 0.5], dtype=F64)
    rho = torch.full((5,), 0.4, dtype=F64, requires_grad=True)
    optimizer = OCOptimizer(rho, vf=0.4, move_limit=0.1)
    history = []
    for _ in range(30):
        optimizer.zero_grad()
        compliance = (c / rho).sum()
        compliance.backward()
        optimizer.step()
        history.append(compliance.item())
    assert all(b <= a + 1e-12 for a, b in zip(history, history[1:]))
    # the optimum of sum c / rho under sum rho = 2 is rho ~ sqrt(c): the run gets there
    optimum = torch.sqrt(c) * 2.0 / torch.sqrt(c).sum()
    assert torch.allclose(rho.detach(), optimum, atol=1e-6)


def test_oc_start_off_target_moves_at_the_limit_and_warns(caplog):
    rho = torch.full((10,), 0.2, dtype=F64, requires_grad=True)
    optimizer = OCOptimizer(rho, vf=0.5, move_limit=0.1)
    rho.grad = -torch.ones(10, dtype=F64)
    with caplog.at_level(logging.WARNING, logger="tmcore.topology.optimizers"):
        optimizer.step()
    assert torch.allclose(rho.detach(), torch.full((10,), 0.3, dtype=F64))
    assert "misses vf=0.5" in caplog.text
    for _ in range(3):
        rho.grad = -torch.ones(10, dtype=F64)
        optimizer.step()
    assert abs(float(rho.detach().mean()) - 0.5) <= 1e-12


# -- the optimiser protocol ------------------------------------------------------------------


def test_oc_is_a_torch_optimizer_with_zero_grad_and_closure():
    rho = torch.full((4,), 0.5, dtype=F64, requires_grad=True)
    optimizer = OCOptimizer(rho, vf=0.5, move_limit=1.0)
    assert isinstance(optimizer, torch.optim.Optimizer)
    weights = torch.tensor([1.0, 4.0, 9.0, 16.0], dtype=F64)

    def closure():
        optimizer.zero_grad()
        loss = (weights / rho).sum()
        loss.backward()
        return loss

    loss = optimizer.step(closure)
    assert loss.item() == pytest.approx(60.0)
    optimizer.zero_grad()
    assert rho.grad is None
    # s = w / rho^2 = 4 w -> rho ~ sqrt(w): [1, 2, 3, 4] / 5 with mean 0.5
    assert torch.allclose(rho.detach(), torch.tensor([0.2, 0.4, 0.6, 0.8], dtype=F64), atol=1e-12)


def test_oc_param_groups_hold_their_own_volume():
    a = torch.full((6,), 0.3, dtype=F64, requires_grad=True)
    b = torch.full((4,), 0.6, dtype=F64, requires_grad=True)
    optimizer = OCOptimizer([{"params": [a]}, {"params": [b], "vf": 0.6, "move_limit": 0.05}], vf=0.3)
    assert [g["vf"] for g in optimizer.param_groups] == [0.3, 0.6]
    assert optimizer.param_groups[1]["move_limit"] == 0.05 and optimizer.param_groups[0]["move_limit"] == 0.2
    generator = torch.Generator().manual_seed(1)
    for _ in range(5):
        a.grad = -torch.rand(6, generator=generator, dtype=F64)
        b.grad = -torch.rand(4, generator=generator, dtype=F64)
        optimizer.step()
        assert abs(float(a.detach().mean()) - 0.3) <= 1e-10
        assert abs(float(b.detach().mean()) - 0.6) <= 1e-10


def test_oc_add_param_group_is_checked_and_rolled_back():
    optimizer = OCOptimizer(torch.full((3,), 0.4, dtype=F64, requires_grad=True), vf=0.4)
    with pytest.raises(ValueError, match=r"vf must be a volume fraction in \(0, 1\), got 1\.5"):
        optimizer.add_param_group({"params": [torch.full((3,), 0.4, dtype=F64, requires_grad=True)], "vf": 1.5})
    assert len(optimizer.param_groups) == 1
    optimizer.add_param_group({"params": [torch.full((2,), 0.2, dtype=F64, requires_grad=True)], "vf": 0.2})
    assert len(optimizer.param_groups) == 2


def run_steps(optimizer: OCOptimizer, rho: torch.Tensor, grads) -> None:
    for grad in grads:
        rho.grad = grad.clone()
        optimizer.step()


def test_oc_state_dict_round_trips():
    generator = torch.Generator().manual_seed(3)
    grads = [-torch.rand(50, generator=generator, dtype=F64) for _ in range(6)]
    weights = 1.0 + torch.rand(50, generator=generator, dtype=F64)
    rho = torch.full((50,), 0.4, dtype=F64, requires_grad=True)
    optimizer = OCOptimizer(rho, vf=0.4, move_limit=0.1, damping=0.6, volume_weights=weights)
    run_steps(optimizer, rho, grads[:3])

    buffer = io.BytesIO()
    torch.save({"rho": rho.detach(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    copy = saved["rho"].clone().requires_grad_(True)
    restored = OCOptimizer(copy, vf=0.4)  # options come back from the state dict
    restored.load_state_dict(saved["optimizer"])
    group, original = restored.param_groups[0], optimizer.param_groups[0]
    for key in ("vf", "move_limit", "damping", "rho_min", "rho_max", "volume_tol", "max_iterations"):
        assert group[key] == original[key]
    assert torch.equal(group["volume_weights"], weights)
    assert restored.state[copy] == optimizer.state[rho]

    run_steps(optimizer, rho, grads[3:])
    run_steps(restored, copy, grads[3:])
    assert torch.equal(copy.detach(), rho.detach())
    assert restored.state[copy]["step"] == 6


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, message",
    [
        ({"move_limit": 0.0}, r"move_limit must lie in \(0, 1\]"),
        ({"damping": 1.5}, r"damping must lie in \(0, 1\]"),
        ({"volume_tol": 0.0}, "volume_tol must be a positive number"),
        ({"max_iterations": 0}, "max_iterations must be an int >= 1"),
        ({"volume_weights": torch.ones(3, dtype=F64)}, r"volume_weights must have the shape of the densities \(4,\)"),
        ({"volume_weights": -torch.ones(4, dtype=F64)}, "volume_weights must be finite and positive"),
        ({"volume_weights": [1.0, 1.0, 1.0, 1.0]}, "volume_weights must be None or a floating-point tensor"),
        ({"vf": float("nan")}, r"vf must be a volume fraction in \(0, 1\)"),
    ],
)
def test_oc_rejects_bad_options(options, message):
    with pytest.raises((ValueError, TypeError), match=message):
        OCOptimizer(torch.full((4,), 0.4, dtype=F64, requires_grad=True), **{"vf": 0.4, **options})


def test_oc_rejects_integer_densities():
    with pytest.raises(TypeError, match="densities must be a floating-point tensor, got torch.int64"):
        OCOptimizer(torch.zeros(4, dtype=torch.long), vf=0.4)
