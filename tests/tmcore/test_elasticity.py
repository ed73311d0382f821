"""Vector-valued assembly, linear elasticity, and the 88-line compliance benchmarks against a reference."""

import math

import numpy as np
import pytest
import torch

from tmcore import Condenser, Functional, Mesh
from tmcore.core.assembly import VectorElementAssembler, VectorNodeAssembler, dof_connectivity, dof_mask
from tmcore.core.errors import AssemblyError
from tmcore.forms import BodyForce, Diffusion, LinearElasticity, Traction, lame_parameters, strain_energy, stress
from tmcore.methods.gradcheck import finite_difference_check, taylor_test
from tmcore.studies import compliance_topology
from tmcore.topology import ConeFilter, cantilever, heat_conduction, mbb_beam, point_load

from . import topopt_reference as reference

# -- vector assembly ----------------------------------------------------------------------------


def test_unit_square_stiffness_matches_the_hand_computed_element_matrix():
    mesh = Mesh.gen_grid((1, 1), element_type="quad")
    K = LinearElasticity.from_mesh(mesh, nu=0.3, plane="stress")(scalar_data={"E": 1.0}).to_dense()
    # grid nodes (0,0), (1,0), (0,1), (1,1); the reference's local order is counter-clockwise
    order = [0, 1, 3, 2]
    dofs = [2 * a + i for a in order for i in range(2)]
    expected = torch.from_numpy(reference.element_stiffness(0.3))
    assert torch.allclose(K[dofs][:, dofs], expected, rtol=0, atol=1e-14)


def test_stiffness_matches_scikit_fem_on_triangles_and_tetrahedra():
    skfem = pytest.importorskip("skfem")
    from skfem.models.elasticity import linear_elasticity

    for mesh, plane in (
        (Mesh.gen_grid((5, 4), element_type="triangle"), "strain"),
        (Mesh.gen_grid((3, 2, 2), element_type="tetra"), None),
    ):
        E, nu = 2.5, 0.3
        lam, mu = lame_parameters(E, nu, plane)
        ours = LinearElasticity.from_mesh(mesh, nu=nu, plane=plane)(scalar_data={"E": E}).to_scipy().toarray()
        p, t = mesh.points.numpy().T, mesh.elements.numpy().T
        sk_mesh = skfem.MeshTri(p, t) if mesh.dim == 2 else skfem.MeshTet(p, t)
        element = skfem.ElementVector(skfem.ElementTriP1() if mesh.dim == 2 else skfem.ElementTetP1())
        basis = skfem.Basis(sk_mesh, element)
        theirs = linear_elasticity(lam, mu).assemble(basis).toarray()
        # skfem's dof of component i at node a is nodal_dofs[i, a]; ours is dim * a + i
        perm = basis.nodal_dofs.T.reshape(-1)
        assert np.abs(ours - theirs[np.ix_(perm, perm)]).max() < 1e-12 * np.abs(theirs).max()


@pytest.mark.parametrize("cell", ["quad", "hexahedron", "tetra", "triangle"])
def test_rigid_motions_cost_no_energy_and_linear_fields_pass_the_patch_test(cell):
    dim = 3 if cell in ("hexahedron", "tetra") else 2
    mesh = Mesh.gen_grid((3,) * dim, element_type=cell)
    plane = "stress" if dim == 2 else None
    K = LinearElasticity.from_mesh(mesh, nu=0.25, plane=plane)(scalar_data={"E": 3.0})
    x = mesh.points
    modes = [torch.zeros_like(x).index_fill(1, torch.tensor([i]), 1.0) for i in range(dim)]
    if dim == 2:
        modes.append(torch.stack([-x[:, 1], x[:, 0]], dim=1))
    else:
        modes += [torch.linalg.cross(torch.eye(3, dtype=x.dtype)[i].expand_as(x), x, dim=1) for i in range(3)]
    for mode in modes:
        assert (K @ mode.reshape(-1)).abs().max() < 1e-12
    # patch test: a linear displacement on the boundary is reproduced exactly inside
    A = torch.tensor([[0.1, 0.3, -0.2], [0.05, -0.1, 0.2], [0.3, 0.1, 0.15]], dtype=x.dtype)[:dim, :dim]
    exact = (x @ A.T).reshape(-1)
    mask = dof_mask(mesh.boundary_mask, dim)
    cond = Condenser(mask, dirichlet_value=exact)
    K_, b_ = cond(K, torch.zeros(mesh.n_points * dim, dtype=x.dtype))
    u = cond.recover(K_.solve(b_))
    assert (u - exact).abs().max() < 1e-12


