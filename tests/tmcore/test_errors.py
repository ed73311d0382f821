"""Rejected inputs: every bad argument raises a clear exception that names it.

Each case checks the exception type and a distinctive part of the message. Cases
marked ``xfail(strict=True)`` are library defects found while writing this file: the
test states the behaviour we want, so it starts passing (and the strict marker fails)
once the defect is fixed; then drop the marker.
"""

import math

import pytest
import torch

from tmcore import (
    AssemblyError,
    Condenser,
    ElementAssembler,
    FacetAssembler,
    Functional,
    Mesh,
    MeshError,
    NodeAssembler,
    SingularMatrixError,
    SolverError,
    SparseMatrix,
)
from tmcore.forms import Diffusion, Laplace, Source
from tmcore.topology.optimizers import OCOptimizer

F64 = torch.float64
NAN, INF = float("nan"), float("inf")

# The unit square as two counter-clockwise triangles.
SQUARE_POINTS = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
SQUARE_CELLS = [[0, 1, 3], [0, 3, 2]]


def square(points=SQUARE_POINTS, cells=SQUARE_CELLS, **kwargs) -> Mesh:
    return Mesh(torch.tensor(points, dtype=F64), {"triangle": torch.tensor(cells)}, **kwargs)


@pytest.fixture(scope="module")
def mesh() -> Mesh:
    return Mesh.gen_grid((4, 4))  # 25 nodes, 32 triangles, 16 on the boundary


# -- integrands used below -----------------------------------------------------------------


class VectorBilinear(ElementAssembler):
    def forward(self, gradu, gradv):
        return gradu * gradv  # (dim,) per basis pair: not a scalar


class VectorLinear(NodeAssembler):
    def forward(self, v, gradv):
        return v * gradv  # (dim,) per basis function: not a scalar


class StarArgs(ElementAssembler):
    def forward(self, *args):
        return args[0] @ args[1]


class StarKwargs(NodeAssembler):
    def forward(self, v, **data):
        return v


def ones(n: int, dtype=F64) -> torch.Tensor:
    return torch.ones(n, dtype=dtype)


# -- Mesh ------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_mesh_rejects_non_finite_points(bad):
    points = [row[:] for row in SQUARE_POINTS]
    points[2][0] = bad
    with pytest.raises(MeshError, match=r"points must be finite; 1 rows hold NaN or inf \(first: \[2\]\)"):
        square(points)


@pytest.mark.parametrize(
    "cells, match",
    [
        ([[0, 1, 4]], r"cells\['triangle'\] indices must be < n_points = 4, got max 4"),
        ([[0, 1, -1]], r"cells\['triangle'\] holds negative node indices \(min -1\)"),
    ],
    ids=["out-of-range", "negative"],
)
def test_mesh_rejects_bad_indices(cells, match):
    with pytest.raises(MeshError, match=match):
        square(cells=cells)


@pytest.mark.parametrize(
    "cells",
    [[[0, 1, 3], [0, 3, 2], [0, 1, 3]], [[0, 1, 3], [0, 3, 2], [1, 3, 0]]],
    ids=["same-order", "rotated"],
)
def test_mesh_rejects_duplicate_cells(cells):
    with pytest.raises(MeshError, match=r"2 duplicate cells \(same vertices\), e\.g\. cells \[0, 2\]"):
        square(cells=cells)


def test_mesh_rejects_zero_area_triangle():
    with pytest.raises(MeshError, match=r"1 degenerate cells \(zero measure\)"):
        square([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]], [[0, 1, 2]])


def test_mesh_rejects_clockwise_triangle():
    with pytest.raises(MeshError, match=r"1 inverted cells \(negative orientation.*orient=True"):
        square(cells=[[0, 3, 1]])


