"""Assemblers: weak-form integrands written as ``nn.Module.forward``, assembled in one pass.

A subclass writes ``forward`` for one quadrature point and one pair of basis functions;
the *names* of its arguments choose what it receives:

================  ==============================================================
``u``, ``v``      trial / test shape-function values (scalars)
``gradu``         trial / test shape-function gradients (dim,), so ``gradu @ gradv``
``gradv``         is their dot product
``x``             physical coordinates of the quadrature point (dim,)
``n``             outward unit normal (FacetAssembler only) (dim,)
any other name    a key of ``point_data`` (per node, interpolated with the shape
                  functions), ``element_data`` (per cell, constant on it) or
                  ``scalar_data`` (a float or 0-d tensor)
``grad_<key>``    the gradient (dim,) of the interpolated ``point_data[key]``
================  ==============================================================

``Cls.from_mesh(mesh)`` binds the integrand to a mesh; calling the instance evaluates
it at every quadrature point of every cell with ``torch.vmap``, multiplies by the
quadrature weights and scatters into a :class:`~tmcore.core.linalg.sparse.SparseMatrix`
(``ElementAssembler``, bilinear), a vector (``NodeAssembler``, linear) or a number
(``Functional``: integrals such as error norms and regularisers). The
mesh-only data (Jacobians, weights, shape gradients, the pattern and the scatter map)
is computed once per mesh and quadrature degree and cached on the mesh.

Data with a leading batch dimension, (B, n) per node or (B, m) per cell, gives a batch
of B matrices on one pattern, values (B, nnz), or vectors (B, n).

Vector-valued fields (displacements): a subclass that sets ``components = "dim"`` (or
an int c; :class:`VectorElementAssembler`, :class:`VectorNodeAssembler` and
:class:`VectorFacetAssembler` do) has c unknowns per node. Its basis functions are
N_a e_i, one per node a and component i, so ``u``/``v`` have shape (c,) and
``gradu``/``gradv`` shape (c, dim) with ``gradu[i, j] = d u_i / d x_j``; the integrand
is still written for one pair of basis functions and returns a scalar (the strain
energy ``lam * tr(eps(u)) * tr(eps(v)) + 2 * mu * (eps(u) * eps(v)).sum()``). Dofs are
numbered **node-major**: dof ``c * a + i`` is component i of node a, so a solution
(n * c,) reshapes to nodal vectors with ``u.reshape(n, c)`` and the matrix is
(n * c, n * c). Dirichlet conditions go through a per-dof mask, :func:`dof_mask`. The
scalar assemblers (``components = None``, the default) are unchanged.
"""

from __future__ import annotations

import inspect
import math
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor, nn

from tmcore.core.checks import check_count, is_int, is_number
from tmcore.core.elements import Element, get_element, quadrature
from tmcore.core.errors import AssemblyError
from tmcore.core.host import all_finite
from tmcore.core.linalg.linear_map import SparseLinearMap
from tmcore.core.linalg.sparse import SparseMatrix, SparsityPattern
from tmcore.core.mesh import Mesh, check_mesh_type
from tmcore.core.mesh import geometry as geo
from tmcore.core.threads import threads_for

__all__ = [
    "ElementAssembler",
    "NodeAssembler",
    "FacetAssembler",
    "Functional",
    "VectorElementAssembler",
    "VectorNodeAssembler",
    "VectorFacetAssembler",
    "default_quadrature_degree",
    "dof_connectivity",
    "dof_mask",
    "share_patterns",
]

# Axes an integrand argument may vary along, outermost first; the vmap levels follow this order.
BATCH, CELL, POINT, TEST, TRIAL = "batch", "cell", "point", "test", "trial"
# the component of a vector-valued basis function, right after its node axis
TEST_COMPONENT, TRIAL_COMPONENT = "test_component", "trial_component"
AXES = (BATCH, CELL, POINT, TEST, TEST_COMPONENT, TRIAL, TRIAL_COMPONENT)
_COMPONENT_OF = {TEST: TEST_COMPONENT, TRIAL: TRIAL_COMPONENT}
# Integrand evaluations per block of cells on a CPU (see _Assembler._assemble_chunks): 2^20
# keeps a block's temporaries to tens of MiB. P1 Laplace at 1e5-1e6 cells on 2 cores was
# fastest between 2^19 and 2^21 and 1.4-1.8x slower evaluated in one block.
CHUNK_EVALUATIONS = 2**20
# Forms affine in their data are assembled through a sparse operator (see _AffineForm) unless it
# would hold more entries than this (before summing duplicates); then the integrand is evaluated.
AFFINE_MAX_ENTRIES = 2**23
# Results of affine forms on unchanged, gradient-free data kept per mesh (see _Assembler._keep_constant):
# at most this many entries, each result at most this many values (8 MiB in float64).
CONSTANT_RESULTS = 8
CONSTANT_MAX_ENTRIES = 2**20


@lru_cache(maxsize=None)
def integrand_arguments(forward: Callable) -> tuple[str, ...]:
    """Names of the integrand's arguments (``self`` excluded); only plain named arguments are allowed."""
    names = []
    for name, param in inspect.signature(forward).parameters.items():
        if name == "self":
            continue
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            star = "*" if param.kind == param.VAR_POSITIONAL else "**"
            raise AssemblyError(f"forward must name each of its arguments; {star}{name} cannot be resolved by name")
        names.append(name)
    return tuple(names)


def default_quadrature_degree(element: Element, names: tuple[str, ...], point_data_names: set[str]) -> int:
    """The polynomial degree of an integrand, estimated from its arguments.

    Shape values and interpolated point data count the element order p, gradients
    p - 1 on simplices (p on boxes, whose gradients keep degree p in the other
    variables), ``x`` counts 2 (exact for integrands up to quadratic in x; smooth
    sources converge at the element's rate), per-cell and scalar data 0. Boxes add 1
    for their non-affine map. The rule integrating that degree exactly is the default,
    so a P2 mass matrix with a P2 coefficient gets degree 6, never a fixed 2.
    """
    p = element.order
    degree = 0
    for name in names:
        if name in ("u", "v") or name in point_data_names:
            degree += p
        elif name in ("gradu", "gradv") or (name.startswith("grad_") and name[5:] in point_data_names):
            degree += p if element.tensor_product else p - 1
        elif name == "x":
            degree += 2
    if element.tensor_product:
        degree += 1
    return max(degree, 1)


@dataclass
class _Geometry:
    """Mesh-only data at the quadrature points of a set of cells or facets.

    basis (q, k); gradients (m, q, k, dim) or None (facets); coords (m, q, dim);
    weights (m, q) = |det J| * quadrature weight; normals (m, q, dim) or None; conn (m, k).
    """

    basis: Tensor
    gradients: Tensor | None
    coords: Tensor
    weights: Tensor
    normals: Tensor | None
    conn: Tensor


def _cell_geometry(points: Tensor, conn: Tensor, element: Element, degree: int) -> _Geometry:
    xi, w = quadrature(element.shape, degree, dtype=points.dtype, device=points.device)
    nodes = geo.cell_nodes(points, conn)
    jac = geo.jacobians(nodes, element, xi)  # (m, q, d, d)
    det = torch.linalg.det(jac)
    inv = torch.linalg.inv(jac)  # d xi_r / d x_d
    gradients = torch.einsum("qkr,mqrd->mqkd", element.basis_gradients(xi), inv)
    return _Geometry(element.basis(xi), gradients, geo.physical_points(nodes, element, xi), det.abs() * w, None, conn)


