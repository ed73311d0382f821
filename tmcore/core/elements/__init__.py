"""Reference finite elements (P1/P2 simplices, Q1 boxes) and quadrature rules.

``get_element(cell_type)`` returns the immutable singleton :class:`Element` of a meshio
cell type; ``quadrature(shape, degree)`` returns points and weights on a reference cell.
"""

from tmcore.core.elements.base import Element, get_element
from tmcore.core.elements.hexahedron import Hexahedron
from tmcore.core.elements.line import Line, Line3
from tmcore.core.elements.quadrature import quadrature
from tmcore.core.elements.quadrilateral import Quadrilateral
from tmcore.core.elements.tetrahedron import Tetrahedron, Tetrahedron10
from tmcore.core.elements.triangle import Triangle, Triangle6

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
