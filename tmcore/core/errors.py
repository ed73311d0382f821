"""The exceptions tmcore raises on bad input or failed numerics.

Every check in the package raises one of these (or a plain ``TypeError`` for an
argument of the wrong Python type), with a message that names the argument, what was
expected and what came.
"""


class MeshError(ValueError):
    """A mesh is malformed: bad coordinates, indices, or cells."""


class AssemblyError(ValueError):
    """An integrand or its data does not fit the assembler or the mesh."""


class SolverError(RuntimeError):
    """A linear solve could not produce a trustworthy solution."""


class SingularMatrixError(SolverError):
    """The matrix is singular to working precision (e.g. a pure Neumann problem)."""
