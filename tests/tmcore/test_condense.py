"""Dirichlet condensation: values, patterns compared by content, differentiability in the data."""

import pytest
import torch

from tmcore import Condenser, Mesh
from tmcore.forms import Diffusion, Source


@pytest.fixture(scope="module")
def mesh():
    return Mesh.gen_rectangle(chara_length=0.15)


def test_condensed_system_matches_dense_elimination(mesh):
    K = Diffusion.from_mesh(mesh)(point_data={"kappa": 1.0 + mesh.points[:, 0]})
    b = Source.from_mesh(mesh)(point_data={"f": torch.ones(mesh.n_points)})
    mask = mesh.boundary_mask
    g_full = torch.sin(3 * mesh.points[:, 0]) + mesh.points[:, 1]
    cond = Condenser(mask, dirichlet_value=g_full)
    K_, b_ = cond(K, b)
    dense = K.to_dense()
    free = ~mask
    assert torch.allclose(K_.to_dense(), dense[free][:, free])
    assert torch.allclose(b_, b[free] - dense[free][:, mask] @ g_full[mask])
    u = cond.recover(K_.solve(b_))
    assert torch.equal(u[mask], g_full[mask])
    residual = (dense @ u - b)[free]
    assert residual.abs().max() < 1e-12


def test_dirichlet_value_forms_agree(mesh):
    mask = mesh.boundary_mask
    values = torch.linspace(0, 1, int(mask.sum()))
    full = torch.zeros(mesh.n_points)
    full[mask] = values
    a = Condenser(mask, dirichlet_value=values).dirichlet_value
    b = Condenser(mask, dirichlet_value=full).dirichlet_value
    assert torch.equal(a, b)
    scalar = Condenser(mask, dirichlet_value=2.0).dirichlet_value
    assert torch.equal(scalar[mask], torch.full((int(mask.sum()),), 2.0)) and scalar[~mask].abs().sum() == 0


def test_a_matrix_from_a_fresh_assembler_is_accepted(mesh):
    """Patterns compare by content: a new assembler on the same mesh (or a rebuilt mesh) works."""
    cond = Condenser(mesh.boundary_mask)
    b = torch.ones(mesh.n_points)
    K1_, _ = cond(Diffusion.from_mesh(mesh)(scalar_data={"kappa": 1.0}), b)
    twin = Mesh(mesh.points.clone(), {"triangle": mesh.elements.clone()})
    K2_, _ = cond(Diffusion.from_mesh(twin)(scalar_data={"kappa": 1.0}), b)
    assert K1_.pattern is K2_.pattern  # the split was reused, not recomputed
    assert torch.equal(K1_.values, K2_.values)


def test_a_fresh_condenser_with_the_same_mask_reuses_the_maps_and_the_solver_analysis(mesh):
    """A loop that builds a Condenser per step (new Dirichlet values) must not redo the
    split nor, through a new K_ff pattern, the solver's symbolic analysis."""
    from tmcore.core.linalg import solvers

    K = Diffusion.from_mesh(mesh)(scalar_data={"kappa": 1.0})
    b = torch.zeros(mesh.n_points)
    first, _ = Condenser(mesh.boundary_mask, dirichlet_value=1.0)(K, b)
    first.solve(torch.ones(first.shape[-1]), backend="splu")
    second, b2 = Condenser(mesh.boundary_mask, dirichlet_value=2.0)(K, b)
    assert second.pattern is first.pattern
    other_mask = mesh.boundary_mask.clone()
    other_mask[torch.nonzero(~other_mask)[0]] = True
    third, _ = Condenser(other_mask)(K, b)
    assert third.pattern.shape[0] == first.pattern.shape[0] - 1  # another mask, its own split
    if solvers.cholmod_available():
        solvers.stats.reset()
        Condenser(mesh.boundary_mask)(K, b)[0].solve(b2, backend="cholmod")
        Condenser(mesh.boundary_mask)(K, b)[0].solve(b2, backend="cholmod")
        assert solvers.stats.analyses <= 1 and solvers.stats.reuses >= 1


def test_gradient_reaches_dirichlet_values_through_lift_and_recover(mesh):
    mask = mesh.boundary_mask
    g = torch.full((int(mask.sum()),), 0.5, requires_grad=True)
    cond = Condenser(mask, dirichlet_value=g)
    K_, b_ = cond(Diffusion.from_mesh(mesh)(scalar_data={"kappa": 1.0}), torch.zeros(mesh.n_points))
    u = cond.recover(K_.solve(b_))
    # with f = 0 and constant g the solution is constant g: du/dg sums to one per node
    assert torch.allclose(u, torch.full_like(u, 0.5))
    u.sum().backward()
    assert abs(float(g.grad.sum()) - mesh.n_points) < 1e-9


def test_batched_right_hand_sides_and_dirichlet_data(mesh):
    mask = mesh.boundary_mask
    g = torch.stack([torch.zeros(int(mask.sum())), torch.ones(int(mask.sum()))])
    cond = Condenser(mask, dirichlet_value=g)
    K = Diffusion.from_mesh(mesh)(scalar_data={"kappa": 1.0})
    b = torch.zeros(2, mesh.n_points)
    K_, b_ = cond(K, b)
    u = cond.recover(K_.solve(b_[0]))
    assert b_.shape == (2, cond.n_free) and u.shape == (2, mesh.n_points)
