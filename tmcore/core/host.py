"""NumPy views of CPU tensors, for the small checks and gathers that run on every solve.

A torch call costs a few microseconds of dispatch however small its tensor: on the 790-node
system of the chapter's identification step, ``torch.isfinite(x).all()`` measured about 8 us
on one thread (20 us on two beside a busy process), ``np.isfinite(x.numpy()).all()`` 1.7 us.
The checks of every assembly and solve therefore look at CPU tensors through NumPy views
(no copy), and fall back to torch for other devices and dtypes.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["all_finite", "on_host"]


def on_host(values: Tensor, *indices: Tensor) -> tuple:
    """``values`` and ``indices`` as NumPy arrays (views, no copies) when ``values`` lives on the
    CPU in float64 or float32, else all unchanged (torch tensors)."""
    if values.device.type == "cpu" and values.dtype in (torch.float64, torch.float32):
        host = (values.detach() if values.requires_grad else values).numpy()
        return (host, *(index.numpy() for index in indices))
    return (values, *indices)


def all_finite(values: Tensor) -> bool:
    """Whether every entry of ``values`` (any shape) is finite: no NaN, no inf."""
    (host,) = on_host(values)
    if isinstance(host, np.ndarray):
        return bool(np.isfinite(host).all())
    return bool(torch.isfinite(values).all())
