"""The differentiability-figures flow: caching across runs, exact recomputation, reproducibility."""

from __future__ import annotations

import json
import os

import pytest
import xarray as xr

from flows import differentiability
from flows.artifacts import Store, iter_refs
from flows.differentiability import differentiability_figures

from .conftest import TINY

FIGURES = ("param_id_loss.png", "param_id_fields.png", "topology_thermal.png")
TASKS = ("generate_mesh", "identify_coefficient", "optimise_topology", "gradient_check", "render_figures")


def _run(tmp_path, **overrides):
    return differentiability_figures(
        **{**TINY, "store": str(tmp_path / "store"), "out": str(tmp_path / "out"), **overrides}
    )


def _computed(result) -> dict[str, list[bool]]:
    """Per task name, whether each of its runs computed (True) or was Cached (False)."""
    states = result["states"]
    assert set(states) == set(TASKS)
    for names in states.values():
        assert set(names) <= {"Completed", "Cached"}, states
    return {name: [state == "Completed" for state in names] for name, names in states.items()}


def test_cached_runs_and_exact_recomputation(prefect_api, tmp_path):
    store = Store(tmp_path / "store")
    first = _run(tmp_path)
    assert all(all(runs) for runs in _computed(first).values())  # an empty store: everything computed
    for name in FIGURES:
        assert (tmp_path / "out" / name).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert (tmp_path / "out" / "gradient_check.nc").is_file()
    assert "| target |" in (tmp_path / "out" / "gradient_check.md").read_text()
    assert first["summary"]["gradcheck_min_digits"] > 7
    assert first["summary"]["compliance_last"] < first["summary"]["compliance_first"]

    second = _run(tmp_path)  # same inputs: nothing recomputed, the same artifacts
    assert not any(any(runs) for runs in _computed(second).values())
    assert second["artifacts"] == first["artifacts"]

    # a changed parameter recomputes its stage and what depends on it, nothing else
    third = _run(tmp_path, topology_steps=3)
    assert _computed(third) == {
        "generate_mesh": [False] * 3,
        "identify_coefficient": [False],
        "optimise_topology": [True],
        "gradient_check": [False, False],
        "render_figures": [True],
    }

    # a deleted artifact: that stage recomputes; the same content comes back, so nothing downstream does
    deleted = third["artifacts"]["gradient_checks"][1]
    os.remove(store.path(deleted))
    fourth = _run(tmp_path, topology_steps=3)
    assert _computed(fourth) == {
        **{k: [False] * len(v) for k, v in fourth["states"].items()},
        "gradient_check": [False, True],
    }
    assert fourth["artifacts"]["gradient_checks"][1]["content"] == deleted["content"]
    assert store.verify(fourth["artifacts"]["gradient_checks"][1])

    # a corrupted artifact: moved aside (kept), recomputed, never used
    corrupted = fourth["artifacts"]["identification"]["history"]
    path = store.path(corrupted)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x55
    path.write_bytes(bytes(data))
    fifth = _run(tmp_path, topology_steps=3)
    computed = _computed(fifth)
    assert computed["identify_coefficient"] == [True]
    assert sum(sum(runs) for runs in computed.values()) == 1  # identical content: the figures stay Cached
    assert [p.read_bytes() for p in (store.root / "quarantine").iterdir()] == [bytes(data)]
    for ref in iter_refs(fifth["artifacts"]):
        assert store.verify(ref), ref["path"]


def test_regeneration_from_an_empty_store_is_bitwise_identical(prefect_api, tmp_path):
    results = [_run(tmp_path / run, identification_steps=6, topology_steps=4) for run in ("a", "b")]
    stores = [Store(tmp_path / run / "store") for run in ("a", "b")]
    refs = [list(iter_refs(result["artifacts"])) for result in results]
    assert len(refs[0]) == len(refs[1]) == 3 + 2 + 2 + 2 + 3
    for ref_a, ref_b in zip(*refs):
        assert ref_a["kind"] == ref_b["kind"] and ref_a["content"] == ref_b["content"]
        if ref_a["kind"] == "figure":
            assert stores[0].read_bytes(ref_a) == stores[1].read_bytes(ref_b)
            continue
        a, b = stores[0].open_dataset(ref_a), stores[1].open_dataset(ref_b)
        assert sorted(a.variables) == sorted(b.variables)
        for name in a.variables:
            x, y = a[name].values, b[name].values
            assert x.dtype == y.dtype and x.shape == y.shape, name
            if x.dtype.kind == "O":
                assert x.tolist() == y.tolist(), name
            else:
                assert x.tobytes() == y.tobytes(), f"{ref_a['kind']}:{name}"
    for name in FIGURES:
        assert (tmp_path / "a" / "out" / name).read_bytes() == (tmp_path / "b" / "out" / name).read_bytes(), name
    # every published file, the gradient-check table's netCDF included (issue 17 item 7: its
    # sources were listed by file sha256, which changes with the run_* timing attributes)
    published = [sorted(p.name for p in (tmp_path / run / "out").iterdir()) for run in ("a", "b")]
    assert published[0] == published[1] == sorted([*FIGURES, "gradient_check.md", "gradient_check.nc"])
    for name in published[0]:
        assert (tmp_path / "a" / "out" / name).read_bytes() == (tmp_path / "b" / "out" / name).read_bytes(), name
    with xr.open_dataset(tmp_path / "a" / "out" / "gradient_check.nc") as table:
        sources = json.loads(table.attrs["sources"])
    checks = results[0]["artifacts"]["gradient_checks"]
    assert sources == [{"kind": "gradcheck", "content": ref["content"]} for ref in checks]


def test_command_prints_where_the_figures_are(prefect_api, tmp_path, capsys):
    argv = [
        "--identification-steps",
        "2",
        "--topology-steps",
        "2",
        "--store",
        str(tmp_path / "s"),
        "--out",
        str(tmp_path / "figs"),
    ]
    differentiability.main(argv)
    printed = capsys.readouterr().out
    assert f"figures written to {(tmp_path / 'figs').resolve()}/: param_id_loss.png" in printed
    assert "tasks: 8 Completed" in printed and "| identification |" in printed
    differentiability.main(argv)
    assert "tasks: 8 Cached" in capsys.readouterr().out


def test_arguments_are_checked(prefect_api, tmp_path):
    args = differentiability.parse_args([])
    assert (args.identification_steps, args.topology_steps) == (5000, 60)
    args = differentiability.parse_args(["--quick", "--topology-steps", "7"])
    assert (args.identification_steps, args.topology_steps) == (300, 7)
    with pytest.raises(SystemExit):
        differentiability.parse_args(["--identification-steps", "0"])
    state = differentiability_figures(**{**TINY, "n_probes": 0, "store": str(tmp_path)}, return_state=True)
    assert state.is_failed()
    from prefect.exceptions import ParameterTypeError

    with pytest.raises(ParameterTypeError, match="n_probes: Input should be greater than or equal to 1"):
        state.result()
    assert not any(tmp_path.iterdir())  # refused before any work


def test_each_study_runs_as_a_flow_of_its_own(prefect_api, store):
    ident = differentiability.identification_study(steps=2, chara_length=0.2, store=str(store.root))
    topo = differentiability.topology_study(steps=2, chara_length=0.2, store=str(store.root))
    assert store.open_dataset(ident["history"], "history").sizes["step"] == 2
    assert store.open_dataset(topo["fields"], "fields")["rho"].dims == ("cell",)
    assert ident["mesh"] == topo["mesh"]  # the same mesh stage, shared through the cache
