"""Forms affine in their data assemble through a sparse operator built once: same values, same gradients."""

import pytest
import torch

from tmcore import ElementAssembler, Mesh, NodeAssembler, SparseMatrix
from tmcore.core import assembly
from tmcore.forms import Diffusion, LinearElasticity, Mass, Source

F64 = torch.float64


def _evaluated(monkeypatch, call):
    """The same call with the operator path switched off (every integrand evaluated)."""
    with monkeypatch.context() as patch:
        patch.setattr(assembly, "AFFINE_MAX_ENTRIES", -1)
        return call()


def _values(result):
    return result.values if isinstance(result, SparseMatrix) else result


MESHES = {
    "triangle": lambda: Mesh.gen_grid((5, 4)),
    "triangle6": lambda: Mesh.gen_grid((3, 3), order=2),
    "quad": lambda: Mesh.gen_grid((4, 3), element_type="quad"),
    "tetra": lambda: Mesh.gen_grid((2, 2, 2), element_type="tetra"),
    "hexahedron": lambda: Mesh.gen_grid((2, 2, 2), element_type="hexahedron"),
}


@pytest.mark.parametrize("name", list(MESHES))
def test_operator_path_equals_evaluating_the_integrand(monkeypatch, name):
    mesh = MESHES[name]()
    generator = torch.Generator().manual_seed(3)
    kappa_nodes = 1 + torch.rand(mesh.n_points, dtype=F64, generator=generator)
    kappa_cells = 1 + torch.rand(mesh.n_cells, dtype=F64, generator=generator)
    calls = {
        "point": lambda: Diffusion.from_mesh(mesh)(point_data={"kappa": kappa_nodes}),
        "cell": lambda: Diffusion.from_mesh(mesh)(element_data={"kappa": kappa_cells}),
        "scalar": lambda: Mass.from_mesh(mesh)(scalar_data={"rho": 2.5}),
        "batch": lambda: Diffusion.from_mesh(mesh)(point_data={"kappa": torch.stack([kappa_nodes, 2 * kappa_nodes])}),
        "load": lambda: Source.from_mesh(mesh)(point_data={"f": kappa_nodes}),
        "elasticity": lambda: LinearElasticity.from_mesh(mesh)(element_data={"E": kappa_cells}),
    }
    for label, call in calls.items():
        fast, slow = _values(call()), _values(_evaluated(monkeypatch, call))
        scale = float(slow.abs().max())
        assert float((fast - slow).abs().max()) <= 1e-13 * scale, (name, label)
    assert mesh.__dict__["_assembly_cache"]["affine"][1], "the operator path was not taken"


def test_operator_gradients_equal_autograd_through_the_integrand(monkeypatch):
    mesh = Mesh.gen_grid((4, 4))
    weights = torch.rand(mesh.n_points, dtype=F64, generator=torch.Generator().manual_seed(0))
    kappa = (1 + torch.rand(mesh.n_points, dtype=F64)).requires_grad_(True)

    def loss():
        K = Diffusion.from_mesh(mesh)(point_data={"kappa": kappa})
        return (K @ weights).pow(2).sum() + Source.from_mesh(mesh)(point_data={"f": kappa}).pow(3).sum()

    fast = torch.autograd.grad(loss(), kappa)[0]
    slow = torch.autograd.grad(_evaluated(monkeypatch, loss), kappa)[0]
    assert torch.allclose(fast, slow, rtol=1e-12, atol=1e-14)
    assert torch.autograd.gradcheck(lambda k: Diffusion.from_mesh(mesh)(point_data={"kappa": k}).values, (kappa,))


class Squared(ElementAssembler):
    def forward(self, gradu, gradv, kappa):
        return kappa**2 * (gradu @ gradv)


def test_a_form_not_affine_in_its_data_is_evaluated(monkeypatch):
    mesh = Mesh.gen_grid((3, 3))
    kappa = torch.linspace(1, 2, mesh.n_points, dtype=F64)
    K = Squared.from_mesh(mesh)(point_data={"kappa": kappa})
    reference = _evaluated(monkeypatch, lambda: Squared.from_mesh(mesh)(point_data={"kappa": kappa}))
    assert torch.equal(K.values, reference.values)
    forms = mesh.__dict__["_assembly_cache"]["affine"][1]
    assert list(forms.values()) == [None]  # probed once, found non-affine


SCALE = 1.0


class ScaledLoad(NodeAssembler):
    def forward(self, v, f):
        return SCALE * f * v


def test_module_state_the_integrand_reads_is_part_of_the_key():
    global SCALE
    mesh = Mesh.gen_grid((3, 3))
    f = torch.ones(mesh.n_points, dtype=F64)
    first = ScaledLoad.from_mesh(mesh)(point_data={"f": f})
    SCALE = 3.0
    try:
        second = ScaledLoad.from_mesh(mesh)(point_data={"f": f})
    finally:
        SCALE = 1.0
    assert torch.allclose(second, 3 * first, rtol=1e-14)