def _facet_geometry(
    points: Tensor, facets: Tensor, owners: Tensor, cells: Tensor, facet_type: str, degree: int
) -> _Geometry:
    element = get_element(facet_type)
    xi, w = quadrature(element.shape, degree, dtype=points.dtype, device=points.device)
    nodes = geo.cell_nodes(points, facets)
    jac = geo.jacobians(nodes, element, xi)  # (m, q, d, d-1)
    coords = geo.physical_points(nodes, element, xi)
    if jac.shape[-2] == 2:
        tangent = jac[..., 0]
        normal = torch.stack([tangent[..., 1], -tangent[..., 0]], dim=-1)
    else:
        normal = torch.linalg.cross(jac[..., 0], jac[..., 1], dim=-1)
    normal = normal / normal.norm(dim=-1, keepdim=True)
    # orient away from the owner cell: its centroid lies on the inner side
    centroid = points[cells[owners]].mean(dim=1)  # (m, d)
    outward = ((coords - centroid[:, None, :]) * normal).sum(-1, keepdim=True) >= 0
    normal = torch.where(outward, normal, -normal)
    return _Geometry(element.basis(xi), None, coords, geo.measure_density(jac) * w, normal, facets)


class _Assembler(nn.Module):
    """Shared machinery of the three assemblers: argument resolution, data checks, vmap, scatter."""

    reserved: frozenset[str] = frozenset()
    basis_axes: tuple[str, ...] = ()  # (TEST,) for linear forms, (TEST, TRIAL) for bilinear ones
    # unknowns per node: None for a scalar field, "dim" for one per coordinate, or an int
    components: int | str | None = None

    def __init__(self):
        super().__init__()
        object.__setattr__(self, "_mesh", None)
        object.__setattr__(self, "_quadrature_order", None)
        object.__setattr__(self, "_repeat", None)  # see _repeat_call

    @classmethod
    def from_mesh(cls, mesh: Mesh, quadrature_order: int | None = None, **kwargs):
        """An assembler bound to ``mesh``; ``kwargs`` go to the subclass constructor.

        quadrature_order: the polynomial degree the quadrature integrates exactly;
        by default estimated from the integrand's arguments (:func:`default_quadrature_degree`).
        """
        check_mesh_type(mesh)
        if quadrature_order is not None and (not is_int(quadrature_order) or quadrature_order < 0):
            raise ValueError(f"quadrature_order must be a non-negative int or None, got {quadrature_order!r}")
        components = cls.components
        if components is not None and components != "dim" and (not is_int(components) or components < 1):
            raise AssemblyError(f"{cls.__name__}.components must be None, 'dim' or a positive int, got {components!r}")
        assembler = cls(**kwargs)
        object.__setattr__(assembler, "_mesh", mesh)
        object.__setattr__(assembler, "_quadrature_order", quadrature_order)
        integrand_arguments(cls.forward)  # reject *args / **kwargs early
        return assembler

    @property
    def mesh(self) -> Mesh:
        if self._mesh is None:
            raise RuntimeError(
                f"{type(self).__name__} is not bound to a mesh; create it with {type(self).__name__}.from_mesh(mesh)"
            )
        return self._mesh

    @property
    def n_components(self) -> int | None:
        """Unknowns per node of a vector-valued form (``components`` resolved on the mesh); None for scalar forms."""
        components = type(self).components
        if components is None:
            return None
        return self.mesh.dim if components == "dim" else int(components)

    def _basis_levels(self, components: int | None) -> list[str]:
        """The vmap levels of the basis functions: each basis axis, followed by its component axis for vector forms."""
        if components is None:
            return list(self.basis_axes)
        return [level for axis in self.basis_axes for level in (axis, _COMPONENT_OF[axis])]

    # -- argument resolution ------------------------------------------------------------

    def _degree(self, element: Element, sources: dict[str, dict]) -> int:
        if self._quadrature_order is not None:
            return self._quadrature_order
        return default_quadrature_degree(element, integrand_arguments(type(self).forward), set(sources["point_data"]))

    def _resolve(self, sources: dict[str, dict]) -> tuple[dict, int | None, torch.dtype]:
        """Check the data; return {name: (tensor, kind, batched)} for the data arguments, the batch size, the dtype."""
        mesh = self.mesh
        seen: dict[str, str] = {}
        for kind, data in sources.items():
            for key in data:
                if key in self.reserved:
                    raise AssemblyError(f"{kind} key {key!r} clashes with the reserved argument {key!r}")
                if key in seen:
                    raise AssemblyError(f"key {key!r} appears in both {seen[key]} and {kind}")
                seen[key] = kind
        names = integrand_arguments(type(self).forward)
        resolved: dict[str, tuple[Tensor, str, bool]] = {}
        batch: int | None = None
        dtype = mesh.dtype
        for name in names:
            if name in self.reserved:
                continue
            kind = seen.get(name)
            if kind is None and name.startswith("grad_") and seen.get(name[5:]) == "point_data":
                kind, name = "point_gradient", name[5:]
            if kind is None:
                raise AssemblyError(
                    f"{type(self).__name__}.forward asks for {name!r}, which is neither a reserved argument "
                    f"({', '.join(sorted(self.reserved))}) nor a key of point_data, element_data or scalar_data "
                    f"(given: {sorted(seen) or 'none'})"
                )
            source = "point_data" if kind == "point_gradient" else kind
            value = _check_tensor(f"{source}[{name!r}]", sources[source][name], mesh.device)
            length = {"point_data": mesh.n_points, "element_data": mesh.n_cells, "scalar_data": None}[source]
            value, batched = _split_batch(f"{source}[{name!r}]", value, length)
            if batched is not None:
                if batch is not None and batched != batch:
                    raise AssemblyError(f"{kind}[{name!r}] has batch size {batched} but other data has {batch}")
                batch = batched
            dtype = torch.promote_types(dtype, value.dtype)
            resolved[name if kind != "point_gradient" else "grad_" + name] = (value, kind, batched is not None)
        return resolved, batch, dtype

    def _arguments(self, data: dict, geometry: _Geometry, dtype: torch.dtype, gather) -> dict:
        """Every integrand argument at the quadrature points: {name: (tensor, axes it varies along)}."""
        args = _data_arguments(data, geometry, dtype, gather)
        names = integrand_arguments(type(self).forward)
        reserved = _reserved_arguments(geometry, dtype, self.n_components)
        args.update({name: reserved[name] for name in names if name in self.reserved})
        return args

    def _assemble_chunks(self, sources: dict[str, dict], geometry: _Geometry, gather) -> Iterator[tuple[slice, Tensor]]:
        """Integrand values summed over quadrature points, a block of cells at a time:
        yields (cells, values (B?, len(cells), k[, c], k[, c])).

        ``gather(value, batched)`` maps per-cell data of the mesh to the cells being
        integrated (identity for cells, the owner cells for facets). The blocks keep the
        integrand's temporaries (a few times values' size) small: on a CPU, evaluating a
        million cells at once spends more time faulting in fresh pages than computing.
        """
        data, batch, dtype = self._resolve(sources)
        return self._evaluate_blocks(self._arguments(data, geometry, dtype, gather), batch, dtype, geometry)

    def _evaluate_blocks(
        self, args: dict, batch: int | None, dtype: torch.dtype, geometry: _Geometry
    ) -> Iterator[tuple[slice, Tensor]]:
        """The integrand over ``args`` (see :meth:`_arguments`), integrated cell by cell, in blocks of cells."""
        names = integrand_arguments(type(self).forward)
        components = self.n_components
        basis_levels = self._basis_levels(components)
        levels = ([BATCH] if batch is not None else []) + [CELL, POINT] + basis_levels
        m, q = geometry.weights.shape
        k = geometry.conn.shape[1]
        sizes = {
            BATCH: batch,
            CELL: m,
            POINT: q,
            TEST: k,
            TRIAL: k,
            TEST_COMPONENT: components,
            TRIAL_COMPONENT: components,
        }
        weights = geometry.weights.to(dtype)
        per_cell = math.prod(sizes[level] for level in levels if level != CELL)
        step = max(m, 1) if geometry.weights.device.type != "cpu" else max(CHUNK_EVALUATIONS // per_cell, 1)
        for start in range(0, max(m, 1), step):
            cells = slice(start, min(start + step, m))
            chunk = {name: (_cell_slice(value, axes, cells), axes) for name, (value, axes) in args.items()}
            values = _vmap_integrand(
                self.forward, names, chunk, levels, {**sizes, CELL: cells.stop - cells.start}, weights.device
            )
            expected = (
                ((batch,) if batch is not None else ())
                + (cells.stop - cells.start, q)
                + tuple(sizes[level] for level in basis_levels)
            )
            if tuple(values.shape) != expected:
                per = {
                    0: "quadrature point",
                    1: "quadrature point and basis function",
                    2: "quadrature point and basis pair",
                }
                raise AssemblyError(
                    f"{type(self).__name__}.forward must return one scalar per {per[len(self.basis_axes)]}; "
                    f"the assembled integrand has shape {tuple(values.shape)}, "
                    f"expected {expected} (an extra trailing shape {tuple(values.shape[len(expected) :])} "
                    "means forward "
                    "returned a non-scalar)"
                )
            yield cells, _integrate(values, weights[cells], len(basis_levels))

    # -- results of unchanged data ----------------------------------------------------------

    def _constant_key(self, sources: dict[str, dict]) -> tuple | None:
        """A key naming this call's result when it cannot change between calls: the form's settings
        and the identity and version of every data tensor, none of which may carry a gradient.
        None when the call must be evaluated (gradients wanted, state the key cannot see)."""
        items = []
        for kind, data in sources.items():
            for name, value in data.items():
                if isinstance(value, Tensor):
                    if value.requires_grad and torch.is_grad_enabled():
                        return None
                    items.append((kind, name, id(value), value._version))
                elif is_number(value):
                    items.append((kind, name, float(value)))
                else:
                    return None
        state = self._form_state()
        external = _external_state(type(self).forward) if state is not None else None
        if external is None:
            return None
        return (type(self), state, external, self._quadrature_order, self.n_components, tuple(items))

    def _constant(self, sources: dict[str, dict]) -> tuple[tuple | None, Tensor | None]:
        """(slot, values): the store and key of this call (None when it cannot be stored), and the
        values of an earlier call with the same unchanged data, or None.

        A load vector of a constant source assembled every step of a loop (the chapter's ``b``)
        is then computed twice and looked up from then on: the values come from the affine
        operator (:class:`_AffineForm`), a deterministic function of the data. The store lives on
        the mesh (assemblers built afresh each step share it); see :meth:`_keep_constant`.
        """
        key = self._constant_key(sources)
        mesh_key = None if key is None else _cache_key(self.mesh)
        if mesh_key is None:
            return None, None
        store = _mesh_cache(self.mesh, "constant", mesh_key, dict)
        hit = store.get(key)
        return (store, key), None if hit is None or hit[1] is None else hit[1].clone()

    def _keep_constant(self, slot: tuple | None, sources: dict[str, dict], values: Tensor) -> None:
        """Note the slot's key (from :meth:`_constant`) the first time it is seen and keep a copy of
        ``values`` the second time.

        A key seen once costs nothing but its entry, so calls on fresh tensors (a coefficient
        recomputed every step) never pay for a copy; results above ``CONSTANT_MAX_ENTRIES`` are not
        kept. Entries hold weak references to the data tensors and leave the store when one of
        them is freed, so an id is never reused while its entry lives; an in-place change bumps a
        tensor's version, so the key no longer matches. At most ``CONSTANT_RESULTS`` entries.
        """
        if slot is None:
            return
        store, key = slot
        entry = store.get(key)
        if entry is not None:
            if entry[1] is None and values.numel() <= CONSTANT_MAX_ENTRIES:
                store[key] = (entry[0], values.detach().clone())
            return
        if len(store) >= CONSTANT_RESULTS:
            store.pop(next(iter(store), None), None)  # the oldest entry

        def forget(_reference, store=store, key=key):
            store.pop(key, None)

        tensors = [value for data in sources.values() for value in data.values() if isinstance(value, Tensor)]
        store[key] = ([weakref.ref(tensor, forget) for tensor in tensors], None)

    # -- forms affine in their data ---------------------------------------------------------

    def _form_state(self) -> tuple | None:
        """The plain settings the integrand may read (numbers, strings), or None when the form has
        parameters, buffers, submodules or other state that could change between calls."""
        if self._parameters or self._buffers or self._modules:
            return None
        items = []
        for name, value in vars(self).items():
            if name.startswith("_") or name in ("training", "basis_axes"):
                continue
            if value is not None and not isinstance(value, (bool, int, float, str)):
                return None
            items.append((name, value))
        return tuple(sorted(items))

    def _affine_values(
        self,
        data: dict,
        batch: int | None,
        dtype: torch.dtype,
        geometry: _Geometry,
        degree: int,
        index: Tensor,
        size: int,
        pattern: SparsityPattern | None = None,
    ) -> Tensor | None:
        """The assembled values (B?, size) through the form's affine operator (:class:`_AffineForm`),
        or None when the form is not affine in its data or the operator does not apply.

        The operator is built on the first call with a data layout (names, kinds, shapes), once per
        mesh, form settings, quadrature degree and dtype, and cached on the mesh; the form's
        affinity is probed then, and a form found non-affine is evaluated as written from then on.
        ``index`` maps each local entry (m * entries per cell,) to its global slot in [0, size);
        ``pattern``: the matrix's pattern (bilinear forms), kept for :meth:`_repeat_call`.
        """
        mesh = self.mesh
        state = self._form_state()
        mesh_key = _cache_key(mesh)
        if state is None or mesh_key is None or any(kind == "point_gradient" for _, kind, _ in data.values()):
            return None
        external = _external_state(type(self).forward)
        if external is None:
            return None
        layout = tuple(
            (name, kind, _field_shape(value, kind, batched)) for name, (value, kind, batched) in data.items()
        )
        key = (type(self), state, external, degree, self.n_components, dtype, layout, size)
        forms = _mesh_cache(mesh, "affine", mesh_key, dict)
        if key not in forms:
            forms[key] = _AffineForm.build(self, layout, geometry, dtype, index, size)
        form = forms[key]
        if form is None:
            return None
        self._remember_call(data, mesh_key, state, external, form, index.numel(), pattern)
        return form(data, batch)

    # -- a call shaped like the previous one ---------------------------------------------

    def _remember_call(
        self,
        data: dict,
        mesh_key: tuple,
        state: tuple,
        external: tuple,
        form: _AffineForm,
        work: int,
        pattern: SparsityPattern | None,
    ) -> None:
        """Keep what :meth:`_repeat_call` needs to recognise the next call with this call's structure.

        Only calls with data that requires grad are kept (the unchanged-data store serves the
        others): the steps of a design loop, whose coefficient is new every step.
        """
        if not torch.is_grad_enabled() or not any(value.requires_grad for value, _, _ in data.values()):
            return
        fields = tuple(
            (kind, name, tuple(value.shape), value.dtype, value.device, batched)
            for name, (value, kind, batched) in data.items()  # kind: the source dict (no point gradients here)
        )
        batch = next((value.shape[0] for value, _, batched in data.values() if batched), None)
        repeat = (mesh_key, state, external, self._quadrature_order, fields, batch, form, work, pattern)
        object.__setattr__(self, "_repeat", repeat)

    def _repeat_call(self, point_data, element_data, scalar_data) -> tuple[Tensor, SparsityPattern | None] | None:
        """(values (B?, size), the matrix's pattern or None) of a call with the structure of the last
        one kept by :meth:`_remember_call`, through the same affine operator; None for any other call.

        A design loop calls an assembler every step with new data of the same structure. Such a
        call skips re-deriving what cannot have changed (the pattern, the geometry, the quadrature
        degree, the operator's key: lookups that run with cold caches inside a loop; the chapter's
        stiffness call went from 0.20 to 0.16 ms), while everything that could change the result is
        checked as on the full path: the mesh (identity, version and shape of its points and cells),
        the form's settings, the module-level state the integrand reads, the grad mode, and every
        data tensor (the same keys, shapes, dtypes and devices, finite values, one requiring grad).
        """
        repeat = self._repeat
        if repeat is None or not torch.is_grad_enabled():
            return None
        mesh_key, state, external, quadrature_order, fields, batch, form, work, pattern = repeat
        sources = {"point_data": point_data, "element_data": element_data, "scalar_data": scalar_data}
        given = sum(len(data) for data in sources.values() if isinstance(data, Mapping))
        if given != len(fields):
            return None
        data, requires_grad = {}, False
        for source, name, shape, dtype, device, batched in fields:
            value = sources[source].get(name) if isinstance(sources[source], Mapping) else None
            if not isinstance(value, Tensor) or value.shape != shape or value.dtype != dtype or value.device != device:
                return None
            requires_grad = requires_grad or value.requires_grad
            data[name] = (value, source, batched)
        if not requires_grad or self._quadrature_order != quadrature_order or _cache_key(self.mesh) != mesh_key:
            return None
        if self._form_state() != state or _external_state(type(self).forward) != external:
            return None
        for name, (value, source, _) in data.items():
            if not all_finite(value):
                raise AssemblyError(f"{source}[{name!r}] contains NaN or inf")
        with threads_for(work):
            return form(data, batch), pattern

    def _assemble(self, sources: dict[str, dict], geometry: _Geometry, gather) -> Tensor:
        """Integrand values summed over quadrature points for every cell: (B?, m, k[, c], k[, c])."""
        blocks = [values for _, values in self._assemble_chunks(sources, geometry, gather)]
        batched = blocks[0].ndim > 1 + len(self._basis_levels(self.n_components))
        return blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=1 if batched else 0)

    def extra_repr(self) -> str:
        bound = f"mesh={self._mesh.cell_type}:{self._mesh.n_cells}" if self._mesh is not None else "unbound"
        vector = f", components={type(self).components!r}" if type(self).components is not None else ""
        return f"{bound}, arguments={integrand_arguments(type(self).forward)}{vector}"


