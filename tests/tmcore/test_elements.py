"""Reference elements (shape functions, nodes, facets) and quadrature rules."""

import itertools
import math
import pickle

import pytest
import torch

from tmcore.core.elements import Element, Triangle, get_element, quadrature
from tmcore.core.errors import MeshError

F64 = torch.float64
CELL_TYPES = ["line", "line3", "triangle", "triangle6", "quad", "tetra", "tetra10", "hexahedron"]
SHAPES = ["line", "triangle", "quad", "tetra", "hexahedron"]
DIM = {"line": 1, "triangle": 2, "quad": 2, "tetra": 3, "hexahedron": 3}
TENSOR_SHAPES = {"line", "quad", "hexahedron"}
N_FACETS = {"line": 2, "triangle": 3, "quad": 4, "tetra": 4, "hexahedron": 6}
N_EDGES = {"line": 1, "triangle": 3, "quad": 4, "tetra": 6, "hexahedron": 12}


@pytest.fixture(params=CELL_TYPES)
def element(request) -> Element:
    return get_element(request.param)


def random_points(shape: str, n: int = 20, seed: int = 0) -> torch.Tensor:
    """n uniformly random points (n, dim) inside the reference cell of ``shape``."""
    gen = torch.Generator().manual_seed(seed)
    dim = DIM[shape]
    if shape in TENSOR_SHAPES:
        return torch.rand(n, dim, generator=gen, dtype=F64)
    e = -torch.rand(n, dim + 1, generator=gen, dtype=F64).log()  # Dirichlet(1, ..., 1)
    return (e / e.sum(1, keepdim=True))[:, :dim]


def convex_combinations(corners: torch.Tensor, n: int = 10, seed: int = 1) -> torch.Tensor:
    """n random points (n, dim) in the convex hull of ``corners`` (m, dim)."""
    gen = torch.Generator().manual_seed(seed)
    e = -torch.rand(n, len(corners), generator=gen, dtype=F64).log()
    return (e / e.sum(1, keepdim=True)) @ corners


def exponents(dim: int, degree: int, total: bool) -> list[tuple[int, ...]]:
    """Exponent tuples with total degree <= degree (total) or each exponent <= degree."""
    box = itertools.product(range(degree + 1), repeat=dim)
    return [a for a in box if not total or sum(a) <= degree]


def monomials(x: torch.Tensor, exps: list[tuple[int, ...]]) -> torch.Tensor:
    """Monomials x^a at points x (q, dim) for each exponent tuple a -> (q, len(exps))."""
    return (x[:, None, :] ** torch.tensor(exps, dtype=x.dtype)).prod(-1)


def monomial_gradients(x: torch.Tensor, exps: list[tuple[int, ...]]) -> torch.Tensor:
    """Gradients of the monomials x^a -> (q, len(exps), dim)."""
    a = torch.tensor(exps, dtype=x.dtype)
    columns = []
    for d in range(x.shape[1]):
        lowered = a.clone()
        lowered[:, d] = (a[:, d] - 1).clamp(min=0)
        columns.append(a[:, d] * (x[:, None, :] ** lowered).prod(-1))
    return torch.stack(columns, -1)


def exact_integral(shape: str, a: tuple[int, ...]) -> float:
    """Integral of x^a over the reference cell (a!b!.../(|a| + dim)! on simplices)."""
    if shape in TENSOR_SHAPES:
        return math.prod(1 / (ai + 1) for ai in a)
    return math.prod(math.factorial(ai) for ai in a) / math.factorial(sum(a) + len(a))


# ----------------------------------------------------------------------------- elements


