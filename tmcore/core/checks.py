"""Argument checks, the one place for them: each returns the checked value or raises a
``ValueError``/``TypeError`` that names the argument, what was expected and what came.

Every module validates its scalar arguments with these, so a message reads the same
wherever it comes from; the module sits at the bottom of the core, importing nothing of
tmcore, so that meshes and elements can use it too (``check_mesh_type`` lives with ``Mesh``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import torch

DTYPE = torch.float64

__all__ = [
    "DTYPE",
    "check_callable",
    "check_callback",
    "check_choice",
    "check_count",
    "check_real",
    "is_int",
    "is_number",
    "is_real",
]


def check_callable(name: str, value: Any, signature: str) -> Callable:
    """A callable; ``signature`` says what it maps, as the message shows it (``"(u, c) -> conductivity"``)."""
    if not callable(value):
        raise TypeError(f"{name} must be a callable {signature}, got {type(value).__name__}")
    return value


def check_count(name: str, value: Any, minimum: int = 1) -> int:
    """An int >= minimum (bools refused)."""
    if not is_int(value):
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return value


def is_int(value: Any) -> bool:
    """True for an int or a NumPy integer (bools are not counts here)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """True for an int or float, finite or not (bools are not numbers here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """True for a finite int or float (bools are not numbers here)."""
    return is_number(value) and math.isfinite(value)


def check_real(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = True,
    high_open: bool = True,
    what: str | None = None,
) -> float:
    """A finite real number in the interval (low, high); either end may be closed or absent.

    ``what`` replaces the default description of the expected value in the message
    (e.g. "a positive length in the mesh's units").
    """
    if not is_real(value):
        raise ValueError(f"{name} must be {what or 'a finite real number'}, got {value!r}")
    value = float(value)
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if (below or above) and what is not None:
        raise ValueError(f"{name} must be {what}, got {value!r}")
    if below or above:
        left = "-inf" if low is None else f"{low:g}"
        right = "inf" if high is None else f"{high:g}"
        interval = (
            f"{'(' if low_open or low is None else '['}{left}, {right}{')' if high_open or high is None else ']'}"
        )
        raise ValueError(f"{name} must lie in {interval}, got {value!r}")
    return value


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    """One of ``choices`` (compared with ==; bools never match ints)."""
    if not any(value is choice or (type(value) is type(choice) and value == choice) for choice in choices):
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")
    return value


def check_callback(callback: Any) -> Callable | None:
    """None or a callable."""
    if callback is not None and not callable(callback):
        raise ValueError(f"callback must be None or a callable (step, value), got {type(callback).__name__}")
    return callback
