"""What the two Tesseracts' endpoints do, shared by both ``tesseract_api.py`` files.

A :class:`Problem` names a mosaic problem's differentiable inputs and outputs and how to
evaluate them with tmcore (:mod:`integrations.mosaic.solver`). :func:`apply` returns the
outputs as float32 scalars; :func:`vector_jacobian_product` returns, for each requested
input, sum_k cotangent_k d(output_k)/d(input) as a float32 array of the input's full
(padded) length, zero past the active cells. The gradient is autograd through tmcore: the
forward's factorisation serves the one adjoint solve.

``jax.grad`` through a Tesseract (what mosaic's gradient, cost and optimisation suites do)
calls ``apply`` and then ``vector_jacobian_product`` with the same inputs. So ``apply``
keeps its forward (the autograd graph, which holds the factorisation) in a one-slot cache
keyed by a digest of every input, and a VJP at the same inputs takes it from there and
runs only the adjoint solve. The slot is consumed by that VJP (and replaced by the next
``apply``); ``apply`` itself always computes afresh, and a VJP whose inputs were not the
last ``apply``'s computes its own forward. The digest of the mesh and boundary conditions
is the one the set-up cache (:func:`integrations.mosaic.solver.setup_for`) computes anyway,
so each call reads the mesh arrays once; the rest (rho, source, target, parameters) is
hashed per call.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tmcore import solvers

from .solver import DTYPE, HexSetup, digest_into, setup_for, structural_outputs, thermal_outputs

__all__ = [
    "Problem",
    "STRUCTURAL",
    "THERMAL",
    "apply",
    "default_backend",
    "tesseract_endpoints",
    "vector_jacobian_product",
]

logger = logging.getLogger(__name__)


def default_backend() -> str:
    """The linear solver the Tesseracts use: MKL PARDISO when installed (fastest here, and its
    analysis is reused across calls), else SciPy's SuperLU."""
    return "pardiso" if solvers.pardiso_available() else "splu"


MESH_INPUTS = ("hex_mesh", "boundary_conditions")  # what the set-up (and its digest) is built from


@dataclass(frozen=True)
class Problem:
    """One mosaic problem: its differentiable inputs/outputs and its evaluation.

    ``setup(inputs)`` is the :class:`~integrations.mosaic.solver.HexSetup` of the inputs'
    mesh and boundary conditions (cached); ``evaluate(setup, inputs, leaves)`` returns
    {output name: 0-d tensor}, ``leaves`` mapping each differentiable input name to its
    float64 tensor (already requiring grad when wanted).
    """

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    setup: Callable[[Mapping[str, Any]], HexSetup]
    evaluate: Callable[[HexSetup, Mapping[str, Any], Mapping[str, Tensor]], dict[str, Tensor]]


def _thermal_setup(inputs: Mapping[str, Any]) -> HexSetup:
    return setup_for(inputs["hex_mesh"], inputs["boundary_conditions"], 1, backend=default_backend())


def _thermal(setup: HexSetup, inputs: Mapping[str, Any], leaves: Mapping[str, Tensor]) -> dict[str, Tensor]:
    target = inputs.get("target_temperature")
    out = thermal_outputs(
        setup,
        leaves["rho"],
        leaves["source"],
        None if target is None else torch.from_numpy(np.array(target, dtype=np.float64)),
        k_max=float(inputs.get("k_max", 1.0)),
        p_exp=float(inputs.get("p_exp", 3.0)),
    )
    return {name: out[name] for name in THERMAL.outputs}


def _structural_setup(inputs: Mapping[str, Any]) -> HexSetup:
    nu = float(inputs.get("nu", 0.3))
    return setup_for(inputs["hex_mesh"], inputs["boundary_conditions"], 3, nu=nu, backend=default_backend())


def _structural(setup: HexSetup, inputs: Mapping[str, Any], leaves: Mapping[str, Tensor]) -> dict[str, Tensor]:
    out = structural_outputs(
        setup,
        leaves["rho"],
        E_max=float(inputs.get("E_max", 70_000.0)),
        xmin=float(inputs.get("xmin", 1e-3)),
        penal=float(inputs.get("penal", 3.0)),
    )
    return {"compliance": out["compliance"]}


THERMAL = Problem(
    "thermal_mesh", ("rho", "source"), ("thermal_compliance", "identification_error"), _thermal_setup, _thermal
)
STRUCTURAL = Problem("structural_mesh", ("rho",), ("compliance",), _structural_setup, _structural)


def _as_dict(inputs: Any) -> dict[str, Any]:
    return inputs.model_dump() if hasattr(inputs, "model_dump") else dict(inputs)


def _key(problem: Problem, setup: HexSetup, inputs: Mapping[str, Any]) -> str:
    """Digest of every input: the set-up's (mesh, boundary conditions) and the rest's."""
    h = hashlib.sha256(f"{problem.name}:{setup.key}".encode())
    digest_into(h, {name: value for name, value in inputs.items() if name not in MESH_INPUTS})
    return h.hexdigest()


def _leaves(problem: Problem, inputs: Mapping[str, Any], requires_grad: bool) -> dict[str, Tensor]:
    leaves = {}
    for name in problem.inputs:
        value = torch.from_numpy(np.array(inputs[name], dtype=np.float64).reshape(-1))
        leaves[name] = value.requires_grad_(requires_grad)
    return leaves