def test_mesh_rejects_triangles_with_3d_points():
    with pytest.raises(MeshError, match=r"'triangle' are 2-D but points are 3-D \(mixed dimensions"):
        square([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [[0, 1, 2]])


def test_mesh_rejects_two_cell_types():
    cells = {"triangle": torch.tensor([[0, 1, 3]]), "quad": torch.tensor([[0, 1, 3, 2]])}
    with pytest.raises(MeshError, match=r"a Mesh holds one cell type; got \['quad', 'triangle'\]"):
        Mesh(torch.tensor(SQUARE_POINTS, dtype=F64), cells)


def test_mesh_rejects_empty_mesh():
    with pytest.raises(MeshError, match="points is empty"):
        Mesh(torch.zeros(0, 2, dtype=F64), {"triangle": torch.zeros(0, 3, dtype=torch.long)})


def test_mesh_rejects_points_without_cells():
    with pytest.raises(MeshError, match=r"cells\['triangle'\] is empty"):
        Mesh(torch.tensor(SQUARE_POINTS, dtype=F64), {"triangle": torch.zeros(0, 3, dtype=torch.long)})


def test_mesh_rejects_unsupported_cell_type():
    points = torch.tensor([[0.0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [0.5, 0.5, 1]], dtype=F64)
    with pytest.raises(MeshError, match=r"unsupported cell type 'pyramid'; supported cell types: .*tetra"):
        Mesh(points, {"pyramid": torch.tensor([[0, 1, 2, 3, 4]])})


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bool])
def test_mesh_rejects_non_integer_connectivity(dtype):
    cells = {"triangle": torch.tensor(SQUARE_CELLS).to(dtype)}
    with pytest.raises(MeshError, match=rf"cells\['triangle'\] must hold integer node indices, got dtype {dtype}"):
        Mesh(torch.tensor(SQUARE_POINTS, dtype=F64), cells)


@pytest.mark.parametrize("kind, length", [("point_data", 3), ("cell_data", 3)])
def test_mesh_rejects_data_of_wrong_length(kind, length):
    expected = 4 if kind == "point_data" else 2
    with pytest.raises(MeshError, match=rf"{kind}\['k'\] must have leading length {expected}, got shape \({length},\)"):
        square(**{kind: {"k": torch.ones(length)}})


# -- assemblers ------------------------------------------------------------------------------


def test_unknown_integrand_argument_is_named(mesh):
    with pytest.raises(AssemblyError, match=r"Diffusion\.forward asks for 'kappa'.*given: \['kapa'\]"):
        Diffusion.from_mesh(mesh)(point_data={"kapa": ones(mesh.n_points)})


def test_unknown_integrand_argument_without_any_data(mesh):
    with pytest.raises(
        AssemblyError, match=r"asks for 'f', which is neither a reserved argument \(gradv, v, x\).*given: none"
    ):
        Source.from_mesh(mesh)()


@pytest.mark.parametrize("kind, delta", [("point_data", -1), ("point_data", 1), ("element_data", 1)])
def test_data_of_wrong_length(mesh, kind, delta):
    length = (mesh.n_points if kind == "point_data" else mesh.n_cells) + delta
    per = r"node \(25\)" if kind == "point_data" else r"cell \(32\)"
    with pytest.raises(
        AssemblyError, match=rf"{kind}\['kappa'\] must have one value per {per}.*got shape \({length},\)"
    ):
        Diffusion.from_mesh(mesh)(**{kind: {"kappa": ones(length)}})


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_integer_data_is_rejected(mesh, dtype):
    with pytest.raises(AssemblyError, match=rf"point_data\['kappa'\] must be a floating-point tensor, got {dtype}"):
        Diffusion.from_mesh(mesh)(point_data={"kappa": torch.ones(mesh.n_points, dtype=dtype)})


def test_complex_data_is_rejected(mesh):
    with pytest.raises(AssemblyError, match=r"point_data\['f'\] is complex \(torch\.complex128\); .*real forms only"):
        Source.from_mesh(mesh)(point_data={"f": torch.ones(mesh.n_points, dtype=torch.complex128)})


@pytest.mark.parametrize("bad", [NAN, INF])
@pytest.mark.parametrize("kind", ["point_data", "element_data", "scalar_data"])
def test_non_finite_data_is_rejected(mesh, kind, bad):
    if kind == "scalar_data":
        value = bad
    else:
        value = ones(mesh.n_points if kind == "point_data" else mesh.n_cells)
        value[3] = bad
    with pytest.raises(AssemblyError, match=rf"{kind}\['kappa'\] contains NaN or inf"):
        Diffusion.from_mesh(mesh)(**{kind: {"kappa": value}})


def test_same_key_in_point_and_element_data(mesh):
    with pytest.raises(AssemblyError, match="key 'kappa' appears in both point_data and element_data"):
        Diffusion.from_mesh(mesh)(point_data={"kappa": ones(mesh.n_points)}, element_data={"kappa": ones(mesh.n_cells)})


def test_data_key_clashing_with_a_reserved_name(mesh):
    with pytest.raises(AssemblyError, match="point_data key 'x' clashes with the reserved argument 'x'"):
        Source.from_mesh(mesh)(point_data={"f": ones(mesh.n_points), "x": ones(mesh.n_points)})


