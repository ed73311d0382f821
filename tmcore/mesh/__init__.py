"""Meshes: the ``Mesh`` module, its generators, geometry and topology."""

from .mesh import Mesh

__all__ = ["Mesh"]
