"""The pipeline's stages as cached Prefect tasks, thin wrappers over tmcore.

Each stage reads its inputs from the artifact store by reference, computes with tmcore,
writes xarray Datasets (netCDF) back and returns references (path + sha256): never a
tensor, never a pickle. Schemas: docs/artifacts.md. Caching: flows.caching.

The two studies take ``checkpoint_every`` (not part of the cache key): every that many
steps the study's state (iterate, optimiser ``state_dict``, step, histories) is stored
as a ``checkpoint`` artifact under the stage's identity, and a later run of the same
stage (same parameters, inputs and code) resumes from the latest one after a crash,
reaching bitwise the result of an uninterrupted run (docs/reliability.md). A finished
stage discards its checkpoint. They retry (twice, after 5 and 30 s) when they fail for a
reason outside the computation (:data:`TRANSIENT`: I/O, memory, their time limit), and a
retry resumes from that checkpoint.

Task runs are named by what they compute: ``mesh(rectangle h=0.025)``,
``identify(h=0.04, 5000 steps)`` (the flows add the mesh size), ``gradient_check(topology)``.

    generate_mesh         -> mesh
    assemble(mesh)        -> system          (device "auto": CUDA when available)
    solve(mesh, system)   -> fields          (u, and errors when the problem has an exact solution)
    identify_coefficient(mesh)  -> {"history", "fields"}   (checkpoints every N steps, resumes)
    optimise_topology(mesh)     -> {"history", "fields"}   (checkpoints every N steps, resumes)
    gradient_check(mesh)        -> gradcheck table (dim probe)
    render_figures(meshes, histories, fields) -> {"<name>.png": figure}

torch, xarray, tmcore and matplotlib are imported by the stages that compute (through
:func:`_import_compute`), not by this module: a run whose stages are all Cached decides
that from the store's index and the result records alone (flows.caching), and never pays
for those imports (most of a cached run's import time; docs/flows.md).
"""

from __future__ import annotations

import functools
import importlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .artifacts import Store, provenance
from .caching import cached_task, current_identity

if TYPE_CHECKING:
    import torch

    from tmcore import Mesh

logger = logging.getLogger(__name__)

GRADIENT_TARGETS = ("identification", "topology")
# a gradient-check probe passes when autograd and the five-point differences agree to this many
# significant digits (the validation benchmark's bound too)
GRADCHECK_MIN_DIGITS = 7.0


# What the computing stages import, parents before children, in this order.
COMPUTE_MODULES = (
    "torch",
    "xarray",
    "tmcore",
    "tmcore.core.mesh.io",
    "tmcore.methods.gradcheck",
    "tmcore.topology",
    "tmcore.studies",
    "flows.problems",
    "flows.figures",
)
_IMPORTING = threading.Lock()


def _import_compute() -> None:
    """Import :data:`COMPUTE_MODULES`, one thread at a time (a no-op once they are loaded).

    Each computing stage calls it first. Stages start together on the flow's thread pool;
    importing the same interdependent packages from several threads in different orders
    can trip Python's import-deadlock detection and hand a thread a partly initialised
    module, so the first stage imports everything here while the others wait.
    """
    with _IMPORTING:
        for name in COMPUTE_MODULES:
            importlib.import_module(name)


def resolve_device(device: str) -> str:
    """ "auto" -> "cuda" when a CUDA device is available, else "cpu"; other names unchanged."""
    if not isinstance(device, str):
        raise ValueError(f"device must be a string such as 'auto', 'cpu' or 'cuda', got {device!r}")
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    torch.device(device)  # raises on a malformed name
    return device


def _run_logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:  # outside a run (task.fn(...) in a test)
        return logger