@pytest.mark.parametrize(
    "cls, per",
    [(VectorBilinear, "basis pair"), (VectorLinear, "basis function")],
    ids=["bilinear", "linear"],
)
def test_integrand_returning_a_vector(mesh, cls, per):
    with pytest.raises(
        AssemblyError,
        match=(
            rf"{cls.__name__}\.forward must return one scalar per quadrature point and {per}.*extra "
            rf"trailing shape \(2,\)"
        ),
    ):
        cls.from_mesh(mesh)()


@pytest.mark.parametrize("cls", [Diffusion, Source])
def test_assembler_not_built_with_from_mesh(cls):
    name = cls.__name__
    with pytest.raises(RuntimeError, match=rf"{name} is not bound to a mesh; create it with {name}\.from_mesh\(mesh\)"):
        cls()(point_data={"kappa": ones(25), "f": ones(25)})


@pytest.mark.parametrize("order", [-1, 1.5, True, "2"])
def test_bad_quadrature_order(mesh, order):
    with pytest.raises(ValueError, match=r"quadrature_order must be a non-negative int or None"):
        Diffusion.from_mesh(mesh, quadrature_order=order)


def test_from_mesh_needs_a_mesh():
    with pytest.raises(TypeError, match="mesh must be a tmcore Mesh, got str"):
        Diffusion.from_mesh("unit square")


@pytest.mark.parametrize("cls, name", [(StarArgs, "args"), (StarKwargs, "data")])
def test_var_arguments_in_forward(mesh, cls, name):
    with pytest.raises(AssemblyError, match=rf"forward must name each of its arguments; \*+{name} cannot be resolved"):
        cls.from_mesh(mesh)


@pytest.mark.parametrize("kind", ["point_data", "element_data"])
def test_data_that_is_not_a_dict(mesh, kind):
    """A bare tensor instead of {name: tensor} must be named, not fail inside ``dict()``."""
    value = ones(mesh.n_points if kind == "point_data" else mesh.n_cells)
    with pytest.raises(TypeError, match=rf"{kind} must be a dict"):
        Diffusion.from_mesh(mesh)(**{kind: value})


@pytest.mark.parametrize("case", ["mass", "load", "functional", "facet"])
def test_integrand_without_per_cell_arguments(mesh, case):
    """u * v, v, or a constant are valid integrands: the mass matrix and load vector of the unit square.

    Regression test: these raised "vmap: Expected at least one Tensor to vmap over" from
    inside torch until the assembler's vmap got a carrier tensor spanning every axis.
    """

    class Mass(ElementAssembler):
        def forward(self, u, v):
            return u * v

    class Load(NodeAssembler):
        def forward(self, v):
            return v

    class Area(Functional):
        def forward(self, c):
            return c

    class Perimeter(FacetAssembler):
        def forward(self, v):
            return v

    if case == "mass":
        total = Mass.from_mesh(mesh)().values.sum()
    elif case == "load":
        total = Load.from_mesh(mesh)().sum()
    elif case == "functional":
        total = Area.from_mesh(mesh)(scalar_data={"c": 1.0})
    else:
        total = Perimeter.from_mesh(mesh)().sum() / 4
    assert float(total) == pytest.approx(1.0, rel=1e-12)


# -- solves ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def system(mesh):
    """The condensed Laplacian K_ (9 x 9) of the 4 x 4 grid and a right-hand side b_."""
    K = Laplace.from_mesh(mesh)()
    cond = Condenser(mesh.boundary_mask)
    K_, b_ = cond(K, ones(mesh.n_points))
    return K_, b_


@pytest.mark.parametrize("backend", ["auto", "splu", "dense"])
def test_pure_neumann_laplacian_is_singular(mesh, backend):
    K = Laplace.from_mesh(mesh)()
    b = ones(mesh.n_points)
    b = b - b.mean()  # compatible data: the failure is the null space, not the right-hand side
    with pytest.raises(SingularMatrixError, match="singular to working precision"):
        K.solve(b, backend=backend)


def test_singular_message_hints_at_missing_dirichlet_nodes(mesh):
    K = Laplace.from_mesh(mesh)()
    with pytest.raises(SingularMatrixError, match=r"is a Dirichlet condition missing"):
        K.solve(ones(mesh.n_points), backend="splu")


