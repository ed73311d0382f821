"""The mosaic Tesseracts in-process: one forward and one VJP of each problem against tmcore called
directly (a pipeline written here from tmcore's public API, with the Neumann load integrated by
hand) and against central finite differences of that float64 pipeline."""

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("tesseract_core", reason="tesseract-core is not installed (pip install -e '.[mosaic]')")
pytest.importorskip("mosaic.mosaic_shared", reason="mosaic-bench is not installed (pip install -e '.[mosaic]')")

from tesseract_core import Tesseract  # noqa: E402

from integrations.mosaic.compat import problem_module  # noqa: E402
from tmcore import Condenser, Mesh, dof_mask  # noqa: E402
from tmcore.forms import Diffusion, LinearElasticity, Source  # noqa: E402

thermal_mesh = problem_module("thermal_mesh")
structural_mesh = problem_module("structural_mesh")
TESSERACTS = Path(__file__).resolve().parents[2] / "integrations" / "mosaic" / "tesseracts"


@pytest.fixture(scope="module")
def thermal():
    return Tesseract.from_tesseract_api(TESSERACTS / "thermal-mesh" / "tmcore" / "tesseract_api.py")


@pytest.fixture(scope="module")
def structural():
    return Tesseract.from_tesseract_api(TESSERACTS / "structural-mesh" / "tmcore" / "tesseract_api.py")


