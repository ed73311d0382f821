"""The cache key of a stage, and the tasks that use it.

A stage's *identity* is a sha256 of

- the task's name,
- its parameters (JSON; artifact references by their content hash, tensors and arrays
  by dtype, shape and bytes; the ``store`` argument left out: it says where, not what),
- the sha256 of the ``tmcore`` sources (every ``.py`` file of the package),
- the task's own source and the modules it declares (e.g. ``flows.figures``),
- the torch version and the artifact schema version.

Prefect's cache key is that identity plus a *generation*: ``<task>-<identity>-<gen>``.
After a run, the task records in the store's index which artifacts the generation
produced (``index/<task>-<identity>.json``). Before a run, :func:`cache_key_fn` reads
that entry and verifies every artifact by its sha256:

- all present and intact: the recorded key, so Prefect finds its record -> Cached;
- an artifact missing or corrupt (moved to ``quarantine/``), or no entry yet: a new
  generation, which Prefect has never seen -> the stage runs and records again.

So unchanged inputs give Cached across processes and days, any change recomputes the
stages downstream of it (their inputs' content hashes change), and a damaged artifact
is recomputed rather than used. Results are small JSON references (never pickles),
stored by Prefect under ``<store>/results``.

Prefect decodes a result record with the serializer the record itself names (a record
saying ``"pickle"`` is unpickled), so before the recorded key is handed back its record
is read as plain JSON and checked (:func:`check_result_record`): JSON serializer, the
standard decoder, and exactly the result the index recorded. Anything else (a pickle, a
foreign object hook, a truncated file) is moved to ``quarantine/``, logged, and the
stage recomputes under a new generation; Prefect never sees the bad record.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import hashlib
import importlib.metadata
import importlib.util
import inspect
import json
import logging
import math
import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .artifacts import SCHEMA_VERSION, ArtifactError, Store, content_identity, hash_array, is_ref, iter_refs

logger = logging.getLogger(__name__)

# Parameters that choose where artifacts live, not what they hold.
NOT_KEYED = ("store",)
# The only result decoders a record may name (None: plain json.loads).
JSON_DECODERS = (None, "prefect.serializers.prefect_json_object_decoder")
# The identity of the stage running in this thread or task (see current_identity).
_IDENTITY: ContextVar[str | None] = ContextVar("tmcore_stage_identity", default=None)


def current_identity() -> str | None:
    """The identity (``<task>-<sha256>``) of the cached stage whose function is running, or
    None outside one. Long stages key their checkpoints by it: a checkpoint is resumed only
    by a run with the same task, parameters, inputs and code."""
    return _IDENTITY.get()


@contextlib.contextmanager
def _running(identity: str) -> Iterator[None]:
    """:func:`current_identity` is ``identity`` inside the block. A module-level function, so
    that a task shipped by value to a Dask worker (cloudpickle) never carries the ContextVar."""
    token = _IDENTITY.set(identity)
    try:
        yield
    finally:
        _IDENTITY.reset(token)


# -- source hashes ------------------------------------------------------------------------------


def _hash_files(root: Path, files: Iterable[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.relative_to(root).as_posix()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _source_hash(name: str) -> str:
    """sha256 of a module's source file, or of every ``.py`` file of a package (relative
    paths and bytes), found through :func:`importlib.util.find_spec`: the module itself is
    not imported (a parent package is, as Python requires: ``flows`` for ``flows.figures``)."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise ValueError(f"cannot find the source of module {name!r}")
    origin = Path(spec.origin).resolve()
    if origin.name == "__init__.py":
        root = origin.parent
        return _hash_files(root, (p for p in root.rglob("*.py") if "__pycache__" not in p.parts))
    return hashlib.sha256(origin.read_bytes()).hexdigest()


@functools.lru_cache(maxsize=None)
def tmcore_hash() -> str:
    """sha256 of every ``.py`` file of the installed ``tmcore`` package (paths and bytes),
    without importing tmcore (a cached run never needs it)."""
    return _source_hash("tmcore")


@functools.lru_cache(maxsize=None)
def module_hash(name: str) -> str:
    """sha256 of a module's source file (a package: all its ``.py`` files)."""
    return _source_hash(name)


@functools.lru_cache(maxsize=None)
def torch_version() -> str:
    """The installed torch's version string (``2.13.0+cpu``, what ``torch.__version__`` says),
    read from its package metadata without importing torch."""
    return importlib.metadata.version("torch")


