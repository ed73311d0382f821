"""Meshes: the ``Mesh`` module, its generators, geometry and topology."""

from tmcore.core.mesh.mesh import Mesh, check_mesh_type

__all__ = ["Mesh", "check_mesh_type"]
