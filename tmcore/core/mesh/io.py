"""Mesh files through meshio: conversion to and from ``meshio.Mesh``, reading and writing.

``read_mesh``/``write_mesh`` handle every format meshio knows (.msh, .vtu, .xdmf, ...).
Reading keeps the top-dimensional cells as the mesh and turns gmsh physical groups of
facets into named facet sets; writing stores the cells with point and cell data (facet
sets are not written). Writes are atomic: the final name appears only once complete.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tmcore.core.errors import MeshError
from tmcore.core.mesh.generate import orient_cells
from tmcore.core.mesh.mesh import Mesh, check_mesh_type
from tmcore.core.mesh.validate import RTOL

# Topological dimension of the meshio cell types a Mesh or a facet set can hold.
_CELL_DIM = {
    "vertex": 0,
    "line": 1,
    "line3": 1,
    "triangle": 2,
    "triangle6": 2,
    "quad": 2,
    "quad8": 2,
    "quad9": 2,
    "tetra": 3,
    "tetra10": 3,
    "hexahedron": 3,
    "hexahedron20": 3,
    "hexahedron27": 3,
    "wedge": 3,
    "pyramid": 3,
}
# meshio's gmsh bookkeeping, not data.
_GMSH_INTERNAL = ("gmsh:dim_tags", "gmsh:geometrical")


def _identifier(name: str) -> str:
    """A data or facet-set name usable as a Mesh buffer key ("gmsh:physical" -> "gmsh_physical")."""
    name = re.sub(r"\W", "_", str(name))
    return "_" + name if not name or name[0].isdigit() else name


def _tensor(value: Any) -> torch.Tensor:
    """A torch tensor of a numpy array or tensor, int32 widened to int64."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
    else:
        value = np.asarray(value)
        value = torch.from_numpy(np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("=")))
    return value.long() if value.dtype in (torch.int32, torch.int16, torch.int8, torch.uint8) else value


def _numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def mesh_from_meshio(
    m, orient: bool = False, check: bool = True, coincident: str = "error", unused: str = "error", rtol: float = RTOL
) -> Mesh:
    """A Mesh from a ``meshio.Mesh``.

    The top-dimensional cells become the mesh (several top-dimensional cell types raise
    MeshError; several blocks of one type are concatenated). A planar mesh's all-zero z
    column is dropped. Lower-dimensional cells tagged by ``cell_data["gmsh:physical"]``
    become facet sets named from ``field_data`` ("physical_<tag>" when unnamed). Point
    data and the top cells' cell data are carried (names made identifiers, e.g.
    "gmsh:physical" -> "gmsh_physical"; int32 widened to int64). orient=True reorders the
    nodes of negatively oriented cells instead of letting the Mesh check reject them.
    check, coincident, unused, rtol: as for :class:`Mesh` (coincident="merge" merges doubled
    nodes, unused="drop" removes nodes no cell uses, e.g. gmsh's geometry points).
    """
    blocks = [(block.type, np.asarray(block.data)) for block in m.cells]
    unknown = sorted({t for t, _ in blocks if t not in _CELL_DIM})
    if unknown:
        raise MeshError(f"unsupported meshio cell types {unknown}")
    if not blocks:
        raise MeshError("the meshio mesh has no cells")
    dim = max(_CELL_DIM[t] for t, _ in blocks)
    top = [i for i, (t, _) in enumerate(blocks) if _CELL_DIM[t] == dim]
    top_types = sorted({blocks[i][0] for i in top})
    if len(top_types) > 1:
        raise MeshError(f"mixed top-dimensional cell types {top_types}; a Mesh holds one cell type")
    cell_type = top_types[0]
    cells = torch.from_numpy(np.concatenate([blocks[i][1] for i in top]).astype(np.int64))

    points = np.asarray(m.points, dtype=np.float64)
    if dim == 2 and points.shape[1] == 3 and not np.any(points[:, 2]):
        points = points[:, :2]
    points = torch.from_numpy(np.ascontiguousarray(points))

    facet_sets: dict[str, list[np.ndarray]] = {}
    physical = m.cell_data.get("gmsh:physical")
    if physical is not None:
        names = {}  # (tag, dim) -> name
        for name, value in m.field_data.items():
            tag_dim = np.asarray(value).ravel()
            if tag_dim.size >= 2:
                names[int(tag_dim[0]), int(tag_dim[1])] = name
        for (ctype, conn), tags in zip(blocks, physical):
            if _CELL_DIM[ctype] != dim - 1:
                continue
            tags = np.asarray(tags).ravel()
            for tag in np.unique(tags):
                name = _identifier(names.get((int(tag), dim - 1), f"physical_{int(tag)}"))
                facet_sets.setdefault(name, []).append(conn[tags == tag])
    facets = {}
    for name, parts in facet_sets.items():
        widths = {p.shape[1] for p in parts}
        if len(widths) > 1:
            raise MeshError(f"facet set {name!r} mixes facet types of widths {sorted(widths)}")
        facets[name] = torch.from_numpy(np.concatenate(parts).astype(np.int64))

    point_data = {_identifier(k): _tensor(v) for k, v in m.point_data.items() if k not in _GMSH_INTERNAL}
    cell_data = {
        _identifier(k): _tensor(np.concatenate([np.asarray(v[i]) for i in top]))
        for k, v in m.cell_data.items()
        if k not in _GMSH_INTERNAL
    }
    if orient:
        cells = orient_cells(points, cells, cell_type)
    return Mesh(
        points,
        {cell_type: cells},
        facets,
        point_data,
        cell_data,
        check=check,
        coincident=coincident,
        unused=unused,
        rtol=rtol,
    )


