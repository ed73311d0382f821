"""Tetrahedron elements on the unit simplex: ``tetra`` (P1) and ``tetra10`` (P2, VTK order)."""

from tmcore.core.elements.base import SimplexLagrangeElement
from tmcore.core.elements.triangle import Triangle


class Tetrahedron(SimplexLagrangeElement):
    """Four-node linear tetrahedron; facet i is opposite vertex i, listed outward-oriented."""

    cell_type = "tetra"
    shape = "tetra"
    dim = 3
    order = 1
    n_nodes = 4
    n_vertices = 4
    tensor_product = False
    _nodes = ((0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    edges = ((0, 1), (1, 2), (0, 2), (0, 3), (1, 3), (2, 3))
    facet_type = "triangle"
    facets = ((1, 2, 3), (0, 3, 2), (0, 1, 3), (0, 2, 1))


class Tetrahedron10(SimplexLagrangeElement, linear=Tetrahedron, facet_element=Triangle):
    """Ten-node quadratic tetrahedron; vertices, then midside nodes of edges
    (0,1), (1,2), (0,2), (0,3), (1,3), (2,3) (VTK/meshio order, not gmsh's)."""

    cell_type = "tetra10"
    facet_type = "triangle6"
