"""Bilinear quadrilateral on [0, 1]^2 (meshio ``quad``)."""

from tmcore.core.elements.base import MultilinearElement


class Quadrilateral(MultilinearElement):
    """Four-node Q1 quadrilateral; corners counter-clockwise from the origin, facet i is edge i."""

    cell_type = "quad"
    shape = "quad"
    dim = 2
    order = 1
    n_nodes = 4
    n_vertices = 4
    tensor_product = True
    _nodes = ((0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0))
    edges = ((0, 1), (1, 2), (2, 3), (3, 0))
    facet_type = "line"
    facets = edges
