"""`python -m flows.figures_script`: three PNGs, written atomically, byte-identical across runs."""

import pytest

from flows import figures_script

NAMES = ("param_id_loss.png", "param_id_fields.png", "topology_thermal.png")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run(out):
    return figures_script.main(["--out", str(out), "--id-steps", "3", "--topo-steps", "2"])


def test_figures_written_and_reproducible(tmp_path, capsys):
    first, second = tmp_path / "a", tmp_path / "b"
    numbers = run(first)
    printed = capsys.readouterr().out
    for name in NAMES:
        data = (first / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 1000
    # no temporary files left behind
    assert sorted(p.name for p in first.iterdir()) == sorted(NAMES)
    assert numbers["identification_steps"] == 3 and numbers["topology_steps"] == 2
    assert numbers["loss_last"] < numbers["loss_first"]
    assert numbers["compliance_last"] < numbers["compliance_first"]
    assert abs(numbers["volume"] - 0.4) < 1e-9
    assert numbers["gradcheck_min_digits"] > 7
    assert "median significant digits" in printed and "figures written to" in printed

    run(second)
    for name in NAMES:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    # rerunning into the same folder replaces the files in place
    run(first)
    for name in NAMES:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_hidden_step_options_are_checked(tmp_path):
    with pytest.raises(SystemExit):
        figures_script.main(["--out", str(tmp_path), "--id-steps", "0"])


def test_quick_and_default_step_counts():
    assert (figures_script.parse_args([]).id_steps, figures_script.parse_args([]).topo_steps) == (5000, 60)
    quick = figures_script.parse_args(["--quick"])
    assert (quick.id_steps, quick.topo_steps) == (300, 20)
