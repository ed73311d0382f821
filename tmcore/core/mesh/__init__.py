"""Meshes: the ``Mesh`` module, its generators, geometry and topology."""

from tmcore.core.mesh.mesh import Mesh

__all__ = ["Mesh"]
