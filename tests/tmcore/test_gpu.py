"""The pipeline on a CUDA device agrees with the CPU (run with `make gpu-check` where there is a GPU)."""

import pytest
import torch

from tmcore import Condenser, Mesh
from tmcore.forms import Diffusion, Source

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _solve(mesh, kappa):
    K = Diffusion.from_mesh(mesh)(point_data={"kappa": kappa})
    b = Source.from_mesh(mesh)(point_data={"f": torch.ones_like(kappa)})
    cond = Condenser(mesh.boundary_mask)
    K_, b_ = cond(K, b)
    u = cond.recover(K_.solve(b_))
    return u


def test_pipeline_and_gradient_on_cuda_match_the_cpu():
    mesh = Mesh.gen_rectangle(chara_length=0.05)
    results = {}
    for device in ("cpu", "cuda"):
        moved = mesh.to(device)
        kappa = (1.0 + moved.points[:, 0]).clone().requires_grad_(True)
        u = _solve(moved, kappa)
        (u**2).sum().backward()
        assert u.device.type == device and kappa.grad.device.type == device
        results[device] = (u.detach().cpu(), kappa.grad.cpu())
    assert torch.allclose(results["cuda"][0], results["cpu"][0], rtol=1e-10, atol=1e-14)
    assert torch.allclose(results["cuda"][1], results["cpu"][1], rtol=1e-9, atol=1e-14)
