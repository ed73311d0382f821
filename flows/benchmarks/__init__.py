"""Validation suites of the ``validation-benchmark`` flow, pluggable by name.

A suite is a function ``suite(context, **options) -> list[Check]`` registered with
:func:`register`. It runs inside the flow, calls the cached stages through
``context.stage(task)`` (which binds them to the flow's store and honours
``use_cache``) and returns one :class:`Check` per row of the benchmark table (dim
``case``). A check with bounds fails the flow when its value falls outside them; one
without bounds is a measurement (a timing, an error norm) reported as it is.

To add a suite (e.g. issue 5's full benchmark), write ``flows/benchmarks/<name>.py``
with a function decorated ``@register("<name>")`` and import it at the bottom of this
file; ``validation-benchmark --param suites='["<name>"]'`` runs it.

``steps`` is no suite: it holds the chapter's two optimisation steps as users write them, on
tmcore and by hand on scikit-fem + SciPy, which the ``timings`` suite's speed guard and the
report benchmark ``python -m benchmarks.steps`` both time.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..artifacts import Store
from ..caching import Bound


@dataclass(frozen=True)
class Check:
    """One row of the benchmark table."""

    case: str  # unique name, e.g. "mms-triangle-p1-l2-rate"
    suite: str
    quantity: str  # what ``value`` measures, e.g. "L2 convergence rate"
    value: float
    unit: str = ""
    low: float | None = None  # inclusive bounds; None: unbounded on that side
    high: float | None = None
    expected: float | None = None  # the nominal value, for the report

    @property
    def bounded(self) -> bool:
        return self.low is not None or self.high is not None

    @property
    def passed(self) -> bool:
        """Within its bounds (a NaN never is); unbounded checks always pass."""
        if not self.bounded:
            return True
        if not math.isfinite(self.value):
            return False
        return (self.low is None or self.value >= self.low) and (self.high is None or self.value <= self.high)

    def row(self) -> dict[str, Any]:
        nan = float("nan")
        return {
            "case": self.case,
            "suite": self.suite,
            "quantity": self.quantity,
            "value": float(self.value),
            "unit": self.unit,
            "expected": nan if self.expected is None else float(self.expected),
            "low": nan if self.low is None else float(self.low),
            "high": nan if self.high is None else float(self.high),
            "status": ("pass" if self.passed else "FAIL") if self.bounded else "info",
        }


@dataclass
class Context:
    """What a suite gets: the store and whether cached stage results may be reused."""

    store: Store
    use_cache: bool = True
    notes: list[str] = field(default_factory=list)  # lines for the report

    def stage(self, task: Any) -> Bound:
        """A cached task bound to the store; ``use_cache=False`` recomputes (fresh timings)."""
        return Bound(task, self.store, refresh=not self.use_cache)


Suite = Callable[..., list[Check]]
SUITES: dict[str, Suite] = {}


def register(name: str) -> Callable[[Suite], Suite]:
    def decorate(suite: Suite) -> Suite:
        if name in SUITES and SUITES[name] is not suite:
            raise ValueError(f"a benchmark suite named {name!r} is already registered")
        SUITES[name] = suite
        return suite

    return decorate


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise ValueError(f"unknown benchmark suite {name!r}; registered: {sorted(SUITES)}")
    return SUITES[name]


from . import gradients, mms, timings  # noqa: E402,F401  (they register themselves)