class Progress:
    """A study callback that reads like a progress bar in the run's log.

    One line at every ``1/updates`` of the steps (and at the last), naming the quantity,
    the step, the percentage, the value, the rate and the time left::

        identification loss: step 2500/5000 (50%) 3.112e-08 | 281 steps/s | ETA 9 s

    so a study logs at most ``updates`` lines whatever its length. The Prefect progress
    artifact ``key`` moves at the same points only: each update is one
    ``prefect.artifact.updated`` event, which ``prefect deployment run --watch`` prints, so
    it stays at ``updates`` events per study instead of one per 2 % of the steps. The rate
    counts the steps this attempt ran (a resumed study starts its clock at the checkpoint).
    ``time_limit``: seconds this attempt may take; past it, the next step raises TimeoutError.
    """

    def __init__(
        self, key: str, total: int, quantity: str, description: str, updates: int = 10, time_limit: float | None = None
    ):
        self.total, self.quantity, self.time_limit = total, quantity, time_limit
        self.marks = {max(1, round(total * i / updates)) for i in range(1, updates + 1)} | {total}
        self.log = _run_logger()
        self.first: int | None = None
        self.started = 0.0
        self.artifact = None
        try:
            from prefect.artifacts import create_progress_artifact
            from prefect.context import TaskRunContext

            if TaskRunContext.get() is not None:  # outside a run there is no API to report to
                self.artifact = create_progress_artifact(progress=0.0, key=key, description=description)
        except Exception as error:  # no API to talk to: progress goes to the log only
            self.log.debug("no progress artifact (%s)", error)
        self.created = time.perf_counter()  # the time limit counts from here

    def line(self, done: int, value: float, elapsed: float) -> str:
        """The log line after ``done`` of ``total`` steps, ``elapsed`` seconds after the first step of this attempt."""
        counted = done - (self.first or 0)
        rate = counted / elapsed if elapsed > 0 and counted > 0 else float("nan")
        left = (self.total - done) / rate if rate == rate and rate > 0 else float("nan")
        return (
            f"{self.quantity}: step {done}/{self.total} ({100 * done / self.total:.0f}%) {value:.4g} | "
            f"{rate:.3g} steps/s | ETA {format_seconds(left)}"
        )

    def __call__(self, step: int, value: float) -> None:
        done = step + 1
        if self.time_limit is not None and time.perf_counter() - self.created > self.time_limit:
            raise TimeoutError(
                f"{self.quantity}: time limit of {format_seconds(self.time_limit)} "
                f"exceeded after step {done}/{self.total} "
                "(a retry resumes from the latest checkpoint)"
            )
        if self.first is None:  # the clock starts at the first step of this attempt (a resume starts late)
            self.first, self.started = step, time.perf_counter()
        if done not in self.marks:
            return
        self.log.info(self.line(done, value, time.perf_counter() - self.started))
        if self.artifact is not None:
            try:
                from prefect.artifacts import update_progress_artifact

                update_progress_artifact(self.artifact, progress=100.0 * done / self.total)
            except Exception as error:
                self.log.debug("progress artifact not updated (%s)", error)


def format_seconds(seconds: float) -> str:
    """ "42 s", "3 min 05 s", "2 h 07 min"; "?" when unknown."""
    if not seconds == seconds or seconds < 0:  # NaN
        return "?"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


# -- retries and timeouts -------------------------------------------------------------------------

# Failures worth a retry: the machine, not the computation (a full disk, a lost file system,
# memory, a task that ran out of time). A ValueError, a FloatingPointError or a SolverError
# comes back identically on a retry (same inputs, same code, bitwise-deterministic studies),
# so those fail at once.
TRANSIENT = (OSError, TimeoutError, MemoryError)
STUDY_RETRIES = 2
STUDY_RETRY_DELAYS = [5.0, 30.0]  # seconds before the first and the second retry
# Time limits of the studies: generous, to end a stuck run, never a slow one: 1 s per step
# (100-300x the chapter meshes' 3.5 and 9 ms per step), at least an hour. Checked at every
# step by the study's callback (:class:`Progress`), which raises TimeoutError: Prefect's own
# task timeout cannot interrupt a task in a worker thread (it says so in a warning on every
# run) and the studies spend their time in Python loops that a check per step does reach.
STUDY_SECONDS_PER_STEP = 1.0
STUDY_MIN_TIMEOUT = 3600.0