def mesh_to_meshio(mesh: Mesh, point_data: Mapping[str, Any] | None = None, cell_data: Mapping[str, Any] | None = None):
    """A ``meshio.Mesh`` of the cells, with the mesh's point/cell data plus the given
    extra fields (name -> (n, ...) / (m, ...) tensor or array; tensors are detached)."""
    import meshio

    fields = {}
    for kind, own, extra, length in (
        ("point_data", mesh.point_data, point_data, mesh.n_points),
        ("cell_data", mesh.cell_data, cell_data, mesh.n_cells),
    ):
        fields[kind] = {k: _numpy(v) for k, v in {**own.to_dict(), **(extra or {})}.items()}
        for key, value in fields[kind].items():
            if value.ndim == 0 or value.shape[0] != length:
                raise MeshError(f"{kind}[{key!r}] must have leading length {length}, got shape {value.shape}")
    return meshio.Mesh(
        _numpy(mesh.points),
        [(mesh.cell_type, _numpy(mesh.elements))],
        point_data=fields["point_data"],
        cell_data={k: [v] for k, v in fields["cell_data"].items()},
    )


def _formats(path: Path, file_format: str | None) -> list[str]:
    """meshio format names to try for path: file_format, else those of its extension
    (gmsh first for .msh, which meshio also maps to ANSYS)."""
    import meshio

    if file_format:
        return [file_format]
    formats, ext = [], ""
    for suffix in reversed(path.suffixes):
        ext = (suffix + ext).lower()
        formats += meshio.extension_to_filetypes.get(ext, [])
    if not formats:
        raise MeshError(f"cannot tell the mesh format of {str(path)!r} from its extension; pass file_format")
    return sorted(formats, key=lambda f: f != "gmsh")


def read_mesh(
    path,
    orient: bool = False,
    file_format: str | None = None,
    check: bool = True,
    coincident: str = "error",
    unused: str = "error",
    rtol: float = RTOL,
) -> Mesh:
    """Read a mesh file meshio understands (format from the extension unless file_format).

    Raises FileNotFoundError for a missing file and MeshError, naming the path, for a
    file meshio cannot read (unknown format, truncated, corrupt) or a mesh that fails a
    check (the message names the file, the check and the first offending cells or nodes:
    ``mesh file 'a.msh': check 'coincident nodes' failed: ...``). See mesh_from_meshio.
    """
    # meshio.read prints reader errors and calls sys.exit when every format fails, so the
    # readers are called directly.
    from meshio._helpers import reader_map

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no mesh file {str(path)!r}")
    reasons = []
    for fmt in _formats(path, file_format):
        if fmt not in reader_map:
            raise MeshError(f"cannot read {str(path)!r}: unknown file format {fmt!r}")
        try:
            m = reader_map[fmt](str(path))
            break
        except Exception as err:  # a broken file makes readers fail in many ways
            reasons.append(f"as {fmt}: {type(err).__name__}" + (f": {err}" if str(err) else ""))
    else:
        raise MeshError(f"cannot read mesh file {str(path)!r} ({'; '.join(reasons)})")
    try:
        return mesh_from_meshio(m, orient=orient, check=check, coincident=coincident, unused=unused, rtol=rtol)
    except MeshError as err:
        raise MeshError(f"mesh file {str(path)!r}: {err}") from err


