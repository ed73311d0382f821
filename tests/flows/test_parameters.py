"""Flow parameters are checked at the flow boundary (Prefect's pydantic validation, and the
server's parameter schema for deployment runs) before any task runs or any file is written."""

from __future__ import annotations

import math

import pytest
from prefect.exceptions import ParameterTypeError

from flows.differentiability import differentiability_figures, identification_study, topology_study
from flows.validation import validation_benchmark

FIGURES, IDENT, TOPO, BENCH = differentiability_figures, identification_study, topology_study, validation_benchmark

# (flow, bad parameters, what Prefect's message says)
REFUSED = [
    (FIGURES, {"identification_steps": 0}, r"identification_steps: Input should be greater than or equal to 1"),
    (FIGURES, {"topology_steps": -3}, r"topology_steps: Input should be greater than or equal to 1"),
    (
        FIGURES,
        {"identification_steps": 10_000_000},
        r"identification_steps: Input should be less than or equal to 1000000",
    ),
    (FIGURES, {"identification_steps": True}, r"identification_steps: Input should be a valid integer"),
    (FIGURES, {"identification_steps": "300"}, r"identification_steps: Input should be a valid integer"),
    (FIGURES, {"identification_steps": 2.5}, r"identification_steps: Input should be a valid integer"),
    (FIGURES, {"identification_mesh": 0.0}, r"identification_mesh: Input should be greater than or equal to 0.002"),
    (FIGURES, {"topology_mesh": 2.0}, r"topology_mesh: Input should be less than or equal to 0.5"),
    (FIGURES, {"gradcheck_mesh": math.nan}, r"gradcheck_mesh: Input should be a finite number"),
    (FIGURES, {"n_probes": 0}, r"n_probes: Input should be greater than or equal to 1"),
    (FIGURES, {"checkpoint_every": 0}, r"checkpoint_every: Input should be greater than or equal to 1"),
    (IDENT, {"lr": 0.0}, r"lr: Input should be greater than 0"),
    (IDENT, {"lr": math.inf}, r"lr: Input should be a finite number"),
    (IDENT, {"smoothness": -1e-3}, r"smoothness: Input should be greater than or equal to 0"),
    (IDENT, {"steps": None}, r"steps: Input should be a valid integer"),
    (TOPO, {"vf": 1.0}, r"vf: Input should be less than 1"),
    (TOPO, {"vf": 0.0}, r"vf: Input should be greater than 0"),
    (TOPO, {"p": -1.0}, r"p: Input should be greater than 0"),
    (TOPO, {"chara_length": "0.1"}, r"chara_length: Input should be a valid number"),
    (BENCH, {"date": "../../etc/cron.d/x"}, r"date: String should match pattern"),
    (BENCH, {"date": "2030-01-01/../../x"}, r"date: String should match pattern"),
    (BENCH, {"suites": []}, r"suites: List should have at least 1 item"),
    (BENCH, {"suites": ["../mms"]}, r"suites.0: String should match pattern"),
    (BENCH, {"options": ["mms"]}, r"options: Input should be a valid dictionary"),
]


@pytest.mark.parametrize(
    "flow, bad, message", REFUSED, ids=[f"{f.name}-{next(iter(b))}-{i}" for i, (f, b, _) in enumerate(REFUSED)]
)
def test_out_of_range_parameters_are_refused_before_any_work(prefect_api, tmp_path, flow, bad, message):
    paths = {"store": str(tmp_path / "store")}
    if "out" in flow.parameters.properties:
        paths["out"] = str(tmp_path / "out")
    state = flow(**paths, **bad, return_state=True)
    assert state.is_failed()
    with pytest.raises(ParameterTypeError, match=message):
        state.result()
    assert not any(tmp_path.iterdir())  # no artifact, no report: nothing ran


def test_unknown_parameters_are_refused_at_the_call(prefect_api, tmp_path):
    with pytest.raises(TypeError, match="identification_stpes"):
        differentiability_figures(identification_stpes=3, store=str(tmp_path))
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "flow, good, expected",
    [
        (FIGURES, {"identification_steps": 1, "identification_mesh": 0.5, "n_probes": 1000}, None),
        (FIGURES, {"checkpoint_every": None}, None),
        (TOPO, {"vf": 0.999, "p": 3}, {"p": 3.0}),  # an int where a float is expected is fine
        (BENCH, {"date": "2030-01-02", "suites": ["mms", "always-late"]}, None),
    ],
)
def test_values_in_range_pass_validation(flow, good, expected):
    checked = flow.validate_parameters(good)
    for name, value in (expected or good).items():
        assert checked[name] == value and type(checked[name]) is type(value)


def test_deployment_runs_with_bad_parameters_are_refused_by_the_server(prefect_api):
    """The deployment's parameter schema carries the bounds and the server enforces it: no flow run is created."""
    from prefect import get_client
    from prefect.deployments import run_deployment

    schema = topology_study.parameters.model_dump()["properties"]
    assert schema["vf"]["exclusiveMinimum"] == 0 and schema["vf"]["exclusiveMaximum"] == 1
    assert schema["steps"]["minimum"] == 1

    deployment = topology_study.to_deployment(name="parameter-check")
    deployment_id = deployment.apply()
    from prefect.exceptions import PrefectHTTPStatusError

    with pytest.raises(
        PrefectHTTPStatusError,
        match=r"409 Conflict.*Validation failed for field 'vf'.*1\.5 is greater than or equal to the maximum of 1\.0",
    ):
        run_deployment("thermal-topology/parameter-check", parameters={"vf": 1.5}, timeout=0)
    with get_client(sync_client=True) as client:
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))
    assert runs == []


def test_every_parameter_of_every_flow_is_described():
    """The UI's custom-run form shows each parameter's description, taken from the flow
    docstring's ``Args:`` section: every flow documents every parameter there."""
    from flows.datagen import operator_dataset

    for flow in (FIGURES, IDENT, TOPO, BENCH, operator_dataset):
        properties = flow.parameters.properties
        missing = sorted(name for name, spec in properties.items() if not spec.get("description"))
        assert properties and not missing, f"{flow.name}: no description for {missing}"
