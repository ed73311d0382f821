"""Make ``import mosaic_shared`` work with the mosaic-bench 0.2.0 wheel (no fork of mosaic).

mosaic's Tesseracts and canonical schemas import ``mosaic_shared`` as a top-level package;
mosaic's images install it separately (``pip install mosaic/mosaic_shared``), but the
PyPI wheel ships it only inside ``mosaic`` as ``mosaic.mosaic_shared`` and no
``mosaic-shared`` distribution exists on PyPI. :func:`ensure_mosaic_shared` registers the
bundled copy under the top-level name (module objects shared, so ``mosaic_shared.schema_types``
and ``mosaic.mosaic_shared.schema_types`` are one module). Nothing is done when a top-level
``mosaic_shared`` is installed.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from types import ModuleType

__all__ = ["canonical_schemas", "ensure_mosaic_shared", "problem_module"]

# the bundled package and the submodules the schemas import by their top-level name
_MODULES = ("", ".schema_types", ".problems")


def ensure_mosaic_shared() -> None:
    """Alias ``mosaic_shared`` (and its schema_types and problems modules) to ``mosaic.mosaic_shared``."""
    if "mosaic_shared" in sys.modules or importlib.util.find_spec("mosaic_shared") is not None:
        return
    for suffix in _MODULES:
        sys.modules["mosaic_shared" + suffix] = importlib.import_module("mosaic.mosaic_shared" + suffix)


def problem_module(problem: str) -> ModuleType:
    """``mosaic_shared.problems.<problem>`` (schemas and ``make_default_inputs``), e.g. "thermal_mesh"."""
    ensure_mosaic_shared()
    return importlib.import_module(f"mosaic_shared.problems.{problem}")


def canonical_schemas(problem: str) -> tuple[type, type, Callable]:
    """(InputSchema, OutputSchema, make_differentiable) of ``mosaic_shared.problems.<problem>``."""
    module = problem_module(problem)
    schema_types = importlib.import_module("mosaic_shared.schema_types")
    return module.InputSchema, module.OutputSchema, schema_types.make_differentiable