def _data_arguments(
    data: dict, geometry: _Geometry, dtype: torch.dtype, gather
) -> dict[str, tuple[Tensor, tuple[str, ...]]]:
    """Each data argument at the quadrature points, with the axes it varies along."""
    basis = geometry.basis.to(dtype)
    args = {}
    for name, (value, kind, batched) in data.items():
        lead = (BATCH,) if batched else ()
        if kind in ("point_data", "point_gradient"):
            gathered = (value[:, geometry.conn] if batched else value[geometry.conn]).to(dtype)  # (B?, m, k, *F)
        if kind == "point_data":
            flat = gathered.reshape(*gathered.shape[: 3 if batched else 2], -1)
            interpolated = torch.einsum("qk,...mkf->...mqf", basis, flat)
            args[name] = (
                interpolated.reshape(*interpolated.shape[:-1], *gathered.shape[(3 if batched else 2) :]),
                lead + (CELL, POINT),
            )
        elif kind == "point_gradient":
            if geometry.gradients is None:
                raise AssemblyError(f"{name!r}: gradients of point data are not available on facets")
            if value.ndim == (2 if batched else 1):  # a scalar field: gradient (dim,)
                args[name] = (
                    torch.einsum("mqkd,...mk->...mqd", geometry.gradients.to(dtype), gathered),
                    lead + (CELL, POINT),
                )
            else:  # a field with values of shape F: gradient (*F, dim), e.g. (c, dim) for a displacement
                field_shape = gathered.shape[(3 if batched else 2) :]
                flat = gathered.reshape(*gathered.shape[: 3 if batched else 2], -1)
                grad = torch.einsum("mqkd,...mkf->...mqfd", geometry.gradients.to(dtype), flat)
                args[name] = (grad.reshape(*grad.shape[:-2], *field_shape, grad.shape[-1]), lead + (CELL, POINT))
        elif kind == "element_data":
            args[name] = (gather(value, batched).to(dtype), lead + (CELL,))
        else:
            args[name] = (value.to(dtype), lead)
    return args


