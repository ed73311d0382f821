"""The artifact store: paths, hashing, atomic writes and verified reads (the only place).

Artifacts are files addressed by the sha256 of their bytes::

    <root>/objects/<sha[:2]>/<sha>.<ext>     netCDF datasets (.nc), rendered figures (.png), summaries (.json)
    <root>/index/<stage key>.json            which artifacts a stage run produced (flows.caching)
    <root>/results/<cache key>               Prefect's result records (JSON, small references)
    <root>/checkpoints/<stage key>.json      the latest checkpoint of a long stage (a reference)
    <root>/quarantine/                       artifacts that failed verification, moved aside

Files are written to a dot-named temporary file in their final folder and renamed into
place, so a name under ``objects/`` only ever holds complete bytes. A writer killed
mid-write leaves at most a dot-named ``.<name>.*.tmp`` file, which nothing reads.

Nothing here unpickles: datasets are netCDF-4 with plain dtypes, index entries JSON, and
optimiser state travels as tensors in a netCDF file (:func:`state_to_dataset`). A
reference names its file by content (``objects/<sha[:2]>/<sha256>.<ext>``) and
:meth:`Store.path` refuses any other path, so a reference passed in as a parameter
cannot reach outside the store (``../`` or an absolute path raises ValueError).

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
import re
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
KINDS = ("mesh", "system", "fields", "history", "gradcheck", "benchmark", "figure", "checkpoint", "summary")
RUN_PREFIX = "run_"  # attributes that vary between identical computations (timings, dates)
_CHUNK = 1 << 20
# the only paths a reference may hold: objects/<sha[:2]>/<sha256><suffix>
_OBJECT_PATH = re.compile(r"objects/([0-9a-f]{2})/([0-9a-f]{64})((?:\.[a-z0-9]{1,8})?)")
_SUFFIX = re.compile(r"(?:\.[a-z0-9]{1,8})?")
# index and checkpoint keys: plain file names (a stage's name, a dash, a hex digest)
_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}")


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


def content_identity(ref: Mapping[str, Any]) -> dict[str, str]:
    """What an artifact reference means, whichever run wrote its file: ``{"kind", "content"}``.

    The one place that says how a reference is recorded where bytes must repeat (cache keys,
    a published file's list of its sources). Never the ``path`` or ``sha256``: those name
    the file, whose bytes include the ``run_*`` attributes (a timestamp, a duration, the
    host), so two cold runs that compute identical arrays name different files.
    """
    ref = _check_ref(ref)
    return {"kind": str(ref["kind"]), "content": str(ref["content"])}


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
        "inputs": json.dumps({k: content_identity(v)["content"] for k, v in (inputs or {}).items()}, sort_keys=True),
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
        """The local file of a reference: ``objects/<sha[:2]>/<sha256>.<ext>`` under the root.

        Any other path (``../``, an absolute path, a name that is not the reference's own
        sha256) raises ValueError: a reference handed in as a parameter cannot point
        outside the store, nor at a file the store did not address by its content.
        """
        ref = _check_ref(ref)
        path, sha = ref["path"], ref["sha256"]
        match = _OBJECT_PATH.fullmatch(path) if isinstance(path, str) else None
        if match is None or match.group(2) != sha or match.group(1) != sha[:2]:
            raise ValueError(
                f"artifact path {path!r} is not an object of the store (expected objects/<sha[:2]>/<sha256>.<ext> "
                f"for sha256 {str(sha)[:80]!r}); refusing to read or move it"
            )
        return self.root / path

    def _object_path(self, sha: str, suffix: str) -> str:
        if not _SUFFIX.fullmatch(suffix):
            raise ValueError(f"suffix must be empty or a dot and 1-8 lowercase letters or digits, got {suffix!r}")
        return f"objects/{sha[:2]}/{sha}{suffix}"

    def _key_path(self, folder: str, key: str) -> Path:
        if not isinstance(key, str) or not _KEY.fullmatch(key) or ".." in key:
            raise ValueError(
                f"{folder} keys are plain file names (letters, digits, '_', '-', '.'; no '..'), got {key!r}"
            )
        return self.root / folder / f"{key}.json"

    def _index_path(self, key: str) -> Path:
        return self._key_path("index", key)

    # -- writing --

    def put_bytes(self, data: bytes, kind: str, suffix: str, content: str | None = None) -> dict[str, str]:
        """Store bytes under their sha256; returns the reference (content defaults to the sha256)."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        sha = sha256_bytes(data)
        relative = self._object_path(sha, suffix)
        target = self.root / relative
        if target.is_file():
            if self.verify({"kind": kind, "path": relative, "sha256": sha, "content": content or sha}):
                return {"kind": kind, "path": relative, "sha256": sha, "content": content or sha}
            # verify moved a corrupt file aside (or raised ArtifactError, saying what to do, if it could not)
        try:
            atomic_write_bytes(target, data)
        except OSError as error:
            raise ArtifactError(
                f"cannot write {kind} artifact {target} ({type(error).__name__}: {error}); make {target.parent} "
                "writable (or remove what blocks that name) and rerun"
            ) from error
        return {"kind": kind, "path": relative, "sha256": sha, "content": content or sha}

    def put_dataset(self, dataset, kind: str) -> dict[str, str]:
        """Store a Dataset as netCDF-4 (its attribute ``kind`` set); returns the reference."""
        dataset = dataset.assign_attrs(kind=kind)
        return self.put_bytes(dataset_bytes(dataset), kind, ".nc", content=content_hash(dataset))

    # -- reading --

    def verify(self, ref: Mapping[str, Any], quarantine: bool = True) -> bool:
        """True if the file exists and its bytes match the sha256. A file that does not match,
        or cannot be read, is moved to ``quarantine/`` (never deleted) when ``quarantine``;
        ArtifactError, saying what to do, if it cannot be moved either."""
        path = self.path(ref)
        if not path.is_file():
            return False
        try:
            if sha256_file(path) == ref["sha256"]:
                return True
            reason = "failed its sha256 check"
        except OSError as error:
            reason = f"could not be read ({type(error).__name__}: {error.strerror or error})"
        if quarantine:
            with contextlib.suppress(FileNotFoundError):  # a concurrent run may have moved it already
                self.quarantine(path, reason)
        return False

    def quarantine(self, path: Path, reason: str = "failed its sha256 check") -> Path:
        """Move a file that failed verification aside, under ``quarantine/`` with a timestamp, and
        log ``reason`` (what failed). ArtifactError, naming the file and what to do, if it cannot
        be moved (an immutable file, a read-only folder): a store never keeps serving it."""
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        target = self.root / "quarantine" / f"{path.name}.{stamp}"
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
        except FileNotFoundError:
            raise
        except OSError as error:
            raise ArtifactError(
                f"{path} {reason} but cannot be moved to {target.parent} ({type(error).__name__}: "
                f"{error.strerror or error}); delete it by hand (if it is immutable: chattr -i; if its folder is "
                "read-only: chmod u+w) and rerun"
            ) from error
        logger.warning("%s %s; moved to %s", path, reason, target)
        return target

    def read_bytes(self, ref: Mapping[str, Any]) -> bytes:
        """The verified bytes of an artifact; ArtifactError if missing or corrupt."""
        path = self.path(ref)
        try:
            data = path.read_bytes()
        except FileNotFoundError as error:
            raise ArtifactError(f"{ref['kind']} artifact {path} is missing") from error
        except OSError as error:
            with contextlib.suppress(FileNotFoundError):
                self.quarantine(path, f"could not be read ({type(error).__name__}: {error.strerror or error})")
            raise ArtifactError(f"{ref['kind']} artifact {path} could not be read (moved to quarantine)") from error
        if sha256_bytes(data) != ref["sha256"]:
            with contextlib.suppress(FileNotFoundError):
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
        """Write (replace) the index entry of a stage key, atomically."""
        path = self._index_path(key)
        try:
            return atomic_write_json(path, dict(entry))
        except OSError as error:
            raise ArtifactError(
                f"cannot write index entry {path} ({type(error).__name__}: {error.strerror or error}); delete it by "
                "hand (if it is immutable: chattr -i; if its folder is read-only: chmod u+w) and rerun"
            ) from error

    def quarantine_index(self, key: str, reason: str) -> None:
        """Move the index entry of a stage key aside (it names something the store must not
        use), so that the next run records a fresh one; logged with ``reason``."""
        with contextlib.suppress(FileNotFoundError):
            self.quarantine(self._index_path(key), reason)

    # -- checkpoints of long stages (flows.tasks) --

    def put_checkpoint(self, key: str, state: Mapping[str, Any]) -> dict[str, str]:
        """Store a study state (:mod:`tmcore.studies.checkpoint`) as a checkpoint artifact and
        make it the latest of ``key`` (the one it replaces is deleted); returns its reference."""
        ref = self.put_dataset(state_to_dataset(state), "checkpoint")
        path = self._key_path("checkpoints", key)
        previous = self._checkpoint_ref(path)
        entry = {
            "key": key,
            "step": state.get("step"),
            "checkpoint": ref,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        atomic_write_json(path, entry)  # the new one is in place before the old one goes
        if previous is not None and previous["path"] != ref["path"]:
            self._remove_checkpoint_object(previous)
        return ref

    def discard_checkpoint(self, key: str) -> None:
        """Forget the checkpoint of ``key`` (its stage finished): the pointer and its file."""
        path = self._key_path("checkpoints", key)
        previous = self._checkpoint_ref(path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        if previous is not None:
            self._remove_checkpoint_object(previous)

    def _checkpoint_ref(self, pointer: Path) -> Mapping[str, Any] | None:
        try:
            ref = json.loads(pointer.read_text())["checkpoint"]
            self.path(ref)  # a reference of this store's layout, or ValueError
            return ref if ref.get("kind") == "checkpoint" else None
        except (OSError, ValueError, TypeError, KeyError):
            return None

    def _remove_checkpoint_object(self, ref: Mapping[str, Any]) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(ref))

    def latest_checkpoint(self, key: str) -> dict[str, Any] | None:
        """The state of the latest checkpoint of ``key``, or None if there is none or it is
        damaged (a corrupt file is moved to quarantine and logged)."""
        path = self._key_path("checkpoints", key)
        try:
            entry = json.loads(path.read_text())
            ref = entry["checkpoint"]
            if not self.verify(ref):
                logger.warning("checkpoint %s of %s is missing or corrupt; starting over", ref.get("path"), key)
                return None
            return state_from_dataset(self.open_dataset(ref, "checkpoint"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError, ArtifactError) as error:
            logger.warning("checkpoint of %s is unreadable (%s: %s); starting over", key, type(error).__name__, error)
            return None


# -- state dicts (optimiser state, checkpoints) as datasets -------------------------------------

# torch dtypes a state tensor may have (a whitelist: names are looked up, never evaluated)
_STATE_DTYPES = ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool")


def state_to_dataset(state: Mapping[str, Any]):
    """A nested state (dicts with str/int keys, lists, tuples, torch tensors, numpy arrays,
    str/int/float/bool/None) as a Dataset, without pickle.

    Every tensor becomes a variable ``t<i>`` (dims ``t<i>_<axis>``, its exact dtype and
    bytes); the structure, with tensors replaced by ``{"tensor": "t<i>", "dtype": ...}``,
    is JSON text in the attribute ``state``. :func:`state_from_dataset` inverts it exactly
    (Python floats round-trip through JSON by their repr).
    """
    import xarray as xr

    variables: dict[str, Any] = {}

    def encode(value: Any) -> Any:
        if hasattr(value, "detach") or isinstance(value, np.ndarray):
            is_torch = hasattr(value, "detach")
            array = value.detach().cpu().contiguous().numpy() if is_torch else np.ascontiguousarray(value)
            dtype = str(value.dtype).removeprefix("torch.") if is_torch else array.dtype.name
            if dtype not in _STATE_DTYPES:
                raise TypeError(f"state tensors must have one of the dtypes {_STATE_DTYPES}, got {dtype}")
            name = f"t{len(variables)}"
            variable = xr.Variable(tuple(f"{name}_{axis}" for axis in range(array.ndim)), array)
            variable.encoding["_FillValue"] = None  # values are stored as they are, never masked
            variables[name] = variable
            return {"tensor": name, "dtype": dtype, "torch": is_torch}
        if isinstance(value, Mapping):
            for key in value:
                if isinstance(key, bool) or not isinstance(key, (str, int)):
                    raise TypeError(f"state dict keys must be str or int, got {key!r}")
            return {"dict": [[key, encode(item)] for key, item in value.items()]}
        if isinstance(value, tuple):
            return {"tuple": [encode(item) for item in value]}
        if isinstance(value, list):
            return {"list": [encode(item) for item in value]}
        if value is None or isinstance(value, (bool, int, str)):
            return value
        if isinstance(value, float):
            return {"float": repr(value)}
        if isinstance(value, (np.integer, np.floating, np.bool_)):
            return encode(value.item())
        raise TypeError(
            f"a state may hold tensors, numbers, strings, None and containers of them; got {type(value).__name__}"
        )

    skeleton = encode(dict(state))
    return xr.Dataset(variables, attrs={"state": json.dumps(skeleton, sort_keys=False), "state_format": 1})


def state_from_dataset(dataset) -> dict[str, Any]:
    """The state dict of :func:`state_to_dataset` (tensors as torch tensors of their saved dtype)."""
    import torch

    skeleton = json.loads(dataset.attrs["state"])  # plain JSON: no object hooks, nothing imported

    def decode(value: Any) -> Any:
        if isinstance(value, dict):
            if "tensor" in value:
                dtype = value["dtype"]
                if dtype not in _STATE_DTYPES:
                    raise ValueError(f"state tensor {value['tensor']!r} has an unsupported dtype {dtype!r}")
                array = np.array(dataset[value["tensor"]].values, dtype=np.dtype(dtype), copy=True)
                return torch.from_numpy(array) if value.get("torch", True) else array
            if "dict" in value:
                return {key: decode(item) for key, item in value["dict"]}
            if "tuple" in value:
                return tuple(decode(item) for item in value["tuple"])
            if "list" in value:
                return [decode(item) for item in value["list"]]
            if "float" in value:
                return float(value["float"])
            raise ValueError(f"unknown node in a state: {sorted(value)}")
        return value

    return decode(skeleton)
