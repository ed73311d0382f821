"""An independent reference for the 88-line compliance problem, in NumPy/SciPy only.

Written from the equations of Andreassen et al. (Struct Multidisc Optim 43:1-16, 2011),
not from their code and not with tmcore:

- bilinear unit-square elements, element matrices by 2 x 2 Gauss quadrature of
  B^T D B (plane stress, E = 1) or of grad N_a . grad N_b (heat);
- modified SIMP  E_e = Emin + x~_e^p (E0 - Emin),  compliance c = sum_e E_e u_e^T k0 u_e;
- density filter  x~_e = sum_i H_ei x_i / sum_i H_ei,  H_ei = max(0, rmin - dist(e, i));
- sensitivities  dc/dx~_e = -p x~_e^(p-1) (E0 - Emin) u_e^T k0 u_e,  dV/dx~_e = 1,
  both chained through the filter: d/dx_j = sum_e H_ej / H_e (d/dx~_e);
- optimality criteria  x_new = clamp(x B^(1/2), max(0, x - m), min(1, x + m)),
  B = -dc/dx / (lambda dV/dx), lambda by bisection on [0, 1e9] until
  (l2 - l1) / (l1 + l2) <= 1e-3, the volume of x~(x_new) against vf * nel;
- stop when max |x_new - x| <= 0.01.

Its own numbering: nodes column by column from the top-left corner (as in the paper's
figures), dofs (2 id, 2 id + 1) = (x, y), elements column by column from the top.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse
import scipy.sparse.linalg

CORNERS = ((0, 0), (1, 0), (1, 1), (0, 1))  # local nodes, counter-clockwise from lower-left


def _shape_gradients(xi: float, eta: float) -> np.ndarray:
    """dN_a/d(x, y) (4, 2) of the bilinear unit square at (xi, eta)."""
    grads = []
    for cx, cy in CORNERS:
        fx, dfx = (xi, 1.0) if cx else (1.0 - xi, -1.0)
        fy, dfy = (eta, 1.0) if cy else (1.0 - eta, -1.0)
        grads.append((dfx * fy, fx * dfy))
    return np.array(grads)


def _gauss_2x2():
    g = 0.5 / math.sqrt(3.0)
    return [(0.5 + s * g, 0.5 + t * g, 0.25) for s in (-1, 1) for t in (-1, 1)]


def element_stiffness(nu: float = 0.3) -> np.ndarray:
    """k0 (8, 8) of a unit plane-stress square with E = 1, dofs (x, y) per local node."""
    D = np.array([[1.0, nu, 0.0], [nu, 1.0, 0.0], [0.0, 0.0, (1.0 - nu) / 2]]) / (1.0 - nu**2)
    k0 = np.zeros((8, 8))
    for xi, eta, w in _gauss_2x2():
        dN = _shape_gradients(xi, eta)
        B = np.zeros((3, 8))
        B[0, 0::2] = dN[:, 0]
        B[1, 1::2] = dN[:, 1]
        B[2, 0::2] = dN[:, 1]
        B[2, 1::2] = dN[:, 0]
        k0 += w * B.T @ D @ B
    return k0


def element_conductivity() -> np.ndarray:
    """k0 (4, 4) of the unit square for -lap u."""
    k0 = np.zeros((4, 4))
    for xi, eta, w in _gauss_2x2():
        dN = _shape_gradients(xi, eta)
        k0 += w * dN @ dN.T
    return k0


@dataclass
class Grid:
    nelx: int
    nely: int

    def node(self, i, j):
        """Node id of column i (0..nelx, left to right), row j (0..nely, top to bottom)."""
        return np.asarray(i) * (self.nely + 1) + np.asarray(j)

    def element_nodes(self) -> np.ndarray:
        """(nel, 4) local nodes in CORNERS order; element e = ex * nely + ey (ey from the top)."""
        ex, ey = np.meshgrid(np.arange(self.nelx), np.arange(self.nely), indexing="ij")
        ex, ey = ex.ravel(), ey.ravel()
        return np.stack(
            [self.node(ex, ey + 1), self.node(ex + 1, ey + 1), self.node(ex + 1, ey), self.node(ex, ey)], axis=1
        )

    def centroids(self) -> np.ndarray:
        """(nel, 2) element centres in x right, y up coordinates."""
        ex, ey = np.meshgrid(np.arange(self.nelx), np.arange(self.nely), indexing="ij")
        return np.stack([ex.ravel() + 0.5, self.nely - ey.ravel() - 0.5], axis=1)


def filter_matrix(grid: Grid, rmin: float) -> scipy.sparse.csr_matrix:
    """H (nel, nel), H_ei = max(0, rmin - dist(e, i)) between element centres."""
    ex, ey = np.meshgrid(np.arange(grid.nelx), np.arange(grid.nely), indexing="ij")
    ex, ey = ex.ravel(), ey.ravel()
    reach = math.ceil(rmin)
    rows, cols, vals = [], [], []
    for dx in range(-reach, reach + 1):
        for dy in range(-reach, reach + 1):
            weight = rmin - math.hypot(dx, dy)
            if weight <= 0:
                continue
            fx, fy = ex + dx, ey + dy
            inside = (fx >= 0) & (fx < grid.nelx) & (fy >= 0) & (fy < grid.nely)
            rows.append((ex * grid.nely + ey)[inside])
            cols.append((fx * grid.nely + fy)[inside])
            vals.append(np.full(int(inside.sum()), weight))
    n = grid.nelx * grid.nely
    return scipy.sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))


@dataclass
class ReferenceResult:
    x_phys: np.ndarray  # (nel,) in the reference's element order
    compliance: list[float]
    iterations: int
    seconds: float
    centroids: np.ndarray


def run(
    problem: str,
    nelx: int,
    nely: int,
    vf: float,
    penal: float = 3.0,
    rmin: float = 1.5,
    move: float = 0.2,
    tol: float = 0.01,
    max_iterations: int = 1000,
    nu: float = 0.3,
) -> ReferenceResult:
    """The published algorithm on "mbb", "cantilever" or "heat"."""
    grid = Grid(nelx, nely)
    enodes = grid.element_nodes()
    nel, n_nodes = nelx * nely, (nelx + 1) * (nely + 1)
    if problem == "heat":
        k0, per_node, e_min = element_conductivity(), 1, 1e-3
        edofs = enodes
        f = np.full(n_nodes, 0.01)
        j = np.arange(nely + 1)
        sink = np.abs((nely - j) - nely / 2) <= nely / 20 + 1e-9
        fixed = grid.node(0, j[sink])
    else:
        k0, per_node, e_min = element_stiffness(nu), 2, 1e-9
        edofs = np.stack([2 * enodes, 2 * enodes + 1], axis=2).reshape(nel, 8)
        f = np.zeros(2 * n_nodes)
        left = grid.node(0, np.arange(nely + 1))
        if problem == "mbb":
            f[2 * grid.node(0, 0) + 1] = -1.0  # top-left corner, downwards
            fixed = np.union1d(2 * left, [2 * grid.node(nelx, nely) + 1])  # symmetry; roller bottom-right
        elif problem == "cantilever":
            f[2 * grid.node(nelx, nely) + 1] = -1.0  # bottom-right corner, downwards
            fixed = np.union1d(2 * left, 2 * left + 1)
        else:
            raise ValueError(problem)
    e0 = 1.0
    n_dofs = per_node * n_nodes
    free = np.setdiff1d(np.arange(n_dofs), fixed)
    k = edofs.shape[1]
    rows = np.repeat(edofs, k, axis=1).ravel()
    cols = np.tile(edofs, (1, k)).ravel()
    H = filter_matrix(grid, rmin)
    Hs = np.asarray(H.sum(axis=1)).ravel()

    x = np.full(nel, vf)
    x_phys = x.copy()
    history = []
    start = time.perf_counter()
    change, iterations = 1.0, 0
    while change > tol and iterations < max_iterations:
        iterations += 1
        stiffness = e_min + x_phys**penal * (e0 - e_min)
        K = scipy.sparse.csc_matrix((np.outer(stiffness, k0.ravel()).ravel(), (rows, cols)), shape=(n_dofs, n_dofs))
        u = np.zeros(n_dofs)
        u[free] = scipy.sparse.linalg.spsolve(K[free][:, free], f[free])
        ue = u[edofs]
        energy = np.einsum("ei,ij,ej->e", ue, k0, ue)
        history.append(float((stiffness * energy).sum()))
        dc = -penal * x_phys ** (penal - 1) * (e0 - e_min) * energy
        dv = np.ones(nel)
        dc = H @ (dc / Hs)
        dv = H @ (dv / Hs)
        l1, l2 = 0.0, 1e9
        while (l2 - l1) / (l1 + l2) > 1e-3:
            lmid = 0.5 * (l1 + l2)
            x_new = np.maximum(
                0.0, np.maximum(x - move, np.minimum(1.0, np.minimum(x + move, x * np.sqrt(-dc / dv / lmid))))
            )
            x_phys = (H @ x_new) / Hs
            if x_phys.sum() > vf * nel:
                l1 = lmid
            else:
                l2 = lmid
        change = float(np.abs(x_new - x).max())
        x = x_new
    return ReferenceResult(x_phys, history, iterations, time.perf_counter() - start, grid.centroids())
