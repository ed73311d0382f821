"""Study results as ``xarray.Dataset``s: the one converter behind every result's ``to_xarray``.

xarray is imported only when a conversion is asked for; tmcore does not need it otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = ["result_dataset"]


def result_dataset(
    owner: str,
    per_step: Mapping[str, Tensor | None],
    fields: Mapping[str, Tensor | None],
    field_dim: str,
    snapshots: Mapping[int, Tensor],
    snapshot_name: str,
    attrs: Mapping[str, Any],
):
    """An ``xarray.Dataset`` with dimensions ``step`` (the histories ``per_step``, each (steps,)),
    ``field_dim`` (the final ``fields``, each (n,)) and ``snapshot_step`` (``snapshots`` {step: (n,)}
    stacked as ``snapshot_name``); None entries are left out, None attributes written as "none".
    ``owner`` names the result type in the message when xarray is missing."""
    try:
        import xarray as xr
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(f"{owner}.to_xarray needs xarray, which is not installed (pip install xarray)") from error

    def numpy(tensor: Tensor):
        return tensor.detach().cpu().numpy()

    data = {name: (("step",), numpy(value)) for name, value in per_step.items() if value is not None}
    data.update({name: ((field_dim,), numpy(value)) for name, value in fields.items() if value is not None})
    coords = {}
    if snapshots:
        kept = sorted(snapshots)
        data[snapshot_name] = (("snapshot_step", field_dim), numpy(torch.stack([snapshots[s] for s in kept])))
        coords["snapshot_step"] = kept
    attributes = {key: ("none" if value is None else value) for key, value in attrs.items()}
    return xr.Dataset(data, coords=coords, attrs=attributes)
