"""Reference finite elements (P1/P2 simplices, Q1 boxes) and quadrature rules.

``get_element(cell_type)`` returns the immutable singleton :class:`Element` of a meshio
cell type; ``quadrature(shape, degree)`` returns points and weights on a reference cell.
"""

from tmcore.elements.base import Element, get_element
from tmcore.elements.hexahedron import Hexahedron
from tmcore.elements.line import Line, Line3
from tmcore.elements.quadrature import quadrature
from tmcore.elements.quadrilateral import Quadrilateral
from tmcore.elements.tetrahedron import Tetrahedron, Tetrahedron10
from tmcore.elements.triangle import Triangle, Triangle6

__all__ = [
    "Element",
    "Hexahedron",
    "Line",
    "Line3",
    "Quadrilateral",
    "Tetrahedron",
    "Tetrahedron10",
    "Triangle",
    "Triangle6",
    "get_element",
    "quadrature",
]
