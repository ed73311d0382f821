"""tmcore: differentiable finite-element analysis on PyTorch.

The pipeline: ``Mesh -> ElementAssembler / NodeAssembler -> SparseMatrix, vector ->
Condenser -> SparseMatrix.solve -> Condenser.recover``. Every step is an ``nn.Module``
or an ``autograd.Function``; a loss on the solution back-propagates to every tensor
that fed it through one adjoint solve.
"""

from .assemble import (
    ElementAssembler,
    FacetAssembler,
    Functional,
    NodeAssembler,
    VectorElementAssembler,
    VectorFacetAssembler,
    VectorNodeAssembler,
    dof_mask,
)
from .condense import Condenser
from .errors import AssemblyError, MeshError, SingularMatrixError, SolverError
from .mesh import Mesh
from .sparse import SparseMatrix

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
]
