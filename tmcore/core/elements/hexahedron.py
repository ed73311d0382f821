"""Trilinear hexahedron on [0, 1]^3 (meshio/VTK ``hexahedron``)."""

from tmcore.core.elements.base import MultilinearElement


class Hexahedron(MultilinearElement):
    """Eight-node Q1 hexahedron; bottom face z=0 counter-clockwise, then the top face z=1.

    Facets (z=0, z=1, y=0, x=1, y=1, x=0) list their corners cyclically, outward-oriented.
    """

    cell_type = "hexahedron"
    shape = "hexahedron"
    dim = 3
    order = 1
    n_nodes = 8
    n_vertices = 8
    tensor_product = True
    _nodes = (
        (0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (1.0, 1.0, 0.0), (0.0, 1.0, 0.0),
        (0.0, 0.0, 1.0), (1.0, 0.0, 1.0), (1.0, 1.0, 1.0), (0.0, 1.0, 1.0),
    )  # fmt: skip
    edges = (
        (0, 1), (1, 2), (2, 3), (3, 0),
        (4, 5), (5, 6), (6, 7), (7, 4),
        (0, 4), (1, 5), (2, 6), (3, 7),
    )  # fmt: skip
    facet_type = "quad"
    facets = (
        (0, 3, 2, 1), (4, 5, 6, 7),
        (0, 1, 5, 4), (1, 2, 6, 5), (2, 3, 7, 6), (3, 0, 4, 7),
    )  # fmt: skip
