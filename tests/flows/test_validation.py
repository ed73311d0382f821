"""The validation-benchmark flow: dated reports, pluggable suites, Failed on a tolerance miss."""

from __future__ import annotations

import math

import pytest
import xarray as xr

from flows.benchmarks import SUITES, Check, register
from flows.benchmarks.mms import rate
from flows.validation import BenchmarkFailure, validation_benchmark

# the speed guard's bounds widened: this test is about the report, not this machine's load (test_speed_guard.py)
LOOSE_SPEED = {"rounds": 3, "steps": 5, "max_ratio": {"identification": 100.0, "topology": 100.0}}
SMALL = {
    "mms": {"sizes": [4, 8, 16]},
    "gradients": {"n_probes": 2},
    "timings": {"identification_steps": 2, "topology_steps": 2, "speed": LOOSE_SPEED},
}


def test_checks_pass_or_fail_by_their_bounds():
    assert Check("a", "s", "q", 2.0, low=1.9, high=2.1).passed
    assert not Check("a", "s", "q", 2.2, low=1.9, high=2.1).passed
    assert not Check("a", "s", "q", float("nan"), low=7.0).passed
    assert Check("a", "s", "q", float("nan")).passed and Check("a", "s", "q", 1.0).row()["status"] == "info"
    assert math.isclose(rate(4e-2, 1e-2, 2.0), 2.0) and math.isnan(rate(0.0, 1.0, 2.0))


def test_benchmark_writes_a_dated_report(prefect_api, store, tmp_path):
    result = validation_benchmark(options=SMALL, store=str(store.root), out=str(tmp_path / "bench"), date="2030-01-02")
    report = xr.load_dataset(tmp_path / "bench" / "validation-2030-01-02.nc")
    assert result["netcdf"].endswith("validation-2030-01-02.nc")
    assert set(report["suite"].values.tolist()) == {"mms", "gradients", "timings"}
    rows = {case: report.sel(case=case) for case in report["case"].values.tolist()}
    assert (
        abs(float(rows["mms-p1-l2-rate"]["value"]) - 2) < 0.15
        and str(rows["mms-p1-l2-rate"]["status"].values) == "pass"
    )
    assert float(rows["gradient-topology-seed0-min-digits"]["value"]) > 7
    assert float(rows["mms-p1-n16-assembly-seconds"]["value"]) > 0
    assert report.attrs["n_failed"] == 0 and report.attrs["date"] == "2030-01-02"
    markdown = (tmp_path / "bench" / "validation-2030-01-02.md").read_text()
    assert "all checks passed" in markdown and "| mms-p1-h1-rate | mms |" in markdown


def test_a_check_outside_its_tolerance_fails_the_flow_after_writing_the_report(prefect_api, store, tmp_path):
    @register("always-late")
    def always_late(context, seconds: float = 3.0):
        return [Check("late", "always-late", "minutes late", seconds, unit="s", high=1.0)]

    try:
        state = validation_benchmark(
            suites=["always-late"], store=str(store.root), out=str(tmp_path), date="2030-01-03", return_state=True
        )
        assert state.is_failed()
        with pytest.raises(BenchmarkFailure, match="1 benchmark check"):
            state.result()
        assert "FAILED: late" in (tmp_path / "validation-2030-01-03.md").read_text()
        passing = validation_benchmark(
            suites=["always-late"],
            options={"always-late": {"seconds": 0.5}},
            store=str(store.root),
            out=str(tmp_path),
            date="2030-01-04",
        )
        assert passing["rows"][0]["status"] == "pass"
    finally:
        del SUITES["always-late"]


def test_unknown_suites_and_options_are_refused(prefect_api, tmp_path):
    with pytest.raises(ValueError, match="unknown benchmark suite"):
        validation_benchmark(suites=["nope"], out=str(tmp_path))
    with pytest.raises(ValueError, match="options given for suites that are not run"):
        validation_benchmark(suites=["mms"], options={"gradients": {}}, out=str(tmp_path))
    assert not any(tmp_path.iterdir())
