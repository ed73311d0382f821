"""Property: on any small input, hostile or not, the pipeline Mesh -> assemble -> condense ->
solve -> backward returns finite values or raises one of our documented exceptions.

Documented (tmcore.core.errors and DESIGN.md): MeshError and AssemblyError (ValueErrors),
SolverError and SingularMatrixError (RuntimeErrors), and a ValueError/TypeError raised by
a check in tmcore itself (not one leaking out of torch, numpy or scipy). Anything else, or
a NaN/inf that comes back without an exception, fails the property.

Run ``pytest tests/reliability/test_properties.py --hypothesis-show-statistics`` to see
how many inputs of each kind were tried (``event`` lines). The examples are derandomised
(the same inputs every run, so a failure is reproducible); ``HYPOTHESIS_SEED``-free.
"""

from __future__ import annotations

import math
import warnings
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import tmcore
from tmcore import AssemblyError, Condenser, Mesh, MeshError, SolverError
from tmcore.forms import Diffusion, Source

TMCORE = str(Path(tmcore.__file__).resolve().parent)
OURS = (MeshError, AssemblyError, SolverError)
PROPERTY = settings(
    max_examples=300,
    deadline=timedelta(seconds=5),
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

SPECIAL = [math.nan, math.inf, -math.inf, 0.0, -0.0, 1e300, -1e300, 1e-300, 5e-324]


def raised_in_tmcore(error: BaseException) -> bool:
    """True if the innermost frame of the traceback is tmcore code (one of our checks)."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and str(Path(tb.tb_frame.f_code.co_filename).resolve()).startswith(TMCORE)


def documented(error: BaseException) -> bool:
    if not str(error):
        return False  # every documented error says what was expected
    if isinstance(error, OURS):
        return True
    return isinstance(error, (ValueError, TypeError)) and raised_in_tmcore(error)


def run_pipeline(mesh_args, kappa, f, mask, dirichlet, backend):
    """The whole pipeline on one input; returns what it produced (for the finiteness check)."""
    mesh = Mesh(*mesh_args[:2])
    if kappa.is_floating_point():
        kappa = kappa.clone().requires_grad_()
    K = Diffusion.from_mesh(mesh)(point_data={"kappa": kappa})
    b = Source.from_mesh(mesh)(point_data={"f": f})
    condenser = Condenser(mask, dirichlet_value=dirichlet)
    K_, b_ = condenser(K, b)
    u = condenser.recover(K_.solve(b_, backend=backend))
    loss = u.sum()
    loss.backward()
    return u, loss, kappa.grad


def check(mesh_args, kappa, f, mask, dirichlet, backend) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # e.g. the float32 warning: a warning, not a result
        try:
            u, loss, grad = run_pipeline(mesh_args, kappa, f, mask, dirichlet, backend)
        except Exception as error:  # noqa: BLE001 - the property is about which exceptions come out
            event(f"raised {type(error).__name__}")
            assert documented(error), f"undocumented {type(error).__module__}.{type(error).__name__}: {error}"
            return
    event("finite result")
    assert torch.isfinite(u).all(), f"the solve returned non-finite values without an error: {u}"
    if not torch.isfinite(loss):  # u near 1e308 (Dirichlet values of 1e300): the loss itself overflowed
        event("finite result, loss overflowed")
        return
    if grad is not None and not torch.isfinite(grad).all() and kappa.dtype != torch.float64:
        # a float32 coefficient beside Dirichlet values of 1e300: the float64 gradient may lie beyond float32's range
        wide = run_pipeline(mesh_args, kappa.double(), f, mask, dirichlet, backend)[2]
        if torch.isfinite(wide).all() and float(wide.abs().max()) > torch.finfo(kappa.dtype).max:
            event("finite result, gradient beyond the coefficient dtype's range")
            return
    if grad is not None:
        assert torch.isfinite(grad).all(), f"the gradient of a finite loss is not finite: {grad}"


# -- strategies ---------------------------------------------------------------------------------


def hostile_floats(low=-10.0, high=10.0):
    return st.one_of(st.floats(low, high, allow_nan=False), st.sampled_from(SPECIAL))


@st.composite
def raw_meshes(draw):
    """Arbitrary points and connectivity: NaN/inf/huge coordinates, indices out of range or
    negative, duplicate and degenerate cells, empty arrays, 3-D points under 2-D cells."""
    cell_type, width = draw(st.sampled_from([("triangle", 3), ("quad", 4), ("tetra", 4)]))
    dim = draw(st.sampled_from([2, 3]))
    n = draw(st.integers(0, 7))
    points = draw(st.lists(st.lists(hostile_floats(), min_size=dim, max_size=dim), min_size=n, max_size=n))
    m = draw(st.integers(0, 5))
    cells = draw(st.lists(st.lists(st.integers(-2, n + 1), min_size=width, max_size=width), min_size=m, max_size=m))
    points = torch.tensor(points, dtype=torch.float64).reshape(n, dim)
    cells = torch.tensor(cells, dtype=draw(st.sampled_from([torch.int64, torch.int32, torch.float64]))).reshape(
        m, width
    )
    event(f"raw mesh: {cell_type} in {dim}-D")
    return points, {cell_type: cells}, None


@st.composite
def grid_meshes(draw):
    """A valid structured grid, its interior nodes moved a little (or a lot)."""
    element_type = draw(st.sampled_from(["triangle", "quad"]))
    shape = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    mesh = Mesh.gen_grid(shape, element_type=element_type)
    points = mesh.points.clone().to(torch.float64)
    interior = ~mesh.boundary_mask
    scale = draw(st.sampled_from([0.0, 0.1, 0.3, 2.0]))  # 2.0 tangles the grid: inverted cells
    if scale and bool(interior.any()):
        jitter = draw(st.lists(st.floats(-1, 1), min_size=2 * int(interior.sum()), max_size=2 * int(interior.sum())))
        points[interior] += scale / max(shape) * torch.tensor(jitter, dtype=torch.float64).reshape(-1, 2)
    event(f"grid mesh: {element_type}, jitter {scale}")
    return points, {mesh.cell_type: mesh.elements.clone()}, mesh.boundary_mask.clone()


@st.composite
def nodal(draw, n: int, label: str):
    """Data per node, mostly sound with one thing wrong at a time: off-by-one length,
    float32/int64/complex dtype, NaN/inf/huge/tiny/zero/negative values."""
    fault = draw(st.sampled_from(["none"] * 5 + ["length", "dtype", "values", "values"]))
    length = n + (draw(st.sampled_from([-1, 1])) if fault == "length" else 0)
    values = st.floats(0.1, 10.0) if fault != "values" else hostile_floats(-1e3, 1e3)
    tensor = torch.tensor(draw(st.lists(values, min_size=max(length, 0), max_size=max(length, 0))), dtype=torch.float64)
    dtype = draw(st.sampled_from([torch.float32, torch.int64, torch.complex128])) if fault == "dtype" else torch.float64
    event(f"{label}: {fault if fault != 'dtype' else str(dtype).removeprefix('torch.')}")
    return tensor.to(dtype)


@st.composite
def problems(draw, meshes):
    mesh_args = draw(meshes)
    n = mesh_args[0].shape[0]
    kappa = draw(nodal(n, "kappa"))
    f = draw(nodal(n, "f"))
    mask_kind = draw(st.sampled_from(["boundary"] * 4 + ["random", "none", "all", "wrong length"]))
    event(f"mask: {mask_kind}")
    if mask_kind == "random":
        mask = torch.tensor(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=torch.bool)
    elif mask_kind == "wrong length":
        mask = torch.zeros(n + 1, dtype=torch.bool)
        mask[0] = True
    else:
        mask = torch.zeros(n, dtype=torch.bool)
        if mask_kind == "all":
            mask[:] = True
        elif mask_kind == "boundary" and mesh_args[2] is not None:
            mask = mesh_args[2]
        elif mask_kind == "boundary" and n:
            mask[0] = mask[-1] = True
    dirichlet = draw(st.one_of(st.none(), st.floats(-10, 10), st.sampled_from(SPECIAL)))
    backend = draw(st.sampled_from(["auto", "splu", "dense", "torch-cg", "amg"]))
    event(f"backend: {backend}")
    return mesh_args, kappa, f, mask, dirichlet, backend


@PROPERTY
@given(problems(raw_meshes()))
def test_hostile_meshes_give_finite_results_or_documented_errors(problem):
    check(*problem)


@pytest.mark.filterwarnings(
    "ignore::RuntimeWarning:scipy"
)  # SciPy's CG dividing by zero on an indefinite matrix; tmcore then raises
@PROPERTY
@given(problems(grid_meshes()))
def test_hostile_data_on_valid_meshes_gives_finite_results_or_documented_errors(problem):
    check(*problem)


@pytest.mark.filterwarnings("ignore::RuntimeWarning:meshio")  # meshio's own overflow while sniffing a damaged .stl
@settings(
    max_examples=60,
    deadline=timedelta(seconds=5),
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    suffix=st.sampled_from([".msh", ".vtu", ".vtk", ".xdmf", ".obj", ".stl"]),
    cut=st.floats(0.0, 1.0),
    flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(1, 255)), max_size=4),
)
def test_damaged_mesh_files_read_or_raise_mesh_errors(tmp_path_factory, suffix, cut, flips):
    """A valid file of each format, truncated anywhere and with bytes flipped: a Mesh or a MeshError."""
    folder = tmp_path_factory.mktemp("files")
    path = folder / f"mesh{suffix}"
    Mesh.gen_grid((2, 2)).write(path)
    data = bytearray(path.read_bytes())
    for position, xor in flips:
        if data:
            data[min(int(position * len(data)), len(data) - 1)] ^= xor
    path.write_bytes(bytes(data[: int(cut * len(data))]))
    event(f"file {suffix}: {'truncated' if cut < 1 else 'whole'}{', flipped' if flips else ''}")
    try:
        mesh = Mesh.read(path)
    except MeshError as error:
        assert str(path) in str(error)
        return
    event(f"file {suffix}: still readable")
    assert torch.isfinite(mesh.points).all()