def face_load(points: np.ndarray, cells: np.ndarray, marked: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Consistent load (n, c) of a uniform flux/traction ``value`` (c,) on the cell faces at x = max
    whose four nodes are all marked: each rectangular face of area A gives value A / 4 to its corners."""
    x_max = points[:, 0].max()
    load = np.zeros((points.shape[0], value.shape[0]))
    for cell in cells:
        face = [a for a in cell if abs(points[a, 0] - x_max) < 1e-9 and marked[a]]
        if len(face) == 4:
            ys, zs = points[face, 1], points[face, 2]
            area = (ys.max() - ys.min()) * (zs.max() - zs.min())
            load[face] += value * area / 4.0
    return load


def direct_thermal(inputs, rho, source):
    """(thermal_compliance, identification_error) by tmcore's pipeline, float64, k_max = 1, p = 3."""
    points = np.asarray(inputs["hex_mesh"]["points"], dtype=np.float64)
    cells = np.asarray(inputs["hex_mesh"]["faces"], dtype=np.int64)
    bc = inputs["boundary_conditions"]
    mesh = Mesh(torch.from_numpy(points), {"hexahedron": torch.from_numpy(cells)})
    kappa = 1e-3 + (1.0 - 1e-3) * rho**3
    K = Diffusion.from_mesh(mesh)(element_data={"kappa": kappa})
    q = np.asarray(bc["neumann"]["values"], dtype=np.float64)[0]
    f_n = torch.from_numpy(face_load(points, cells, np.asarray(bc["neumann"]["mask"]) > 0, q)[:, 0])
    b = f_n + Source.from_mesh(mesh)(element_data={"f": source})
    cond = Condenser(torch.from_numpy(np.asarray(bc["dirichlet"]["mask"]) > 0))
    K_, b_ = cond(K, b)
    T = cond.recover(K_.solve(b_, backend="splu"))
    target = torch.from_numpy(np.asarray(inputs["target_temperature"], dtype=np.float64))
    return f_n @ T, ((T - target) ** 2).sum()


def direct_structural(inputs, rho):
    """Compliance by tmcore's pipeline, float64, E_max = 7e4, nu = 0.3, xmin = 1e-3, p = 3."""
    points = np.asarray(inputs["hex_mesh"]["points"], dtype=np.float64)
    cells = np.asarray(inputs["hex_mesh"]["faces"], dtype=np.int64)
    bc = inputs["boundary_conditions"]
    mesh = Mesh(torch.from_numpy(points), {"hexahedron": torch.from_numpy(cells)})
    E = 7e4 * (1e-3 + (1.0 - 1e-3) * rho**3)
    K = LinearElasticity.from_mesh(mesh, nu=0.3)(element_data={"E": E})
    t = np.asarray(bc["neumann"]["values"], dtype=np.float64)[0]
    f_n = torch.from_numpy(face_load(points, cells, np.asarray(bc["neumann"]["mask"]) > 0, t).reshape(-1))
    cond = Condenser(dof_mask(torch.from_numpy(np.asarray(bc["dirichlet"]["mask"]) > 0), 3))
    K_, b_ = cond(K, f_n)
    return f_n @ cond.recover(K_.solve(b_, backend="splu"))


def central_difference(fn, x: torch.Tensor, direction: torch.Tensor, h: float = 1e-5) -> float:
    with torch.no_grad():
        return float((fn(x + h * direction) - fn(x - h * direction)) / (2 * h))


def test_thermal_forward_and_vjp_match_tmcore_called_directly(thermal):
    rng = np.random.default_rng(0)
    inputs = thermal_mesh.make_default_inputs(nx=8, ny=4, nz=1)
    n_cells = inputs["rho"].shape[0]
    inputs["rho"] = rng.uniform(0.2, 0.9, n_cells).astype(np.float32)
    inputs["source"] = rng.uniform(0.0, 1.0, n_cells).astype(np.float32)
    inputs["target_temperature"] = rng.uniform(0.0, 1.0, inputs["target_temperature"].shape[0]).astype(np.float32)
    rho = torch.tensor(inputs["rho"], dtype=torch.float64, requires_grad=True)
    source = torch.tensor(inputs["source"], dtype=torch.float64, requires_grad=True)
    compliance, error = direct_thermal(inputs, rho, source)

    out = thermal.apply(inputs)
    assert out["thermal_compliance"].dtype == np.float32
    assert out["thermal_compliance"] == pytest.approx(compliance.item(), rel=1e-6)
    assert out["identification_error"] == pytest.approx(error.item(), rel=1e-6)

    cotangent = {"thermal_compliance": np.float32(0.7), "identification_error": np.float32(-1.3)}
    vjp = thermal.vector_jacobian_product(inputs, {"rho", "source"}, set(cotangent), cotangent)
    g_rho, g_source = torch.autograd.grad(0.7 * compliance - 1.3 * error, [rho, source])
    assert vjp["rho"].shape == (n_cells,) and vjp["rho"].dtype == np.float32
    np.testing.assert_allclose(vjp["rho"], g_rho.numpy(), rtol=1e-5, atol=1e-6 * float(g_rho.abs().max()))
    np.testing.assert_allclose(vjp["source"], g_source.numpy(), rtol=1e-5, atol=1e-6 * float(g_source.abs().max()))

    # the gradient itself against finite differences of the direct float64 pipeline
    direction = torch.from_numpy(rng.standard_normal(n_cells))
    fd = central_difference(
        lambda r: (lambda c, e: 0.7 * c - 1.3 * e)(*direct_thermal(inputs, r, source.detach())), rho.detach(), direction
    )
    assert float(torch.from_numpy(vjp["rho"]).double() @ direction) == pytest.approx(fd, rel=1e-4)


def test_structural_forward_and_vjp_match_tmcore_called_directly(structural):
    rng = np.random.default_rng(1)
    inputs = structural_mesh.make_default_inputs(nx=6, ny=2, nz=3)
    n_cells = inputs["rho"].shape[0]
    inputs["rho"] = rng.uniform(0.2, 0.9, n_cells).astype(np.float32)
    rho = torch.tensor(inputs["rho"], dtype=torch.float64, requires_grad=True)
    compliance = direct_structural(inputs, rho)

    # apply, then the VJP at the same inputs (what jax.grad through a Tesseract does), then a VJP alone
    out = structural.apply(inputs)
    assert out["compliance"] == pytest.approx(compliance.item(), rel=1e-6)
    after_apply = structural.vector_jacobian_product(inputs, {"rho"}, {"compliance"}, {"compliance": np.float32(2.0)})
    alone = structural.vector_jacobian_product(inputs, {"rho"}, {"compliance"}, {"compliance": np.float32(2.0)})
    (g_rho,) = torch.autograd.grad(2.0 * compliance, [rho])
    for vjp in (after_apply, alone):
        np.testing.assert_allclose(vjp["rho"], g_rho.numpy(), rtol=1e-5, atol=1e-6 * float(g_rho.abs().max()))
    assert (g_rho < 0).all()  # more material everywhere stiffens the beam

    direction = torch.from_numpy(rng.standard_normal(n_cells))
    fd = central_difference(lambda r: 2.0 * direct_structural(inputs, r), rho.detach(), direction)
    assert float(torch.from_numpy(alone["rho"]).double() @ direction) == pytest.approx(fd, rel=1e-4)


def test_padded_inputs_give_padded_gradients_and_bad_requests_are_refused(structural):
    inputs = structural_mesh.make_default_inputs(nx=4, ny=2, nz=2)
    n_cells = inputs["rho"].shape[0]
    padded = dict(inputs, rho=np.concatenate([inputs["rho"], np.full(5, 0.7, np.float32)]))
    assert structural.apply(padded)["compliance"] == pytest.approx(
        float(structural.apply(inputs)["compliance"]), rel=1e-7
    )
    vjp = structural.vector_jacobian_product(padded, {"rho"}, {"compliance"}, {"compliance": np.float32(1.0)})
    assert vjp["rho"].shape == (n_cells + 5,)
    assert (vjp["rho"][n_cells:] == 0).all() and (vjp["rho"][:n_cells] != 0).all()
    with pytest.raises(Exception, match="vjp_outputs"):
        structural.vector_jacobian_product(inputs, {"rho"}, {"stress"}, {"stress": np.float32(1.0)})


def test_a_vjp_reuses_the_apply_at_the_same_inputs_only(thermal, monkeypatch):
    """jax.grad's apply + VJP pair evaluates tmcore once; a VJP whose rho or target differ from the
    last apply's (the mesh the same) computes its own forward and gets that point's gradient."""
    from integrations.mosaic import endpoints

    calls = []
    outputs = endpoints.thermal_outputs
    monkeypatch.setattr(endpoints, "thermal_outputs", lambda *a, **k: calls.append(1) or outputs(*a, **k))
    inputs = thermal_mesh.make_default_inputs(nx=6, ny=3, nz=1)
    cotangent = {"identification_error": np.float32(1.0)}
    inputs["target_temperature"] = np.full(inputs["target_temperature"].shape, 0.3, np.float32)
    other = dict(inputs, rho=np.full_like(inputs["rho"], 0.8))
    moved = dict(inputs, target_temperature=inputs["target_temperature"] + np.float32(0.1))

    def vjp(x):
        return thermal.vector_jacobian_product(x, {"rho"}, set(cotangent), cotangent)["rho"]

    alone = {name: vjp(x) for name, x in (("other", other), ("moved", moved))}
    calls.clear()
    thermal.apply(inputs)
    vjp(inputs)
    assert len(calls) == 1
    for name, x in (("other", other), ("moved", moved)):
        thermal.apply(inputs)
        np.testing.assert_array_equal(vjp(x), alone[name])
    assert len(calls) == 1 + 2 * 2


@pytest.mark.parametrize(
    "problem, physics, index",
    [
        ("thermal-mesh", {"nx": 16, "ny": 8, "nz": 1, "Lx": 2.0, "Ly": 1.0, "Q_total": 1.0, "rho_0": 0.2}, 2),
        ("structural-mesh", {"nx": 8, "ny": 2, "nz": 4, "F_total": 1.0, "corner_load": False, "rho_0": 0.9}, 4),
    ],
)
def test_inputs_built_by_the_adapter_reproduce_mosaics_checked_in_reference(
    problem, physics, index, thermal, structural
):
    """mosaic's forward/agreement reference (a float32 trimmed mean over its solvers) at one sweep
    point, from inputs made by mosaic's make_inputs through the adapter (structural: a traction)."""
    from mosaic.benchmarks.core.reference import load_reference

    from integrations.mosaic.harness import SOLVER, problem_config

    cfg = problem_config(problem)
    inputs = cfg.make_inputs(SOLVER, cfg.make_ic["uniform"](L=cfg.domain_extent, seed=0, **physics), **physics)
    if problem == "structural-mesh":  # a traction F / (Ly Lz) on the loaded face, as mosaic's FEM solvers get
        assert np.asarray(inputs["boundary_conditions"]["neumann"]["values"]).tolist() == [[0.0, 0.0, -1.0]]
    tesseract = thermal if problem == "thermal-mesh" else structural
    value = tesseract.apply(inputs)[cfg.output_key]
    assert float(value) == pytest.approx(float(load_reference(problem, "forward/agreement", index)), rel=2e-7)


@pytest.mark.parametrize("name", ["thermal", "structural"])
def test_the_openapi_schema_names_the_components_mosaics_jax_bridge_looks_up(name, request):
    # tesseract_jax (mosaic's gradient suite) reads components["schemas"]["Apply_InputSchema"]: the
    # runtime names them after the schema classes, which must therefore be InputSchema / OutputSchema
    components = request.getfixturevalue(name).openapi_schema["components"]["schemas"]
    assert {"Apply_InputSchema", "Apply_OutputSchema"} <= set(components)
