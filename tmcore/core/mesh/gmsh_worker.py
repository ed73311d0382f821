"""gmsh recipes of the mesh generators, runnable in this process or in a child process.

This file imports only the standard library, NumPy and gmsh (never torch or tmcore), so
that :mod:`tmcore.core.mesh.generate` can run it as a script in a child process for large
meshes: ``python gmsh_worker.py spec.json out.npz``. A child can be stopped at once (Ctrl-C
reaches it and gmsh's own interruptible mode ends it), and a gmsh crash or an out-of-memory
kill ends the child, not the caller.

A *spec* is a JSON-able dict: ``kind`` ("rectangle", "circle", "l_shape", "box"), the
geometry (``h`` and the kind's own numbers), ``order`` and ``options`` (gmsh options set on
top of :data:`OPTIONS`). :func:`mesh_arrays` meshes the current gmsh model and returns plain
arrays: ``points`` (n, dim) of the nodes cells use, ``cells`` (m, k) and ``facet:<name>``
(nf, kf), all 0-based, in meshio node order.
"""

from __future__ import annotations

import itertools
import json
import sys

import numpy as np

# Options every gmsh generator sets (and restores if gmsh was already running):
# quiet, deterministic, and gmsh's defaults for everything that shapes the mesh.
OPTIONS = {
    "General.Terminal": 0,
    "General.Verbosity": 0,
    "General.NumThreads": 1,
    "Mesh.RandomSeed": 1,
    "Mesh.Algorithm": 6,
    "Mesh.Algorithm3D": 1,
    "Mesh.MeshSizeMin": 0.0,
    "Mesh.MeshSizeMax": 1e22,
    "Mesh.MeshSizeFactor": 1.0,
    "Mesh.MeshSizeFromPoints": 1,
    "Mesh.MeshSizeFromCurvature": 0,
    "Mesh.MeshSizeExtendFromBoundary": 1,
    "Mesh.RecombineAll": 0,
    "Mesh.RecombinationAlgorithm": 1,
    "Mesh.ElementOrder": 1,
}

# gmsh element type numbers of the meshio cell types we read back.
GMSH_TYPE = {"line": 1, "triangle": 2, "quad": 3, "tetra": 4, "line3": 8, "triangle6": 9, "tetra10": 11}
N_NODES = {"line": 2, "triangle": 3, "quad": 4, "tetra": 4, "line3": 3, "triangle6": 6, "tetra10": 10}
# gmsh node order -> meshio node order (identity where missing).
GMSH_TO_MESHIO = {"tetra10": [0, 1, 2, 3, 4, 5, 6, 7, 9, 8]}


class GmshFailure(RuntimeError):
    """gmsh failed or produced something other than what was asked (mapped to MeshError by the caller)."""


def side_groups(gmsh, dim: int, lower, upper, names) -> None:
    """Physical groups of the boundary entities (dimension dim - 1) on each side of a box.

    names: per axis, the (min side, max side) names, e.g. (("left", "right"), ...).
    """
    tol = 1e-5 * max(high - low for low, high in zip(lower, upper))  # OCC pads bounding boxes
    groups: dict[str, list[int]] = {}
    for _, tag in gmsh.model.getEntities(dim - 1):
        box = gmsh.model.getBoundingBox(dim - 1, tag)
        for axis, pair in enumerate(names):
            if box[axis + 3] - box[axis] > tol:
                continue
            for value, name in zip((lower[axis], upper[axis]), pair):
                if abs(box[axis] - value) <= tol:
                    groups.setdefault(name, []).append(tag)
    for name in itertools.chain(*names):
        if name in groups:
            gmsh.model.addPhysicalGroup(dim - 1, sorted(groups[name]), name=name)


def build(gmsh, spec: dict) -> tuple[int, str]:
    """Add the geometry of ``spec`` to the current model; returns (dimension, P1 cell type)."""
    kind, h, occ = spec["kind"], spec["h"], gmsh.model.occ
    if kind == "rectangle":
        left, right, bottom, top = spec["left"], spec["right"], spec["bottom"], spec["top"]
        occ.addRectangle(left, bottom, 0.0, right - left, top - bottom)
        occ.synchronize()
        gmsh.model.mesh.setSize(gmsh.model.getEntities(0), h)
        side_groups(gmsh, 2, (left, bottom), (right, top), (("left", "right"), ("bottom", "top")))
        return 2, spec.get("element_type", "triangle")
    if kind == "circle":
        (cx, cy), r = spec["center"], spec["radius"]
        occ.addDisk(cx, cy, 0.0, r, r)
        occ.synchronize()
        gmsh.model.mesh.setSize(gmsh.model.getEntities(0), h)
        gmsh.model.addPhysicalGroup(1, [t for _, t in gmsh.model.getEntities(1)], name="boundary")
        return 2, spec.get("element_type", "triangle")
    if kind == "l_shape":
        corners = [(-1.0, -1.0), (1.0, -1.0), (1.0, 0.0), (0.0, 0.0), (0.0, 1.0), (-1.0, 1.0)]
        pts = [occ.addPoint(x, y, 0.0, h) for x, y in corners]
        lines = [occ.addLine(a, b) for a, b in zip(pts, pts[1:] + pts[:1])]
        occ.addPlaneSurface([occ.addCurveLoop(lines)])
        occ.synchronize()
        gmsh.model.mesh.setSize(gmsh.model.getEntities(0), h)
        gmsh.model.addPhysicalGroup(1, lines, name="boundary")
        return 2, spec.get("element_type", "triangle")
    if kind == "box":
        lo, hi = spec["lower"], spec["upper"]
        occ.addBox(*lo, *(b - a for a, b in zip(lo, hi)))
        occ.synchronize()
        gmsh.model.mesh.setSize(gmsh.model.getEntities(0), h)
        side_groups(gmsh, 3, lo, hi, (("left", "right"), ("front", "back"), ("bottom", "top")))
        return 3, "tetra"
    raise GmshFailure(f"unknown gmsh recipe {kind!r}")