def _reserved_arguments(
    geometry: _Geometry, dtype: torch.dtype, components: int | None = None
) -> dict[str, tuple[Tensor, tuple[str, ...]]]:
    """The reserved arguments this geometry provides, with the axes each varies along.

    For a vector form with c components the basis function (a, i) is N_a e_i: its value
    (q, k, c, c) varies along (point, node, component) and holds a (c,) vector, its
    gradient (m, q, k, c, c, dim) a (c, dim) matrix, row i the gradient of N_a.
    """
    basis = geometry.basis.to(dtype)
    coords = (geometry.coords.to(dtype), (CELL, POINT))
    if components is None:
        reserved = {"u": (basis, (POINT, TRIAL)), "v": (basis, (POINT, TEST)), "x": coords}
        if geometry.gradients is not None:
            reserved["gradu"] = (geometry.gradients.to(dtype), (CELL, POINT, TRIAL))
            reserved["gradv"] = (geometry.gradients.to(dtype), (CELL, POINT, TEST))
    else:
        eye = torch.eye(components, dtype=dtype, device=basis.device)
        values = basis[:, :, None, None] * eye  # (q, k, c, c): [q, a, i] = N_a e_i
        reserved = {
            "u": (values, (POINT, TRIAL, TRIAL_COMPONENT)),
            "v": (values, (POINT, TEST, TEST_COMPONENT)),
            "x": coords,
        }
        if geometry.gradients is not None:
            # [m, q, a, i, r, s] = delta_ir dN_a/dx_s
            gradients = eye[:, :, None] * geometry.gradients.to(dtype)[:, :, :, None, None, :]
            reserved["gradu"] = (gradients, (CELL, POINT, TRIAL, TRIAL_COMPONENT))
            reserved["gradv"] = (gradients, (CELL, POINT, TEST, TEST_COMPONENT))
    if geometry.normals is not None:
        reserved["n"] = (geometry.normals.to(dtype), (CELL, POINT))
    return reserved


