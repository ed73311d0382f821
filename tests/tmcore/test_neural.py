"""Networks coupled to the pipeline: the three neural examples run as written (fewer steps), their
gradients w.r.t. the weights pass finite differences, and training makes progress."""

import pytest
import torch
from torch import nn

from tmcore.methods.neural import cell_centroids, train, weights_function

from .docpages import run_example as _run


def test_mlp_coefficient_recovers_the_identification_field(monkeypatch):
    result = _run("neural_coefficient.py", monkeypatch, 200)
    assert result["mesh"].n_points == 790
    assert result["check"].median_digits >= 9.0, result["check"].table()
    losses = result["losses"]
    assert losses[0] == pytest.approx(9.794e-3, rel=1e-3)  # kappa = 1 at the start, like the chapter's theta = 0
    assert losses[-1] < 0.05 * losses[0]
    assert result["kappa_mean_error"] < 0.5 * result["kappa_start_error"]


def test_network_dirichlet_values_get_gradients_and_learn(monkeypatch):
    result = _run("neural_dirichlet.py", monkeypatch, 120)
    check = result["check"]
    assert check.median_digits >= 9.0, check.table()
    assert check.indices.numel() == 8 and float(check.autograd.abs().max()) > 0  # gradients reach the weights
    assert result["losses"][-1] < 0.01 * result["losses"][0]
    assert result["g_max_error"] < 0.5 * float(result["g_true"].abs().max())


def test_network_element_modifiers_locate_the_damage(monkeypatch):
    result = _run("neural_element.py", monkeypatch, 150)
    # sigmoid and tanh layers make the loss strongly curved in the first layer's weights: the
    # five-point stencil keeps about 9 digits there (the solve itself gives 10-11, test_batch.py)
    assert result["check"].median_digits >= 8.5, result["check"].table()
    assert result["losses"][-1] < 0.1 * result["losses"][0]
    assert float(result["alpha_error"].mean()) < 0.9 * result["alpha_start_error"]
    weakest = result["centroids"][result["weakest"]]
    assert float((weakest - torch.tensor([0.65, 0.4], dtype=torch.float64)).norm()) < 0.1
    assert float(result["alpha"][result["weakest"]]) < 0.7  # the damage shows (truth 0.4 at its centre)


def test_weights_function_evaluates_the_module_and_its_gradient():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 5), nn.Tanh(), nn.Linear(5, 1)).double()
    x = torch.rand(7, 2, dtype=torch.float64)
    f, w0 = weights_function(net, lambda model: (model(x) ** 2).sum())
    assert w0.numel() == sum(p.numel() for p in net.parameters())
    w = w0.clone().requires_grad_(True)
    value = f(w)
    value.backward()
    loss = (net(x) ** 2).sum()
    loss.backward()
    assert torch.allclose(value, loss)
    assert torch.allclose(w.grad, torch.cat([p.grad.reshape(-1) for p in net.parameters()]))
    with pytest.raises(ValueError, match="weight vector"):
        f(w0[:-1])
    with pytest.raises(ValueError, match="no parameters"):
        weights_function(nn.Tanh(), lambda model: model(x).sum())


def test_train_runs_the_loop_and_checks_its_arguments():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.tensor([3.0, -2.0], dtype=torch.float64))
    optimizer = torch.optim.SGD([w], lr=0.25)
    history = train(lambda: (w**2).sum(), optimizer, 4)
    assert history.losses == pytest.approx([13.0, 13.0 / 4, 13.0 / 16, 13.0 / 64])  # w halves each step
    assert len(history.seconds) == 4 and min(history.seconds) >= 0
    with pytest.raises(ValueError, match="steps"):
        train(lambda: (w**2).sum(), optimizer, 0)
    with pytest.raises(TypeError, match="optimizer"):
        train(lambda: (w**2).sum(), "adam", 3)
    with pytest.raises(TypeError, match="loss"):
        train(1.0, optimizer, 3)


def test_cell_centroids():
    points = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0]])
    assert torch.equal(cell_centroids(points, torch.tensor([[0, 1, 2]])), torch.tensor([[1.0, 1.0]]))


def test_the_neural_guide_runs_and_prints_what_it_shows():
    """docs/neural.md: its python blocks run in order and print the text blocks that follow them."""
    from .docpages import run_page

    run_page("neural.md", minimum_blocks=2)