def test_vector_load_and_traction_integrate_to_the_total_force():
    mesh = Mesh.gen_grid((4, 3), upper=(2.0, 1.0), element_type="quad")
    f = torch.tensor([0.5, -2.0]).expand(mesh.n_points, 2)
    b = BodyForce.from_mesh(mesh)(point_data={"f": f})
    assert b.shape == (2 * mesh.n_points,)
    assert torch.allclose(b.reshape(-1, 2).sum(0), torch.tensor([1.0, -4.0]))  # area 2
    t = torch.tensor([0.0, 3.0]).expand(mesh.n_points, 2)
    tr = Traction.from_mesh(mesh, facets="right")(point_data={"t": t})
    assert torch.allclose(tr.reshape(-1, 2).sum(0), torch.tensor([0.0, 3.0]))  # right edge length 1
    assert bool((tr.reshape(-1, 2)[~mesh.nodes_of("right")] == 0).all())


def test_vector_facet_bilinear_form_is_a_boundary_mass_per_component():
    from tmcore.core.assembly import VectorFacetAssembler

    class SpringSupport(VectorFacetAssembler):
        def forward(self, u, v, k):
            return k * (u @ v)

    mesh = Mesh.gen_grid((4, 3), upper=(2.0, 1.0), element_type="quad")
    S = SpringSupport.from_mesh(mesh, facets="right")(scalar_data={"k": 5.0})
    K = LinearElasticity.from_mesh(mesh)(scalar_data={"E": 1.0})
    assert S.pattern == K.pattern  # adds to the stiffness
    ones_x = torch.zeros(mesh.n_points, 2).index_fill(1, torch.tensor([0]), 1.0).reshape(-1)
    assert float(ones_x @ (S @ ones_x)) == pytest.approx(5.0)  # k * length of the right edge
    assert float(ones_x @ (S @ ones_x.roll(1))) == pytest.approx(0.0, abs=1e-15)  # no x-y coupling


def test_strain_energy_of_a_field_by_grad_of_vector_point_data():
    mesh = Mesh.gen_grid((3, 3), element_type="quad")
    A = torch.tensor([[0.2, 0.1], [-0.3, 0.4]])
    u = mesh.points @ A.T  # (n, 2) point data: grad_u is A everywhere
    lam, mu = lame_parameters(1.0, 0.3, "stress")

    class Energy(Functional):
        def forward(self, grad_u):
            return 0.5 * strain_energy(grad_u, grad_u, lam, mu)

    energy = Energy.from_mesh(mesh)(point_data={"u": u})
    assert float(energy) == pytest.approx(0.5 * float((stress(A, lam, mu) * (0.5 * (A + A.T))).sum()), rel=1e-12)
    K = LinearElasticity.from_mesh(mesh, nu=0.3, plane="stress")(scalar_data={"E": 1.0})
    flat = u.reshape(-1)
    assert float(energy) == pytest.approx(0.5 * float(flat @ (K @ flat)), rel=1e-12)


def test_per_cell_and_batched_modulus():
    mesh = Mesh.gen_grid((3, 2), element_type="quad")
    assembler = LinearElasticity.from_mesh(mesh)
    E = torch.linspace(0.5, 2.0, mesh.n_cells)
    one = assembler(element_data={"E": E})
    batch = assembler(element_data={"E": torch.stack([E, 2 * E])})
    assert batch.values.shape == (2, one.values.numel())
    assert torch.allclose(batch.values[1], 2 * one.values) and torch.allclose(batch.values[0], one.values)


def test_dof_numbering_and_masks():
    conn = torch.tensor([[0, 2, 5]])
    assert dof_connectivity(conn, 2).tolist() == [[0, 1, 4, 5, 10, 11]]
    nodes = torch.tensor([True, False, True])
    assert dof_mask(nodes, 2).tolist() == [True, True, False, False, True, True]
    assert dof_mask(nodes, 3, which=1).tolist() == [False, True, False] + [False] * 3 + [False, True, False]
    with pytest.raises(ValueError, match=r"which must name components in \[0, 2\)"):
        dof_mask(nodes, 2, which=2)
    with pytest.raises(ValueError, match=r"node_mask must be an \(n,\) bool tensor"):
        dof_mask(torch.ones(3), 2)