def function_hash(fn: Callable) -> str:
    """sha256 of a function's source text (its byte code and constants if the source is unavailable)."""
    try:
        text = inspect.getsource(fn)
    except (OSError, TypeError):
        code = fn.__code__
        text = repr((code.co_code, code.co_consts, code.co_names))
    return hashlib.sha256(text.encode()).hexdigest()


# -- canonical parameters -------------------------------------------------------------------


def canonical(value: Any) -> Any:
    """A JSON-able form of a parameter value that is equal exactly when the values are.

    References become their :func:`~flows.artifacts.content_identity` (kind and content
    hash, not their path), tensors and arrays their
    :func:`~flows.artifacts.hash_array`, floats their ``repr`` (so 0.1 and 0.1000001 differ
    and -0.0 is kept), tuples lists. Anything else raises TypeError: a parameter the key
    cannot see must not silently share a cache entry.
    """
    if is_ref(value):
        return content_identity(value)
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return {"float": repr(value)} if not math.isfinite(value) else value
    if isinstance(value, Mapping):
        keys = [str(k) for k in value]
        if len(set(keys)) != len(keys):
            raise TypeError(f"mapping keys must be distinct as strings, got {list(value)}")
        return {str(k): canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "detach") or isinstance(value, np.ndarray):
        return {"array": hash_array(value)}
    raise TypeError(f"cannot key a parameter of type {type(value).__name__}: {value!r:.80}")


# -- stages -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    """What the cache key needs to know about a task function."""

    name: str
    fn: Callable
    source: str  # sha256 of the function and the declared modules
    normalise: Mapping[str, Callable[[Any], Any]] = field(default_factory=dict)
    unkeyed: tuple[str, ...] = ()  # parameters that change how, never what (e.g. checkpoint_every)

    def arguments(self, parameters: Mapping[str, Any]) -> dict[str, Any]:
        """The parameters with defaults filled in and normalisers applied, ``store`` and the
        unkeyed ones removed."""
        bound = inspect.signature(self.fn).bind_partial(**parameters)
        bound.apply_defaults()
        arguments = {k: v for k, v in bound.arguments.items() if k not in NOT_KEYED and k not in self.unkeyed}
        for name, normalise in self.normalise.items():
            if name in arguments:
                arguments[name] = normalise(arguments[name])
        return arguments

    def identity(self, parameters: Mapping[str, Any]) -> str:
        """``<task>-<sha256>``: the same for the same task, parameters, inputs and code."""
        payload = {
            "task": self.name,
            "parameters": canonical(self.arguments(parameters)),
            "tmcore": tmcore_hash(),
            "source": self.source,
            "torch": torch_version(),
            "schema": SCHEMA_VERSION,
        }
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return f"{self.name}-{hashlib.sha256(text.encode()).hexdigest()[:40]}"


def _forbidden_keys(value: Any) -> bool:
    """True if a decoded JSON value holds a key Prefect's decoder would act on."""
    if isinstance(value, Mapping):
        return bool({"__class__", "__exc_type__"} & set(value)) or any(_forbidden_keys(v) for v in value.values())
    if isinstance(value, list):
        return any(_forbidden_keys(v) for v in value)
    return False


