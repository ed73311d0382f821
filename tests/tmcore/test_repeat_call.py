"""A design loop's repeated assembler calls (new data of the same structure, requiring grad) take a
short path through the last call's affine operator: the same values and gradients as a fresh
assembler, and every change that could alter the result leaves the short path."""

import pytest
import torch

from tmcore import ElementAssembler, Mesh, NodeAssembler, SparseMatrix
from tmcore.core.errors import AssemblyError
from tmcore.forms import Diffusion, Source

F64 = torch.float64


class Scaled(ElementAssembler):
    """kappa * scale * grad u . grad v, scale a plain setting of the form."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale

    def forward(self, gradu, gradv, kappa):
        return self.scale * kappa * (gradu @ gradv)


FACTOR = torch.tensor(1.0, dtype=F64)


class GlobalScaled(NodeAssembler):
    def forward(self, v, f):
        return FACTOR * v * f


def _values(result):
    return result.values if isinstance(result, SparseMatrix) else result


def _fresh(form_type, mesh, **data):
    """The same call on a fresh assembler, so the full path (no repeat memo of its own)."""
    return form_type.from_mesh(mesh)(**data)


def _short_path_taken(assembler, monkeypatch):
    """Whether each call of ``assembler`` (not of other instances) returned through the repeat memo."""
    taken = []
    original = type(assembler)._repeat_call

    def counting(self, *args):
        result = original(self, *args)
        if self is assembler:
            taken.append(result is not None)
        return result

    monkeypatch.setattr(type(assembler), "_repeat_call", counting)
    return taken


def test_repeated_calls_match_a_fresh_assembler_in_values_and_gradients(monkeypatch):
    mesh = Mesh.gen_grid((6, 5))
    form = Diffusion.from_mesh(mesh)
    taken = _short_path_taken(form, monkeypatch)
    theta = torch.zeros(mesh.n_points, dtype=F64, requires_grad=True)
    for step in range(3):
        kappa = 1.0 + torch.tanh(theta + 0.1 * step * torch.arange(mesh.n_points, dtype=F64) / mesh.n_points)
        K = form(point_data={"kappa": kappa})
        (gradient,) = torch.autograd.grad((K.values**2).sum(), theta, retain_graph=True)
        expected = _fresh(Diffusion, mesh, point_data={"kappa": kappa})
        (expected_gradient,) = torch.autograd.grad((expected.values**2).sum(), theta)
        assert torch.equal(K.values, expected.values)
        assert torch.equal(gradient, expected_gradient)
    assert taken == [False, True, True]


def test_a_batch_of_coefficients_repeats_too(monkeypatch):
    mesh = Mesh.gen_grid((4, 4))
    form = Diffusion.from_mesh(mesh)
    taken = _short_path_taken(form, monkeypatch)
    for seed in range(2):
        kappa = torch.rand(3, mesh.n_points, dtype=F64, generator=torch.Generator().manual_seed(seed))
        kappa.requires_grad_(True)
        K = form(point_data={"kappa": kappa})
        assert torch.equal(K.values, _fresh(Diffusion, mesh, point_data={"kappa": kappa}).values)
    assert taken == [False, True]


def _scale_setting(form, mesh):
    form.scale = 3.0


def _scale_global(form, mesh):
    with torch.no_grad():
        FACTOR.mul_(3.0)  # in place: a new version of the same tensor


def _stretch_points(form, mesh):
    with torch.no_grad():
        mesh.points[:, 0].mul_(3.0)  # every cell's area x3


@pytest.mark.parametrize(
    "form_type, key, change",
    [(Scaled, "kappa", _scale_setting), (GlobalScaled, "f", _scale_global), (Source, "f", _stretch_points)],
    ids=["the form's setting", "module state the integrand reads", "the mesh's points"],
)
def test_a_change_that_alters_the_result_leaves_the_short_path(form_type, key, change):
    # each change triples the result (Scaled: kappa grad u . grad v scaled; Source: f v over areas x3)
    mesh = Mesh.gen_grid((4, 3))
    form = form_type.from_mesh(mesh)
    data = torch.ones(mesh.n_points, dtype=F64, requires_grad=True)
    first = _values(form(point_data={key: data}))
    change(form, mesh)
    try:
        second = _values(form(point_data={key: data}))
    finally:
        with torch.no_grad():
            FACTOR.fill_(1.0)
    assert torch.allclose(second, 3 * first, rtol=1e-13)


def test_other_data_structures_leave_the_short_path(monkeypatch):
    mesh = Mesh.gen_grid((4, 3))
    form = Diffusion.from_mesh(mesh)
    taken = _short_path_taken(form, monkeypatch)
    kappa = torch.ones(mesh.n_points, dtype=F64, requires_grad=True)
    form(point_data={"kappa": kappa})
    cells = torch.full((mesh.n_cells,), 2.0, dtype=F64, requires_grad=True)
    per_cell = form(element_data={"kappa": cells}).values  # another source dict
    assert torch.equal(per_cell, _fresh(Diffusion, mesh, element_data={"kappa": cells}).values)
    single = form(point_data={"kappa": kappa.float()})  # another dtype
    assert single.values.dtype == F64
    form(point_data={"kappa": kappa.detach()})  # no gradient wanted: the unchanged-data store's case
    with torch.no_grad():
        form(point_data={"kappa": kappa})
    assert taken == [False, False, False, False, False]


def test_non_finite_data_is_refused_on_the_short_path():
    mesh = Mesh.gen_grid((3, 3))
    form = Diffusion.from_mesh(mesh)
    kappa = torch.ones(mesh.n_points, dtype=F64, requires_grad=True)
    form(point_data={"kappa": kappa})
    bad = kappa.detach().clone()
    bad[4] = float("nan")
    with pytest.raises(AssemblyError, match=r"point_data\['kappa'\] contains NaN or inf"):
        form(point_data={"kappa": bad.requires_grad_(True)})