def transient_failure(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect's ``retry_condition_fn``: retry only when the failure is :data:`TRANSIENT`."""
    error = getattr(state, "data", None)
    if not isinstance(error, BaseException):
        try:
            error = state.result(raise_on_failure=False)
        except Exception:
            return False
    return isinstance(error, TRANSIENT)


def study_timeout(steps: int) -> float:
    """The default time limit of one attempt of a study stage of ``steps`` steps, in seconds."""
    return max(STUDY_MIN_TIMEOUT, STUDY_SECONDS_PER_STEP * steps)


def study_run(task: Any, label: str, mesh_size: float, steps: int) -> Any:
    """A study task with the run name ``<label>(h=<mesh size>, <steps> steps)`` (the mesh
    size is known to the flow, not to the task, which sees a mesh reference)."""
    return task.with_options(task_run_name=f"{label}(h={mesh_size:g}, {steps} steps)")


# -- run names ----------------------------------------------------------------------------------


def _mesh_name(parameters: dict) -> str:
    kind, order, element = (
        parameters.get("kind", "rectangle"),
        parameters.get("order", 1),
        parameters.get("element_type", "triangle"),
    )
    if kind == "grid":
        cells = parameters.get("cells")
        size = "x".join(str(c) for c in ([cells, cells] if isinstance(cells, int) else list(cells or [])))
    else:
        size = f"h={parameters.get('chara_length', 0.1):g}"
    extra = ("" if element == "triangle" else f" {element}") + ("" if order == 1 else f" P{order}")
    return f"mesh({kind} {size}{extra})"


def _study_name(label: str) -> Callable[..., str]:
    def name(parameters: dict) -> str:
        return f"{label}({parameters.get('steps')} steps)"

    return name


def _gradient_check_name(parameters: dict) -> str:
    return f"gradient_check({parameters.get('target')})"


def _assemble_name(parameters: dict) -> str:
    return f"assemble({parameters.get('problem')}, {parameters.get('device')})"


def _mesh(store: Store, ref) -> Mesh:
    from tmcore.core.mesh.io import mesh_from_xarray

    return mesh_from_xarray(store.open_dataset(ref, "mesh"))


def _study_task(name: str, label: str) -> Callable[[Callable], Any]:
    """The cached task of a study stage ``name`` (run name ``<label>(<steps> steps)``): how often
    to checkpoint and the time limit are left out of its key, and a :data:`TRANSIENT` failure is
    retried :data:`STUDY_RETRIES` times."""
    return cached_task(
        name,
        unkeyed=("checkpoint_every", "time_limit"),
        task_run_name=_study_name(label),
        retries=STUDY_RETRIES,
        retry_delay_seconds=STUDY_RETRY_DELAYS,
        retry_condition_fn=transient_failure,
    )


def _run_study(
    store: Store, study: Callable, checkpoint_every: int | None, progress: Progress, **kwargs: Any
) -> tuple[Any, float]:
    """``study(callback=progress, **kwargs)`` and its wall-clock seconds, with checkpoints every
    ``checkpoint_every`` steps, resumed from this stage's latest checkpoint if there is one it accepts.

    Checkpoints are filed under the running stage's identity, so only a run of the same
    stage with the same parameters, inputs and code resumes from them, and they are
    discarded once the stage finishes. Outside a cached stage (no identity): neither.
    """
    start = time.perf_counter()
    result = _resumed(store, study, checkpoint_every, callback=progress, **kwargs)
    return result, time.perf_counter() - start


def _resumed(store: Store, study: Callable, checkpoint_every: int | None, **kwargs: Any) -> Any:
    key = current_identity()
    if key is None:
        return study(**kwargs)
    log = _run_logger()
    if checkpoint_every is not None:
        kwargs.update(checkpoint_every=checkpoint_every, checkpoint=functools.partial(store.put_checkpoint, key))
    resume = store.latest_checkpoint(key)
    result = None
    if resume is not None:
        try:
            log.info("resuming %s from its checkpoint at step %s", study.__name__, resume.get("step"))
            result = study(resume_from=resume, **kwargs)
        except ValueError as error:
            if "resume_from" not in str(error):
                raise
            log.warning("the checkpoint does not fit this run (%s); starting over", error)
    if result is None:
        result = study(**kwargs)
    store.discard_checkpoint(key)
    return result


def _study_progress(study: str, steps: int, quantity: str, description: str, time_limit: float | None) -> Progress:
    """The progress callback of a study stage (artifact ``<study>-progress``, quantity
    ``<study> <quantity>``); ``time_limit``: seconds per attempt (None: :func:`study_timeout`)."""
    limit = study_timeout(steps) if time_limit is None else time_limit
    return Progress(f"{study}-progress", steps, f"{study} {quantity}", description, time_limit=limit)


def _study_attrs(study: str, result: Any, parameters: dict[str, Any], mesh: dict, seconds: float) -> dict[str, Any]:
    """The attributes of a study's datasets: its name, the provenance and the median seconds per step."""
    attrs = provenance(parameters, {"mesh": mesh}, seconds=seconds)
    attrs["run_median_seconds_per_step"] = result.median_seconds_per_step
    return {"study": study, **attrs}


def _step_arrays(result, names: Sequence[str]) -> dict[str, tuple]:
    return {name: (("step",), getattr(result, name).detach().cpu().numpy()) for name in names}


# -- stages -------------------------------------------------------------------------------------


@cached_task("generate_mesh", task_run_name=_mesh_name)
def generate_mesh(
    store: str,
    kind: str = "rectangle",
    chara_length: float = 0.1,
    cells: int | Sequence[int] | None = None,
    element_type: str = "triangle",
    order: int = 1,
) -> dict:
    """A mesh: ``kind="rectangle"`` (gmsh, unit square, edge length ``chara_length``) or
    ``kind="grid"`` (structured, ``cells`` per side or per axis)."""
    _import_compute()
    from tmcore import Mesh
    from tmcore.core.mesh.io import mesh_to_xarray

    start = time.perf_counter()
    if kind == "rectangle":
        mesh = Mesh.gen_rectangle(chara_length=chara_length, element_type=element_type, order=order)
    elif kind == "grid":
        if cells is None:
            raise ValueError("kind='grid' needs cells (an int per side, or one per axis)")
        shape = (cells, cells) if isinstance(cells, int) else tuple(cells)
        mesh = Mesh.gen_grid(shape, element_type=element_type, order=order)
    else:
        raise ValueError(f"kind must be 'rectangle' or 'grid', got {kind!r}")
    parameters = {
        "kind": kind,
        "chara_length": chara_length,
        "cells": cells,
        "element_type": element_type,
        "order": order,
    }
    dataset = mesh_to_xarray(mesh).assign_attrs(provenance(parameters, seconds=time.perf_counter() - start))
    return Store(store).put_dataset(dataset, "mesh")


@cached_task(
    "assemble", sources=("flows.problems",), normalise={"device": resolve_device}, task_run_name=_assemble_name
)
def assemble(store: str, mesh: dict, problem: str = "poisson-mms", device: str = "auto") -> dict:
    """The linear system of a named problem (flows.problems) on the mesh, assembled on
    ``device`` and stored as COO entries (dim ``entry``) with the load and Dirichlet data."""
    _import_compute()
    import torch
    import xarray as xr

    from .problems import get_problem

    artifacts = Store(store)
    device = resolve_device(device)
    spec = get_problem(problem)
    mesh_ = _mesh(artifacts, mesh).to(device)
    start = time.perf_counter()
    system = spec.assemble(mesh_)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    matrix = system.matrix
    dataset = xr.Dataset(
        {
            "row": (("entry",), matrix.pattern.rows.cpu().numpy().astype(np.int64)),
            "col": (("entry",), matrix.pattern.cols.cpu().numpy().astype(np.int64)),
            "value": (("entry",), matrix.values.detach().cpu().numpy()),
            "load": (("node",), system.load.detach().cpu().numpy()),
            "dirichlet_mask": (("node",), system.dirichlet_mask.cpu().numpy().astype(bool)),
            "dirichlet_value": (("node",), system.dirichlet_value.detach().cpu().numpy()),
        },
        attrs={"problem": problem, "n_rows": matrix.shape[-2], "n_cols": matrix.shape[-1]},
    )
    dataset = dataset.assign_attrs(provenance({"problem": problem}, {"mesh": mesh}, device=device, seconds=seconds))
    return artifacts.put_dataset(dataset, "system")


@cached_task("solve", sources=("flows.problems",), task_run_name="solve")
def solve(store: str, mesh: dict, system: dict) -> dict:
    """The nodal solution u of a stored system (CPU, direct solver), with the error norms of
    problems that have an exact solution."""
    _import_compute()
    import torch
    import xarray as xr

    from tmcore import Condenser, SparseMatrix

    from .problems import get_problem

    artifacts = Store(store)
    data = artifacts.open_dataset(system, "system")
    mesh_ = _mesh(artifacts, mesh)
    shape = (int(data.attrs["n_rows"]), int(data.attrs["n_cols"]))
    matrix = SparseMatrix(
        torch.from_numpy(data["value"].values),
        torch.from_numpy(data["row"].values),
        torch.from_numpy(data["col"].values),
        shape,
    )
    mask = torch.from_numpy(data["dirichlet_mask"].values.astype(bool))
    condenser = Condenser(mask, dirichlet_value=torch.from_numpy(data["dirichlet_value"].values))
    start = time.perf_counter()
    K, b = condenser(matrix, torch.from_numpy(data["load"].values))
    u = condenser.recover(K.solve(b))
    seconds = time.perf_counter() - start
    variables: dict[str, Any] = {"u": (("node",), u.numpy())}
    problem = get_problem(str(data.attrs["problem"]))
    if problem.exact is not None:
        variables["u_exact"] = (("node",), problem.exact(mesh_.points.to(torch.float64)).numpy())
    if problem.errors is not None:
        variables.update({name: ((), value) for name, value in problem.errors(mesh_, u).items()})
    dataset = xr.Dataset(variables, attrs={"problem": problem.name})
    dataset = dataset.assign_attrs(provenance({}, {"mesh": mesh, "system": system}, seconds=seconds))
    return artifacts.put_dataset(dataset, "fields")


@_study_task("identify_coefficient", "identify")
def identify_coefficient(
    store: str,
    mesh: dict,
    steps: int = 5000,
    lr: float = 3e-2,
    smoothness: float = 0.0,
    checkpoint_every: int | None = None,
    time_limit: float | None = None,
) -> dict:
    """The coefficient identification study (tmcore.studies): history (dim step) and final
    fields (kappa, kappa_true, u, u_obs on node). ``checkpoint_every``: steps between
    checkpoints (None: none); a checkpoint of this stage is resumed either way.
    ``time_limit``: seconds per attempt (None: :func:`study_timeout`)."""
    _import_compute()
    import xarray as xr

    from tmcore.studies import coefficient_identification

    artifacts = Store(store)
    mesh_ = _mesh(artifacts, mesh)
    progress = _study_progress(
        "identification", steps, "loss", f"coefficient identification, {steps} Adam steps", time_limit
    )
    parameters = {"steps": steps, "lr": lr, "smoothness": smoothness}
    result, seconds = _run_study(
        artifacts, coefficient_identification, checkpoint_every, progress, mesh=mesh_, **parameters
    )
    attrs = _study_attrs("coefficient_identification", result, parameters, mesh, seconds)
    history = xr.Dataset(_step_arrays(result, ("loss", "misfit", "u_rel_max_error")), attrs=attrs)
    fields = xr.Dataset(
        {name: (("node",), getattr(result, name).cpu().numpy()) for name in ("kappa", "kappa_true", "u", "u_obs")},
        attrs=attrs,
    )
    return {"history": artifacts.put_dataset(history, "history"), "fields": artifacts.put_dataset(fields, "fields")}


@_study_task("optimise_topology", "topology")
def optimise_topology(
    store: str,
    mesh: dict,
    steps: int = 60,
    vf: float = 0.4,
    p: float = 3.0,
    kmin: float = 1e-3,
    sigma: float = 0.08,
    move_limit: float = 0.15,
    snapshot_steps: Sequence[int] | None = None,
    checkpoint_every: int | None = None,
    time_limit: float | None = None,
) -> dict:
    """The thermal topology study (tmcore.studies): history (compliance, volume on step;
    rho_snapshot on snapshot_step x cell) and the final densities rho on cell.
    ``snapshot_steps`` None: 0, 5 and the last. ``checkpoint_every``: steps between
    checkpoints (None: none); a checkpoint of this stage is resumed either way.
    ``time_limit``: seconds per attempt (None: :func:`study_timeout`)."""
    _import_compute()
    import torch
    import xarray as xr

    from tmcore.studies import thermal_topology

    artifacts = Store(store)
    mesh_ = _mesh(artifacts, mesh)
    if snapshot_steps is None:
        snapshot_steps = sorted({0, min(5, steps - 1), steps - 1})
    progress = _study_progress(
        "topology", steps, "compliance", f"thermal topology optimisation, {steps} OC steps", time_limit
    )
    parameters = {
        "steps": steps,
        "vf": vf,
        "p": p,
        "kmin": kmin,
        "sigma": sigma,
        "move_limit": move_limit,
        "snapshot_steps": list(snapshot_steps),
    }
    result, seconds = _run_study(artifacts, thermal_topology, checkpoint_every, progress, mesh=mesh_, **parameters)
    attrs = _study_attrs("thermal_topology", result, parameters, mesh, seconds)
    kept = sorted(result.snapshots)
    variables = _step_arrays(result, ("compliance", "volume"))
    variables["rho_snapshot"] = (
        ("snapshot_step", "cell"),
        torch.stack([result.snapshots[s] for s in kept]).cpu().numpy(),
    )
    history = xr.Dataset(
        variables,
        coords={"snapshot_step": np.asarray(kept, dtype=np.int64)},
        attrs=attrs,
    )
    fields = xr.Dataset({"rho": (("cell",), result.rho.cpu().numpy())}, attrs=attrs)
    return {"history": artifacts.put_dataset(history, "history"), "fields": artifacts.put_dataset(fields, "fields")}


def _topology_compliance(
    mesh: Mesh, vf: float = 0.4, p: float = 3.0, kmin: float = 1e-3, sigma: float = 0.08
) -> tuple[Callable, torch.Tensor]:
    """The topology study's objective, the thermal compliance b . u(rho), and its starting densities rho = vf."""
    import torch

    from tmcore.topology import DensityDesign, thermal_plate

    design = DensityDesign(thermal_plate(mesh, kmin, sigma), penal=p, backend="auto")
    return design.objective, torch.full((mesh.n_cells,), vf, dtype=torch.float64)


@cached_task("gradient_check", task_run_name=_gradient_check_name)
def gradient_check(store: str, mesh: dict, target: str = "identification", n_probes: int = 5, seed: int = 0) -> dict:
    """Autograd against five-point central differences at ``n_probes`` entries drawn with
    ``seed``: d(identification loss)/d(theta) at theta = 0 on interior nodes, or
    d(thermal compliance)/d(rho) at rho = 0.4 on cells. A table with dim ``probe``."""
    _import_compute()
    import torch
    import xarray as xr

    from tmcore.methods.gradcheck import finite_difference_check
    from tmcore.studies import IdentificationProblem

    artifacts = Store(store)
    mesh_ = _mesh(artifacts, mesh)
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    if target == "identification":
        problem = IdentificationProblem(mesh_)
        interior = torch.nonzero(~mesh_.boundary_mask).flatten()
        indices = interior[torch.randperm(interior.numel(), generator=generator)[:n_probes]]
        theta = torch.zeros(mesh_.n_points, dtype=torch.float64)
        check = finite_difference_check(problem.objective, theta, indices=indices)
        label = "node"
    elif target == "topology":
        compliance, rho = _topology_compliance(mesh_)
        indices = torch.randperm(mesh_.n_cells, generator=generator)[:n_probes]
        check = finite_difference_check(compliance, rho, indices=indices)
        label = "cell"
    else:
        raise ValueError(f"target must be one of {GRADIENT_TARGETS}, got {target!r}")
    seconds = time.perf_counter() - start
    n = check.indices.numel()
    table = xr.Dataset(
        {
            "target": (("probe",), np.asarray([target] * n, dtype=object)),
            "entity": (("probe",), np.asarray([label] * n, dtype=object)),
            "index": (("probe",), check.indices.numpy().astype(np.int64)),
            "autograd": (("probe",), check.autograd.numpy()),
            "finite_difference": (("probe",), check.finite_difference.numpy()),
            "abs_diff": (("probe",), check.abs_diff.numpy()),
            "rel_diff": (("probe",), check.rel_diff.numpy()),
            "digits": (("probe",), check.digits.numpy()),
        },
        attrs={
            "target": target,
            "fd_step": check.step,
            "median_digits": check.median_digits,
            "min_digits": float(check.digits.min()),
        },
    )
    table = table.assign_attrs(
        provenance({"target": target, "n_probes": n_probes, "seed": seed}, {"mesh": mesh}, seconds=seconds)
    )
    return artifacts.put_dataset(table, "gradcheck")


@cached_task("render_figures", sources=("flows.figures",), task_run_name="render_figures")
def render_figures(
    store: str, identification_mesh: dict, identification: dict, topology_mesh: dict, topology: dict
) -> dict:
    """The three PNGs of the differentiability figures (flows.figures), stored as figure artifacts."""
    _import_compute()
    from . import figures

    artifacts = Store(store)
    pngs = figures.render_all(
        artifacts.open_dataset(identification_mesh, "mesh"),
        artifacts.open_dataset(identification["history"], "history"),
        artifacts.open_dataset(identification["fields"], "fields"),
        artifacts.open_dataset(topology_mesh, "mesh"),
        artifacts.open_dataset(topology["history"], "history"),
    )
    return {name: artifacts.put_bytes(data, "figure", ".png") for name, data in pngs.items()}
