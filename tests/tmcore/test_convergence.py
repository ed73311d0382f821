"""Exactness and convergence: the patch test and manufactured solutions with their rates."""

import math

import pytest
import torch

from tmcore import Condenser, FacetAssembler, Mesh
from tmcore.forms import Diffusion
from tmcore.methods import manufactured


class Flux(FacetAssembler):
    """Neumann data of a linear solution: kappa (c . n) v, with c = grad u."""

    def forward(self, v, n, kappa, c):
        return kappa * (c @ n) * v


def _perturbed_hex_grid() -> Mesh:
    """A 4x4x4 hexahedral grid with interior nodes moved: an unstructured, non-affine mesh."""
    mesh = Mesh.gen_grid((4, 4, 4), element_type="hexahedron")
    generator = torch.Generator().manual_seed(1)
    shift = 0.06 * (2 * torch.rand(mesh.points.shape, generator=generator) - 1)
    points = torch.where(mesh.boundary_mask[:, None], mesh.points, mesh.points + shift)
    return Mesh(points, dict(mesh.cells.items()), facet_sets=dict(mesh.facet_sets.items()))


def _perturbed_quad_grid() -> Mesh:
    mesh = Mesh.gen_grid((6, 5), element_type="quad")
    generator = torch.Generator().manual_seed(2)
    shift = 0.05 * (2 * torch.rand(mesh.points.shape, generator=generator) - 1)
    points = torch.where(mesh.boundary_mask[:, None], mesh.points, mesh.points + shift)
    return Mesh(points, dict(mesh.cells.items()), facet_sets=dict(mesh.facet_sets.items()))


PATCH_MESHES = {
    "triangle": lambda: Mesh.gen_rectangle(chara_length=0.15),
    "triangle6": lambda: Mesh.gen_rectangle(chara_length=0.2, order=2),
    "quad": lambda: Mesh.gen_rectangle(chara_length=0.15, element_type="quad"),
    "quad-perturbed": _perturbed_quad_grid,
    "tetra": lambda: Mesh.gen_box(chara_length=0.3),
    "tetra10": lambda: Mesh.gen_box(chara_length=0.4, order=2),
    "hexahedron": _perturbed_hex_grid,
}


@pytest.mark.parametrize("name", list(PATCH_MESHES))
def test_patch_test_reproduces_a_linear_solution(name):
    """u = 1 + 2x - 3y (+ 0.5z): Dirichlet on the lower sides, the matching flux on the upper ones."""
    mesh = PATCH_MESHES[name]()
    c = torch.tensor([2.0, -3.0, 0.5][: mesh.dim])
    exact = 1.0 + mesh.points @ c
    lower_sides = ["left", "bottom"] if mesh.dim == 2 else ["left", "front", "bottom"]
    upper_sides = ["right", "top"] if mesh.dim == 2 else ["right", "back", "top"]
    mask = torch.zeros(mesh.n_points, dtype=torch.bool)
    for side in lower_sides:
        mask |= mesh.nodes_of(side)
    neumann = torch.cat([mesh.facet_set(side) for side in upper_sides])
    kappa = 2.5
    K = Diffusion.from_mesh(mesh)(scalar_data={"kappa": kappa})
    b = Flux.from_mesh(mesh, facets=neumann)(
        scalar_data={"kappa": kappa}, element_data={"c": c.expand(mesh.n_cells, -1)}
    )
    cond = Condenser(mask, dirichlet_value=exact)
    K_, b_ = cond(K, b)
    u = cond.recover(K_.solve(b_))
    assert (u - exact).abs().max() < 1e-12


# -- manufactured solutions --------------------------------------------------------------------


def _solve_manufactured(mesh):
    """(L2 error, H1 error) of the discrete solution of the sine-product problem on mesh."""
    errors = manufactured.errors(mesh, manufactured.solve(mesh))
    return errors["l2_error"], errors["h1_error"]


MMS_CASES = [
    # (element_type, order, dim, grid sizes, expected L2 rate, expected H1 rate, tolerance)
    ("triangle", 1, 2, (8, 16, 32), 2, 1, 0.15),
    ("triangle", 2, 2, (4, 8, 16), 3, 2, 0.2),
    ("quad", 1, 2, (8, 16, 32), 2, 1, 0.15),
    ("tetra", 1, 3, (4, 8, 16), 2, 1, 0.15),
    ("tetra", 2, 3, (2, 4, 8), 3, 2, 0.2),
    ("hexahedron", 1, 3, (4, 8, 16), 2, 1, 0.15),
]


def convergence_table(element_type, order, dim, sizes):
    """Rows (h, L2 error, H1 error) on structured grids of the unit square/cube."""
    rows = []
    for n in sizes:
        mesh = Mesh.gen_grid((n,) * dim, element_type=element_type, order=order)
        l2, h1 = _solve_manufactured(mesh)
        rows.append((1.0 / n, l2, h1))
    return rows


def rates(rows):
    return [
        (math.log(e0[1] / e1[1]) / math.log(e0[0] / e1[0]), math.log(e0[2] / e1[2]) / math.log(e0[0] / e1[0]))
        for e0, e1 in zip(rows, rows[1:])
    ]


@pytest.mark.parametrize(
    "element_type, order, dim, sizes, l2_rate, h1_rate, tol", MMS_CASES, ids=[f"{c[0]}-P{c[1]}" for c in MMS_CASES]
)
def test_manufactured_solution_converges_at_the_element_rate(element_type, order, dim, sizes, l2_rate, h1_rate, tol):
    rows = convergence_table(element_type, order, dim, sizes)
    observed_l2, observed_h1 = rates(rows)[-1]
    assert abs(observed_l2 - l2_rate) <= tol, rows
    assert abs(observed_h1 - h1_rate) <= tol, rows