def test_vector_forms_reject_bad_components_and_plane_choices():
    class Bad(VectorElementAssembler):
        components = 0

        def forward(self, gradu, gradv):
            return (gradu * gradv).sum()

    mesh = Mesh.gen_grid((2, 2), element_type="quad")
    with pytest.raises(AssemblyError, match=r"Bad\.components must be None, 'dim' or a positive int, got 0"):
        Bad.from_mesh(mesh)
    with pytest.raises(ValueError, match="a 3-D mesh needs plane=None"):
        LinearElasticity.from_mesh(Mesh.gen_grid((1, 1, 1)), plane="stress")
    with pytest.raises(ValueError, match=r"plane must be 'stress', 'strain' or None"):
        lame_parameters(1.0, 0.3, "membrane")
    with pytest.raises(ValueError, match=r"nu must lie in \(-1, 0\.5\)"):
        lame_parameters(1.0, 0.5, "strain")


def test_scalar_and_vector_forms_on_one_mesh_keep_their_own_patterns():
    mesh = Mesh.gen_grid((2, 2), element_type="quad")

    class Mass(VectorNodeAssembler):
        def forward(self, v):
            return v.sum()

    K = LinearElasticity.from_mesh(mesh)(scalar_data={"E": 1.0})
    L = Diffusion.from_mesh(mesh)(scalar_data={"kappa": 1.0})
    assert K.pattern.shape == (18, 18) and L.pattern.shape == (9, 9)
    assert Mass.from_mesh(mesh)().sum() == pytest.approx(2.0)


# -- the density filter -------------------------------------------------------------------------


def test_cone_filter_matches_the_paper_weights_and_keeps_the_volume():
    mesh = Mesh.gen_grid((6, 4), upper=(6.0, 4.0), element_type="quad")
    filt = ConeFilter(mesh, 1.5)
    H = reference.filter_matrix(reference.Grid(6, 4), 1.5).toarray()
    H = H / H.sum(axis=1, keepdims=True)
    # map the reference's element order to ours through the centroids
    centres = reference.Grid(6, 4).centroids()
    ours = (np.floor(centres[:, 0]) + 6 * np.floor(centres[:, 1])).astype(int)
    dense = filt.matrix.to_dense().numpy()
    assert np.abs(dense[np.ix_(ours, ours)] - H).max() < 1e-15
    x = torch.rand(mesh.n_cells, dtype=torch.float64)
    assert float(filt(x).sum()) == pytest.approx(float(filt.volume_weights @ x), rel=1e-14)
    assert torch.allclose(filt(torch.ones(mesh.n_cells)), torch.ones(mesh.n_cells, dtype=torch.float64))