def write_mesh(
    mesh: Mesh,
    path,
    point_data: Mapping[str, Any] | None = None,
    cell_data: Mapping[str, Any] | None = None,
    file_format: str | None = None,
    **kwargs,
) -> None:
    """Write the mesh (and extra point/cell data) with meshio, atomically.

    The files are written under their final names in a temporary directory next to
    ``path`` and then moved into place with ``os.replace`` (companions such as the .h5
    of an .xdmf first), so a failed write leaves no file under the final name. The
    format follows the extension unless file_format (e.g. "gmsh22"); kwargs go to
    ``meshio.write`` (e.g. binary=False).
    """
    import meshio

    path = Path(path)
    file_format = _formats(path, file_format)[0]
    m = mesh_to_meshio(mesh, point_data, cell_data)
    if m.points.shape[1] == 2:  # most formats want 3-D points (and warn otherwise)
        m.points = np.column_stack([m.points, np.zeros(len(m.points))])
    if file_format == "gmsh22":
        # gmsh 2.2 stores physical/geometrical tags per element; give them, or meshio warns.
        tags = _numpy(m.cell_data.pop("gmsh_physical", [np.ones(mesh.n_cells, dtype=np.int32)])[0])
        m.cell_data["gmsh:physical"] = [tags.astype(np.int32)]
        m.cell_data["gmsh:geometrical"] = [np.ones(mesh.n_cells, dtype=np.int32)]
    has_data = m.point_data or any(not k.startswith("gmsh:") for k in m.cell_data)
    if file_format in ("gmsh", "gmsh22") and kwargs.get("binary") is False and has_data:
        # meshio 5.3 writes numpy-2 scalar reprs ("np.float64(1.0)") into ASCII data blocks.
        raise MeshError(
            f"cannot write {str(path)!r}: ASCII .msh with point/cell data is unreadable with meshio; use binary"
        )
    tmpdir = tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        target = os.path.join(tmpdir, path.name)
        try:
            meshio.write(target, m, file_format=file_format, **kwargs)
        except (meshio.WriteError, ValueError, KeyError, IndexError, TypeError, OSError) as err:
            raise MeshError(f"cannot write mesh file {str(path)!r}: {type(err).__name__}: {err}") from err
        written = sorted(os.listdir(tmpdir), key=lambda name: name == path.name)  # main file last
        for name in written:
            os.replace(os.path.join(tmpdir, name), path.parent / name)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


# -- xarray ---------------------------------------------------------------------------------
#
# The mesh schema of the artifact store (docs/artifacts.md): dimensions ``node``, ``cell``,
# ``vertex`` (nodes per cell) and ``dim``; variables ``points`` (node, dim), ``cells``
# (cell, vertex) and ``boundary_mask`` (node,); attribute ``cell_type``. Facet sets, point
# data and cell data ride along as ``facets_<name>``, ``point_<key>`` and ``cell_<key>``.

_XR_FACETS, _XR_POINT, _XR_CELL = "facets_", "point_", "cell_"


def _extra_dims(key: str, value: np.ndarray) -> tuple[str, ...]:
    return tuple(f"{key}_axis{i}" for i in range(1, value.ndim))


def mesh_to_xarray(mesh: Mesh):
    """An ``xarray.Dataset`` of the mesh in the artifact schema (needs xarray).

    Points keep their dtype, indices are int64, ``boundary_mask`` is bool.
    """
    try:
        import xarray as xr
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("mesh_to_xarray needs xarray, which is not installed (pip install xarray)") from error
    check_mesh_type(mesh)
    data = {
        "points": (("node", "dim"), _numpy(mesh.points)),
        "cells": (("cell", "vertex"), _numpy(mesh.elements).astype(np.int64)),
        "boundary_mask": (("node",), _numpy(mesh.boundary_mask).astype(bool)),
    }
    for name, facets in mesh.facet_sets.items():
        data[_XR_FACETS + name] = ((f"facet_{name}", f"facet_{name}_vertex"), _numpy(facets).astype(np.int64))
    for prefix, first, fields in ((_XR_POINT, "node", mesh.point_data), (_XR_CELL, "cell", mesh.cell_data)):
        for key, value in fields.items():
            value = _numpy(value)
            data[prefix + key] = ((first,) + _extra_dims(prefix + key, value), value)
    return xr.Dataset(data, attrs={"cell_type": mesh.cell_type})


def mesh_from_xarray(dataset, check: bool = True) -> Mesh:
    """The Mesh stored in a Dataset of the mesh schema (see :func:`mesh_to_xarray`)."""
    missing = [name for name in ("points", "cells") if name not in dataset.variables]
    if missing or "cell_type" not in dataset.attrs:
        raise MeshError(
            "a mesh dataset needs variables 'points' (node, dim) and 'cells' (cell, vertex) and the attribute "
            f"'cell_type'; missing {missing + ([] if 'cell_type' in dataset.attrs else ['cell_type'])}"
        )
    facets, point_data, cell_data = {}, {}, {}
    for name in dataset.data_vars:
        for prefix, target in ((_XR_FACETS, facets), (_XR_POINT, point_data), (_XR_CELL, cell_data)):
            if name.startswith(prefix):
                target[name[len(prefix) :]] = _tensor(dataset[name].values)
                break
    return Mesh(
        _tensor(dataset["points"].values),
        {str(dataset.attrs["cell_type"]): _tensor(dataset["cells"].values)},
        facets,
        point_data,
        cell_data,
        check=check,
    )
