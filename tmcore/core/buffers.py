"""Containers that register tensors as module buffers.

``BufferDict`` lets a module hold a dictionary of tensors (cell connectivity per cell
type, named facet sets, point data) that follow ``.to(device)``, ``.double()`` and
``state_dict()`` like any other buffer.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from torch import Tensor, nn


class BufferDict(nn.Module):
    """An ordered ``str -> Tensor`` mapping whose values are module buffers."""

    def __init__(self, tensors: Mapping[str, Tensor] | None = None):
        super().__init__()
        for key, value in (tensors or {}).items():
            self[key] = value

    def __getitem__(self, key: str) -> Tensor:
        if key not in self._buffers:
            raise KeyError(f"{key!r} (available: {sorted(self._buffers)})")
        return self._buffers[key]

    def __setitem__(self, key: str, value: Tensor) -> None:
        if not isinstance(key, str) or not key.isidentifier():
            raise ValueError(f"BufferDict keys must be identifiers, got {key!r}")
        if not isinstance(value, Tensor):
            raise TypeError(f"BufferDict[{key!r}] must be a torch.Tensor, got {type(value).__name__}")
        self.register_buffer(key, value)

    def __delitem__(self, key: str) -> None:
        del self._buffers[key]

    def __contains__(self, key: object) -> bool:
        return key in self._buffers

    def __iter__(self) -> Iterator[str]:
        return iter(self._buffers)

    def __len__(self) -> int:
        return len(self._buffers)

    def keys(self):
        return self._buffers.keys()

    def values(self):
        return self._buffers.values()

    def items(self):
        return self._buffers.items()

    def to_dict(self) -> dict[str, Tensor]:
        """A plain dict of the tensors (shared, not copied)."""
        return dict(self._buffers)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}: {tuple(v.shape)} {v.dtype}" for k, v in self._buffers.items())


__all__ = ["BufferDict"]
