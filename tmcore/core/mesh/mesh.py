"""The ``Mesh`` module: node coordinates, cell connectivity and named facet sets."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from tmcore.core.buffers import BufferDict
from tmcore.core.elements import Element, get_element
from tmcore.core.errors import MeshError
from tmcore.core.mesh import geometry, topology, validate

if TYPE_CHECKING:
    import meshio

logger = logging.getLogger(__name__)

# Cell types by reference dimension and node count, for meshes given a bare tensor.
_CELL_TYPE_BY_SHAPE = {
    (2, 3): "triangle",
    (2, 6): "triangle6",
    (2, 4): "quad",
    (3, 4): "tetra",
    (3, 10): "tetra10",
    (3, 8): "hexahedron",
}


def _as_points(points: Any) -> Tensor:
    if not isinstance(points, (Tensor, np.ndarray)):
        points = np.asarray(points, dtype=np.float64)  # lists of numbers: float64, like NumPy
    points = torch.as_tensor(points)
    if not (points.is_floating_point()):
        if points.dtype.is_complex:
            raise MeshError(f"points must be real, got dtype {points.dtype}")
        points = points.to(torch.get_default_dtype())
    if points.ndim != 2 or points.shape[1] not in (2, 3):
        raise MeshError(f"points must have shape (n, 2) or (n, 3), got {tuple(points.shape)}")
    if points.shape[0] == 0:
        raise MeshError("points is empty: a mesh needs at least one cell and its nodes")
    bad = ~torch.isfinite(points).all(dim=1)
    if bad.any():
        rows = torch.nonzero(bad).flatten()[:5].tolist()
        raise MeshError(f"points must be finite; {int(bad.sum())} rows hold NaN or inf (first: {rows})")
    return points


def _as_cells(cells: Any, dim: int) -> dict[str, Tensor]:
    if isinstance(cells, Mapping):
        cells = dict(cells)
    else:
        cells = torch.as_tensor(cells)
        if cells.ndim != 2:
            raise MeshError(f"cells must be a dict or an (m, k) index tensor, got shape {tuple(cells.shape)}")
        cell_type = _CELL_TYPE_BY_SHAPE.get((dim, cells.shape[1]))
        if cell_type is None:
            raise MeshError(
                f"cannot infer the cell type of {cells.shape[1]}-node cells in {dim}-D; pass cells as a dict "
                "{meshio cell type: (m, k) tensor}"
            )
        cells = {cell_type: cells}
    if len(cells) != 1:
        raise MeshError(
            f"a Mesh holds one cell type; got {sorted(cells)} (mixed cell types are not supported; "
            "lower-dimensional cells belong in facet_sets)"
        )
    return {name: torch.as_tensor(conn) for name, conn in cells.items()}


def _check_connectivity(name: str, conn: Tensor, n_nodes_per_cell: int, n_points: int) -> Tensor:
    if conn.dtype.is_floating_point or conn.dtype.is_complex or conn.dtype == torch.bool:
        raise MeshError(f"{name} must hold integer node indices, got dtype {conn.dtype}")
    conn = conn.to(torch.long)
    if conn.ndim != 2 or conn.shape[1] != n_nodes_per_cell:
        raise MeshError(f"{name} must have shape (m, {n_nodes_per_cell}), got {tuple(conn.shape)}")
    if conn.shape[0] == 0:
        raise MeshError(f"{name} is empty: a mesh needs at least one cell")
    if conn.min() < 0:
        raise MeshError(f"{name} holds negative node indices (min {int(conn.min())})")
    if conn.max() >= n_points:
        raise MeshError(f"{name} indices must be < n_points = {n_points}, got max {int(conn.max())}")
    return conn


def _check_lengths(kind: str, data: Mapping[str, Tensor], length: int) -> None:
    for key, value in data.items():
        if value.ndim == 0 or value.shape[0] != length:
            raise MeshError(f"{kind}[{key!r}] must have leading length {length}, got shape {tuple(value.shape)}")


class Mesh(nn.Module):
    """An unstructured mesh of one cell type.

    Args:
        points: (n, dim) node coordinates, dim 2 or 3.
        cells: dict from a meshio cell type ("triangle", "triangle6", "quad", "tetra",
            "tetra10", "hexahedron") to (m, k) node indices, or a bare (m, k) tensor
            whose type follows from k and dim.
        facet_sets: named sets of facets, name -> (nf, kf) node indices (e.g. "left").
        point_data / cell_data: extra per-node (n, ...) / per-cell (m, ...) fields.
        check: validate the mesh (:mod:`tmcore.core.mesh.validate`: no duplicate, degenerate,
            inverted or overlapping cells, no unused or coincident nodes); finite points and
            indices in range are always checked. Leave on unless the mesh is known good.
        coincident: what to do with distinct nodes closer than ``rtol`` x the shortest edge:
            "error" (default: MeshError naming the nodes), "merge" (each group becomes its
            lowest-numbered node; facet sets and point data follow) or "allow" (keep them:
            a deliberate crack, whose faces are then boundary facets).
        unused: nodes no cell uses: "error" (default), "drop" (removed, the rest renumbered
            in order) or "allow".
        rtol: the coincidence tolerance relative to the shortest vertex edge (default 1e-6).

    ``points``, cells, facet sets and data are buffers: ``.to(device)``, ``.double()``
    and ``state_dict()`` carry them.
    """

    def __init__(
        self,
        points: Any,
        cells: Any,
        facet_sets: Mapping[str, Any] | None = None,
        point_data: Mapping[str, Any] | None = None,
        cell_data: Mapping[str, Any] | None = None,
        check: bool = True,
        coincident: str = "error",
        unused: str = "error",
        rtol: float = validate.RTOL,
    ):
        super().__init__()
        validate.check_mode("coincident", coincident, validate.COINCIDENT_MODES)
        validate.check_mode("unused", unused, validate.UNUSED_MODES)
        rtol = validate.check_rtol(rtol)
        points = _as_points(points)
        cells = _as_cells(cells, points.shape[1])
        ((cell_type, conn),) = cells.items()
        element = get_element(cell_type)
        if element.dim != points.shape[1]:
            raise MeshError(
                f"cells of type {cell_type!r} are {element.dim}-D but points are {points.shape[1]}-D "
                "(mixed dimensions; drop the z column of planar meshes)"
            )
        conn = _check_connectivity(f"cells[{cell_type!r}]", conn, element.n_nodes, points.shape[0])
        facets = {}
        for name, f in (facet_sets or {}).items():
            f = torch.as_tensor(f)
            width = f.shape[1] if f.ndim == 2 else -1
            facets[name] = _check_connectivity(f"facet_sets[{name!r}]", f, width, points.shape[0])
        point_data = {k: torch.as_tensor(v) for k, v in (point_data or {}).items()}
        cell_data = {k: torch.as_tensor(v) for k, v in (cell_data or {}).items()}
        _check_lengths("point_data", point_data, points.shape[0])
        _check_lengths("cell_data", cell_data, conn.shape[0])
        if coincident == "merge":
            points, conn, facets, point_data = validate.merge_coincident(
                points, conn, cell_type, facets, point_data, rtol
            )
        if unused == "drop":
            points, conn, facets, point_data = validate.drop_unused(points, conn, facets, point_data)
        self.register_buffer("points", points)
        self.cells = BufferDict({cell_type: conn})
        self.facet_sets = BufferDict(facets)
        self.point_data = BufferDict(point_data)
        self.cell_data = BufferDict(cell_data)
        self._topology_cache: dict[str, Any] = {}
        if check:
            self.check(
                coincident="allow" if coincident == "allow" else "error",
                unused="allow" if unused == "allow" else "error",
                rtol=rtol,
            )

    # -- basic properties -------------------------------------------------------------

    @property
    def cell_type(self) -> str:
        """The meshio name of the cell type, e.g. ``"triangle"``."""
        return next(iter(self.cells.keys()))

    @property
    def element(self) -> Element:
        """The reference element of the cells."""
        return get_element(self.cell_type)

    @property
    def elements(self) -> Tensor:
        """Cell connectivity (m, k)."""
        return self.cells[self.cell_type]

    @property
    def n_points(self) -> int:
        return self.points.shape[0]

    @property
    def n_cells(self) -> int:
        return self.elements.shape[0]

    @property
    def dim(self) -> int:
        return self.points.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self.points.dtype

    @property
    def device(self) -> torch.device:
        return self.points.device

    # -- checks ---------------------------------------------------------------------

    def check(self, coincident: str = "error", unused: str = "error", rtol: float = validate.RTOL) -> None:
        """Raise ``MeshError`` on duplicate, degenerate, inverted or overlapping cells, unused
        nodes (unless ``unused="allow"``) and coincident nodes (unless ``coincident="allow"``);
        the message names the check and the first offending cells or nodes
        (:mod:`tmcore.core.mesh.validate`)."""
        validate.check_mode("coincident", coincident, ("error", "allow"))
        validate.check_mode("unused", unused, ("error", "allow"))
        validate.check_mesh(self.points, self.elements, self.cell_type, coincident, unused, validate.check_rtol(rtol))

    # -- geometry ---------------------------------------------------------------------

    def jacobian_determinants(self, xi: Tensor) -> Tensor:
        """det(dx/dxi) (m, q) at reference points xi (q, dim): twice the area of a P1 triangle."""
        nodes = geometry.cell_nodes(self.points, self.elements)
        return torch.linalg.det(geometry.jacobians(nodes, self.element, xi))

    def cell_measures(self) -> Tensor:
        """Area (2-D) or volume (3-D) of each cell (m,), in the units of the coordinates."""
        from tmcore.core.elements import quadrature

        xi, w = quadrature(self.element.shape, 2 * self.element.order, dtype=self.dtype, device=self.device)
        return self.jacobian_determinants(xi) @ w

    # -- topology -------------------------------------------------------------------

    def _cached(self, name: str, compute):
        conn = self.elements
        key = (conn.data_ptr(), conn._version, conn.device)
        hit = self._topology_cache.get(name)
        if hit is None or hit[0] != key:
            hit = (key, compute())
            self._topology_cache[name] = hit
        return hit[1]

    @property
    def boundary(self) -> topology.BoundaryFacets:
        """Boundary facets with their owner cells and facet type."""
        return self._cached("boundary", lambda: topology.boundary_facets(self.elements, self.cell_type))

    @property
    def boundary_facets(self) -> Tensor:
        """Node indices (nf, kf) of the facets that lie on the boundary."""
        return self.boundary.facets

    @property
    def boundary_mask(self) -> Tensor:
        """(n,) bool: True for nodes on a boundary facet (P2 midside nodes included)."""

        def compute():
            mask = torch.zeros(self.n_points, dtype=torch.bool, device=self.device)
            mask[self.boundary_facets.flatten()] = True
            return mask

        return self._cached("boundary_mask", compute)

    def nodes_of(self, facets: str | Tensor) -> Tensor:
        """(n,) bool mask of the nodes of a facet set given by name or as (nf, kf) indices."""
        if isinstance(facets, str):
            facets = self.facet_set(facets)
        mask = torch.zeros(self.n_points, dtype=torch.bool, device=self.device)
        mask[facets.flatten()] = True
        return mask

    def facet_set(self, name: str) -> Tensor:
        """The facets (nf, kf) of a named set, e.g. ``"left"`` of a generated rectangle."""
        if name not in self.facet_sets:
            raise KeyError(f"no facet set {name!r}; this mesh has {sorted(self.facet_sets.keys())}")
        return self.facet_sets[name]

    def _apply(self, fn, recurse=True):
        self._topology_cache = {}
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        cells = f"{{{self.cell_type!r}: {self.n_cells}}}"
        return f"n_points={self.n_points}, cells={cells}, dim={self.dim}, dtype={self.dtype}"

    # -- generators -------------------------------------------------------------------

    @classmethod
    def gen_rectangle(cls, chara_length: float = 0.1, **kwargs) -> "Mesh":
        """Unstructured rectangle from gmsh; see :func:`tmcore.core.mesh.generate.rectangle`."""
        from tmcore.core.mesh.generate import rectangle

        return rectangle(chara_length=chara_length, **kwargs)

    @classmethod
    def gen_circle(cls, chara_length: float = 0.1, **kwargs) -> "Mesh":
        """Unstructured disc from gmsh; see :func:`tmcore.core.mesh.generate.circle`."""
        from tmcore.core.mesh.generate import circle

        return circle(chara_length=chara_length, **kwargs)

    @classmethod
    def gen_L(cls, chara_length: float = 0.1, **kwargs) -> "Mesh":
        """Unstructured L-shaped domain from gmsh; see :func:`tmcore.core.mesh.generate.l_shape`."""
        from tmcore.core.mesh.generate import l_shape

        return l_shape(chara_length=chara_length, **kwargs)

    @classmethod
    def gen_box(cls, chara_length: float = 0.2, **kwargs) -> "Mesh":
        """Unstructured box of tetrahedra from gmsh; see :func:`tmcore.core.mesh.generate.box`."""
        from tmcore.core.mesh.generate import box

        return box(chara_length=chara_length, **kwargs)

    @classmethod
    def gen_cube(cls, chara_length: float = 0.2, **kwargs) -> "Mesh":
        """Unit cube of tetrahedra from gmsh (``gen_box`` on [0, 1]^3)."""
        return cls.gen_box(chara_length=chara_length, **kwargs)

    @classmethod
    def gen_grid(cls, shape, **kwargs) -> "Mesh":
        """Structured grid (fast, no gmsh); see :func:`tmcore.core.mesh.generate.grid`."""
        from tmcore.core.mesh.generate import grid

        return grid(shape, **kwargs)

    # -- I/O --------------------------------------------------------------------------

    @classmethod
    def from_meshio(cls, mesh: "meshio.Mesh", **kwargs) -> "Mesh":
        """A Mesh from a ``meshio.Mesh``; see :func:`tmcore.core.mesh.io.mesh_from_meshio`."""
        from tmcore.core.mesh.io import mesh_from_meshio

        return mesh_from_meshio(mesh, **kwargs)

    def to_meshio(self, point_data=None, cell_data=None) -> "meshio.Mesh":
        """This mesh (and optional extra fields) as a ``meshio.Mesh``."""
        from tmcore.core.mesh.io import mesh_to_meshio

        return mesh_to_meshio(self, point_data=point_data, cell_data=cell_data)

    @classmethod
    def read(cls, path, **kwargs) -> "Mesh":
        """Read any format meshio reads (.msh, .vtu, .xdmf, ...)."""
        from tmcore.core.mesh.io import read_mesh

        return read_mesh(path, **kwargs)

    def write(self, path, point_data=None, cell_data=None, **kwargs) -> None:
        """Write through meshio; the format follows the file extension. The write is atomic."""
        from tmcore.core.mesh.io import write_mesh

        write_mesh(self, path, point_data=point_data, cell_data=cell_data, **kwargs)


def check_mesh_type(mesh: Any) -> Mesh:
    """``mesh`` itself when it is a tmcore Mesh; a ``TypeError`` that says what came otherwise."""
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a tmcore Mesh, got {type(mesh).__name__}")
    return mesh
