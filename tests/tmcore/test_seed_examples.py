"""The chapter's two worked examples, run as written (import name tmcore), with fewer steps."""

import pytest

from .docpages import run_example


def _run(script: str, steps: int, monkeypatch) -> dict:
    return run_example(script, monkeypatch, steps)


def test_example_1_coefficient_identification_makes_progress(monkeypatch):
    result = _run("seed_example1.py", 40, monkeypatch)
    losses = result["losses"]
    assert result["mesh"].n_points == 790  # the chapter's mesh at chara_length=0.04
    assert losses[0] == pytest.approx(9.794e-3, rel=1e-3)
    assert losses[-1] < 0.05 * losses[0]


def test_example_2_thermal_topology_makes_progress(monkeypatch):
    result = _run("seed_example2.py", 10, monkeypatch)
    compliances = result["compliances"]
    assert result["mesh"].n_points == 1935 and result["n_elem"] == 3708
    assert compliances[0] == pytest.approx(5.924e-3, rel=1e-3)  # the chapter's 5.9e-3
    assert compliances[-1] < 0.5 * compliances[0]
    assert abs(float(result["rho"].detach().mean()) - 0.4) < 1e-10
