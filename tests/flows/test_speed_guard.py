"""The nightly speed guard: tmcore's chapter steps against scikit-fem + SciPy doing the same steps."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("skfem", reason="the speed guard's comparator is scikit-fem + SciPy (the test extra)")

import tmcore  # noqa: E402
from flows.benchmarks.steps import IMPLEMENTATIONS, PROBLEMS, PhaseClock, StepMesh, build_step, time_steps  # noqa: E402
from flows.benchmarks.timings import MAX_RATIO, speed_checks  # noqa: E402
from flows.validation import BenchmarkFailure, validation_benchmark  # noqa: E402

SMALL_MESH = {"identification": 0.1, "topology": 0.1}  # gmsh rectangles of about 150 nodes
# the guard as the nightly run has it (the chapter's meshes, MAX_RATIO), fewer steps: about a second
SHORT = {"rounds": 3, "steps": 5}


def slow_down_tmcore(monkeypatch, seconds: float = 0.1) -> None:
    """Every tmcore solve takes ``seconds`` longer (a stand-in for a performance regression)."""
    solve = tmcore.SparseMatrix.solve

    def slow_solve(self, *args, **kwargs):
        time.sleep(seconds)
        return solve(self, *args, **kwargs)

    monkeypatch.setattr(tmcore.SparseMatrix, "solve", slow_solve)


@pytest.mark.parametrize("problem", PROBLEMS)
def test_the_comparator_takes_the_same_steps(problem):
    # the loss/compliance of every step after the first depends on the previous gradients' values
    # (Adam's moments, OC's sensitivities): equal trajectories mean equal gradients
    mesh = StepMesh.rectangle(SMALL_MESH[problem])
    ours, theirs = (build_step(name, problem, mesh) for name in IMPLEMENTATIONS)
    values = np.array([[step() for _ in range(6)] for step in (ours, theirs)])
    np.testing.assert_allclose(values[0], values[1], rtol=1e-9)
    assert values[0, -1] < 0.8 * values[0, 0]  # both optimise


def test_phase_times_add_up_to_the_step():
    mesh = StepMesh.rectangle(0.1)
    clock = PhaseClock()
    seconds, _ = time_steps(build_step("tmcore", "identification", mesh, lap=clock.lap), steps=3, warmup=1, clock=clock)
    total = np.sum([clock.seconds[phase] for phase in clock.seconds], axis=0)
    assert all(len(values) == 3 for values in clock.seconds.values())
    assert min(clock.seconds["factor+solve"]) > 0 and min(clock.seconds["backward"]) > 0
    np.testing.assert_allclose(total, seconds, rtol=0.05)  # the laps cover the whole step


def slow_down(monkeypatch, implementation: str, seconds: float = 0.1) -> None:
    """Every step of ``implementation`` in the guard takes ``seconds`` longer."""
    import flows.benchmarks.timings as timings

    build = timings.build_step

    def build_slow(name, problem, mesh, **options):
        step = build(name, problem, mesh, **options)
        if name != implementation:
            return step

        def slow_step():
            time.sleep(seconds)
            return step()

        return slow_step

    monkeypatch.setattr(timings, "build_step", build_slow)


def test_the_guard_passes_and_fails_when_tmcore_is_made_slow(monkeypatch):
    # the decision, not this machine's speed: with the comparator 100 ms slower per step the guard
    # must pass, with tmcore 100 ms slower per solve it must fail (the real ratio: make bench, the nightly run)
    with monkeypatch.context() as patch:
        slow_down(patch, "scikit-fem+scipy")
        checks = {check.case: check for check in speed_checks(**SHORT)}
    for problem in PROBLEMS:
        ratio = checks[f"speed-{problem}-ratio"]
        assert ratio.high == MAX_RATIO[problem] and ratio.passed, ratio
        assert checks[f"speed-{problem}-tmcore-ms"].value > 0 and checks[f"speed-{problem}-comparator-ms"].value > 0

    slow_down_tmcore(monkeypatch)  # 100 ms more per solve: several times a chapter step, even on a busy machine
    slow = {check.case: check for check in speed_checks(**SHORT)}
    for problem in PROBLEMS:
        ratio = slow[f"speed-{problem}-ratio"]
        assert not ratio.passed and ratio.value > MAX_RATIO[problem], ratio
        assert ratio.row()["status"] == "FAIL"


def test_a_missing_comparator_fails_the_guard(monkeypatch):
    import flows.benchmarks.timings as timings

    monkeypatch.setattr(timings, "skfem_available", lambda: False)
    checks = {check.case: check for check in speed_checks(**SHORT)}
    assert (
        not checks["speed-identification-ratio"].passed
        and "not installed" in checks["speed-identification-ratio"].quantity
    )


def test_unknown_problems_are_refused():
    with pytest.raises(ValueError, match="unknown problems"):
        speed_checks(max_ratio={"identifcation": 2.0})


def test_a_slow_tmcore_fails_the_nightly_flow(prefect_api, store, tmp_path, monkeypatch):
    slow_down_tmcore(monkeypatch)
    options = {"timings": {"identification_steps": 2, "topology_steps": 2, "speed": SHORT}}
    state = validation_benchmark(
        suites=["timings"],
        options=options,
        store=str(store.root),
        out=str(tmp_path),
        date="2030-02-01",
        return_state=True,
    )
    assert state.is_failed()
    with pytest.raises(BenchmarkFailure, match="speed-identification-ratio"):
        state.result()
    assert (
        "FAILED: speed-identification-ratio, speed-topology-ratio"
        in (tmp_path / "validation-2030-02-01.md").read_text()
    )


@pytest.mark.slow  # a few fresh processes: about a minute on a busy 2-core machine
def test_the_step_benchmark_measures_in_processes_and_writes_its_report(tmp_path):
    from benchmarks import steps as bench
    from benchmarks.suite import machine

    mesh = StepMesh.grid(8)
    mesh.save(tmp_path / "grid.npz")
    case = bench.Case(
        "identification", "grid 81", tmp_path / "grid.npz", mesh.n_nodes, mesh.n_cells, mesh.n_unknowns, 3, 1
    )
    loads: list[str] = []
    results = bench.measure([case], [bench.OURS, bench.SKFEM], rounds=1, peers=None, loads=loads)
    assert [(r.error, len(r.seconds)) for r in results] == [("", 3), ("", 3)]
    rows = bench.rows_of(results)
    np.testing.assert_allclose(rows[0]["first_value"], rows[1]["first_value"], rtol=1e-9)
    assert rows[0]["ratio_to_tmcore"] == 1.0 and rows[1]["ratio_to_tmcore"] > 0
    prows = bench.phase_rows(bench.measure_phases([case], rounds=1))
    assert {p["implementation"] for p in prows} == {bench.OURS, bench.SKFEM} and all(p["sum_ms"] > 0 for p in prows)
    markdown = bench.write_report(rows, prows, machine(), loads, tmp_path, "2030-01-01", [bench.OURS, bench.SKFEM], "")
    text = markdown.read_text()
    assert "| identification | grid 81 | 81 | 49 |" in text and "![phases](2030-01-01-phases.png)" in text
    for name in ("2030-01-01-steps.png", "2030-01-01-phases.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