def test_metadata(element):
    nodes = element.reference_nodes
    assert nodes.dtype == F64 and nodes.shape == (element.n_nodes, element.dim)
    assert element.dim == DIM[element.shape] and element.order in (1, 2)
    assert element.tensor_product == (element.shape in TENSOR_SHAPES)
    midside = len(element.edges) if element.order == 2 else 0
    assert element.n_nodes == element.n_vertices + midside
    assert all(0 <= v < element.n_vertices for edge in element.edges for v in edge)
    assert len(element.facets) == N_FACETS[element.shape]
    if element.facet_type is None:
        assert element.dim == 1 and all(len(f) == 1 for f in element.facets)
    else:
        facet_element = get_element(element.facet_type)
        assert facet_element.dim == element.dim - 1 and facet_element.order == element.order
        assert all(len(f) == facet_element.n_nodes for f in element.facets)
    corners = nodes[: element.n_vertices]  # the corners of the reference cell
    assert ((corners == 0) | (corners == 1)).all()
    assert len({tuple(c) for c in corners.tolist()}) == element.n_vertices


def test_singleton_and_immutable(element):
    assert get_element(element.cell_type) is element
    assert type(element)() is element
    assert pickle.loads(pickle.dumps(element)) is element
    with pytest.raises(AttributeError):
        element.order = 3
    nodes = element.reference_nodes
    nodes += 1  # a fresh tensor each time: the element is unaffected
    assert element.reference_nodes.min() == 0


def test_partition_of_unity(element):
    xi = random_points(element.shape)
    torch.testing.assert_close(element.basis(xi).sum(1), torch.ones(len(xi), dtype=F64))
    grads = element.basis_gradients(xi)
    assert grads.shape == (len(xi), element.n_nodes, element.dim)
    torch.testing.assert_close(grads.sum(1), torch.zeros(len(xi), element.dim, dtype=F64))


def test_kronecker_property(element):
    values = element.basis(element.reference_nodes)
    torch.testing.assert_close(values, torch.eye(element.n_nodes, dtype=F64), atol=1e-14, rtol=0)


def test_gradients_match_finite_differences(element):
    xi, h = random_points(element.shape), 1e-6
    columns = []
    for d in range(element.dim):
        step = torch.zeros(element.dim, dtype=F64)
        step[d] = h
        columns.append((element.basis(xi + step) - element.basis(xi - step)) / (2 * h))
    torch.testing.assert_close(element.basis_gradients(xi), torch.stack(columns, -1), atol=1e-7, rtol=0)


def test_gradients_match_autograd(element):
    xi = random_points(element.shape, n=5)
    jac = torch.autograd.functional.jacobian(element.basis, xi)  # (q, k, q, dim)
    diagonal = torch.stack([jac[i, :, i] for i in range(len(xi))])
    torch.testing.assert_close(element.basis_gradients(xi), diagonal)


def test_dtype_and_batch_shape_follow_input(element):
    xi = random_points(element.shape, n=6)
    values = element.basis(xi.float())
    assert values.dtype == torch.float32
    torch.testing.assert_close(values, element.basis(xi).float())
    batched = element.basis_gradients(xi.reshape(2, 3, element.dim))
    flat = batched.reshape(6, element.n_nodes, element.dim)
    torch.testing.assert_close(flat, element.basis_gradients(xi))


def test_bad_points_raise(element):
    with pytest.raises(ValueError, match="xi"):
        element.basis(torch.zeros(4, element.dim + 1, dtype=F64))
    with pytest.raises(ValueError, match="xi"):
        element.basis_gradients(torch.zeros(4, element.dim, dtype=torch.int64))
    with pytest.raises(TypeError, match="xi"):
        element.basis([[0.0] * element.dim])


def test_midside_nodes_are_edge_midpoints(element):
    nodes = element.reference_nodes
    for i, (a, b) in enumerate(element.edges):
        if element.order == 2:
            torch.testing.assert_close(nodes[element.n_vertices + i], (nodes[a] + nodes[b]) / 2)
    pairs = {frozenset(edge) for edge in element.edges}
    assert len(pairs) == len(element.edges) == N_EDGES[element.shape]
    if element.tensor_product:  # box edges join corners that differ in one coordinate
        assert all((nodes[a] - nodes[b]).abs().sum() == 1 for a, b in element.edges)


