"""A three-stage flow (mesh -> assemble -> solve) for the fault-injection tests, also runnable as a script.

    python -m tests.flows.pipeline STORE [--cells N] [--stall KIND MARKER] [--ready FILE --go FILE]

prints the flow's result as one line ``RESULT {json}``.

``--stall KIND MARKER``: the first write of a ``KIND`` artifact goes through the store's
real atomic write, writes half its bytes into the temporary file beside the final name,
fsyncs them, writes the final name it was headed for into MARKER and sleeps: the test
SIGKILLs the process there, mid-write. ``--ready FILE --go FILE``: create FILE once
everything is imported, then wait for FILE to exist before running (two processes race).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from flows import tasks
from flows.artifacts import Store, atomic_write, sha256_bytes
from flows.caching import Bound

STAGES = ("generate_mesh", "assemble", "solve")


@flow(name="reliability-pipeline", task_runner=ThreadPoolTaskRunner(max_workers=1))
def pipeline(store: str, cells: int = 4) -> dict:
    """generate_mesh (grid) -> assemble (poisson-mms, CPU) -> solve; the references and task states."""
    artifacts = Store(store)
    mesh = Bound(tasks.generate_mesh, artifacts).submit(kind="grid", cells=cells)
    system = Bound(tasks.assemble, artifacts).submit(mesh=mesh, device="cpu")
    fields = Bound(tasks.solve, artifacts).submit(mesh=mesh, system=system)
    futures = dict(zip(STAGES, (mesh, system, fields)))
    refs = {name: future.result() for name, future in futures.items()}
    return {"refs": refs, "states": {name: future.state.name for name, future in futures.items()}}


def stall_writes(kind: str, marker: Path, seconds: float = 600.0) -> None:
    """Make the first store write of a ``kind`` artifact stop half-way (see the module docstring)."""
    original = Store.put_bytes

    def put_bytes(self, data, kind_, suffix, content=None):
        if kind_ == kind:
            target = self.root / self._object_path(sha256_bytes(data), suffix)

            def half_then_hang(handle):
                handle.write(data[: len(data) // 2])
                handle.flush()
                os.fsync(handle.fileno())
                Path(marker).write_text(str(target))
                time.sleep(seconds)

            atomic_write(target, half_then_hang)
        return original(self, data, kind_, suffix, content)

    Store.put_bytes = put_bytes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("--cells", type=int, default=4)
    parser.add_argument("--stall", nargs=2, metavar=("KIND", "MARKER"))
    parser.add_argument("--ready")
    parser.add_argument("--go")
    args = parser.parse_args(argv)
    if args.stall:
        stall_writes(args.stall[0], Path(args.stall[1]))
    if args.ready:
        Path(args.ready).write_text(str(os.getpid()))
    if args.go:
        deadline = time.monotonic() + 120
        while not Path(args.go).exists():
            if time.monotonic() > deadline:
                print("no go signal within 120 s", file=sys.stderr)
                return 2
            time.sleep(0.01)
    result = pipeline(store=args.store, cells=args.cells)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