def check_result_record(path: Path, expected: Any) -> str | None:
    """Why the Prefect result record at ``path`` must not be loaded, or None if it is safe (or absent).

    Safe: a JSON document ``{"metadata": ..., "result": "<json text>"}`` whose serializer is
    ``json`` with the standard library's ``json`` and Prefect's default (or no) object
    decoder, no extra load options, and whose result, decoded as plain JSON, equals
    ``expected`` (the result the index recorded) and holds no ``__class__``/``__exc_type__``
    key. Read with ``json.loads`` only: checking a record never imports or unpickles.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as error:
        return f"it could not be read ({type(error).__name__}: {error.strerror or error})"
    try:
        record = json.loads(data)
    except ValueError:
        return "not a JSON document (truncated or foreign)"
    if (
        not isinstance(record, dict)
        or set(record) != {"metadata", "result"}
        or not isinstance(record["metadata"], dict)
    ):
        return "not a result record of the current layout ({metadata, result})"
    serializer = record["metadata"].get("serializer")
    if not isinstance(serializer, dict) or serializer.get("type") != "json":
        kind = serializer.get("type") if isinstance(serializer, dict) else serializer
        return f"its serializer is {kind!r}, not 'json'"
    if serializer.get("jsonlib", "json") != "json":
        return f"its JSON library is {serializer.get('jsonlib')!r}, not 'json'"
    if serializer.get("object_decoder") not in JSON_DECODERS:
        return f"its object decoder is {serializer.get('object_decoder')!r}"
    if serializer.get("loads_kwargs"):
        return f"it passes load options {serializer.get('loads_kwargs')!r}"
    if not isinstance(record["result"], str):
        return "its result is not JSON text"
    try:
        value = json.loads(record["result"])
    except ValueError:
        return "its result is not valid JSON"
    if _forbidden_keys(value):
        return "its result holds __class__/__exc_type__ keys (objects Prefect would import)"
    if value != expected:
        return "its result differs from the index entry"
    return None


def cache_key(stage: Stage, parameters: Mapping[str, Any], records: Path | None = None) -> str:
    """Prefect's key for a stage run: the recorded key if its artifacts verify (and its result
    record in ``records``, default ``<store>/results``, is safe), else a new generation."""
    store = Store(parameters.get("store"))
    records = store.results if records is None else Path(records)
    identity = stage.identity(parameters)
    entry = store.read_index(identity)
    if entry is not None:
        refs = list(iter_refs(entry.get("result")))
        try:
            intact = [store.verify(ref) for ref in refs]  # every one checked: corrupt ones all moved aside
        except ValueError as error:  # a reference that is not an object of the store (../, an absolute path)
            store.quarantine_index(identity, f"names an artifact outside the store's objects ({error})")
            logger.warning("%s: index entry refused; recomputing", stage.name)
            return f"{identity}-{secrets.token_hex(4)}"
        except ArtifactError as error:  # corrupt and immovable: the new generation's write says what to do
            logger.warning("%s: %s; recomputing", stage.name, error)
            return f"{identity}-{secrets.token_hex(4)}"
        key = entry.get("key")
        if refs and all(intact) and isinstance(key, str) and re.fullmatch(re.escape(identity) + r"-[0-9a-f]{8}", key):
            problem = check_result_record(records / key, entry.get("result"))
            if problem is None:
                return key
            try:
                moved = store.quarantine(records / key, f"is a result record Prefect must not load: {problem}")
            except FileNotFoundError:  # a concurrent run moved it first
                moved = store.root / "quarantine"
            except ArtifactError as error:  # stuck in place: the new generation's record has another name
                moved = f"nowhere ({error})"
            logger.warning(
                "%s: result record %s refused (%s); moved to %s, recomputing", stage.name, key, problem, moved
            )
        else:
            logger.info(
                "%s: %d of %d recorded artifacts missing or corrupt; recomputing",
                stage.name,
                intact.count(False),
                len(refs),
            )
    return f"{identity}-{secrets.token_hex(4)}"


def _record_folder(context: Any) -> Path | None:
    """The folder of the task's local result storage (Bound sets ``<store>/results``), if local."""
    storage = getattr(getattr(context, "result_store", None), "result_storage", None)
    basepath = getattr(storage, "basepath", None)
    return Path(basepath).expanduser() if basepath else None


def cache_key_fn(context, parameters: Mapping[str, Any]) -> str:
    """The ``cache_key_fn`` of every cached task (see the module docstring)."""
    return cache_key(context.task.fn.__stage__, parameters, _record_folder(context))


def record(stage: Stage, parameters: Mapping[str, Any], result: Any, key: str | None) -> None:
    """Write the index entry of a finished stage run: its key and the artifacts it produced."""
    if key is None:  # called outside a Prefect transaction (``task.fn(...)``): nothing to record
        return
    identity = stage.identity(parameters)
    if not key.startswith(identity + "-"):
        raise RuntimeError(f"{stage.name}: the run's cache key {key!r} does not belong to its identity {identity!r}")
    Store(parameters.get("store")).write_index(
        identity,
        {
            "key": key,
            "task": stage.name,
            "parameters": canonical(stage.arguments(parameters)),
            "result": result,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        },
    )


def stage_source(fn: Callable, sources: Iterable[str] = ()) -> str:
    """sha256 of a stage function's source and of the modules ``sources`` (its Stage's ``source``)."""
    if "store" not in inspect.signature(fn).parameters:
        raise TypeError(f"stage function {fn.__name__} must take a 'store' argument")
    digest = hashlib.sha256(function_hash(fn).encode())
    for module in sources:
        digest.update(module_hash(module).encode())
    return digest.hexdigest()


