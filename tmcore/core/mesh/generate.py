"""Mesh generators: unstructured domains through gmsh, structured grids in pure torch.

The gmsh generators (``rectangle``, ``circle``, ``l_shape``, ``box``) run gmsh's Python
API silently, single-threaded and with a fixed random seed, so the same call gives the
same mesh. ``grid`` builds structured triangle/quad/tetra/hexahedron meshes directly,
and ``elevate_order`` turns P1 simplices into P2 by adding edge midpoints. Every
generated mesh has float64 points, positively oriented cells and named facet sets.

Before gmsh starts, each generator estimates the node count from the domain's area
(volume), its boundary, ``chara_length``, ``order`` and ``refine`` (:func:`estimate_nodes`)
and refuses, with a MeshError giving the estimate, the limit and how to raise it, above
``max_nodes`` (default ``$TMCORE_MAX_MESH_NODES`` or :data:`MAX_NODES`). The recipes live
in :mod:`tmcore.core.mesh.gmsh_worker`: small meshes run in this process; larger ones
(estimated above :data:`SUBPROCESS_NODES`) in a child process, so Ctrl-C stops meshing at
once and a crash or an out-of-memory kill of gmsh becomes a MeshError with its reason.
gmsh failures in this process become MeshError too, never a bare ``Exception``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from tmcore.core.checks import check_count, is_int
from tmcore.core.errors import MeshError
from tmcore.core.mesh import gmsh_worker, topology
from tmcore.core.mesh.mesh import Mesh

_GMSH_LOCK = threading.Lock()

# Node-count estimates from the domain: nodes per unit area (volume) at edge length 1 and per
# unit boundary length (area), fitted to gmsh's Frontal-Delaunay (2-D) and Delaunay (3-D)
# meshes; P2 multiplies the count by about 4 (2-D) or 7 (3-D). Within a factor 1.5 from 10 to
# 1e5 nodes (tests/tmcore/test_generate.py checks it).
_DENSITY = {2: (1.2, 1.0), 3: (0.9, 0.5)}
_P2_FACTOR = {2: 4.0, 3: 7.0}
# The default limit on the estimated node count of a generated mesh; raise it per call with
# max_nodes= or for a whole process with $TMCORE_MAX_MESH_NODES.
MAX_NODES = 2_000_000
ENV_MAX_NODES = "TMCORE_MAX_MESH_NODES"
# Meshes estimated above this many gmsh nodes (about 0.5 s of meshing here) run in a child
# process: Ctrl-C stops it at once and a gmsh crash or out-of-memory kill ends only the child.
SUBPROCESS_NODES = 5_000

# Node permutations that reverse a cell's orientation (swap vertices 1 and 2, and for
# P2 the midside nodes that follow them).
_FLIP = {
    "triangle": [0, 2, 1],
    "triangle6": [0, 2, 1, 5, 4, 3],
    "quad": [0, 3, 2, 1],
    "tetra": [0, 2, 1, 3],
    "tetra10": [0, 2, 1, 3, 6, 5, 4, 7, 9, 8],
    "hexahedron": [0, 3, 2, 1, 4, 7, 6, 5],
}


# -- argument checks -----------------------------------------------------------------


def _check_length(name: str, value) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be finite and > 0, got {value}")
    return value


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def _check_bounds(lower, upper, dim: int) -> tuple[list[float], list[float]]:
    lo, hi = [float(v) for v in lower], [float(v) for v in upper]
    for name, v in (("lower", lo), ("upper", hi)):
        if len(v) != dim or not all(math.isfinite(x) for x in v):
            raise ValueError(f"{name} must be {dim} finite numbers, got {v}")
    if any(high <= low for low, high in zip(lo, hi)):
        raise ValueError(f"upper must exceed lower in every coordinate, got lower={lo}, upper={hi}")
    return lo, hi


# -- orientation -----------------------------------------------------------------------


def signed_measures(points: Tensor, cells: Tensor, cell_type: str) -> Tensor:
    """Sign-carrying size (m,) of each cell from its vertices: twice the area (2-D, shoelace
    formula) or six times the volume at vertex 0 (3-D); negative for inverted cells."""
    if cell_type in ("triangle", "triangle6", "quad"):
        n = 4 if cell_type == "quad" else 3
        x, y = points[cells[:, :n], 0], points[cells[:, :n], 1]
        return (x * y.roll(-1, dims=1) - x.roll(-1, dims=1) * y).sum(dim=1)
    if cell_type in ("tetra", "tetra10", "hexahedron"):
        others = [1, 3, 4] if cell_type == "hexahedron" else [1, 2, 3]
        x0 = points[cells[:, 0]]
        return torch.linalg.det(torch.stack([points[cells[:, i]] - x0 for i in others], dim=-1))
    raise MeshError(f"cannot orient cells of type {cell_type!r}; supported: {sorted(_FLIP)}")


def orient_cells(points: Tensor, cells: Tensor, cell_type: str) -> Tensor:
    """Cells (m, k) with the node order of negatively oriented ones reversed."""
    flip = signed_measures(points, cells, cell_type) < 0
    if not bool(flip.any()):
        return cells
    perm = torch.tensor(_FLIP[cell_type], device=cells.device)
    return torch.where(flip[:, None], cells[:, perm], cells)


# -- gmsh ------------------------------------------------------------------------------


def estimate_nodes(dim: int, measure: float, boundary: float, h: float, order: int = 1, refine: int = 0) -> int:
    """About how many nodes gmsh makes for a domain of area/volume ``measure`` and boundary
    length/area ``boundary`` at edge length ``h`` (times 4**refine for uniform refinements)."""
    interior, surface = _DENSITY[dim]
    n = interior * measure / h**dim + surface * boundary / h ** (dim - 1) + 2**dim
    if order == 2:
        n *= _P2_FACTOR[dim]
    return int(math.ceil(n * 4**refine))


def node_limit(max_nodes: int | None) -> int:
    """The node limit of a generator call: ``max_nodes``, else $TMCORE_MAX_MESH_NODES, else MAX_NODES."""
    if max_nodes is None:
        text = os.environ.get(ENV_MAX_NODES, "").strip()
        if not text:
            return MAX_NODES
        try:
            max_nodes = int(float(text))
        except ValueError:
            raise ValueError(f"${ENV_MAX_NODES} must be a positive number of nodes, got {text!r}") from None
        source = f"${ENV_MAX_NODES}"
    else:
        source = "max_nodes"
    return int(check_count(source, max_nodes))


def _check_size(call: str, estimate: int, max_nodes: int | None) -> None:
    limit = node_limit(max_nodes)
    if estimate > limit:
        raise MeshError(
            f"{call} would make about {estimate:.3g} nodes, above the limit of {limit:.3g} "
            f"(gmsh meshes about 1e4 nodes per second on one core); use a larger chara_length, "
            f"or raise the limit with max_nodes={_round_up(estimate)} (or ${ENV_MAX_NODES}={_round_up(estimate)})"
        )


def _round_up(n: int) -> int:
    """n rounded up to two significant digits (a limit to suggest)."""
    scale = 10 ** max(len(str(n)) - 2, 0)
    return -(-n // scale) * scale


@contextlib.contextmanager
def _gmsh_model(**options):
    """A fresh, quiet gmsh model; initialises/finalises gmsh only if it was not running."""
    import gmsh

    with _GMSH_LOCK:
        owner = not gmsh.isInitialized()
        if owner:
            gmsh.initialize(readConfigFiles=False, interruptible=False)
        previous = None if owner else gmsh.model.getCurrent()
        saved = {}
        try:
            for key, value in {**gmsh_worker.OPTIONS, **options}.items():
                saved[key] = gmsh.option.getNumber(key)
                gmsh.option.setNumber(key, value)
            gmsh.model.add("tmcore_generate")
            yield gmsh
        finally:
            if owner:
                gmsh.finalize()
            else:
                with contextlib.suppress(Exception):
                    if gmsh.model.getCurrent() == "tmcore_generate":
                        gmsh.model.remove()
                    if previous is not None:
                        gmsh.model.setCurrent(previous)
                for key, value in saved.items():
                    gmsh.option.setNumber(key, value)


def _in_process(spec: dict) -> dict:
    """Run a recipe in this process (small meshes: well under a second)."""
    failure = f"gmsh failed meshing a {spec['kind']}"
    try:
        with _gmsh_model(**spec.get("options", {})) as gmsh:
            gmsh.logger.start()
            try:
                dim, cell_type = gmsh_worker.build(gmsh, spec)
                return gmsh_worker.mesh_arrays(gmsh, dim, spec.get("order", 1), cell_type)
            except gmsh_worker.GmshFailure as error:
                raise MeshError(f"{failure}: {error}") from None
            except Exception as error:  # gmsh raises bare Exception, sometimes with an empty message
                raise MeshError(f"{failure}: {gmsh_worker.describe(error, gmsh.logger.get())}") from error
            finally:
                with contextlib.suppress(Exception):
                    gmsh.logger.stop()
    except MeshError:
        raise
    except Exception as error:  # setting an option or initialising gmsh failed
        raise MeshError(f"{failure}: {gmsh_worker.describe(error, [])}") from error


def _in_child(spec: dict, estimate: int) -> dict:
    """Run a recipe in a child process (``python gmsh_worker.py``); Ctrl-C kills it at once."""
    with tempfile.TemporaryDirectory(prefix="tmcore-gmsh-") as folder:
        spec_path, out_path = os.path.join(folder, "spec.json"), os.path.join(folder, "mesh.npz")
        with open(spec_path, "w") as handle:
            json.dump(spec, handle)
        command = [sys.executable, "-I", gmsh_worker.__file__, spec_path, out_path]
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _, stderr = child.communicate()
        except BaseException:  # KeyboardInterrupt, SystemExit: the child goes with us
            child.kill()
            child.wait()
            raise
        if child.returncode != 0:
            raise MeshError(
                f"gmsh failed meshing a {spec['kind']} of about {estimate:.3g} nodes: "
                f"{_child_reason(child.returncode, stderr)}"
            )
        with np.load(out_path) as data:
            return {key: data[key] for key in data.files}


def _child_reason(code: int, stderr: bytes) -> str:
    text = stderr.decode("utf-8", "replace").strip()
    for line in reversed(text.splitlines()):
        with contextlib.suppress(ValueError, TypeError, KeyError):
            return json.loads(line)["error"]
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        hint = " (killed: out of memory, or a memory limit)" if -code == signal.SIGKILL else ""
        return f"the gmsh process ended by signal {name}{hint}"
    return f"the gmsh process exited with status {code}" + (f": {text.splitlines()[-1][:300]}" if text else "")


def _mesh(call: str, spec: dict, estimate: int, refine: int = 0, check: bool = True) -> Mesh:
    """Mesh a recipe (in a child process when large) and build the Mesh."""
    gmsh_nodes = estimate // 4**refine
    arrays = _in_child(spec, gmsh_nodes) if gmsh_nodes > SUBPROCESS_NODES else _in_process(spec)
    points = torch.from_numpy(np.ascontiguousarray(arrays["points"]))
    cell_type = str(arrays["cell_type"])
    conn = torch.from_numpy(np.ascontiguousarray(arrays["cells"]))
    facet_sets = {
        key[len("facet:") :]: torch.from_numpy(np.ascontiguousarray(v))
        for key, v in arrays.items()
        if key.startswith("facet:")
    }
    return Mesh(points, {cell_type: orient_cells(points, conn, cell_type)}, facet_sets, check=check)


def _surface_options(element_type: str, order: int) -> dict:
    _check_choice("element_type", element_type, ("triangle", "quad"))
    _check_choice("order", order, (1, 2))
    if element_type == "quad" and order == 2:
        raise ValueError("order=2 is only supported for element_type='triangle'")
    # Blossom full-quad recombination: every triangle becomes quads.
    return {"Mesh.RecombineAll": 1, "Mesh.RecombinationAlgorithm": 3} if element_type == "quad" else {}


def _call(name: str, **args) -> str:
    return f"{name}(" + ", ".join(f"{k}={v!r}" for k, v in args.items()) + ")"


def rectangle(
    chara_length: float = 0.1,
    left: float = 0.0,
    right: float = 1.0,
    bottom: float = 0.0,
    top: float = 1.0,
    element_type: str = "triangle",
    order: int = 1,
    refine: int = 0,
    max_nodes: int | None = None,
) -> Mesh:
    """Unstructured mesh of [left, right] x [bottom, top] with target edge length chara_length.

    element_type: "triangle" or "quad" (recombined); order 1 or 2 (P2 triangles).
    refine: uniform refinements of the gmsh mesh (P1 triangles only): each splits every
    triangle into four, so ``refine=2`` at ``chara_length=4h`` gives about the mesh of
    ``chara_length=h`` with the same quality, several times faster for millions of nodes.
    max_nodes: refuse (MeshError, before gmsh starts) when the estimated node count exceeds
    it; default ``$TMCORE_MAX_MESH_NODES`` or :data:`MAX_NODES` (2e6).
    Facet sets "left", "right", "bottom", "top".
    """
    check_count("refine", refine, 0)
    if refine and (element_type != "triangle" or order != 1):
        raise ValueError("refine applies to element_type='triangle', order=1 meshes")
    h = _check_length("chara_length", chara_length)
    left, right, bottom, top = (float(v) for v in (left, right, bottom, top))
    for low, high, names in ((left, right, "left/right"), (bottom, top, "bottom/top")):
        if not (math.isfinite(low) and math.isfinite(high) and high > low):
            raise ValueError(
                f"{names} must be finite with {names.split('/')[1]} > {names.split('/')[0]}, got {low}, {high}"
            )
    options = _surface_options(element_type, order)
    width, height = right - left, top - bottom
    estimate = estimate_nodes(2, width * height, 2 * (width + height), h, order, refine)
    _check_size(_call("rectangle", chara_length=chara_length, order=order, refine=refine), estimate, max_nodes)
    spec = {
        "kind": "rectangle",
        "h": h,
        "left": left,
        "right": right,
        "bottom": bottom,
        "top": top,
        "element_type": element_type,
        "order": order,
        "options": options,
    }
    mesh = _mesh("rectangle", spec, estimate, refine, check=refine == 0)
    for step in range(refine):
        mesh = refine_uniformly(mesh, check=step == refine - 1)
    return mesh


def circle(
    chara_length: float = 0.1,
    center: Sequence[float] = (0.0, 0.0),
    radius: float = 1.0,
    element_type: str = "triangle",
    order: int = 1,
    max_nodes: int | None = None,
) -> Mesh:
    """Unstructured mesh of the disc |x - center| <= radius; facet set "boundary".

    With order=2 the boundary midside nodes lie on the circle (curved edges). max_nodes:
    see :func:`rectangle`.
    """
    h = _check_length("chara_length", chara_length)
    r = _check_length("radius", radius)
    cx, cy = (float(c) for c in center)
    if not (math.isfinite(cx) and math.isfinite(cy)):
        raise ValueError(f"center must be two finite numbers, got {tuple(center)}")
    options = _surface_options(element_type, order)
    estimate = estimate_nodes(2, math.pi * r * r, 2 * math.pi * r, h, order)
    _check_size(_call("circle", chara_length=chara_length, radius=radius, order=order), estimate, max_nodes)
    spec = {
        "kind": "circle",
        "h": h,
        "center": [cx, cy],
        "radius": r,
        "element_type": element_type,
        "order": order,
        "options": options,
    }
    return _mesh("circle", spec, estimate)


def l_shape(
    chara_length: float = 0.1, element_type: str = "triangle", order: int = 1, max_nodes: int | None = None
) -> Mesh:
    """Unstructured mesh of the L-shaped domain [-1, 1]^2 minus (0, 1] x (0, 1] (area 3,
    re-entrant corner at the origin); facet set "boundary". max_nodes: see :func:`rectangle`."""
    h = _check_length("chara_length", chara_length)
    options = _surface_options(element_type, order)
    estimate = estimate_nodes(2, 3.0, 8.0, h, order)
    _check_size(_call("l_shape", chara_length=chara_length, order=order), estimate, max_nodes)
    spec = {"kind": "l_shape", "h": h, "element_type": element_type, "order": order, "options": options}
    return _mesh("l_shape", spec, estimate)


def box(
    chara_length: float = 0.2,
    lower: Sequence[float] = (0.0, 0.0, 0.0),
    upper: Sequence[float] = (1.0, 1.0, 1.0),
    order: int = 1,
    max_nodes: int | None = None,
) -> Mesh:
    """Unstructured tetrahedral mesh of the box [lower, upper] (order 1: tetra, 2: tetra10).

    Facet sets "left"/"right" (x min/max), "front"/"back" (y), "bottom"/"top" (z).
    max_nodes: see :func:`rectangle`.
    """
    h = _check_length("chara_length", chara_length)
    lo, hi = _check_bounds(lower, upper, 3)
    _check_choice("order", order, (1, 2))
    a, b, c = (y - x for x, y in zip(lo, hi))
    estimate = estimate_nodes(3, a * b * c, 2 * (a * b + b * c + c * a), h, order)
    _check_size(_call("box", chara_length=chara_length, order=order), estimate, max_nodes)
    return _mesh("box", {"kind": "box", "h": h, "lower": lo, "upper": hi, "order": order, "options": {}}, estimate)


# -- structured grids ------------------------------------------------------------------

_SIDES = (("left", "right"), ("front", "back"), ("bottom", "top"))


def _kuhn() -> list:
    """The six positively oriented tetrahedra of the unit cube around its main diagonal:
    one per axis order, walking 0 -> e_a -> e_a + e_b -> (1, 1, 1)."""
    tets = []
    for perm in itertools.permutations(range(3)):
        step, path = [0, 0, 0], [(0, 0, 0)]
        for axis in perm:
            step[axis] = 1
            path.append(tuple(step))
        odd = sum(perm[i] > perm[j] for i in range(3) for j in range(i + 1, 3)) % 2
        tets.append([path[i] for i in _FLIP["tetra"]] if odd else path)
    return tets


# Corner offsets (cells per lattice box, nodes per cell, axes) of the structured cells.
_STENCILS = {
    "line": [[(0,), (1,)]],
    "triangle": [[(0, 0), (1, 0), (1, 1)], [(0, 0), (1, 1), (0, 1)]],
    "quad": [[(0, 0), (1, 0), (1, 1), (0, 1)]],
    "tetra": _kuhn(),
    "hexahedron": [[(0, 0, 0), (1, 0, 0), (1, 1, 0), (0, 1, 0), (0, 0, 1), (1, 0, 1), (1, 1, 1), (0, 1, 1)]],
}


def _lattice_cells(ids: Tensor, cell_type: str, flip: bool = False) -> Tensor:
    """Cells (m, k) of a structured node-index array ids (n1 + 1, ..., nd + 1), whose
    entries are linear in each index; lattice boxes ordered first axis fastest."""
    d = ids.ndim
    corner = ids[(0,) * d]
    strides = torch.stack([ids[tuple(int(j == i) for j in range(d))] - corner for i in range(d)])
    base = ids[(slice(None, -1),) * d].permute(*range(d - 1, -1, -1)).reshape(-1)
    stencil = torch.tensor(_STENCILS[cell_type])
    if flip:
        stencil = stencil[:, [1, 0] if cell_type == "line" else _FLIP[cell_type]]
    offsets = stencil @ strides  # (c, k)
    return (base[:, None, None] + offsets).reshape(-1, offsets.shape[1])


def grid(
    shape: Sequence[int],
    lower: Sequence[float] | None = None,
    upper: Sequence[float] | None = None,
    element_type: str | None = None,
    order: int = 1,
) -> Mesh:
    """Structured mesh of the box [lower, upper] with shape = (nx, ny) or (nx, ny, nz) cells.

    2-D: "triangle" (default; each square split along its lower-left/upper-right diagonal)
    or "quad". 3-D: "tetra" (default; six tetrahedra per cube around its main diagonal,
    the conforming Kuhn/Freudenthal split) or "hexahedron". order=2 elevates simplices to
    triangle6/tetra10. Nodes are numbered x fastest, then y, then z. Facet sets "left",
    "right", "bottom", "top" (2-D), plus "front", "back" (y min/max) in 3-D; facets are
    oriented with the outward normal (counter-clockwise in 2-D).
    """
    shape = tuple(shape)
    dim = len(shape)
    if dim not in (2, 3) or not all(is_int(n) for n in shape):
        raise ValueError(f"shape must be 2 or 3 integer cell counts, got {shape}")
    if min(shape) < 1:
        raise ValueError(f"shape must hold positive cell counts, got {shape}")
    lo, hi = _check_bounds([0.0] * dim if lower is None else lower, [1.0] * dim if upper is None else upper, dim)
    element_type = element_type or ("triangle" if dim == 2 else "tetra")
    _check_choice("element_type", element_type, ("triangle", "quad") if dim == 2 else ("tetra", "hexahedron"))
    _check_choice("order", order, (1, 2))
    simplex = element_type in ("triangle", "tetra")
    if order == 2 and not simplex:
        raise ValueError(f"order=2 needs simplices, got element_type={element_type!r}")

    axes = [torch.linspace(a, b, n + 1, dtype=torch.float64) for a, b, n in zip(lo, hi, shape)]
    points = torch.stack(torch.meshgrid(*axes[::-1], indexing="ij")[::-1], dim=-1).reshape(-1, dim)
    # ids[i, j(, k)] is the index of the node at axis positions (i, j(, k)).
    ids = torch.arange(points.shape[0]).reshape(tuple(n + 1 for n in shape[::-1])).permute(*range(dim - 1, -1, -1))

    cells = _lattice_cells(ids, element_type)
    # Each side is a grid in the other axes (in increasing order) whose cells' normal
    # (u x v in 3-D, the tangent turned clockwise in 2-D) is +axis, except -y on y sides.
    facet_type = {"triangle": "line", "quad": "line", "tetra": "triangle", "hexahedron": "quad"}[element_type]
    facets = {}
    for axis, (low, high) in enumerate(_SIDES if dim == 3 else (_SIDES[0], _SIDES[2])):
        plus = -1 if axis == 1 else 1
        for name, index, outward in ((low, 0, -1), (high, -1, 1)):
            facets[name] = _lattice_cells(ids.select(axis, index), facet_type, flip=plus != outward)
    cell_type = element_type
    if order == 2:
        points, cells_by_type, facets = elevate_order(points, {cell_type: cells}, facets)
        ((cell_type, cells),) = cells_by_type.items()
    return Mesh(points, {cell_type: cells}, facets, check=False)


def elevate_order(
    points: Tensor, cells: Mapping[str, Tensor], facet_sets: Mapping[str, Tensor] | None = None
) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
    """P1 -> P2: add one node at the midpoint of every edge of a triangle or tetra mesh.

    points (n, dim); cells {"triangle" | "tetra": (m, 3 | 4)}; facet_sets name -> (nf, 2 | 3)
    vertex facets. Returns (points (n + ne, dim), {"triangle6" | "tetra10": (m, 6 | 10)},
    facet sets as line3 / triangle6), in meshio node order; the new nodes follow the old.
    """
    if len(cells) != 1:
        raise MeshError(f"cells must hold one cell type, got {sorted(cells)}")
    ((cell_type, conn),) = cells.items()
    if cell_type not in ("triangle", "tetra"):
        raise MeshError(f"elevate_order needs 'triangle' or 'tetra' cells, got {cell_type!r}")
    points, conn = torch.as_tensor(points), torch.as_tensor(conn, dtype=torch.long)
    n = points.shape[0]
    edges, cell_edges = topology.edges(conn, cell_type)
    new_points = torch.cat([points, 0.5 * (points[edges[:, 0]] + points[edges[:, 1]])])
    edge_keys = edges[:, 0] * n + edges[:, 1]  # ascending: torch.unique sorts rows

    def midside(a: Tensor, b: Tensor, name: str) -> Tensor:
        key = torch.minimum(a, b) * n + torch.maximum(a, b)
        pos = torch.searchsorted(edge_keys, key).clamp(max=edge_keys.numel() - 1)
        if not bool((edge_keys[pos] == key).all()):
            raise MeshError(f"facet_sets[{name!r}] has edges that belong to no cell")
        return n + pos

    new_facets = {}
    for name, facets in (facet_sets or {}).items():
        facets = torch.as_tensor(facets, dtype=torch.long)
        k = facets.shape[1]
        if k not in (2, 3):
            raise MeshError(f"facet_sets[{name!r}] must hold line or triangle facets, got width {k}")
        pairs = [(0, 1)] if k == 2 else [(0, 1), (1, 2), (2, 0)]
        mids = [midside(facets[:, a], facets[:, b], name) for a, b in pairs]
        new_facets[name] = torch.cat([facets, torch.stack(mids, dim=1)], dim=1)
    p2 = {"triangle": "triangle6", "tetra": "tetra10"}[cell_type]
    return new_points, {p2: torch.cat([conn, n + cell_edges], dim=1)}, new_facets


# Children of a triangle6 (vertices 0, 1, 2; midside nodes 3 on (0,1), 4 on (1,2), 5 on (2,0)):
# three corner triangles and the middle one, all with the parent's orientation.
_RED_TRIANGLES = ((0, 3, 5), (3, 1, 4), (5, 4, 2), (3, 4, 5))


def refine_uniformly(mesh: Mesh, check: bool = True) -> Mesh:
    """Split every triangle of a P1 triangle mesh into four at its edge midpoints.

    Facet sets follow (each line facet becomes two); point and cell data are dropped.
    The result has about four times the cells and the same shape quality.
    """
    if mesh.cell_type != "triangle":
        raise MeshError(f"refine_uniformly needs a 'triangle' mesh, got {mesh.cell_type!r}")
    points, cells, facets = elevate_order(mesh.points, {"triangle": mesh.elements}, dict(mesh.facet_sets.items()))
    p2 = cells["triangle6"]
    children = torch.cat([p2[:, list(child)] for child in _RED_TRIANGLES])
    halves = {name: torch.cat([f[:, [0, 2]], f[:, [2, 1]]]) for name, f in facets.items()}
    return Mesh(points, {"triangle": children}, halves, check=check)