def mesh_arrays(gmsh, dim: int, order: int, cell_type: str) -> dict[str, np.ndarray]:
    """Mesh the current model and read it back as arrays (see the module docstring)."""
    gmsh.model.mesh.generate(dim)
    if order == 2:
        gmsh.model.mesh.setOrder(2)
        cell_type = {"triangle": "triangle6", "tetra": "tetra10"}[cell_type]
    facet_type = {(2, 1): "line", (2, 2): "line3", (3, 1): "triangle", (3, 2): "triangle6"}[dim, order]

    def elements(name: str, entity: int = -1) -> np.ndarray:
        _, nodes = gmsh.model.mesh.getElementsByType(GMSH_TYPE[name], entity)
        conn = np.asarray(nodes, dtype=np.int64).reshape(-1, N_NODES[name])
        return conn[:, GMSH_TO_MESHIO[name]] if name in GMSH_TO_MESHIO else conn

    types = sorted(gmsh.model.mesh.getElementTypes(dim))
    if types != [GMSH_TYPE[cell_type]]:
        raise GmshFailure(
            f"gmsh produced {dim}-D element types {types}, expected only {cell_type!r} ({GMSH_TYPE[cell_type]})"
        )
    cells = elements(cell_type)
    facets = {}
    for d, group in gmsh.model.getPhysicalGroups(dim - 1):
        blocks = [elements(facet_type, e) for e in gmsh.model.getEntitiesForPhysicalGroup(d, group)]
        facets[gmsh.model.getPhysicalName(d, group)] = np.concatenate(blocks)
    tags, coords, _ = gmsh.model.mesh.getNodes()
    tags = np.asarray(tags, dtype=np.int64)
    # Keep only the nodes cells use (gmsh keeps geometry points), renumbered in tag order.
    used = np.unique(cells)
    lookup = np.full(tags.max() + 1, -1, dtype=np.int64)
    lookup[tags] = np.arange(tags.size)
    points = np.asarray(coords, dtype=np.float64).reshape(-1, 3)[lookup[used], :dim]
    out = {"points": np.ascontiguousarray(points), "cells": np.searchsorted(used, cells)}
    for name, f in facets.items():
        out["facet:" + name] = np.searchsorted(used, f)
    out["cell_type"] = np.array(cell_type)
    return out


def describe(error: BaseException, log: list[str]) -> str:
    """A one-line reason for a gmsh failure: its message, else its last logged errors or lines."""
    text = str(error).strip()
    if text:
        return f"{type(error).__name__}: {text}"
    lines = [line for line in log if "rror" in line] or log
    tail = "; ".join(line.strip() for line in lines[-3:])
    hint = f"gmsh's last messages: {tail}" if tail else "and gmsh logged nothing: most often it ran out of memory"
    return f"{type(error).__name__} with no message, {hint}"


def main(argv: list[str]) -> int:
    """Child-process entry: mesh the spec in argv[1], write the arrays to argv[2] (.npz).

    Exit 0 on success; on failure print one line ``{"error": ...}`` to stderr and exit 3.
    """
    import gmsh

    spec_path, out_path = argv[1], argv[2]
    with open(spec_path) as handle:
        spec = json.load(handle)
    gmsh.initialize(readConfigFiles=False, interruptible=True)  # SIGINT ends this process at once
    gmsh.logger.start()
    try:
        for key, value in {**OPTIONS, **spec.get("options", {})}.items():
            gmsh.option.setNumber(key, value)
        gmsh.model.add("tmcore_generate")
        dim, cell_type = build(gmsh, spec)
        arrays = mesh_arrays(gmsh, dim, spec.get("order", 1), cell_type)
    except Exception as error:  # gmsh raises bare Exception
        sys.stderr.write(json.dumps({"error": describe(error, gmsh.logger.get())}) + "\n")
        return 3
    with open(out_path, "wb") as handle:
        np.savez(handle, **arrays)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