class Learned(ElementAssembler):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor(2.0, dtype=F64))

    def forward(self, gradu, gradv, kappa):
        return self.weight * kappa * (gradu @ gradv)


def test_forms_with_parameters_are_evaluated_so_their_parameters_get_gradients():
    mesh = Mesh.gen_grid((3, 3))
    form = Learned.from_mesh(mesh)
    K = form(point_data={"kappa": torch.ones(mesh.n_points, dtype=F64)})
    K.values.sum().backward()
    assert form.weight.grad is not None and float(form.weight.grad) != 0.0


# -- a global tensor that requires grad, and results of unchanged data ------------------------

MODULUS = torch.tensor(2.0, dtype=F64, requires_grad=True)


class _ScaledSource(NodeAssembler):
    def forward(self, v, f):
        return MODULUS * v * f


def test_a_global_tensor_that_requires_grad_gets_its_gradient():
    # b = E * int f v, so d(sum b)/dE = sum(b) / E; the operator path would drop the global's gradient
    mesh = Mesh.gen_grid((4, 4))
    f = torch.ones(mesh.n_points, dtype=F64)
    for _ in range(2):  # the second call must not come from a cache either
        MODULUS.grad = None
        b = _ScaledSource.from_mesh(mesh)(point_data={"f": f})
        assert b.requires_grad
        b.sum().backward()
        assert MODULUS.grad == pytest.approx(float(b.detach().sum()) / 2.0, rel=1e-14)


def _store(mesh):
    return mesh.__dict__["_assembly_cache"]["constant"][1]


@pytest.mark.parametrize("form", [Source, Mass])
def test_unchanged_data_gives_the_stored_result_and_a_change_recomputes(form):
    mesh = Mesh.gen_grid((5, 4))
    data = torch.linspace(1.0, 2.0, mesh.n_points, dtype=F64)
    key = "f" if form is Source else "rho"
    first = _values(form.from_mesh(mesh)(point_data={key: data}))
    (entry,) = _store(mesh).values()
    assert entry[1] is None  # seen once: noted, nothing copied
    second = _values(form.from_mesh(mesh)(point_data={key: data}))  # a new assembler: the mesh's store
    (entry,) = _store(mesh).values()
    assert torch.equal(entry[1], first)  # seen twice: kept
    served = _values(form.from_mesh(mesh)(point_data={key: data}))
    assert torch.equal(served, first) and served.data_ptr() not in (first.data_ptr(), second.data_ptr())
    served.mul_(7.0)  # a caller's in-place change must not reach the store
    assert torch.equal(_values(form.from_mesh(mesh)(point_data={key: data})), first)
    data.mul_(3.0)  # an in-place change of the data bumps its version: recomputed
    assert torch.allclose(_values(form.from_mesh(mesh)(point_data={key: data})), 3.0 * first, rtol=1e-14, atol=0)


def test_fresh_data_every_call_is_never_copied_and_freed_data_leaves_the_store():
    mesh = Mesh.gen_grid((4, 4))
    source = Source.from_mesh(mesh)
    alive = [torch.full((mesh.n_points,), float(step), dtype=F64) for step in range(3 * assembly.CONSTANT_RESULTS)]
    for f in alive:
        source(point_data={"f": f})
    assert len(_store(mesh)) == assembly.CONSTANT_RESULTS  # bounded
    assert all(values is None for _, values in _store(mesh).values())  # each key seen once: nothing copied
    del alive, f
    assert len(_store(mesh)) == 0  # freed data leaves the store
    f = torch.ones(mesh.n_points, dtype=F64)
    source(point_data={"f": f})
    assert len(_store(mesh)) == 1  # the freed tensors' entries are gone, f's is there
    del f
    assert len(_store(mesh)) == 0


def test_data_that_requires_grad_is_never_served_from_the_store():
    mesh = Mesh.gen_grid((3, 3))
    f = torch.ones(mesh.n_points, dtype=F64, requires_grad=True)
    with torch.no_grad():
        Source.from_mesh(mesh)(point_data={"f": f})
    b = Source.from_mesh(mesh)(point_data={"f": f})
    assert b.requires_grad
    b.sum().backward()
    assert torch.allclose(f.grad, Source.from_mesh(mesh)(point_data={"f": torch.ones_like(f.detach())}))


def test_second_derivatives_through_the_operator_path():
    # the operator's backward is itself differentiable (create_graph=True): gradgradcheck against FD
    mesh = Mesh.gen_grid((2, 2))
    kappa = (1.0 + torch.rand(mesh.n_points, dtype=F64, generator=torch.Generator().manual_seed(1))).requires_grad_()
    diffusion = Diffusion.from_mesh(mesh)

    def squared_values(k):
        return diffusion(point_data={"kappa": k}).values ** 2

    assert torch.autograd.gradgradcheck(squared_values, (kappa,))