def memoised(store: Store, name: str, fn: Callable, sources: Iterable[str] = (), **parameters: Any) -> Any:
    """``fn(store=store, **parameters)`` computed once per content, outside Prefect (no task run).

    For small results derived from a run's artifacts on every run (a summary, a combined
    table). ``fn`` returns artifact references (JSON); they are recorded in the store's index
    under the stage identity of ``name``, ``parameters`` and the code (as a cached task's:
    ``fn``'s source and the ``sources`` modules, tmcore's sources, torch's version), and the
    input artifacts by their bytes' sha256 (not only their content: ``fn`` may read ``run_*``
    attributes, timings), and returned from there while every one of them verifies by its
    sha256. A missing or corrupt one (moved to ``quarantine/``), or a change of input or code:
    ``fn`` runs again. Everything such a result says lives in the referenced artifacts, so
    nothing unverified is ever returned.
    """
    stage = Stage(name, fn, stage_source(fn, sources))
    files = hashlib.sha256(" ".join(ref["sha256"] for ref in iter_refs(parameters)).encode()).hexdigest()
    identity = f"{stage.identity(parameters)}-{files[:16]}"
    entry = store.read_index(identity)
    if entry is not None and entry.get("task") == name:
        refs = list(iter_refs(entry.get("result")))
        try:
            if refs and all([store.verify(ref) for ref in refs]):  # every one checked: corrupt ones all moved aside
                return entry["result"]
        except (ValueError, ArtifactError) as error:  # names something outside the store, or is stuck in place
            logger.warning("%s: index entry not used (%s); recomputing", name, error)
    result = fn(store=store, **parameters)
    if not list(iter_refs(result)):
        raise TypeError(f"{name}: a memoised function returns artifact references, got {result!r:.80}")
    store.write_index(
        identity,
        {
            "task": name,
            "parameters": canonical(stage.arguments(parameters)),
            "result": result,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        },
    )
    return result


def cached_task(
    name: str,
    sources: Iterable[str] = (),
    normalise: Mapping[str, Callable] | None = None,
    unkeyed: Iterable[str] = (),
    **options,
):
    """Make a Prefect task of a stage function ``fn(store, ...) -> reference(s)``.

    The task is keyed by :func:`cache_key_fn`, persists its result as JSON and records
    its artifacts in the store's index. ``sources``: modules whose code shapes the
    result besides the function's own (hashed into the key). ``normalise``: parameter
    name -> function applied before keying (e.g. ``device="auto"`` -> ``"cuda"``).
    ``unkeyed``: parameters left out of the key (how often to checkpoint, say).
    While the function runs, :func:`current_identity` returns its stage identity.
    """
    from prefect import task
    from prefect.transactions import get_transaction

    sources = tuple(sources)

    def decorate(fn: Callable) -> Any:
        stage = Stage(name, fn, stage_source(fn, sources), dict(normalise or {}), tuple(unkeyed))

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            bound = inspect.signature(fn).bind(*args, **kwargs)
            bound.apply_defaults()
            with _running(stage.identity(bound.arguments)):
                result = fn(*bound.args, **bound.kwargs)
            transaction = get_transaction()
            record(stage, bound.arguments, result, getattr(transaction, "key", None))
            return result

        run.__stage__ = stage
        return task(
            run,
            name=name,
            cache_key_fn=cache_key_fn,
            persist_result=True,
            result_serializer="json",
            **options,
        )

    return decorate


class Bound:
    """A cached task bound to one store: ``store=`` passed for you, results recorded under
    ``<store>/results``; ``refresh=True`` recomputes even when a valid cache entry exists."""

    def __init__(self, task: Any, store: Store, refresh: bool = False):
        self.store = store
        # absolute, so that workers with another working directory (Dask) find the same files
        self.root = str(store.root.resolve())
        self.task = task.with_options(result_storage=store.results.resolve(), refresh_cache=True if refresh else None)

    def __call__(self, **kwargs: Any) -> Any:
        return self.task(store=self.root, **kwargs)

    def submit(self, **kwargs: Any) -> Any:
        return self.task.submit(store=self.root, **kwargs)

    def map(self, **kwargs: Any) -> Any:
        from prefect import unmapped

        return self.task.map(store=unmapped(self.root), **kwargs)