def test_facets_lie_on_boundary_faces(element):
    nodes = element.reference_nodes
    centroid = nodes[: element.n_vertices].mean(0)
    facet_element = get_element(element.facet_type) if element.facet_type else None
    n_facet_vertices = facet_element.n_vertices if facet_element else 1
    seen = set()
    for facet in element.facets:
        corners = nodes[list(facet[:n_facet_vertices])]
        if element.dim == 1:
            normal = torch.ones(1, dtype=F64)
        else:
            _, sv, vh = torch.linalg.svd(corners[1:] - corners[0])
            assert (sv > 1e-12).sum() == element.dim - 1  # the corners span a facet
            normal = vh[-1]
        offsets = (nodes - corners[0]) @ normal
        torch.testing.assert_close(offsets[list(facet)], torch.zeros(len(facet), dtype=F64))
        off_facet = [i for i in range(element.n_nodes) if i not in facet]
        assert (offsets[off_facet] > 1e-12).all() or (offsets[off_facet] < -1e-12).all()
        if facet_element is not None:  # facet edges (in facet order) are cell edges
            cell_edges = {frozenset(edge) for edge in element.edges}
            facet_edges = [frozenset((facet[a], facet[b])) for a, b in facet_element.edges]
            assert all(edge in cell_edges for edge in facet_edges)
        if facet_element is not None and facet_element.order == 2:
            for i, (a, b) in enumerate(facet_element.edges):
                midpoint = (nodes[facet[a]] + nodes[facet[b]]) / 2
                torch.testing.assert_close(nodes[facet[facet_element.n_vertices + i]], midpoint)
        if element.dim > 1:  # facets are listed outward-oriented
            tangents = corners[1:] - corners[0]
            outward = (
                torch.stack([tangents[0, 1], -tangents[0, 0]])
                if element.dim == 2
                else torch.linalg.cross(tangents[0], tangents[1])
            )
            assert outward @ (centroid - corners[0]) < 0
        seen.add(frozenset(facet))
    assert len(seen) == len(element.facets)


def test_basis_trace_vanishes_off_facet(element):
    """On a facet only the facet's own nodes carry nonzero shape functions (conformity)."""
    nodes = element.reference_nodes
    n_facet_vertices = get_element(element.facet_type).n_vertices if element.facet_type else 1
    for facet in element.facets:
        points = convex_combinations(nodes[list(facet[:n_facet_vertices])])
        values = element.basis(points)
        off_facet = [i for i in range(element.n_nodes) if i not in facet]
        assert values[:, off_facet].abs().max() < 1e-14
        assert values[:, list(facet)].abs().max() > 0.1


def test_reproduces_polynomials_of_its_order(element):
    exps = exponents(element.dim, element.order, total=not element.tensor_product)
    nodes, xi = element.reference_nodes, random_points(element.shape)
    coefficients = monomials(nodes, exps)  # (k, M) nodal interpolants of each monomial
    torch.testing.assert_close(element.basis(xi) @ coefficients, monomials(xi, exps))
    torch.testing.assert_close(
        torch.einsum("qkd,km->qmd", element.basis_gradients(xi), coefficients),
        monomial_gradients(xi, exps),
    )
    beyond = [(element.order + 1,) + (0,) * (element.dim - 1)]  # x^(order+1) is not in the space
    error = element.basis(xi) @ monomials(nodes, beyond) - monomials(xi, beyond)
    assert error.abs().max() > 1e-3


@pytest.mark.parametrize(
    ("cell_type", "expected"),
    [
        ("line3", [[0], [1], [0.5]]),
        ("triangle6", [[0, 0], [1, 0], [0, 1], [0.5, 0], [0.5, 0.5], [0, 0.5]]),
        ("quad", [[0, 0], [1, 0], [1, 1], [0, 1]]),
        ("tetra10", [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [0.5, 0, 0],
                     [0.5, 0.5, 0], [0, 0.5, 0], [0, 0, 0.5], [0.5, 0, 0.5], [0, 0.5, 0.5]]),
        ("hexahedron", [[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0],
                        [0, 0, 1], [1, 0, 1], [1, 1, 1], [0, 1, 1]]),
    ],
)  # fmt: skip
def test_meshio_node_order(cell_type, expected):
    """The node orderings are meshio's / VTK's (tetra10 differs from gmsh in nodes 8, 9)."""
    nodes = get_element(cell_type).reference_nodes
    torch.testing.assert_close(nodes, torch.tensor(expected, dtype=F64))


