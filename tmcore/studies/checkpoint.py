"""Checkpoints of a long study: its whole state as a plain dict, and the checks of a resume.

A study called with ``checkpoint_every=N`` and ``checkpoint=fn`` calls ``fn(state)``
after every N-th completed step (never after the last one); called with
``resume_from=state`` it continues from that state, and its final result is bitwise the
one of an uninterrupted run (same device, same thread count: the steps are the same
floating-point operations on the same numbers). A state is a dict of

- ``format`` (int), ``study`` (str), ``step`` (the number of completed steps),
- ``parameters``: the options that must match to resume (floats, ints, strings, None),
- the iterate (``theta`` or ``design``, a float64 tensor),
- ``optimizer``: the optimiser's ``state_dict()`` (tensors and Python scalars),
- ``history``: per-step float64 tensors of length ``step``,
- ``snapshots``: {step: tensor}.

Only tensors, numbers, strings, None, bools, dicts, lists and tuples: a state is stored
without pickle (``flows.artifacts.state_to_dataset`` writes it as netCDF), and every
tensor in it is a detached copy, so later steps never change a state already handed out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from tmcore.core.checks import check_count, is_int

__all__ = ["FORMAT", "check_checkpointing", "checkpoint_state", "clone_state", "check_resume"]

FORMAT = 1


def clone_state(value: Any) -> Any:
    """A deep copy of a state: tensors detached and cloned, containers rebuilt, scalars kept."""
    if isinstance(value, Tensor):
        return value.detach().clone()
    if isinstance(value, Mapping):
        return {key: clone_state(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return tuple(clone_state(item) for item in value)
    if isinstance(value, list):
        return [clone_state(item) for item in value]
    return value


def check_checkpointing(checkpoint_every: Any, checkpoint: Any) -> int | None:
    """``checkpoint_every`` (None or an int >= 1) and ``checkpoint`` (a callable) go together."""
    if checkpoint_every is None:
        if checkpoint is not None:
            raise ValueError("checkpoint was given but checkpoint_every is None; pass checkpoint_every=N (steps)")
        return None
    check_count("checkpoint_every", checkpoint_every)
    if checkpoint is None or not callable(checkpoint):
        raise ValueError(
            f"checkpoint_every={checkpoint_every} needs checkpoint, a callable receiving the state dict, "
            f"got {type(checkpoint).__name__}"
        )
    return checkpoint_every


def due(step: int, steps: int, checkpoint_every: int | None) -> bool:
    """Whether a checkpoint follows the step with 0-based index ``step`` (never after the last)."""
    return checkpoint_every is not None and (step + 1) % checkpoint_every == 0 and step + 1 < steps


def check_resume(
    state: Any,
    study: str,
    parameters: Mapping[str, Any],
    steps: int,
    iterate: str,
    length: int,
    history: tuple[str, ...],
) -> Mapping[str, Any]:
    """The state to resume ``study`` from, checked: its study, format, parameters, step,
    iterate (``length`` values) and histories; a ValueError naming ``resume_from`` otherwise."""
    if not isinstance(state, Mapping):
        raise ValueError(f"resume_from must be a checkpoint state dict, got {type(state).__name__}")
    if "study" in state and state["study"] != study:
        raise ValueError(f"resume_from is a checkpoint of {state['study']!r}, not of {study!r}")
    missing = sorted(
        {"format", "study", "step", "parameters", iterate, "optimizer", "history", "snapshots"} - set(state)
    )
    if missing:
        raise ValueError(f"resume_from is not a checkpoint of {study}: it lacks {missing}")
    if state["format"] != FORMAT:
        raise ValueError(f"resume_from has checkpoint format {state['format']!r}; this version reads format {FORMAT}")
    saved = dict(state["parameters"])
    changed = {name: (saved.get(name), value) for name, value in parameters.items() if saved.get(name) != value}
    if changed:
        detail = ", ".join(f"{name}: checkpoint {old!r}, now {new!r}" for name, (old, new) in sorted(changed.items()))
        raise ValueError(f"resume_from was made with other parameters ({detail})")
    step = state["step"]
    if not is_int(step) or not 0 <= step <= steps:
        raise ValueError(f"resume_from holds step {step!r}, outside 0..steps ({steps})")
    value = state[iterate]
    if not isinstance(value, Tensor) or not value.is_floating_point() or value.shape != (length,):
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"resume_from[{iterate!r}] must be a floating-point ({length},) tensor, got {shape}")
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"resume_from[{iterate!r}] contains NaN or inf")
    for name in history:
        series = state["history"].get(name)
        if not isinstance(series, Tensor) or series.shape != (step,):
            shape = tuple(series.shape) if isinstance(series, Tensor) else type(series).__name__
            raise ValueError(
                f"resume_from['history'][{name!r}] must have one value per completed step ({step},), got {shape}"
            )
    return state


def restore(
    state: Mapping[str, Any] | None, iterate: str, parameter: Tensor, optimizer: torch.optim.Optimizer
) -> tuple[int, dict[int, Tensor]]:
    """Put a checked state's iterate into ``parameter`` and its optimiser state into
    ``optimizer``; returns the first step to run and the snapshots (0 and {} without a state)."""
    if state is None:
        return 0, {}
    with torch.no_grad():
        parameter.copy_(state[iterate].to(parameter))
    optimizer.load_state_dict(clone_state(state["optimizer"]))
    snapshots = {
        int(k): v.to(device=parameter.device, dtype=parameter.dtype).clone() for k, v in state["snapshots"].items()
    }
    return state["step"], snapshots


def history_lists(state: Mapping[str, Any] | None, names: tuple[str, ...]) -> dict[str, list[float]]:
    """The per-step histories of a state as lists of Python floats (empty lists without a state)."""
    if state is None:
        return {name: [] for name in names}
    return {name: state["history"][name].to(torch.float64).tolist() for name in names}


def history_tensors(lists: Mapping[str, list[float]]) -> dict[str, Tensor]:
    return {name: torch.tensor(values, dtype=torch.float64) for name, values in lists.items()}


def checkpoint_state(
    study: str,
    step: int,
    parameters: Mapping[str, Any],
    iterate: str,
    parameter: Tensor,
    optimizer: torch.optim.Optimizer,
    history: Mapping[str, list[float]],
    snapshots: Mapping[int, Tensor],
) -> dict[str, Any]:
    """The state of ``study`` after ``step`` completed steps (the layout above, a deep copy):
    the iterate ``parameter`` under the name ``iterate``, the optimiser's state, the per-step
    ``history`` lists as tensors; what :func:`check_resume` and :func:`restore` read back."""
    return clone_state(
        {
            "format": FORMAT,
            "study": study,
            "step": step,
            "parameters": parameters,
            iterate: parameter,
            "optimizer": optimizer.state_dict(),
            "history": history_tensors(history),
            "snapshots": snapshots,
        }
    )


Checkpoint = Callable[[dict[str, Any]], Any]