@pytest.mark.parametrize("bad", [NAN, INF])
def test_non_finite_matrix_values(system, bad):
    K_, b_ = system
    values = K_.values.clone()
    values[0] = bad
    with pytest.raises(SolverError, match="the matrix values contain NaN or inf"):
        SparseMatrix.from_pattern(K_.pattern, values).solve(b_)


@pytest.mark.parametrize("bad", [NAN, INF])
def test_non_finite_right_hand_side(system, bad):
    K_, b_ = system
    b = b_.clone()
    b[0] = bad
    with pytest.raises(SolverError, match="b contains NaN or inf"):
        K_.solve(b)


@pytest.mark.parametrize("length", [8, 10])
def test_right_hand_side_of_wrong_length(system, length):
    K_, _ = system
    with pytest.raises(
        ValueError, match=rf"b must have shape \(9,\) or \(9, k\) for a 9 x 9 matrix, got \({length},\)"
    ):
        K_.solve(ones(length))


@pytest.mark.parametrize("matrix_dtype, b_dtype", [(F64, torch.float32), (torch.float32, F64)])
def test_dtype_mismatch_between_matrix_and_b(system, matrix_dtype, b_dtype):
    K_, b_ = system
    with pytest.raises(TypeError, match=rf"matrix values are {matrix_dtype} but b is {b_dtype}; cast one"):
        K_.to(dtype=matrix_dtype).solve(b_.to(b_dtype))


def test_float32_solve_warns_about_digits(system):
    K_, b_ = system
    with pytest.warns(UserWarning, match=r"solving a torch\.float32 system: .* ~6 digits"):
        u = K_.float().solve(b_.float())
    assert u.dtype == torch.float32
    reference = K_.solve(b_)
    assert torch.allclose(u.double(), reference, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_solves_are_checked_before_rounding(dtype):
    """Regression: the residual check ran on the rounded solution, where a float32 result of
    this well-posed 25-unknown system has a relative residual of 2e-7 > 1e-8, so the solve
    raised SolverError; the check now runs on the float64 solution, and gradients flow."""
    mesh = Mesh.gen_grid((6, 6))
    K = Laplace.from_mesh(mesh)()
    b = Source.from_mesh(mesh)(point_data={"f": torch.ones(mesh.n_points, dtype=F64)})
    K_, b_ = Condenser(mesh.boundary_mask)(K, b)
    values = K_.values.to(dtype).requires_grad_(True)
    with pytest.warns(UserWarning, match="digits"):
        u = SparseMatrix.from_pattern(K_.pattern, values).solve(b_.to(dtype))
    assert u.dtype == dtype
    eps = torch.finfo(dtype).eps
    reference = K_.solve(b_)
    assert float((u.detach().double() - reference).abs().max() / reference.abs().max()) < 10 * eps
    u.sum().backward()
    assert values.grad.dtype == dtype and bool(torch.isfinite(values.grad.float()).all())


def test_unknown_backend(system):
    K_, b_ = system
    with pytest.raises(ValueError, match=r"backend must be one of \('auto', .*'splu'.*\), got 'umfpack'"):
        K_.solve(b_, backend="umfpack")


def test_non_square_matrix():
    A = SparseMatrix(ones(3), torch.tensor([0, 1, 2]), torch.tensor([0, 1, 1]), (3, 2))
    with pytest.raises(ValueError, match="solve needs a square matrix, got 3 x 2"):
        A.solve(ones(3))


def test_b_must_be_a_tensor(system):
    K_, _ = system
    with pytest.raises(TypeError, match="b must be a torch.Tensor, got list"):
        K_.solve([1.0] * 9)


# -- Condenser ----------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [24, 26])
def test_condenser_mask_of_wrong_length(mesh, length):
    mask = torch.zeros(length, dtype=torch.bool)
    mask[0] = True
    cond = Condenser(mask)
    K = Laplace.from_mesh(mesh)()
    with pytest.raises(ValueError, match=rf"K must be {length} x {length} to match the mask, got \(25, 25\)"):
        cond(K, ones(mesh.n_points))


def test_condenser_b_of_wrong_length(mesh):
    cond = Condenser(mesh.boundary_mask)
    with pytest.raises(ValueError, match=r"b must have shape \(25,\) or \(B, 25\) to match the mask, got \(24,\)"):
        cond(Laplace.from_mesh(mesh)(), ones(24))


@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8, torch.float64])
def test_condenser_mask_must_be_bool(mesh, dtype):
    with pytest.raises(ValueError, match=rf"mask must be an \(n,\) bool tensor, got dtype {dtype}"):
        Condenser(mesh.boundary_mask.to(dtype))


