"""The chapter's two optimisation steps as a user writes them, on tmcore and on scikit-fem + SciPy.

One place for the step code that both the nightly speed guard (:mod:`flows.benchmarks.timings`)
and the report benchmark (``python -m benchmarks.steps``) time, so the two measure the same thing:

- ``identification``: coefficient identification (the chapter's worked example 1): kappa = 1 +
  tanh(theta) per node, K and b assembled every step with assemblers and the Condenser built
  once, condense, solve, squared misfit to u_obs, backward, Adam (lr 3e-2).
- ``topology``: thermal-compliance topology optimisation (worked example 2): SIMP kappa per cell,
  the assemblers built inside ``fem_solve`` as the chapter writes it, a fresh Condenser every
  step (``fresh_condenser=False``: one Condenser, as the chapter writes it), compliance b . u,
  backward, one OC step (vf 0.4, move limit 0.15).

The comparator is what a careful user writes by hand with scikit-fem and SciPy: the
``skfem.Basis`` built once, ``asm`` of the same forms every step, ``skfem.condense``, one
``splu`` factorisation used for the solve and for the adjoint solve, the sensitivity
assembled as a scikit-fem form from the adjoint, and Adam or OC in NumPy. Both sides compute
the same numbers (same mesh, same quadrature-exact forms): the first step's loss and gradient
agree to round-off (tests/flows/test_speed_guard.py checks it).

A problem's mesh travels as :class:`StepMesh` (plain arrays), so every implementation, in this
process or another, sees the same nodes and cells in the same order.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch

from .chapter import ADAM_LR, KMIN, MOVE_LIMIT, P_SIMP, SIGMA, VF, Lap, Step, chapter_step, no_lap

PROBLEMS = ("identification", "topology")
IMPLEMENTATIONS = ("tmcore", "scikit-fem+scipy")
CHAPTER_CHARA_LENGTH = {"identification": 0.04, "topology": 0.025}  # 790 and 1935 nodes


@dataclass(frozen=True)
class StepMesh:
    """A P1 triangle mesh as arrays: points (n, 2) float64, triangles (m, 3) int64, boundary (n,) bool."""

    points: np.ndarray
    triangles: np.ndarray
    boundary: np.ndarray

    @property
    def n_nodes(self) -> int:
        return int(self.points.shape[0])

    @property
    def n_cells(self) -> int:
        return int(self.triangles.shape[0])

    @property
    def n_unknowns(self) -> int:
        """Free nodes: the size of the condensed system that is factorised."""
        return int((~self.boundary).sum())

    def save(self, path) -> None:
        """Write the arrays to an ``.npz`` file (read back by :meth:`load`, or by a peer's worker)."""
        np.savez(path, points=self.points, triangles=self.triangles, boundary=self.boundary)

    @classmethod
    def load(cls, path) -> StepMesh:
        with np.load(path) as data:
            return cls(data["points"], data["triangles"], data["boundary"])

    @classmethod
    def from_mesh(cls, mesh) -> StepMesh:
        """From a tmcore ``Mesh`` of P1 triangles (its ``boundary_mask``)."""
        if mesh.cell_type != "triangle":
            raise ValueError(f"the step benchmarks take P1 triangle meshes, got cells of type {mesh.cell_type!r}")
        return cls(
            mesh.points.detach().cpu().numpy().astype(np.float64),
            mesh.elements.cpu().numpy().astype(np.int64),
            mesh.boundary_mask.cpu().numpy().astype(bool),
        )

    @classmethod
    def rectangle(cls, chara_length: float) -> StepMesh:
        """The chapter's gmsh unit square (0.04: 790 nodes, 0.025: 1935 nodes)."""
        from tmcore import Mesh

        return cls.from_mesh(Mesh.gen_rectangle(chara_length=chara_length))

    @classmethod
    def grid(cls, cells_per_side: int) -> StepMesh:
        """A structured unit square of (n + 1)^2 nodes (the ladder of sizes)."""
        from tmcore import Mesh

        return cls.from_mesh(Mesh.gen_grid((cells_per_side, cells_per_side), element_type="triangle"))


PHASES = ("assemble K", "assemble b", "condense", "factor+solve", "backward", "optimiser", "rest")


class PhaseClock:
    """Wall time per phase of a step: ``lap(phase)`` charges the time since the previous lap to ``phase``.

    The step calls ``clock.lap(name)`` at the end of each group of statements (one thread, CPU
    tensors: every statement has finished when the next starts, so the wall time between two
    laps is what that group cost). ``start()`` opens a step, ``stop()`` closes it; ``seconds``
    maps each phase to its time in every closed step (0 where a step had none of it).
    """

    def __init__(self) -> None:
        self.seconds: dict[str, list[float]] = {phase: [] for phase in PHASES}
        self._current: dict[str, float] = {}
        self._last = 0.0

    def start(self) -> None:
        self._current = {}
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        if phase not in self.seconds:
            raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
        now = time.perf_counter()
        self._current[phase] = self._current.get(phase, 0.0) + now - self._last
        self._last = now

    def stop(self) -> None:
        self.lap("rest")  # the return statement and anything after the last lap
        for phase, seconds in self.seconds.items():
            seconds.append(self._current.get(phase, 0.0))


def _sources(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(kappa_true, f_field) of the chapter: the identification's true coefficient, the topology's Gaussian source."""
    x, y = points[:, 0], points[:, 1]
    kappa_true = 1.0 + 0.6 * np.sin(2 * np.pi * x) * np.cos(2 * np.pi * y)
    f_field = np.exp(-((x - 0.5) ** 2 + (y - 0.5) ** 2) / (2 * SIGMA**2))
    return kappa_true, f_field


# -- tmcore, as the chapter's user writes it -------------------------------------------------


def tmcore_step(problem: str, mesh: StepMesh, fresh_condenser: bool = True, lap: Lap | None = None) -> Step:
    """The chapter's step on tmcore (:func:`flows.benchmarks.chapter.chapter_step` with tmcore's
    classes), its set-up done; ``fresh_condenser`` only matters for topology.

    ``lap(phase)`` (see :class:`PhaseClock`) is called after each statement group of the step; the
    default does nothing.
    """
    import tmcore
    from tmcore.topology import OCOptimizer

    library = SimpleNamespace(
        ElementAssembler=tmcore.ElementAssembler,
        NodeAssembler=tmcore.NodeAssembler,
        Condenser=tmcore.Condenser,
        OCOptimizer=OCOptimizer,
    )
    tm_mesh = tmcore.Mesh(torch.from_numpy(mesh.points), {"triangle": torch.from_numpy(mesh.triangles)})
    return chapter_step(library, problem, tm_mesh, fresh_condenser, lap)


# -- scikit-fem + SciPy, written by hand -----------------------------------------------------


def skfem_available() -> bool:
    """Whether scikit-fem (the comparator's assembly; the ``test`` extra) can be imported."""
    try:
        import skfem  # noqa: F401
    except ImportError:
        return False
    return True


def skfem_step(problem: str, mesh: StepMesh, lap: Lap | None = None) -> Step:
    """The same step by hand: scikit-fem assembly, ``skfem.condense``, one SciPy ``splu`` for solve and adjoint.

    ``lap`` as in :func:`tmcore_step`.
    """
    lap = lap or no_lap
    import scipy.sparse.linalg
    import skfem
    from skfem.helpers import dot, grad

    basis = skfem.Basis(skfem.MeshTri(mesh.points.T.copy(), mesh.triangles.T.copy()), skfem.ElementTriP1())
    dirichlet = np.flatnonzero(mesh.boundary)
    free = np.flatnonzero(~mesh.boundary)
    kappa_true, f_field = _sources(mesh.points)

    @skfem.BilinearForm
    def weighted_laplace(u, v, w):
        return w.kappa * dot(grad(u), grad(v))

    @skfem.LinearForm
    def source(v, w):
        return v * w.f

    def solve(kappa_qp, f_nodal):
        """(u full, the factorisation, b full) of K(kappa) u = b(f), u = 0 on the boundary."""
        K = skfem.asm(weighted_laplace, basis, kappa=kappa_qp)
        lap("assemble K")
        b = skfem.asm(source, basis, f=basis.interpolate(f_nodal))
        lap("assemble b")
        A, b_free = skfem.condense(K, b, D=dirichlet, expand=False)
        A = A.tocsc()
        lap("condense")
        lu = scipy.sparse.linalg.splu(A)
        u = np.zeros(mesh.n_nodes)
        u[free] = lu.solve(b_free)
        lap("factor+solve")
        return u, lu, b

    if problem == "identification":

        @skfem.LinearForm
        def kappa_sensitivity(v, w):  # d/d kappa_k of lam^T K(kappa) u = int phi_k grad(lam) . grad(u)
            return v * dot(grad(w.lam), grad(w.u))

        f_vals = np.ones(mesh.n_nodes)
        u_obs, _, _ = solve(basis.interpolate(kappa_true), f_vals)
        theta = np.zeros(mesh.n_nodes)
        adam = _Adam(theta.shape, ADAM_LR)

        def step() -> float:
            t = np.tanh(theta)
            kappa_qp = basis.interpolate(1.0 + t)
            lap("rest")
            u, lu, _ = solve(kappa_qp, f_vals)
            residual = u - u_obs
            loss = float(residual @ residual)
            lam = np.zeros(mesh.n_nodes)
            lam[free] = lu.solve(2.0 * residual[free], trans="T")  # K^T lam = dL/du
            grad_kappa = -skfem.asm(kappa_sensitivity, basis, lam=basis.interpolate(lam), u=basis.interpolate(u))
            grad_theta = grad_kappa * (1.0 - t**2)
            lap("backward")
            adam.step(theta, grad_theta)
            lap("optimiser")
            return loss

        return step

    if problem == "topology":
        energy = skfem.Functional(lambda w: dot(grad(w.lam), grad(w.u)))
        rho = np.full(mesh.n_cells, VF)
        n_qp = basis.X.shape[1]

        def step() -> float:
            kappa = KMIN + (1.0 - KMIN) * rho**P_SIMP
            kappa_qp = np.repeat(kappa[:, None], n_qp, axis=1)
            lap("rest")
            u, lu, b = solve(kappa_qp, f_field)
            compliance = float(b @ u)
            lam = np.zeros(mesh.n_nodes)
            lam[free] = lu.solve(b[free], trans="T")  # K^T lam = dC/du = b
            cell_energy = energy.elemental(basis, lam=basis.interpolate(lam), u=basis.interpolate(u))
            sensitivity = -P_SIMP * (1.0 - KMIN) * rho ** (P_SIMP - 1.0) * cell_energy
            lap("backward")
            rho[:] = oc_update(rho, sensitivity)
            lap("optimiser")
            return compliance

        return step

    raise ValueError(f"problem must be one of {PROBLEMS}, got {problem!r}")


class _Adam:
    """torch.optim.Adam's update (default betas and eps, no weight decay) in NumPy, in place."""

    def __init__(self, shape, lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.lr, self.betas, self.eps = lr, betas, eps
        self.m, self.v, self.t = np.zeros(shape), np.zeros(shape), 0

    def step(self, x: np.ndarray, g: np.ndarray) -> None:
        b1, b2 = self.betas
        self.t += 1
        self.m = b1 * self.m + (1 - b1) * g
        self.v = b2 * self.v + (1 - b2) * g * g
        denominator = np.sqrt(self.v) / math.sqrt(1 - b2**self.t) + self.eps
        x -= (self.lr / (1 - b1**self.t)) * self.m / denominator


def oc_update(
    rho: np.ndarray,
    sensitivity: np.ndarray,
    vf: float = VF,
    move_limit: float = MOVE_LIMIT,
    rho_min: float = 1e-3,
    eta: float = 0.5,
    volume_tol: float = 1e-12,
    max_iterations: int = 200,
) -> np.ndarray:
    """The classic OC update (plain-mean volume), its multiplier found by bisection on log(lambda).

    rho, sensitivity: (m,) densities and dC/drho (<= 0). Returns the new densities (m,).
    """
    s = np.maximum(-sensitivity, 1e-300)
    lower, upper = np.maximum(rho - move_limit, rho_min), np.minimum(rho + move_limit, 1.0)
    log_s = np.log(s)
    # below lo every density sits at its upper limit, above hi at its lower one
    lo = float(np.min(log_s + (np.log(rho) - np.log(upper)) / eta)) - 1e-9
    hi = float(np.max(log_s + (np.log(rho) - np.log(lower)) / eta)) + 1e-9
    new = rho
    for _ in range(max_iterations):
        mid = 0.5 * (lo + hi)
        new = np.clip(rho * np.exp(eta * (log_s - mid)), lower, upper)
        excess = new.mean() - vf
        if abs(excess) <= volume_tol:
            break
        lo, hi = (mid, hi) if excess > 0 else (lo, mid)
    return new


# -- building and timing ---------------------------------------------------------------------


def build_step(implementation: str, problem: str, mesh: StepMesh, lap: Lap | None = None, **options) -> Step:
    """The step of ``implementation`` ("tmcore" or "scikit-fem+scipy") for ``problem``, set up on ``mesh``.

    options: ``fresh_condenser`` for tmcore's topology step.
    """
    if problem not in PROBLEMS:
        raise ValueError(f"problem must be one of {PROBLEMS}, got {problem!r}")
    if implementation == "tmcore":
        return tmcore_step(problem, mesh, lap=lap, **options)
    if implementation == "scikit-fem+scipy":
        return skfem_step(problem, mesh, lap=lap, **options)
    raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")


def time_steps(
    step: Step, steps: int, warmup: int = 2, clock: PhaseClock | None = None
) -> tuple[list[float], list[float]]:
    """(seconds per step, values) of ``steps`` timed steps after ``warmup`` untimed ones.

    The warm-up steps pay what a new pattern costs once (symbolic analysis, index maps,
    first-touch allocations); the timed ones are what every later step costs. ``clock``: the
    :class:`PhaseClock` the step was built with, started before and closed after each timed step.
    """
    if steps < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    for _ in range(warmup):
        step()
    seconds, values = [], []
    for _ in range(steps):
        if clock is not None:
            clock.start()
        start = time.perf_counter()
        value = step()
        seconds.append(time.perf_counter() - start)
        if clock is not None:
            clock.stop()
        values.append(value)
    return seconds, values
