"""The artifact store: paths, hashing, atomic writes and verified reads (the only place).

Artifacts are files addressed by the sha256 of their bytes::

    <root>/objects/<sha[:2]>/<sha>.<ext>     netCDF datasets (.nc) and rendered figures (.png)
    <root>/index/<stage key>.json            which artifacts a stage run produced (flows.caching)
    <root>/results/<cache key>               Prefect's result records (JSON, small references)
    <root>/quarantine/                       artifacts that failed verification, moved aside

Files are written to a dot-named temporary file in their final folder and renamed into
place, so a name under ``objects/`` only ever holds complete bytes.

A task hands on a *reference*, a small JSON-able dict::

    {"kind": "mesh", "path": "objects/ab/ab12....nc", "sha256": "ab12...", "content": "9f3e..."}

``sha256`` is the hash of the file's bytes and verifies it on every read; ``content`` is
the hash of what the file means (arrays, coordinates and attributes except the ``run_*``
ones, which record wall-clock times) and is what downstream cache keys use, so
recomputing an artifact with identical arrays does not invalidate its consumers.

The root is ``$TMCORE_ARTIFACTS`` or ``data/artifacts`` (relative to the working
directory), or whatever a flow passes as ``store``. Every path goes through
:class:`Store`, so another backend (an fsspec URL) is a change of this module only.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import os
import platform
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

logger = logging.getLogger(__name__)

ENV_ROOT = "TMCORE_ARTIFACTS"
DEFAULT_ROOT = Path("data") / "artifacts"
# Bump when the layout of any dataset written by the flows changes: it is part of every
# cache key (flows.caching), so old artifacts are recomputed rather than misread.
SCHEMA_VERSION = 1
KINDS = ("mesh", "system", "fields", "history", "gradcheck", "benchmark", "figure")
RUN_PREFIX = "run_"  # attributes that vary between identical computations (timings, dates)
_CHUNK = 1 << 20


class ArtifactError(RuntimeError):
    """An artifact is missing or its bytes do not match its sha256."""


# -- hashing ------------------------------------------------------------------------------------


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hash_array(value: Any) -> str:
    """sha256 of an array's dtype, shape and C-order bytes (a torch tensor, numpy array or list).

    Tensors are hashed by value, never through pickle (whose bytes hold memory addresses).
    """
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch here
        value = value.detach().cpu().contiguous().numpy()
    array = np.ascontiguousarray(np.asarray(value))
    digest = hashlib.sha256()
    if array.dtype.kind in "OUS":  # strings: their JSON text, not object pointers
        digest.update(b"str")
        digest.update(repr(array.shape).encode())
        digest.update(json.dumps([str(v) for v in array.ravel().tolist()]).encode())
    else:
        digest.update(array.dtype.str.encode())
        digest.update(repr(array.shape).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def content_hash(dataset) -> str:
    """sha256 of a Dataset's meaning: every variable and coordinate (name, dims, dtype,
    values) and the attributes whose names do not start with ``run_``."""
    digest = hashlib.sha256()
    for name in sorted(map(str, dataset.variables)):
        variable = dataset.variables[name]
        digest.update(json.dumps([name, list(map(str, variable.dims)), _canonical_attrs(variable.attrs)]).encode())
        digest.update(hash_array(variable.values).encode())
    digest.update(json.dumps(_canonical_attrs(dataset.attrs)).encode())
    return digest.hexdigest()


def _canonical_attrs(attrs: Mapping[str, Any]) -> list:
    return [[str(k), _jsonable(v)] for k, v in sorted(attrs.items()) if not str(k).startswith(RUN_PREFIX)]


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


# -- atomic writes ------------------------------------------------------------------------------


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any], mode: int = 0o644) -> Path:
    """Write a file through ``write(handle)`` into a temporary file beside ``path``, then rename.

    The final name appears only once the bytes are complete and flushed; if ``write``
    raises (or the process dies), no file of that name is created or changed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, value: Any) -> Path:
    return atomic_write_text(path, json.dumps(value, indent=1, sort_keys=True) + "\n")


# HDF5 (under netCDF4) is not thread-safe: every netCDF read and write of this process goes
# through this lock (stages run on thread pools and Dask worker threads; files are small).
_NETCDF_LOCK = threading.RLock()


def dataset_bytes(dataset) -> bytes:
    """A Dataset as netCDF-4 bytes (netCDF4 engine), written through a temporary file."""
    fd, tmp = tempfile.mkstemp(suffix=".nc")
    os.close(fd)
    try:
        with _NETCDF_LOCK:
            dataset.to_netcdf(tmp, engine="netcdf4", format="NETCDF4")
        return Path(tmp).read_bytes()
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def dataset_from_bytes(data: bytes):
    """The Dataset (loaded into memory) of netCDF-4 bytes, read without a file."""
    import netCDF4
    import xarray as xr

    with _NETCDF_LOCK:
        handle = netCDF4.Dataset("artifact.nc", mode="r", memory=data)
        try:
            return xr.open_dataset(xr.backends.NetCDF4DataStore(handle)).load()
        finally:
            handle.close()


# -- provenance ---------------------------------------------------------------------------------


