"""flows.cli: the arguments the benchmark flows share and the exit status of a run."""

import argparse

import pytest

from flows.cli import add_run_arguments, run_to_exit_code


class _State:
    def __init__(self, completed: bool):
        self.completed = completed

    def is_completed(self) -> bool:
        return self.completed


def _parse(argv):
    parser = argparse.ArgumentParser()
    add_run_arguments(parser, "reports/x", "rerun everything")
    return parser.parse_args(argv)


def test_defaults_and_values_of_the_run_arguments():
    args = _parse([])
    assert (args.no_cache, args.store, args.out) == (False, None, "reports/x")
    args = _parse(["--no-cache", "--store", "s", "--out", "o"])
    assert (args.no_cache, args.store, args.out) == (True, "s", "o")


@pytest.mark.parametrize("completed, code", [(True, 0), (False, 1)])
def test_the_flow_gets_the_run_arguments_and_its_state_sets_the_exit_code(completed, code):
    calls = []

    def flow(**kwargs):
        calls.append(kwargs)
        return _State(completed)

    assert run_to_exit_code(flow, _parse(["--no-cache", "--store", "s"]), suites=["a"]) == code
    assert calls == [{"suites": ["a"], "use_cache": False, "store": "s", "out": "reports/x", "return_state": True}]