def _sources(point_data, element_data, scalar_data) -> dict[str, dict]:
    """The three data dicts, checked to be mappings (None is empty)."""
    sources = {"point_data": point_data, "element_data": element_data, "scalar_data": scalar_data}
    for kind, data in sources.items():
        if data is not None and not isinstance(data, Mapping):
            raise TypeError(f"{kind} must be a dict {{name: tensor}}, got {type(data).__name__}")
        sources[kind] = dict(data or {})
    return sources


def _integrate(values: Tensor, weights: Tensor, n_basis_axes: int) -> Tensor:
    """Sum values (B?, m, q, *basis) times weights (m, q) over q -> (B?, m, *basis), in one contraction."""
    basis_shape = values.shape[values.ndim - n_basis_axes :]
    flat = values.reshape(*values.shape[: values.ndim - n_basis_axes], -1)
    out = torch.einsum("...mqk,mq->...mk", flat, weights)
    return out.reshape(*out.shape[:-1], *basis_shape)


def _check_tensor(label: str, value: Any, device: torch.device) -> Tensor:
    if is_number(value):
        value = torch.tensor(float(value), dtype=torch.float64, device=device)
    if not isinstance(value, Tensor):
        raise TypeError(f"{label} must be a torch.Tensor or a float, got {type(value).__name__}")
    if value.dtype.is_complex:
        raise AssemblyError(f"{label} is complex ({value.dtype}); tmcore assembles real forms only")
    if not value.is_floating_point():
        raise AssemblyError(f"{label} must be a floating-point tensor, got {value.dtype} (convert with .double())")
    if value.device != device:
        raise AssemblyError(f"{label} is on {value.device} but the mesh is on {device}; move one with .to()")
    if not all_finite(value):
        raise AssemblyError(f"{label} contains NaN or inf")
    return value


def _split_batch(label: str, value: Tensor, length: int | None) -> tuple[Tensor, int | None]:
    """(value, batch size or None). Per-node/cell data: (length, *F) or (B, length, *F); scalars: () or (B,)."""
    if length is None:
        if value.ndim == 0:
            return value, None
        if value.ndim == 1:
            return value, value.shape[0]
        raise AssemblyError(f"{label} must be a float, a 0-d tensor or a (B,) batch, got shape {tuple(value.shape)}")
    if value.ndim >= 1 and value.shape[0] == length:
        return value, None
    if value.ndim >= 2 and value.shape[1] == length:
        return value, value.shape[0]
    raise AssemblyError(
        f"{label} must have one value per {'node' if 'point' in label else 'cell'} ({length}), "
        f"as shape ({length},) or (B, {length}); got shape {tuple(value.shape)}"
    )


def _cell_slice(value: Tensor, axes: tuple[str, ...], cells: slice) -> Tensor:
    """The part of an argument varying along ``axes`` that belongs to ``cells``."""
    if CELL not in axes:
        return value
    return value.narrow(axes.index(CELL), cells.start, cells.stop - cells.start)


def _vmap_integrand(
    forward: Callable,
    names: tuple[str, ...],
    args: dict,
    levels: list[str],
    sizes: dict[str, int],
    device: torch.device,
) -> Tensor:
    """Evaluate ``forward`` over every combination of the axes in ``levels`` with nested vmaps.

    An empty carrier tensor spans every level, so an integrand that ignores some axis
    (a mass matrix with constant data ignores the cells) still comes back with it.
    """
    carrier = torch.empty(*(sizes[level] for level in levels), 0, device=device)
    tensors = [args[name][0] for name in names] + [carrier]
    axes = [args[name][1] for name in names] + [tuple(levels)]

    def call(*values):
        out = forward(**dict(zip(names, values[:-1])))
        if not isinstance(out, Tensor):
            raise AssemblyError(f"forward must return a tensor, got {type(out).__name__}")
        return out

    fn = call
    for level in reversed(levels):
        fn = torch.vmap(fn, in_dims=tuple(0 if level in ax else None for ax in axes))
    return fn(*tensors)


@lru_cache(maxsize=None)
def _referenced_globals(forward: Callable) -> tuple[str, ...]:
    """Global names the integrand's code reads (the names it uses that its module defines)."""
    code = getattr(forward, "__code__", None)
    module_globals = getattr(forward, "__globals__", {})
    return tuple(name for name in code.co_names if name in module_globals) if code is not None else ()


def _external_state(forward: Callable) -> tuple | None:
    """The values of the module-level variables and closure cells the integrand reads, as a
    cache key: numbers and strings by value, tensors by identity and version; modules,
    functions and classes are code, not state. None when some other object, or a tensor that
    requires grad, is read (then the form is always evaluated as written)."""
    module_globals = getattr(forward, "__globals__", {})
    cells = [cell.cell_contents for cell in (getattr(forward, "__closure__", None) or ())]
    state = []
    for value in [module_globals[name] for name in _referenced_globals(forward)] + cells:
        if inspect.ismodule(value) or inspect.isroutine(value) or inspect.isclass(value):
            continue
        if value is None or isinstance(value, (bool, int, float, str)):
            state.append(value)
        elif isinstance(value, Tensor):
            if value.requires_grad:  # the gradient must reach it: evaluate the integrand as written
                return None
            state.append((id(value), value.data_ptr(), value._version, tuple(value.shape)))
        else:
            return None
    return tuple(state)


def _field_shape(value: Tensor, kind: str, batched: bool) -> tuple[int, ...]:
    """The per-node / per-cell shape F of a data field (n, *F), (m, *F) or () for scalars."""
    if kind == "scalar_data":
        return ()
    return tuple(value.shape[2:] if batched else value.shape[1:])