_last_forward: dict[str, Any] = {}
_lock = threading.Lock()


def apply(problem: Problem, inputs: Any) -> dict[str, np.float32]:
    """The outputs {name: float32 scalar}; the forward is kept for one VJP at the same inputs."""
    inputs = _as_dict(inputs)
    with _lock:
        _last_forward.clear()  # the kept factorisation goes before a new one is made: one alive at a time
    setup = problem.setup(inputs)
    leaves = _leaves(problem, inputs, requires_grad=True)
    outputs = problem.evaluate(setup, inputs, leaves)
    with _lock:
        _last_forward.update(key=_key(problem, setup, inputs), leaves=leaves, outputs=outputs)
    return {name: np.float32(outputs[name].detach().item()) for name in problem.outputs}


def _forward_for(problem: Problem, inputs: Mapping[str, Any]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(leaves, outputs) of the last apply when its inputs were these (consuming it), else a fresh forward."""
    setup = problem.setup(inputs)
    key = _key(problem, setup, inputs)
    with _lock:
        if _last_forward.get("key") == key:
            hit = _last_forward["leaves"], _last_forward["outputs"]
            _last_forward.clear()
            return hit
    leaves = _leaves(problem, inputs, requires_grad=True)
    return leaves, problem.evaluate(setup, inputs, leaves)


def vector_jacobian_product(
    problem: Problem,
    inputs: Any,
    vjp_inputs: set[str],
    vjp_outputs: set[str],
    cotangent_vector: Mapping[str, Any],
) -> dict[str, np.ndarray]:
    """{input name: float32 array like the input}: sum over vjp_outputs of cotangent * d output / d input."""
    unknown_in = set(vjp_inputs) - set(problem.inputs)
    if unknown_in:
        raise ValueError(f"vjp_inputs must be among {list(problem.inputs)}, got {sorted(unknown_in)}")
    unknown_out = set(vjp_outputs) - set(problem.outputs)
    if unknown_out:
        raise ValueError(f"vjp_outputs must be among {list(problem.outputs)}, got {sorted(unknown_out)}")
    inputs = _as_dict(inputs)
    wanted = [name for name in problem.inputs if name in vjp_inputs]
    if not wanted:
        return {}
    leaves, outputs = _forward_for(problem, inputs)
    total = None
    for name in problem.outputs:
        if name not in vjp_outputs or cotangent_vector.get(name) is None:
            continue
        cotangent = torch.as_tensor(np.asarray(cotangent_vector[name]), dtype=DTYPE).reshape(())
        term = cotangent * outputs[name]
        total = term if total is None else total + term
    result = {}
    if total is None:
        grads = [None] * len(wanted)
    else:
        grads = torch.autograd.grad(total, [leaves[name] for name in wanted], allow_unused=True)
    for name, grad in zip(wanted, grads):
        full = np.zeros(np.asarray(inputs[name]).reshape(-1).shape, dtype=np.float32)
        if grad is not None:
            full[: grad.shape[0]] = grad.detach().cpu().numpy()
        result[name] = full.reshape(np.asarray(inputs[name]).shape)
    return result


def tesseract_endpoints(problem: Problem, output_schema: type) -> tuple[Callable, Callable, Callable]:
    """``(apply, vector_jacobian_product, abstract_eval)`` of a Tesseract serving ``problem``.

    A ``tesseract_api.py`` binds them at module level (the Tesseract runtime looks the
    endpoints up by name, beside its ``InputSchema`` and ``OutputSchema``); ``apply`` returns
    ``output_schema``, the VJP {input name: float32 array like the input}, ``abstract_eval``
    a float32 scalar per output whatever the mesh.
    """

    def apply_endpoint(inputs: Any) -> Any:
        return output_schema(**apply(problem, inputs))

    def vjp_endpoint(
        inputs: Any, vjp_inputs: set[str], vjp_outputs: set[str], cotangent_vector: dict[str, Any]
    ) -> dict[str, Any]:
        return vector_jacobian_product(problem, inputs, vjp_inputs, vjp_outputs, cotangent_vector)

    def abstract_eval_endpoint(abstract_inputs: Any) -> dict[str, Any]:
        from tesseract_core.runtime import ShapeDType

        return {name: ShapeDType(shape=(), dtype="float32") for name in problem.outputs}

    outputs, inputs = ", ".join(problem.outputs), " and ".join(problem.inputs)
    apply_endpoint.__doc__ = f"mosaic's {problem.name} on tmcore: {outputs} (float32 scalars)."
    vjp_endpoint.__doc__ = f"Cotangent-weighted gradients in {inputs}: autograd through tmcore (one adjoint solve)."
    abstract_eval_endpoint.__doc__ = f"{outputs}: float32 scalars whatever the mesh."
    for function, name in (
        (apply_endpoint, "apply"),
        (vjp_endpoint, "vector_jacobian_product"),
        (abstract_eval_endpoint, "abstract_eval"),
    ):
        function.__name__ = function.__qualname__ = name
    return apply_endpoint, vjp_endpoint, abstract_eval_endpoint
