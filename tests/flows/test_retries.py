"""Retries and time limits of the study stages: a transient failure is retried and the retry
resumes from the latest checkpoint, ending bitwise where an uninterrupted run ends; a
deterministic failure is not retried; a study past its time limit raises TimeoutError at the
next step and the retry resumes too. Progress lines are bounded and readable."""

from __future__ import annotations

import logging
import re
import time

import pytest
from prefect.states import Failed

from flows import tasks
from flows.artifacts import Store
from flows.differentiability import identification_study, topology_study

OPTIONS = {"steps": 7, "chara_length": 0.2}  # 44 nodes, a checkpoint every 2 steps: the last one at step 4 of 7


def test_the_study_stages_retry_transient_failures_only():
    for task in (tasks.identify_coefficient, tasks.optimise_topology):
        assert task.retries == tasks.STUDY_RETRIES == 2
        assert task.retry_delay_seconds == tasks.STUDY_RETRY_DELAYS
        assert task.retry_condition_fn is tasks.transient_failure
    for error, retried in [
        (OSError("disk full"), True),
        (TimeoutError("slow"), True),
        (MemoryError(), True),
        (ValueError("bad lr"), False),
        (FloatingPointError("nan"), False),
        (RuntimeError("solver"), False),
    ]:
        assert tasks.transient_failure(None, None, Failed(data=error)) is retried, error
    assert tasks.study_timeout(5000) == 5000.0 and tasks.study_timeout(60) == 3600.0


@pytest.fixture
def no_retry_delay(monkeypatch):
    """The study tasks as configured, but retrying at once (the flows look them up in ``flows.tasks``)."""
    for name in ("identify_coefficient", "optimise_topology"):
        monkeypatch.setattr(tasks, name, getattr(tasks, name).with_options(retry_delay_seconds=0))


def _inject(monkeypatch, fault):
    """Call ``fault(step, attempt_calls)`` before the real progress callback; returns the steps seen."""
    calls: list[int] = []
    original = tasks.Progress.__call__

    def progress(self, step, value):
        calls.append(step)
        fault(step, calls)
        return original(self, step, value)

    monkeypatch.setattr(tasks.Progress, "__call__", progress)
    return calls


def _task_runs(flow_run_id):
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))


@pytest.mark.parametrize("study, history", [(identification_study, "identify"), (topology_study, "topology")])
def test_a_study_failing_once_resumes_on_retry_with_the_same_content_hash(
    prefect_api, tmp_path, monkeypatch, no_retry_delay, study, history
):
    reference = study(**OPTIONS, checkpoint_every=None, store=str(tmp_path / "reference"))

    def io_fault_once(step, calls):
        if step == 4 and calls.count(4) == 1:
            raise OSError("injected I/O fault after step 5")

    calls = _inject(monkeypatch, io_fault_once)
    store = Store(tmp_path / "store")
    state = study(**OPTIONS, checkpoint_every=2, store=str(store.root), return_state=True)
    assert state.is_completed(), state
    assert calls == [0, 1, 2, 3, 4, 4, 5, 6]  # the retry resumed at the checkpoint of step 4, not at step 0
    result = state.result()
    for name in ("history", "fields"):  # the content hash covers every array bit for bit
        assert result[name]["content"] == reference[name]["content"], name
    assert not list((store.root / "checkpoints").glob("*.json"))  # finished: checkpoint discarded
    (run,) = [r for r in _task_runs(state.state_details.flow_run_id) if r.name.startswith(history)]
    assert run.run_count == 2 and run.state.is_completed()
    assert run.name == f"{history}(h=0.2, 7 steps)"


def test_a_deterministic_failure_is_not_retried(prefect_api, tmp_path, monkeypatch, no_retry_delay):
    def bad_value(step, calls):
        if step == 4:
            raise ValueError("injected deterministic failure")

    calls = _inject(monkeypatch, bad_value)
    state = identification_study(**OPTIONS, checkpoint_every=2, store=str(tmp_path / "store"), return_state=True)
    assert state.is_failed()
    assert calls == [0, 1, 2, 3, 4]  # one attempt only


def test_a_study_past_its_time_limit_times_out_and_the_retry_resumes(
    prefect_api, tmp_path, monkeypatch, no_retry_delay
):
    from prefect import flow

    from flows.caching import Bound

    reference = identification_study(**OPTIONS, checkpoint_every=None, store=str(tmp_path / "reference"))
    limit = 2.0

    def slow_once(step, calls):
        if step == 4 and calls.count(4) == 1:
            time.sleep(limit + 0.2)  # the first attempt overruns here; the next step's check raises

    calls = _inject(monkeypatch, slow_once)

    @flow
    def limited(store: str) -> dict:
        artifacts = Store(store)
        mesh = Bound(tasks.generate_mesh, artifacts)(kind="rectangle", chara_length=OPTIONS["chara_length"])
        return Bound(tasks.identify_coefficient, artifacts)(
            mesh=mesh, steps=OPTIONS["steps"], checkpoint_every=2, time_limit=limit
        )

    state = limited(store=str(tmp_path / "store"), return_state=True)
    assert state.is_completed(), state
    assert calls == [0, 1, 2, 3, 4, 4, 5, 6]  # timed out at the check after step 5, resumed from the checkpoint at 4
    result = state.result()
    assert result["history"]["content"] == reference["history"]["content"]
    (run,) = [r for r in _task_runs(state.state_details.flow_run_id) if r.name.startswith("identify")]
    assert run.run_count == 2


def test_progress_is_a_bounded_number_of_readable_lines(caplog):
    pattern = re.compile(
        r"identification loss: step (\d+)/5000 \((\d+)%\) \S+ \| \S+ steps/s \| ETA (\d+ s|\d+ min \d\d s|\?)$"
    )
    with caplog.at_level(logging.INFO, logger="flows.tasks"):
        progress = tasks.Progress("identification-progress", 5000, "identification loss", "test")
        for step in range(5000):
            progress(step, 1.0 / (step + 1))
    lines = [r.getMessage() for r in caplog.records if r.name == "flows.tasks"]
    assert len(lines) == 10
    matches = [pattern.match(line) for line in lines]
    assert all(matches), lines
    assert [int(m[1]) for m in matches] == list(range(500, 5001, 500))
    assert [int(m[2]) for m in matches] == list(range(10, 101, 10))
    assert matches[-1][3] == "0 s"

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="flows.tasks"):
        resumed = tasks.Progress("identification-progress", 5000, "identification loss", "test")
        for step in range(2500, 5000):  # a resumed study: the rate counts this attempt's steps only
            resumed(step, 1.0)
    assert len([r for r in caplog.records if r.name == "flows.tasks"]) == 5
    assert tasks.format_seconds(float("nan")) == "?" and tasks.format_seconds(3725) == "1 h 02 min"


def test_task_run_names_say_what_they_compute():
    assert tasks._mesh_name({"kind": "rectangle", "chara_length": 0.025}) == "mesh(rectangle h=0.025)"
    assert (
        tasks._mesh_name({"kind": "grid", "cells": [4, 8], "element_type": "quad", "order": 2})
        == "mesh(grid 4x8 quad P2)"
    )
    assert tasks._gradient_check_name({"target": "topology"}) == "gradient_check(topology)"
    assert (
        tasks.study_run(tasks.identify_coefficient, "identify", 0.04, 5000).task_run_name
        == "identify(h=0.04, 5000 steps)"
    )