class _AffineForm:
    """Assembly of a form affine in its data as constant + sum_k A_k d_k.

    Most forms are a coefficient times a fixed bilinear expression of the basis functions
    (kappa grad u . grad v, E a(u, v), f v): their assembled values are an affine function of
    the data. For those, the map from each data field d_k (nodal values, cell values or a
    number, flattened) to the values is a fixed sparse matrix A_k, built here once by
    evaluating the integrand with unit data at each quadrature point; a call is then one
    sparse product per field, and its backward one transposed product, instead of
    evaluating the integrand at every quadrature point.
    """

    def __init__(self, constant: Tensor, maps: dict, sizes: dict):
        self.constant = constant  # (size,)
        self.maps = maps  # name -> SparseLinearMap (size, n_in)
        self.sizes = sizes  # name -> n_in
        # most forms are linear, not just affine (kappa grad u . grad v): no constant term to add
        self.linear = bool(maps) and not bool(constant.any())

    def __call__(self, data: dict, batch: int | None) -> Tensor:
        values = None if self.linear else self.constant if batch is None else self.constant.expand(batch, -1)
        for name, linear_map in self.maps.items():
            value, _, batched = data[name]
            flat = value.reshape(batch, -1) if batched else value.reshape(-1)
            if batch is not None and not batched:
                flat = flat.expand(batch, -1)
            product = linear_map(flat.to(self.constant.dtype))
            values = product if values is None else values + product
        return values if self.maps else values.clone()

    @staticmethod
    def build(
        assembler: _Assembler, layout: tuple, geometry: _Geometry, dtype: torch.dtype, index: Tensor, size: int
    ) -> _AffineForm | None:
        """The operator of ``assembler`` for data of ``layout``, or None when the form is not
        affine in that data (probed with random data) or the operator would be too large."""
        mesh = assembler.mesh
        device = geometry.weights.device
        m, n_quad = geometry.weights.shape
        k = geometry.conn.shape[1]
        per_cell = index.numel() // max(m, 1)
        entries = 0
        for _, kind, shape in layout:
            width = math.prod(shape)
            entries += per_cell * width * (k if kind == "point_data" else 1) * max(m, 1)
        if entries > AFFINE_MAX_ENTRIES:
            return None
        full = {"point_data": mesh.n_points, "element_data": m}

        def fields(fill) -> dict:
            return {
                name: (fill((full[kind], *shape) if kind in full else shape), kind, False)
                for name, kind, shape in layout
            }

        def local(args: dict) -> Tensor:
            blocks = assembler._evaluate_blocks(args, None, dtype, geometry)
            return torch.cat([values.reshape(-1) for _, values in blocks])

        def evaluate(data: dict) -> Tensor:
            return local(assembler._arguments(data, geometry, dtype, _identity))

        generator = torch.Generator().manual_seed(0)

        def random(shape):
            return torch.randn(shape, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)

        def zeros(shape):
            return torch.zeros(shape, dtype=dtype, device=device)

        with torch.no_grad():
            zero = fields(zeros)
            f0 = evaluate(zero)
            if layout:
                x, y = fields(random), fields(random)
                fx, fy = evaluate(x), evaluate(y)
                both = {name: (x[name][0] + y[name][0], kind, False) for name, (_, kind, _) in x.items()}
                twice = {name: (2 * x[name][0], kind, False) for name, (_, kind, _) in x.items()}
                fxy, f2x = evaluate(both), evaluate(twice)
                probes = torch.stack([f0, fx, fy, fxy, f2x])
                if not bool(torch.isfinite(probes).all()):
                    return None
                scale = float(probes.abs().max()) if probes.numel() else 0.0
                tolerance = 1e-9 * max(scale, torch.finfo(dtype).tiny)
                additive = (fxy + f0 - fx - fy).abs()
                homogeneous = (f2x + f0 - 2 * fx).abs()
                if probes.numel() and (float(additive.max()) > tolerance or float(homogeneous.max()) > tolerance):
                    return None
            constant = f0.new_zeros(size).index_add(0, index, f0)
            maps, sizes = {}, {}
            base = assembler._arguments(zero, geometry, dtype, _identity)
            rows_local = index.reshape(m, per_cell)
            cells = torch.arange(m, device=device)
            for name, kind, shape in layout:
                width = math.prod(shape)
                rows, cols, values = [], [], []
                for component in range(width):
                    points = range(n_quad) if kind == "point_data" else (None,)
                    for q in points:
                        unit = torch.zeros(width, dtype=dtype, device=device)
                        unit[component] = 1.0
                        if kind == "point_data":
                            at = torch.zeros(m, n_quad, width, dtype=dtype, device=device)
                            at[:, q] = unit
                            arg = (at.reshape(m, n_quad, *shape), (CELL, POINT))
                        elif kind == "element_data":
                            arg = (unit.expand(m, width).reshape(m, *shape), (CELL,))
                        else:
                            arg = (unit.reshape(shape), ())
                        response = (local({**base, name: arg}) - f0).reshape(m, per_cell)
                        if kind == "point_data":  # d_q = sum_c N_c(x_q) d_c: spread over the cell's nodes
                            weights = geometry.basis[q].to(dtype)  # (k,)
                            rows.append(rows_local[:, :, None].expand(m, per_cell, k).reshape(-1))
                            cols.append(
                                (geometry.conn[:, None, :].expand(m, per_cell, k) * width + component).reshape(-1)
                            )
                            values.append((response[:, :, None] * weights).reshape(-1))
                        elif kind == "element_data":
                            rows.append(rows_local.reshape(-1))
                            cols.append((cells[:, None].expand(m, per_cell) * width + component).reshape(-1))
                            values.append(response.reshape(-1))
                        else:
                            rows.append(rows_local.reshape(-1))
                            cols.append(torch.full((m * per_cell,), component, dtype=torch.long, device=device))
                            values.append(response.reshape(-1))
                n_in = full.get(kind, 1) * width
                maps[name] = SparseLinearMap(
                    torch.cat(rows).to(torch.long), torch.cat(cols).to(torch.long), torch.cat(values), (size, n_in)
                )
                sizes[name] = n_in
        return _AffineForm(constant, maps, sizes)


class ElementAssembler(_Assembler):
    """Bilinear form sum_cells int forward(u, v, gradu, gradv, x, data...) dx -> SparseMatrix (n, n).

    Subclass and write ``forward``; build with ``from_mesh(mesh)``; call with
    ``point_data=`` / ``element_data=`` / ``scalar_data=`` dicts.
    """

    reserved = frozenset({"u", "v", "gradu", "gradv", "x"})
    basis_axes = (TEST, TRIAL)

    def __call__(self, point_data=None, element_data=None, scalar_data=None) -> SparseMatrix:
        repeat = self._repeat_call(point_data, element_data, scalar_data)
        if repeat is not None:
            return SparseMatrix.from_pattern(repeat[1], repeat[0])
        mesh, sources = self.mesh, _sources(point_data, element_data, scalar_data)
        components = self.n_components
        pattern, slots = _cached_pattern(mesh, components)
        slot, values = self._constant(sources)
        if values is not None:
            return SparseMatrix.from_pattern(pattern, values)
        degree = self._degree(mesh.element, sources)
        geometry = _cached_cell_geometry(mesh, degree)
        data, batch, dtype = self._resolve(sources)
        with threads_for(slots.numel()):
            values = self._affine_values(data, batch, dtype, geometry, degree, slots, pattern.nnz, pattern)
            if values is not None:
                self._keep_constant(slot, sources, values)
            else:
                blocks = self._evaluate_blocks(
                    self._arguments(data, geometry, dtype, _identity), batch, dtype, geometry
                )
                per_cell = (geometry.conn.shape[1] * (components or 1)) ** 2
                values = _sum_blocks(
                    blocks, len(self._basis_levels(components)), pattern.nnz, _slices_of(slots, per_cell)
                )
        return SparseMatrix.from_pattern(pattern, values)

    def local(self, point_data=None, element_data=None, scalar_data=None) -> Tensor:
        """The element matrices (B?, m, K, K) before summation, K = k (scalar) or k c (vector,
        in the order of :func:`dof_connectivity`). With :meth:`scatter` this lets a caller
        reuse element matrices, e.g. scale unit-modulus ones by a per-cell SIMP modulus."""
        mesh, sources = self.mesh, _sources(point_data, element_data, scalar_data)
        geometry = _cached_cell_geometry(mesh, self._degree(mesh.element, sources))
        local = self._assemble(sources, geometry, _identity)
        lead = local.shape[: local.ndim - 1 - len(self._basis_levels(self.n_components))]
        size = geometry.conn.shape[1] * (self.n_components or 1)
        return local.reshape(*lead, mesh.n_cells, size, size)

    def scatter(self, local: Tensor) -> SparseMatrix:
        """The global SparseMatrix of element matrices ``local`` (B?, m, K, K) (see :meth:`local`)."""
        mesh = self.mesh
        pattern, slots = _cached_pattern(mesh, self.n_components)
        size = mesh.elements.shape[1] * (self.n_components or 1)
        if (
            not isinstance(local, Tensor)
            or local.ndim not in (3, 4)
            or tuple(local.shape[-3:]) != (mesh.n_cells, size, size)
        ):
            got = tuple(local.shape) if isinstance(local, Tensor) else type(local).__name__
            raise AssemblyError(
                f"local must have shape (m, K, K) or (B, m, K, K) with m={mesh.n_cells}, K={size}; got {got}"
            )
        values = _sum_blocks([(slice(0, mesh.n_cells), local)], 2, pattern.nnz, lambda cells: slots)
        return SparseMatrix.from_pattern(pattern, values)


