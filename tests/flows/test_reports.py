"""Report helpers that need no Prefect server: concurrent UI calls."""

from __future__ import annotations

import contextvars
import threading

import pytest

from flows.reports import ui_concurrently

RUN = contextvars.ContextVar("run", default=None)


def test_ui_calls_run_side_by_side_in_the_callers_context():
    RUN.set("flow-run-1")
    barrier = threading.Barrier(3, timeout=10)  # passes only if all three calls run at once
    seen = []

    def call() -> None:
        barrier.wait()
        seen.append((RUN.get(), threading.current_thread().name))

    ui_concurrently([call, call, call])
    assert [run for run, _ in seen] == ["flow-run-1"] * 3
    assert len({thread for _, thread in seen}) == 3


def test_a_failing_ui_call_is_raised_after_the_others_ran():
    done = []

    def fails() -> None:
        raise RuntimeError("refused")

    with pytest.raises(RuntimeError, match="refused"):
        ui_concurrently([fails, lambda: done.append(1)])
    assert done == [1]
