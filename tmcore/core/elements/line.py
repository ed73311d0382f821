"""Line elements on the reference interval [0, 1]: ``line`` (P1) and ``line3`` (P2)."""

from tmcore.core.elements.base import SimplexLagrangeElement


class Line(SimplexLagrangeElement):
    """Two-node linear line element; nodes 0 and 1, facets are the two end points."""

    cell_type = "line"
    shape = "line"
    dim = 1
    order = 1
    n_nodes = 2
    n_vertices = 2
    tensor_product = True
    _nodes = ((0.0,), (1.0,))
    facet_type = None
    facets = ((0,), (1,))
    edges = ((0, 1),)


class Line3(SimplexLagrangeElement, linear=Line):
    """Three-node quadratic line element; nodes 0, 1, then the midpoint 1/2."""

    cell_type = "line3"
    facet_type = None