class NodeAssembler(_Assembler):
    """Linear form sum_cells int forward(v, gradv, x, data...) dx -> vector (n,) or (B, n).

    With ``components`` set: (n * c,) or (B, n * c), node-major.
    """

    reserved = frozenset({"v", "gradv", "x"})
    basis_axes = (TEST,)

    def __call__(self, point_data=None, element_data=None, scalar_data=None) -> Tensor:
        repeat = self._repeat_call(point_data, element_data, scalar_data)
        if repeat is not None:
            return repeat[0]
        mesh, sources = self.mesh, _sources(point_data, element_data, scalar_data)
        slot, values = self._constant(sources)
        if values is not None:
            return values
        degree = self._degree(mesh.element, sources)
        geometry = _cached_cell_geometry(mesh, degree)
        components = self.n_components
        dofs = geometry.conn if components is None else dof_connectivity(geometry.conn, components)
        size = mesh.n_points * (components or 1)
        data, batch, dtype = self._resolve(sources)
        with threads_for(dofs.numel()):
            values = self._affine_values(data, batch, dtype, geometry, degree, dofs.reshape(-1), size)
            if values is not None:
                self._keep_constant(slot, sources, values)
            else:
                blocks = self._evaluate_blocks(
                    self._arguments(data, geometry, dtype, _identity), batch, dtype, geometry
                )
                values = _sum_blocks(blocks, len(self._basis_levels(components)), size, lambda cells: dofs[cells])
        return values


def _sum_blocks(blocks, per_cell_dims: int, size: int, index_of: Callable[[slice], Tensor]) -> Tensor:
    """Sum blocks of local values into a global (B?, size) tensor.

    blocks: (cells, local) pairs, local (B?, len(cells), *per-cell shape) with
    ``per_cell_dims`` trailing per-cell axes; ``index_of(cells)`` gives the global index
    of each of their entries, in the same order (any shape with as many elements).
    """
    total = None
    for cells, local in blocks:
        flat = local.reshape(*local.shape[: local.ndim - 1 - per_cell_dims], -1)
        if total is None:
            total = flat.new_zeros(*flat.shape[:-1], size)
        total.index_add_(-1, index_of(cells).reshape(-1), flat)
    return total


def _slices_of(index: Tensor, per_cell: int) -> Callable[[slice], Tensor]:
    """``index_of`` for a flat index (m * per_cell,) laid out cell by cell (a pattern's slots)."""
    return lambda cells: index[cells.start * per_cell : cells.stop * per_cell]


def dof_connectivity(conn: Tensor, components: int) -> Tensor:
    """Dofs (m, k * c) of cells (m, k) for c components per node, node-major: entry a * c + i is dof
    conn[:, a] * c + i."""
    check_count("components", components)
    offsets = torch.arange(components, dtype=conn.dtype, device=conn.device)
    return (conn[..., None] * components + offsets).reshape(*conn.shape[:-1], conn.shape[-1] * components)


def dof_mask(node_mask: Tensor, components: int, which: int | Sequence[int] | None = None) -> Tensor:
    """Per-dof Dirichlet mask (n * c,) from a node mask (n,), node-major (dof a * c + i).

    which: the components to fix at the masked nodes (an int or a sequence), by default
    all of them: ``dof_mask(mesh.nodes_of("left"), 2, which=0)`` fixes u_x on the left
    edge only. Pass the result to :class:`~tmcore.core.condense.Condenser`.
    """
    if not isinstance(node_mask, Tensor) or node_mask.dtype != torch.bool or node_mask.ndim != 1:
        got = (
            f"dtype {node_mask.dtype} and shape {tuple(node_mask.shape)}"
            if isinstance(node_mask, Tensor)
            else type(node_mask).__name__
        )
        raise ValueError(f"node_mask must be an (n,) bool tensor, got {got}")
    check_count("components", components)
    chosen = list(range(components)) if which is None else ([which] if isinstance(which, int) else list(which))
    if not chosen or any(not is_int(i) or not 0 <= i < components for i in chosen):
        raise ValueError(f"which must name components in [0, {components}), got {which!r}")
    per_component = torch.zeros(components, dtype=torch.bool, device=node_mask.device)
    per_component[chosen] = True
    return (node_mask[:, None] & per_component).reshape(-1)


def _identity(value: Tensor, batched: bool) -> Tensor:
    return value


