"""Structured grids of every cell type tmcore generates, for tests that run once per cell type."""

from __future__ import annotations

from tmcore import Mesh

#: Mesh.gen_grid's options that give each cell type
GRID_OPTIONS = {
    "triangle": {},
    "quad": {"element_type": "quad"},
    "triangle6": {"order": 2},
    "tetra": {},
    "hexahedron": {"element_type": "hexahedron"},
    "tetra10": {"order": 2},
}

CELL_TYPES = tuple(GRID_OPTIONS)


def grid(cell_type: str, shape: tuple[int, ...]) -> Mesh:
    """The structured grid of ``cell_type`` cells with ``shape`` cells along the axes (2 or 3 of them)."""
    return Mesh.gen_grid(shape, **GRID_OPTIONS[cell_type])
