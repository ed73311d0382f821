"""The reference-element interface, the shared Lagrange evaluators and the registry.

Every supported meshio cell type has one :class:`Element` subclass whose single,
immutable instance describes the reference cell (nodes, facets, edges) and evaluates
the nodal shape functions and their reference gradients. :func:`get_element` looks
the instance up by meshio cell-type name.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from tmcore.core.errors import MeshError

_REGISTRY: dict[str, type[Element]] = {}

Nodes = tuple[tuple[float, ...], ...]


class Element:
    """A reference finite element (one subclass per meshio cell type, one instance each).

    Class attributes describe the reference cell: ``cell_type`` (meshio name),
    ``shape`` (reference shape), ``dim``, ``order``, ``n_nodes`` (k), ``n_vertices``
    (corner nodes, listed first), ``tensor_product`` (Q_k space), ``facet_type``
    (meshio type of the facets, ``None`` for the point facets of lines), ``facets``
    (local node indices per facet, in ``facet_type``'s node order), ``edges`` (vertex
    pairs; for P2 the midside node of edge i is node ``n_vertices + i``).
    ``reference_nodes`` is a fresh ``(k, dim)`` float64 tensor on every access.
    """

    cell_type: ClassVar[str]
    shape: ClassVar[str]
    dim: ClassVar[int]
    order: ClassVar[int]
    n_nodes: ClassVar[int]
    n_vertices: ClassVar[int]
    tensor_product: ClassVar[bool]
    facet_type: ClassVar[str | None]
    facets: ClassVar[tuple[tuple[int, ...], ...]]
    edges: ClassVar[tuple[tuple[int, int], ...]]
    _nodes: ClassVar[Nodes]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "cell_type" in cls.__dict__:
            _REGISTRY[cls.cell_type] = cls

    def __new__(cls):
        if "cell_type" not in cls.__dict__:
            raise TypeError(f"{cls.__name__} is abstract; use get_element(cell_type)")
        if "_instance" not in cls.__dict__:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is immutable (tried to set {name!r})")

    def __delattr__(self, name):
        raise AttributeError(f"{type(self).__name__} is immutable (tried to delete {name!r})")

    def __reduce__(self):
        return get_element, (self.cell_type,)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    @property
    def reference_nodes(self) -> Tensor:
        """Node coordinates on the reference cell, ``(n_nodes, dim)`` float64."""
        return torch.tensor(self._nodes, dtype=torch.float64)

    def basis(self, xi: Tensor) -> Tensor:
        """Shape-function values at reference points ``xi`` (q, dim) -> (q, n_nodes).

        Leading batch dimensions other than q are allowed; the result has the dtype and
        device of ``xi`` and is differentiable with respect to it.
        """
        return self._basis(self._check_points(xi))

    def basis_gradients(self, xi: Tensor) -> Tensor:
        """Reference gradients of the shape functions: ``xi`` (q, dim) -> (q, n_nodes, dim)."""
        return self._basis_gradients(self._check_points(xi))

    def _check_points(self, xi: Tensor) -> Tensor:
        if not isinstance(xi, Tensor):
            raise TypeError(f"xi must be a torch.Tensor, got {type(xi).__name__}")
        if xi.ndim == 0 or xi.shape[-1] != self.dim or not xi.is_floating_point():
            raise ValueError(
                f"xi must be a floating-point tensor of shape (q, {self.dim}) for "
                f"{self.cell_type}, got shape {tuple(xi.shape)} and dtype {xi.dtype}"
            )
        return xi

    def _basis(self, xi: Tensor) -> Tensor:
        raise NotImplementedError

    def _basis_gradients(self, xi: Tensor) -> Tensor:
        raise NotImplementedError


class SimplexLagrangeElement(Element):
    """P1/P2 Lagrange element on a simplex, evaluated through barycentric coordinates.

    Vertex i of the reference simplex is the origin (i = 0) or the unit vector
    e_i, so the barycentric coordinates are ``(1 - sum(xi), xi_1, ..., xi_dim)``.
    P1: N_i = l_i. P2: N_i = l_i (2 l_i - 1) at vertices, 4 l_a l_b at edge (a, b).

    A P2 element is declared from its P1 element, ``class Triangle6(SimplexLagrangeElement,
    linear=Triangle, facet_element=Line)``: it takes the P1 shape, dimension, vertices and edges;
    its nodes are the vertices, then the edge midpoints (node ``n_vertices + i`` on edge i); its
    facets are the P1 facets followed by their midside nodes in the order of ``facet_element``'s
    edges (the P1 facets themselves when they are points: ``facet_element`` None).
    """

    def __init_subclass__(
        cls, linear: type[Element] | None = None, facet_element: type[Element] | None = None, **kwargs
    ):
        if linear is not None:
            cls.shape, cls.dim, cls.tensor_product = linear.shape, linear.dim, linear.tensor_product
            cls.order, cls.n_vertices, cls.edges = 2, linear.n_vertices, linear.edges
            cls._nodes = linear._nodes + edge_midpoints(linear._nodes, linear.edges)
            cls.n_nodes = len(cls._nodes)
            cls.facets = (
                linear.facets
                if facet_element is None
                else midside_facets(linear.facets, facet_element.edges, linear.edges, linear.n_vertices)
            )
        super().__init_subclass__(**kwargs)

    def _barycentric(self, xi: Tensor) -> tuple[Tensor, Tensor]:
        """Barycentric coordinates (..., dim+1) and their constant gradients (dim+1, dim)."""
        lam = torch.cat([1 - xi.sum(-1, keepdim=True), xi], dim=-1)
        eye = torch.eye(self.dim, dtype=xi.dtype, device=xi.device)
        return lam, torch.cat([-eye.sum(0, keepdim=True), eye])

    def _edge_ends(self) -> tuple[list[int], list[int]]:
        return [a for a, _ in self.edges], [b for _, b in self.edges]

    def _basis(self, xi: Tensor) -> Tensor:
        lam, _ = self._barycentric(xi)
        if self.order == 1:
            return lam
        a, b = self._edge_ends()
        return torch.cat([lam * (2 * lam - 1), 4 * lam[..., a] * lam[..., b]], dim=-1)

    def _basis_gradients(self, xi: Tensor) -> Tensor:
        lam, dlam = self._barycentric(xi)
        dlam = dlam.expand(*lam.shape, self.dim)
        if self.order == 1:
            return dlam.clone()
        a, b = self._edge_ends()
        vertex = (4 * lam - 1)[..., None] * dlam
        midside = 4 * (lam[..., b, None] * dlam[..., a, :] + lam[..., a, None] * dlam[..., b, :])
        return torch.cat([vertex, midside], dim=-2)


class MultilinearElement(Element):
    """Q1 Lagrange element on [0, 1]^dim whose nodes are the cell's corners.

    N_i(xi) = prod_d f_id with f_id = xi_d if vertex i has coordinate 1 in d, else 1 - xi_d.
    """

    def _factors(self, xi: Tensor) -> tuple[Tensor, Tensor]:
        """1D factors f (..., k, dim) and their slopes (k, dim) (+1 or -1)."""
        corner = torch.tensor(self._nodes, dtype=xi.dtype, device=xi.device)
        slope = 2 * corner - 1
        return 1 - corner + slope * xi[..., None, :], slope

    def _basis(self, xi: Tensor) -> Tensor:
        return self._factors(xi)[0].prod(-1)

    def _basis_gradients(self, xi: Tensor) -> Tensor:
        f, slope = self._factors(xi)
        columns = [slope[:, d] * torch.cat([f[..., :d], f[..., d + 1 :]], dim=-1).prod(-1) for d in range(self.dim)]
        return torch.stack(columns, dim=-1)


def edge_midpoints(nodes: Nodes, edges: tuple[tuple[int, int], ...]) -> Nodes:
    """Midpoints of the given node pairs, as a tuple of coordinate tuples."""
    return tuple(tuple((p + q) / 2 for p, q in zip(nodes[a], nodes[b])) for a, b in edges)


def midside_facets(
    vertex_facets: tuple[tuple[int, ...], ...],
    facet_edges: tuple[tuple[int, int], ...],
    edges: tuple[tuple[int, int], ...],
    n_vertices: int,
) -> tuple[tuple[int, ...], ...]:
    """P2 facets: each vertex facet followed by the midside nodes of its edges.

    ``facet_edges`` are the facet element's own edges (local vertex pairs), so the
    midside nodes come in the facet type's node order; the midside node of cell edge
    i is ``n_vertices + i``.
    """
    midside = {frozenset(edge): n_vertices + i for i, edge in enumerate(edges)}
    return tuple(
        facet + tuple(midside[frozenset((facet[a], facet[b]))] for a, b in facet_edges) for facet in vertex_facets
    )


def get_element(cell_type: str) -> Element:
    """The reference element of a meshio cell type (e.g. ``"triangle6"``).

    Raises :class:`~tmcore.core.errors.MeshError` for an unsupported cell type.
    """
    if not isinstance(cell_type, str):
        raise TypeError(f"cell_type must be a str, got {type(cell_type).__name__}")
    if cell_type not in _REGISTRY:
        raise MeshError(f"unsupported cell type {cell_type!r}; supported cell types: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[cell_type]()
