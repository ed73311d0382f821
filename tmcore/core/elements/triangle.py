"""Triangle elements on the unit simplex (0,0), (1,0), (0,1): ``triangle`` and ``triangle6``."""

from tmcore.core.elements.base import SimplexLagrangeElement
from tmcore.core.elements.line import Line


class Triangle(SimplexLagrangeElement):
    """Three-node linear triangle; facet i is edge i, counter-clockwise."""

    cell_type = "triangle"
    shape = "triangle"
    dim = 2
    order = 1
    n_nodes = 3
    n_vertices = 3
    tensor_product = False
    _nodes = ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0))
    edges = ((0, 1), (1, 2), (2, 0))
    facet_type = "line"
    facets = edges


class Triangle6(SimplexLagrangeElement, linear=Triangle, facet_element=Line):
    """Six-node quadratic triangle; vertices, then midside nodes of edges (0,1), (1,2), (2,0)."""

    cell_type = "triangle6"
    facet_type = "line3"
