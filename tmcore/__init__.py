"""tmcore: differentiable finite-element analysis on PyTorch.

The pipeline: ``Mesh -> ElementAssembler / NodeAssembler -> SparseMatrix, vector ->
Condenser -> SparseMatrix.solve -> Condenser.recover``. Every step is an ``nn.Module``
or an ``autograd.Function``; a loss on the solution back-propagates to every tensor
that fed it through one adjoint solve.
"""

from tmcore.core.assembly import (
    ElementAssembler,
    FacetAssembler,
    Functional,
    NodeAssembler,
    VectorElementAssembler,
    VectorFacetAssembler,
    VectorNodeAssembler,
    dof_mask,
)
from tmcore.core.condense import Condenser
from tmcore.core.errors import AssemblyError, MeshError, SingularMatrixError, SolverError
from tmcore.core.linalg import solvers
from tmcore.core.linalg.sparse import SparseMatrix
from tmcore.core.mesh import Mesh

__version__ = "0.1.0"

__all__ = [
    "AssemblyError",
    "Condenser",
    "ElementAssembler",
    "FacetAssembler",
    "Functional",
    "Mesh",
    "MeshError",
    "NodeAssembler",
    "SingularMatrixError",
    "SolverError",
    "SparseMatrix",
    "VectorElementAssembler",
    "VectorFacetAssembler",
    "VectorNodeAssembler",
    "dof_mask",
    "solvers",
]