def test_condenser_mask_fixing_every_node():
    with pytest.raises(ValueError, match="mask fixes every node: nothing is left to solve for"):
        Condenser(torch.ones(25, dtype=torch.bool))


@pytest.mark.parametrize("length", [5, 15, 17, 24])
def test_condenser_dirichlet_value_of_wrong_length(mesh, length):
    # 16 boundary nodes of 25: (16,) and (25,) are accepted, anything else is not
    with pytest.raises(
        ValueError,
        match=rf"dirichlet_value must be a scalar, \(16,\) values .* full \(25,\) vector.*got shape \({length},\)",
    ):
        Condenser(mesh.boundary_mask, ones(length))


@pytest.mark.parametrize(
    "value", [NAN, torch.full((16,), NAN, dtype=F64), torch.tensor(INF, dtype=F64)], ids=["float", "tensor", "inf"]
)
def test_condenser_non_finite_dirichlet_value(mesh, value):
    with pytest.raises(ValueError, match="dirichlet_value contains NaN or inf"):
        Condenser(mesh.boundary_mask, value)


def test_condenser_integer_dirichlet_value(mesh):
    with pytest.raises(TypeError, match=r"dirichlet_value must be floating point, got torch\.int64"):
        Condenser(mesh.boundary_mask, torch.ones(16, dtype=torch.long))


@pytest.mark.parametrize("length", [8, 10, 25])
def test_condenser_recover_of_wrong_length(mesh, length):
    cond = Condenser(mesh.boundary_mask)
    with pytest.raises(ValueError, match=rf"u_free must have shape \(9,\) or \(B, 9\), got \({length},\)"):
        cond.recover(ones(length))


# -- OCOptimizer ----------------------------------------------------------------------------------


def densities(value: float = 0.5, n: int = 8) -> torch.Tensor:
    return torch.full((n,), value, dtype=F64, requires_grad=True)


@pytest.mark.parametrize("vf", [0, 1, 1.5, -0.2, 0.0, 1.0])
def test_oc_volume_fraction_outside_open_interval(vf):
    with pytest.raises(ValueError, match=rf"vf must be a volume fraction in \(0, 1\), got {vf!r}"):
        OCOptimizer([densities()], vf=vf)


# the bounds message calls float() on densities that require grad: torch warns (once per process)
@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad=True")
@pytest.mark.parametrize("value", [0.0, 1.2])
def test_oc_densities_outside_bounds(value):
    with pytest.raises(ValueError, match=r"densities must lie in \[rho_min, rho_max\] = \[0\.001, 1\.0\]"):
        OCOptimizer([densities(value)], vf=0.4)


def test_oc_vf_outside_density_bounds():
    with pytest.raises(ValueError, match=r"need 0 <= rho_min < vf < rho_max, got rho_min=0\.5, vf=0\.4"):
        OCOptimizer([densities(0.6)], vf=0.4, rho_min=0.5)


def test_oc_step_without_gradient():
    optimizer = OCOptimizer([densities()], vf=0.4)
    with pytest.raises(RuntimeError, match=r"found no gradient on the densities: call loss\.backward\(\) first"):
        optimizer.step()


def test_oc_all_positive_gradient_explains_the_sign_convention():
    rho = densities()
    optimizer = OCOptimizer([rho], vf=0.4)
    rho.grad = torch.linspace(0.1, 1.0, 8, dtype=F64)
    with pytest.raises(ValueError, match=r"positive everywhere: OC minimises a compliance whose sensitivity is <= 0"):
        optimizer.step()
    assert torch.equal(rho.detach(), torch.full((8,), 0.5, dtype=F64))  # untouched


def test_oc_non_finite_gradient():
    rho = densities()
    optimizer = OCOptimizer([rho], vf=0.4)
    rho.grad = -ones(8)
    rho.grad[2] = NAN
    with pytest.raises(ValueError, match="the density gradient contains NaN or inf"):
        optimizer.step()


def test_oc_zero_gradient_keeps_the_volume_or_raises():
    rho = densities()
    optimizer = OCOptimizer([rho], vf=0.4)
    rho.grad = torch.zeros(8, dtype=F64)
    try:
        optimizer.step()
    except ValueError as exc:
        assert "gradient" in str(exc)
        return
    assert math.isclose(float(rho.detach().mean()), 0.4, abs_tol=1e-9)