class FacetAssembler(_Assembler):
    """Boundary integrals: sum_facets int forward(u?, v, x, n, data...) ds.

    With ``u`` among its arguments the form is bilinear and assembles into a
    SparseMatrix on the mesh's own pattern (so it adds to an ElementAssembler's
    matrix: Robin terms); otherwise it assembles a vector (Neumann flux, traction).
    ``element_data`` is per cell of the mesh and taken from each facet's owner cell.

    Facets (``from_mesh(mesh, facets=...)``):
        None: every boundary facet; a str: a named facet set (``mesh.facet_sets``,
        e.g. "left", or a gmsh physical group); an (n,) bool node mask: the boundary
        facets whose nodes are all in it; a callable: boundary facets whose centroid
        (nf, dim) it maps to True; an (nf, kf) long tensor: those facets.
    """

    reserved = frozenset({"u", "v", "x", "n"})

    @classmethod
    def from_mesh(cls, mesh: Mesh, quadrature_order: int | None = None, facets=None, **kwargs):
        assembler = super().from_mesh(mesh, quadrature_order, **kwargs)
        object.__setattr__(assembler, "_facet_selector", facets)
        bilinear = "u" in integrand_arguments(cls.forward)
        object.__setattr__(assembler, "basis_axes", (TEST, TRIAL) if bilinear else (TEST,))
        return assembler

    def selected_facets(self) -> tuple[Tensor, Tensor, str]:
        """(facets (nf, kf), owner cells (nf,), facet type) of the selection."""
        from tmcore.core.mesh.topology import facet_owners

        mesh = self.mesh
        boundary = mesh.boundary
        selector = self._facet_selector
        if selector is None:
            return boundary.facets, boundary.owners, boundary.facet_type
        if isinstance(selector, str):
            facets = mesh.facet_set(selector)
            return facets, facet_owners(mesh.elements, mesh.cell_type, facets), boundary.facet_type
        if callable(selector):
            centroid = mesh.points[boundary.facets].mean(dim=1)
            keep = torch.as_tensor(selector(centroid), device=mesh.device)
            if keep.dtype != torch.bool or keep.shape != (boundary.facets.shape[0],):
                raise ValueError(
                    f"the facet predicate must return an ({boundary.facets.shape[0]},) bool tensor, got "
                    f"{keep.dtype} {tuple(keep.shape)}"
                )
            return boundary.facets[keep], boundary.owners[keep], boundary.facet_type
        if isinstance(selector, Tensor) and selector.dtype == torch.bool:
            if selector.shape != (mesh.n_points,):
                raise ValueError(f"a facet mask must have shape ({mesh.n_points},), got {tuple(selector.shape)}")
            keep = selector[boundary.facets].all(dim=1)
            return boundary.facets[keep], boundary.owners[keep], boundary.facet_type
        if isinstance(selector, Tensor) and not selector.is_floating_point():
            facets = selector.to(torch.long)
            if facets.ndim != 2 or facets.shape[1] != boundary.facets.shape[1]:
                raise ValueError(f"facets must have shape (nf, {boundary.facets.shape[1]}), got {tuple(facets.shape)}")
            return facets, facet_owners(mesh.elements, mesh.cell_type, facets), boundary.facet_type
        raise TypeError(
            "facets must be None, a name, a bool node mask, a predicate or an index tensor, got "
            f"{type(selector).__name__}"
        )

    def __call__(self, point_data=None, element_data=None, scalar_data=None):
        mesh, sources = self.mesh, _sources(point_data, element_data, scalar_data)
        facets, owners, facet_type = self.selected_facets()
        degree = self._degree(get_element(facet_type), sources)
        geometry = _facet_geometry(mesh.points, facets, owners, mesh.elements, facet_type, degree)

        def gather(value: Tensor, batched: bool) -> Tensor:
            return value[:, owners] if batched else value[owners]

        components = self.n_components
        blocks = self._assemble_chunks(sources, geometry, gather)
        per_cell_dims = len(self._basis_levels(components))
        dofs = facets if components is None else dof_connectivity(facets, components)
        if len(self.basis_axes) == 1:
            return _sum_blocks(blocks, per_cell_dims, mesh.n_points * (components or 1), lambda cells: dofs[cells])
        pattern, _ = _cached_pattern(mesh, components)
        k = dofs.shape[1]
        rows = dofs[:, :, None].expand(-1, k, k).reshape(-1)
        cols = dofs[:, None, :].expand(-1, k, k).reshape(-1)
        values = _sum_blocks(blocks, per_cell_dims, pattern.nnz, _slices_of(pattern.slots(rows, cols), k * k))
        return SparseMatrix.from_pattern(pattern, values)


class Functional(_Assembler):
    """An integral sum_cells int forward(x, data..., grad_<key>...) dx -> 0-d tensor (or (B,)).

    For error norms, regularisers and objectives: ``forward`` returns one scalar per
    quadrature point. ``per_cell=True`` in the call returns the (B?, m) cell integrals.
    """

    reserved = frozenset({"x"})
    basis_axes = ()

    def __call__(self, point_data=None, element_data=None, scalar_data=None, per_cell: bool = False) -> Tensor:
        mesh, sources = self.mesh, _sources(point_data, element_data, scalar_data)
        geometry = _cached_cell_geometry(mesh, self._degree(mesh.element, sources))
        cells = self._assemble(sources, geometry, _identity)
        return cells if per_cell else cells.sum(-1)


class VectorElementAssembler(ElementAssembler):
    """Bilinear form of a vector field with one component per coordinate -> SparseMatrix (n dim, n dim).

    ``u``, ``v`` are (dim,), ``gradu``, ``gradv`` (dim, dim) with ``gradu[i, j] = du_i/dx_j``;
    dofs node-major (see the module docstring).
    """

    components = "dim"


class VectorNodeAssembler(NodeAssembler):
    """Linear form of a vector field (body force, ``v @ f``) -> vector (n dim,), node-major."""

    components = "dim"


class VectorFacetAssembler(FacetAssembler):
    """Boundary integrals of a vector field (traction, ``v @ t``) -> (n dim,) or SparseMatrix (n dim, n dim)."""

    components = "dim"


# -- mesh-only caches -------------------------------------------------------------------------


def _cache_key(mesh: Mesh, *extra) -> tuple | None:
    """Key of mesh-derived data; None when the points carry gradients (then nothing is cached)."""
    points, conn = mesh.points, mesh.elements
    if points.requires_grad:
        return None
    return (
        points.data_ptr(),
        points._version,
        points.shape,
        points.dtype,
        points.device,
        conn.data_ptr(),
        conn._version,
        conn.shape,
    ) + extra


def _mesh_cache(mesh: Mesh, name: str, key: tuple | None, compute):
    if key is None:
        return compute()
    store = mesh.__dict__.setdefault("_assembly_cache", {})
    hit = store.get(name)
    if hit is None or hit[0] != key:
        hit = (key, compute())
        store[name] = hit
    return hit[1]


def _cached_cell_geometry(mesh: Mesh, degree: int) -> _Geometry:
    return _mesh_cache(
        mesh,
        f"cells/{degree}",
        _cache_key(mesh, degree),
        lambda: _cell_geometry(mesh.points, mesh.elements, mesh.element, degree),
    )


def share_patterns(source: Mesh, target: Mesh) -> None:
    """Let ``target``, a mesh on the same connectivity tensor as ``source`` (other points),
    reuse the sparsity patterns ``source`` has built (a shape study makes one mesh per shape)."""
    if source.elements.data_ptr() != target.elements.data_ptr() or source.elements.shape != target.elements.shape:
        raise ValueError("share_patterns needs two meshes on the same connectivity tensor")
    _cached_pattern(source)
    store = target.__dict__.setdefault("_assembly_cache", {})
    for name, hit in source.__dict__.get("_assembly_cache", {}).items():
        if name.startswith("pattern"):
            store.setdefault(name, hit)


def _cached_pattern(mesh: Mesh, components: int | None = None) -> tuple[SparsityPattern, Tensor]:
    """The (n, n) pattern of the mesh's cells and the slot (m * k * k,) of each local entry;
    with c components the (n c, n c) pattern and the slots (m * (k c)^2,) in node-major dof order."""

    def compute():
        conn = mesh.elements
        size = mesh.n_points
        if components is not None:
            conn, size = dof_connectivity(conn, components), size * components
        conn = conn.to(torch.long)
        keys = (conn[:, :, None] * size + conn[:, None, :]).reshape(-1)  # row-major (m, k, k)
        return SparsityPattern.from_keys(keys, (size, size))

    conn = mesh.elements
    name = "pattern" if components is None else f"pattern/{components}"
    return _mesh_cache(mesh, name, (conn.data_ptr(), conn._version, conn.device, mesh.n_points), compute)