def test_get_element_unknown_type():
    with pytest.raises(MeshError, match="pyramid") as info:
        get_element("pyramid")
    assert "triangle6" in str(info.value) and "hexahedron" in str(info.value)
    assert isinstance(get_element("triangle"), Triangle)


# --------------------------------------------------------------------------- quadrature


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("degree", range(11))
def test_quadrature_is_exact(shape, degree):
    points, weights = quadrature(shape, degree)
    dim = DIM[shape]
    assert points.shape == (len(weights), dim) and points.dtype == weights.dtype == F64
    exps = exponents(dim, degree, total=shape not in TENSOR_SHAPES)
    exact = torch.tensor([exact_integral(shape, a) for a in exps], dtype=F64)
    torch.testing.assert_close(weights @ monomials(points, exps), exact, rtol=1e-13, atol=1e-15)
    assert (weights > 0).all()
    assert (points > 0).all() and (points < 1).all()
    if shape not in TENSOR_SHAPES:
        assert (points.sum(1) < 1).all()


@pytest.mark.parametrize(
    ("shape", "degree"),
    [(s, d) for s in SHAPES for d in (1, 3, 5, 7, 9)] + [("triangle", 2), ("tetra", 2)],
)
def test_quadrature_is_not_exact_beyond_its_degree(shape, degree):
    """x^(degree+1) is missed by odd-degree rules and by the degree-2 simplex rules.

    (An even-degree Gauss-Legendre rule is exact one degree further, as Gauss rules are.)
    """
    points, weights = quadrature(shape, degree)
    a = (degree + 1,) + (0,) * (DIM[shape] - 1)
    error = weights @ monomials(points, [a])[:, 0] - exact_integral(shape, a)
    assert abs(error) > 1e-6 * exact_integral(shape, a)


@pytest.mark.parametrize("shape", ["triangle", "tetra"])
def test_quadrature_high_degree(shape):
    points, weights = quadrature(shape, 20)
    exps = [a for a in exponents(DIM[shape], 20, total=True) if sum(a) >= 18]
    exact = torch.tensor([exact_integral(shape, a) for a in exps], dtype=F64)
    torch.testing.assert_close(weights @ monomials(points, exps), exact, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    ("shape", "degree", "n_points"),
    [
        ("line", 0, 1), ("line", 3, 2), ("line", 4, 3), ("quad", 3, 4), ("hexahedron", 5, 27),
        ("triangle", 0, 1), ("triangle", 1, 1), ("triangle", 2, 3), ("triangle", 3, 4),
        ("tetra", 1, 1), ("tetra", 2, 4), ("tetra", 3, 8),
    ],
)  # fmt: skip
def test_quadrature_point_counts(shape, degree, n_points):
    assert len(quadrature(shape, degree)[1]) == n_points


def test_quadrature_dtype_and_cache_isolation():
    points, weights = quadrature("triangle", 4, dtype=torch.float32)
    assert points.dtype == weights.dtype == torch.float32
    weights.zero_()  # a returned tensor is a copy: the cached rule is unaffected
    assert quadrature("triangle", 4)[1].sum().item() == pytest.approx(0.5, rel=1e-14)


@pytest.mark.parametrize(
    ("shape", "degree", "word"),
    [("triangle", -1, "degree"), ("line", 1.5, "degree"), ("quad", True, "degree"),
     ("quad", "2", "degree"), ("pyramid", 2, "shape"), ("triangle6", 2, "shape")],
)  # fmt: skip
def test_quadrature_bad_arguments(shape, degree, word):
    with pytest.raises(ValueError, match=word):
        quadrature(shape, degree)