def test_compliance_gradient_through_filter_simp_and_vector_solve():
    problem = mbb_beam(12, 4)
    filt = ConeFilter(problem.mesh, 1.5)
    x0 = 0.3 + 0.4 * torch.rand(problem.mesh.n_cells, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def loss(x):
        return problem.compliance(filt(x), 3.0)

    check = finite_difference_check(loss, x0, n_probes=6)
    assert check.median_digits > 8, check.table()
    assert taylor_test(loss, x0, eps0=1e-2).min_rate > 1.9


# -- the 88-line benchmarks ------------------------------------------------------------------------


def _compare(problem, nelx, nely, vf, max_iterations=1000):
    ours = compliance_topology(problem, vf=vf, penal=3.0, radius=1.5, max_iterations=max_iterations)
    ref = reference.run(problem.name, nelx, nely, vf, penal=3.0, rmin=1.5, max_iterations=max_iterations)
    order = (np.floor(ref.centroids[:, 0]) + nelx * np.floor(ref.centroids[:, 1])).astype(int)
    rho = ours.rho.numpy()[order]
    return ours, ref, rho


def test_mbb_beam_matches_the_reference_within_one_percent():
    ours, ref, rho = _compare(mbb_beam(60, 20), 60, 20, 0.5)
    assert ours.converged
    assert abs(ours.final_compliance - ref.compliance[-1]) <= 0.01 * ref.compliance[-1], (
        ours.final_compliance,
        ref.compliance[-1],
    )
    assert np.abs(rho - ref.x_phys).mean() < 0.01
    assert abs(float(ours.rho.mean()) - 0.5) < 1e-10
    assert ours.compliance[0] == pytest.approx(ref.compliance[0], rel=1e-10)  # the same first analysis


def test_cantilever_matches_the_reference_within_one_percent():
    ours, ref, rho = _compare(cantilever(32, 20), 32, 20, 0.4)
    assert ours.converged
    assert abs(ours.final_compliance - ref.compliance[-1]) <= 0.01 * ref.compliance[-1]
    assert np.abs(rho - ref.x_phys).mean() < 0.01
    assert ours.compliance[0] == pytest.approx(ref.compliance[0], rel=1e-10)


def test_heat_conduction_variant_matches_the_reference_within_one_percent():
    ours, ref, rho = _compare(heat_conduction(20, 20), 20, 20, 0.4)
    assert ours.converged
    assert abs(ours.final_compliance - ref.compliance[-1]) <= 0.01 * ref.compliance[-1]
    assert ours.compliance[0] == pytest.approx(ref.compliance[0], rel=1e-10)
    assert ours.final_compliance < 0.5 * ours.compliance[0]


@pytest.mark.slow(reason="full-size runs: MBB 150x50, cantilever 80x50, heat 40x40 to convergence (minutes)")
@pytest.mark.parametrize(
    "name, nelx, nely, vf", [("mbb", 150, 50, 0.5), ("cantilever", 80, 50, 0.4), ("heat", 40, 40, 0.4)]
)
def test_full_size_benchmarks_match_the_reference(name, nelx, nely, vf):
    build = {"mbb": mbb_beam, "cantilever": cantilever, "heat": heat_conduction}[name]
    ours, ref, rho = _compare(build(nelx, nely), nelx, nely, vf)
    assert abs(ours.final_compliance - ref.compliance[-1]) <= 0.01 * ref.compliance[-1]
    assert np.abs(rho - ref.x_phys).mean() < 0.02


def test_point_load_checks_its_input():
    mesh = Mesh.gen_grid((2, 2), element_type="quad")
    load = point_load(mesh, mesh.nodes_of("top"), (0.0, -1.0))
    assert float(load.reshape(-1, 2)[:, 1].sum()) == -3.0
    with pytest.raises(ValueError, match="force must have 2 components"):
        point_load(mesh, 0, (1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match=r"nodes must lie in \[0, 9\)"):
        point_load(mesh, 9, (1.0, 0.0))
    assert math.isclose(float(point_load(mesh, torch.tensor([1, 1]), (1.0, 0.0)).sum()), 2.0)


def test_topology_example_runs_as_written(monkeypatch):
    from .docpages import run_example

    result = run_example("topology_88.py", monkeypatch, "heat", 20, 20)["result"]
    assert result.converged and result.iterations == 61
    assert result.final_compliance == pytest.approx(38.8975, rel=1e-4)


def test_local_element_matrices_scatter_to_the_assembled_matrix():
    mesh = Mesh.gen_grid((3, 2), element_type="quad")
    assembler = LinearElasticity.from_mesh(mesh)
    E = torch.linspace(0.5, 2.0, mesh.n_cells)
    local = assembler.local(element_data={"E": E})
    assert local.shape == (mesh.n_cells, 8, 8)
    assert torch.allclose(assembler.scatter(local).values, assembler(element_data={"E": E}).values, rtol=1e-14)
    scalar = Diffusion.from_mesh(mesh)
    assert torch.allclose(
        scalar.scatter(scalar.local(scalar_data={"kappa": 2.0})).values, scalar(scalar_data={"kappa": 2.0}).values
    )
    with pytest.raises(AssemblyError, match=r"local must have shape \(m, K, K\) or \(B, m, K, K\) with m=6, K=8"):
        assembler.scatter(torch.zeros(6, 4, 4))


def test_guide_page_runs_and_prints_what_it_shows():
    from .docpages import run_page

    run_page("elasticity.md", minimum_blocks=2)