def provenance(
    parameters: Mapping[str, Any] | None = None,
    inputs: Mapping[str, Mapping[str, Any]] | None = None,
    device: str = "cpu",
    seconds: float | None = None,
) -> dict[str, Any]:
    """Attributes recording how an artifact was made (netCDF attributes: str and numbers).

    ``parameters`` and the inputs' content hashes are stored as JSON text; the wall-clock
    time, the date, the host and the input files go under ``run_*`` names, which the
    content hash ignores.
    """
    import torch
    import xarray

    import tmcore

    attrs: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "parameters": json.dumps(dict(parameters or {}), sort_keys=True, default=str),
        "inputs": json.dumps({k: v["content"] for k, v in (inputs or {}).items()}, sort_keys=True),
        "tmcore_version": tmcore.__version__,
        "torch_version": torch.__version__,
        "xarray_version": xarray.__version__,
        "device": str(device),
    }
    # the inputs' file hashes change with their run_* attributes: kept out of the content hash
    attrs["run_input_files"] = json.dumps({k: v["path"] for k, v in (inputs or {}).items()}, sort_keys=True)
    attrs["run_created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    attrs["run_host"] = platform.node()
    if seconds is not None:
        attrs["run_seconds"] = float(seconds)
    return attrs


# -- references ---------------------------------------------------------------------------------


def is_ref(value: Any) -> bool:
    """True for an artifact reference dict."""
    return isinstance(value, Mapping) and {"kind", "path", "sha256", "content"} <= set(value)


def iter_refs(value: Any) -> Iterator[Mapping[str, Any]]:
    """Every reference inside a task result (a reference, or dicts/lists holding them)."""
    if is_ref(value):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from iter_refs(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from iter_refs(item)


def _check_ref(ref: Any) -> Mapping[str, Any]:
    if not is_ref(ref):
        raise TypeError(f"expected an artifact reference (dict with kind, path, sha256, content), got {ref!r:.200}")
    return ref


# -- the store ----------------------------------------------------------------------------------


def default_root() -> Path:
    return Path(os.environ.get(ENV_ROOT) or DEFAULT_ROOT)


class Store:
    """A content-addressed artifact store rooted at a local folder.

    Args:
        root: the folder; None for ``$TMCORE_ARTIFACTS`` or ``data/artifacts``.
    """

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root not in (None, "") else default_root()

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    # -- layout --

    @property
    def results(self) -> Path:
        """Where Prefect keeps its result records (JSON) for tasks using this store."""
        return self.root / "results"

    def path(self, ref: Mapping[str, Any]) -> Path:
        """The local file of a reference."""
        return self.root / _check_ref(ref)["path"]

    def _object_path(self, sha: str, suffix: str) -> str:
        return f"objects/{sha[:2]}/{sha}{suffix}"

    def _index_path(self, key: str) -> Path:
        if not key or "/" in key or key.startswith("."):
            raise ValueError(f"index keys are plain file names, got {key!r}")
        return self.root / "index" / f"{key}.json"

    # -- writing --

    def put_bytes(self, data: bytes, kind: str, suffix: str, content: str | None = None) -> dict[str, str]:
        """Store bytes under their sha256; returns the reference (content defaults to the sha256)."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        sha = sha256_bytes(data)
        relative = self._object_path(sha, suffix)
        target = self.root / relative
        if not (target.is_file() and sha256_file(target) == sha):
            atomic_write_bytes(target, data)
        return {"kind": kind, "path": relative, "sha256": sha, "content": content or sha}

    def put_dataset(self, dataset, kind: str) -> dict[str, str]:
        """Store a Dataset as netCDF-4 (its attribute ``kind`` set); returns the reference."""
        dataset = dataset.assign_attrs(kind=kind)
        return self.put_bytes(dataset_bytes(dataset), kind, ".nc", content=content_hash(dataset))

    # -- reading --

    def verify(self, ref: Mapping[str, Any], quarantine: bool = True) -> bool:
        """True if the file exists and its bytes match the sha256; a mismatching file is
        moved to ``quarantine/`` (never deleted) when ``quarantine``."""
        path = self.path(ref)
        if not path.is_file():
            return False
        if sha256_file(path) == ref["sha256"]:
            return True
        if quarantine:
            self.quarantine(path)
        return False

    def quarantine(self, path: Path) -> Path:
        """Move a file that failed verification aside, under ``quarantine/`` with a timestamp."""
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        target = self.root / "quarantine" / f"{path.name}.{stamp}"
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
        logger.warning("artifact %s failed its sha256 check; moved to %s", path, target)
        return target

    def read_bytes(self, ref: Mapping[str, Any]) -> bytes:
        """The verified bytes of an artifact; ArtifactError if missing or corrupt."""
        path = self.path(ref)
        try:
            data = path.read_bytes()
        except FileNotFoundError as error:
            raise ArtifactError(f"{ref['kind']} artifact {path} is missing") from error
        if sha256_bytes(data) != ref["sha256"]:
            self.quarantine(path)
            raise ArtifactError(f"{ref['kind']} artifact {path} does not match its sha256 (moved to quarantine)")
        return data

    def open_dataset(self, ref: Mapping[str, Any], kind: str | None = None):
        """The Dataset of a verified netCDF artifact, loaded into memory."""
        if kind is not None and ref.get("kind") != kind:
            raise ArtifactError(f"expected a {kind} artifact, got a {ref.get('kind')} reference ({ref['path']})")
        return dataset_from_bytes(self.read_bytes(ref))

    def copy_to(self, ref: Mapping[str, Any], destination: str | os.PathLike) -> Path:
        """Publish a verified artifact at ``destination`` (atomically)."""
        return atomic_write_bytes(destination, self.read_bytes(ref))

    # -- the stage index (written and read by flows.caching) --

    def read_index(self, key: str) -> dict[str, Any] | None:
        """The index entry of a stage key, or None if absent or unreadable."""
        path = self._index_path(key)
        try:
            entry = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            logger.warning("index entry %s is unreadable; ignored", path)
            return None
        return entry if isinstance(entry, dict) else None

    def write_index(self, key: str, entry: Mapping[str, Any]) -> Path:
        return atomic_write_json(self._index_path(key), dict(entry))
