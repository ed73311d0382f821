"""Checks a flow's command runs before any work: the store, the output folder, Prefect's home.

A bad path found late costs a whole run (an unwritable ``--out`` was found only when
publishing, after every stage ran) or leaves a mess (``--store /`` wrote ``objects/``,
``index/``, ... at the filesystem root); a read-only Prefect home made the temporary API
server fail thousands of log lines later, without naming the path. So each command calls
:func:`run_or_exit` first; it fails with one line that names the path and says why:

- the store is not a system directory (``/``, ``/etc``, ``/usr``, the home directory, ...,
  or anything under ``/proc``, ``/sys``, ``/dev``, ``/etc``, ``/usr``, ``/boot``, ``/bin``,
  ``/sbin``, ``/lib*``), not an existing non-empty directory that is not a store (a store
  holds only :data:`STORE_ENTRIES`), and writable;
- ``--out`` is a writable directory, or can be created;
- Prefect's home (``PREFECT_HOME``, else Prefect's setting) is a writable directory, or
  can be created, and its database ``prefect.db``, if present, can be opened for writing.

"Writable" is tested by creating (and removing) a file, not by permission bits, so it
holds for root, read-only mounts and immutable folders alike.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

from .artifacts import default_root

# What a store's root may hold (flows.artifacts): anything else means it is not a store.
STORE_ENTRIES = frozenset({"objects", "index", "results", "checkpoints", "quarantine"})
# System directories: never a store, nor anything under the ones in SYSTEM_TREES.
SYSTEM_DIRS = frozenset(
    {
        "/",
        "/bin",
        "/boot",
        "/dev",
        "/etc",
        "/home",
        "/lib",
        "/lib32",
        "/lib64",
        "/media",
        "/mnt",
        "/opt",
        "/proc",
        "/root",
        "/run",
        "/sbin",
        "/srv",
        "/sys",
        "/tmp",
        "/usr",
        "/var",
        "/var/tmp",
        "/Users",
        "/System",
        "/Library",
        "/private",
        "/private/tmp",
        "/Applications",
    }
)
SYSTEM_TREES = (
    "/proc",
    "/sys",
    "/dev",
    "/etc",
    "/usr",
    "/boot",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/System",
)


class PreflightError(ValueError):
    """A path a flow needs is unusable; the message is one line naming it."""


def _resolved(path: str | os.PathLike) -> Path:
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable_dir(path: str | os.PathLike, what: str) -> Path:
    """``path`` is a directory we can create files in, or can be created (its nearest existing
    ancestor is a writable directory); PreflightError naming ``what`` and the path otherwise."""
    path = _resolved(path)
    if path.exists() and not path.is_dir():
        raise PreflightError(f"{what} {path} is not a directory")
    existing = _nearest_existing(path)
    if not existing.is_dir():
        raise PreflightError(f"{what} {path} cannot be created: {existing} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".tmcore-preflight-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        where = "" if existing == path else f" (its nearest existing folder {existing} is not writable)"
        raise PreflightError(f"{what} {path} is not writable{where}: {error.strerror or error}") from None
    return path


def check_store(root: str | os.PathLike | None) -> Path:
    """The store's root is not a system directory nor a non-empty non-store directory, and is writable."""
    path = _resolved(default_root() if root in (None, "") else root)
    text = path.as_posix()
    home = _resolved("~").as_posix()
    if text in SYSTEM_DIRS or text == home or any(text == t or text.startswith(t + "/") for t in SYSTEM_TREES):
        raise PreflightError(
            f"store {path} is a system directory; pass --store a folder of its own (e.g. data/artifacts)"
        )
    if path.is_dir():
        try:
            entries = set(os.listdir(path))
        except OSError as error:
            raise PreflightError(f"store {path} cannot be listed: {error.strerror or error}") from None
        foreign = sorted(entries - STORE_ENTRIES)
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise PreflightError(
                f"store {path} is a non-empty folder that is not an artifact store (it holds {shown}); "
                "pass --store an empty or new folder, or an existing store"
            )
    return check_writable_dir(path, "store")


def prefect_home() -> Path:
    """Prefect's home: ``$PREFECT_HOME``, else Prefect's own setting (prefect.toml, ~/.prefect)."""
    if os.environ.get("PREFECT_HOME"):
        return _resolved(os.environ["PREFECT_HOME"])
    from prefect.settings import get_current_settings

    return _resolved(get_current_settings().home)


def check_prefect_home(home: str | os.PathLike | None = None) -> Path:
    """Prefect's home is writable (or can be created) and its ``prefect.db``, if any, writable."""
    path = check_writable_dir(prefect_home() if home is None else home, "PREFECT_HOME")
    database = path / "prefect.db"
    if database.exists():
        try:
            with open(database, "ab"):
                pass
        except OSError as error:
            raise PreflightError(f"Prefect's database {database} is not writable: {error.strerror or error}") from None
    return path


def check(
    store: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    outputs: Iterable[tuple[str, str | os.PathLike]] = (),
) -> None:
    """Every check of the module docstring; the first failure raises PreflightError."""
    check_store(store)
    if out is not None:
        check_writable_dir(out, "--out")
    for what, path in outputs:
        check_writable_dir(path, what)
    check_prefect_home()


def run_or_exit(store: str | os.PathLike | None = None, out: str | os.PathLike | None = None) -> None:
    """:func:`check` for a command: on failure, print one line to stderr and exit with status 2."""
    try:
        check(store=store, out=out)
    except PreflightError as error:
        sys.stderr.flush()
        os.write(2, f"error: {error}\n".encode())  # unbuffered: the line is out before the exit
        raise SystemExit(2) from None


def run_or_exit_argv(argv: list[str] | None = None, default_out: str | os.PathLike | None = None) -> None:
    """:func:`run_or_exit` for a command before it parses its arguments (and before it starts
    anything): ``--store`` and ``--out`` are read from ``argv`` (default ``sys.argv[1:]``),
    ``default_out`` stands in for an absent ``--out``. Light: imports neither torch nor Prefect."""
    import argparse

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--store", default=None)
    parser.add_argument("--out", default=None)
    known, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    run_or_exit(store=known.store, out=known.out if known.out is not None else default_out)
