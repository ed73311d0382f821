"""Mesh I/O through meshio: conversion, round trips, broken files, atomic writes."""

import os

import meshio
import numpy as np
import pytest
import torch

from tmcore.core.errors import MeshError
from tmcore.core.mesh import Mesh
from tmcore.core.mesh.generate import box, grid, rectangle
from tmcore.core.mesh.io import mesh_from_meshio, mesh_to_meshio, read_mesh, write_mesh

MESHES = {
    "triangle6": lambda: rectangle(0.3, order=2),
    "tetra": lambda: box(0.6),
    "hexahedron": lambda: grid((2, 1, 2), element_type="hexahedron"),
}
FORMATS = {
    "msh41": ("m.msh", {}),
    "msh22": ("m.msh", {"file_format": "gmsh22"}),
    "vtu": ("m.vtu", {}),
    "xdmf": ("m.xdmf", {}),
}


def _data(mesh):
    g = torch.Generator().manual_seed(0)
    point_data = {
        "u": torch.randn(mesh.n_points, generator=g, dtype=torch.float64),
        "v": torch.randn(mesh.n_points, 3, generator=g, dtype=torch.float64),
    }
    cell_data = {"rho": torch.rand(mesh.n_cells, generator=g, dtype=torch.float64)}
    return point_data, cell_data


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("kind", sorted(MESHES))
def test_round_trip_with_data(tmp_path, kind, fmt):
    mesh = MESHES[kind]()
    name, kwargs = FORMATS[fmt]
    point_data, cell_data = _data(mesh)
    write_mesh(mesh, tmp_path / name, point_data, cell_data, **kwargs)
    back = read_mesh(tmp_path / name)
    assert back.cell_type == mesh.cell_type and back.dim == mesh.dim
    assert torch.equal(back.points, mesh.points)
    assert torch.equal(back.elements, mesh.elements)
    for key, value in point_data.items():
        assert torch.allclose(back.point_data[key].double(), value, rtol=0, atol=1e-15)
    assert torch.allclose(back.cell_data["rho"].double(), cell_data["rho"], rtol=0, atol=1e-15)
    expected = {name, "m.h5"} if fmt == "xdmf" else {name}
    assert set(os.listdir(tmp_path)) == expected  # no temporary leftovers


@pytest.mark.parametrize("file_format", ["gmsh22", "gmsh"])
def test_ascii_msh_round_trip(tmp_path, file_format):
    mesh = rectangle(0.3)
    write_mesh(mesh, tmp_path / "a.msh", file_format=file_format, binary=False)
    assert (
        (tmp_path / "a.msh")
        .read_bytes()
        .startswith(b"$MeshFormat\n" + (b"2.2 0" if file_format == "gmsh22" else b"4.1 0"))
    )
    back = read_mesh(tmp_path / "a.msh")
    assert torch.equal(back.points, mesh.points) and torch.equal(back.elements, mesh.elements)
    with pytest.raises(MeshError, match="ASCII"):
        write_mesh(mesh, tmp_path / "b.msh", point_data={"u": torch.zeros(mesh.n_points)}, binary=False)
    assert not (tmp_path / "b.msh").exists()


def test_mesh_data_round_trip_and_methods(tmp_path):
    mesh = grid((3, 3))
    point_data = {"t": torch.arange(mesh.n_points)}
    mesh = Mesh(
        mesh.points,
        mesh.cells.to_dict(),
        point_data=point_data,
        cell_data={"k": torch.ones(mesh.n_cells, dtype=torch.int32)},
    )
    mesh.write(tmp_path / "g.vtu", point_data={"extra": torch.ones(mesh.n_points, requires_grad=True)})
    back = Mesh.read(tmp_path / "g.vtu")
    assert torch.equal(back.point_data["t"], torch.arange(mesh.n_points))
    assert back.cell_data["k"].dtype == torch.int64
    assert torch.equal(back.point_data["extra"], torch.ones(mesh.n_points))
    m = mesh.to_meshio(cell_data={"c": np.zeros(mesh.n_cells)})
    assert m.points.shape == (16, 2) and set(m.cell_data) == {"k", "c"}


def test_xdmf_references_its_h5(tmp_path):
    write_mesh(rectangle(0.5), tmp_path / "d.xdmf", point_data={"u": np.zeros(rectangle(0.5).n_points)})
    text = (tmp_path / "d.xdmf").read_text()
    assert "d.h5:" in text and ".tmp" not in text


def test_from_meshio_facet_sets_data_and_dtypes():
    points = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], dtype=float)
    m = meshio.Mesh(
        points,
        [
            ("triangle", np.array([[0, 1, 2]], dtype=np.int32)),
            ("triangle", np.array([[0, 2, 3]], dtype=np.int32)),
            ("line", np.array([[0, 1], [1, 2], [3, 0]], dtype=np.int32)),
            ("vertex", np.array([[0]], dtype=np.int32)),
        ],
        point_data={"T": np.arange(4, dtype=np.int32), "gmsh:dim_tags": np.zeros((4, 2), dtype=int)},
        cell_data={
            "gmsh:physical": [np.array([7]), np.array([7]), np.array([1, 2, 1]), np.array([5])],
            "gmsh:geometrical": [np.array([1]), np.array([2]), np.array([1, 2, 3]), np.array([1])],
            "rho": [np.array([1.0]), np.array([2.0]), np.zeros(3), np.zeros(1)],
        },
        field_data={"bottom side": np.array([1, 1]), "domain": np.array([7, 2]), "corner": np.array([5, 0])},
    )
    mesh = mesh_from_meshio(m)
    assert mesh.dim == 2 and mesh.cell_type == "triangle" and mesh.elements.dtype == torch.int64
    assert torch.equal(mesh.elements, torch.tensor([[0, 1, 2], [0, 2, 3]]))
    assert set(mesh.facet_sets.keys()) == {"bottom_side", "physical_2"}
    assert torch.equal(mesh.facet_set("bottom_side"), torch.tensor([[0, 1], [3, 0]]))
    assert torch.equal(mesh.cell_data["rho"], torch.tensor([1.0, 2.0], dtype=torch.float64))
    assert torch.equal(mesh.cell_data["gmsh_physical"], torch.tensor([7, 7]))
    assert mesh.point_data["T"].dtype == torch.int64 and "gmsh_dim_tags" not in mesh.point_data
    # and back
    out = mesh_to_meshio(mesh, point_data={"x": mesh.points[:, 0]})
    assert set(out.point_data) == {"T", "x"} and out.cells[0].type == "triangle"


def test_from_meshio_rejects_mixed_types_and_orients():
    points = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=float)
    mixed = meshio.Mesh(points, [("triangle", np.array([[0, 1, 2]])), ("quad", np.array([[0, 1, 2, 3]]))])
    with pytest.raises(MeshError, match="mixed"):
        mesh_from_meshio(mixed)
    flipped = meshio.Mesh(points, [("triangle", np.array([[0, 2, 1], [0, 2, 3]]))])
    with pytest.raises(MeshError, match="inverted"):
        mesh_from_meshio(flipped)
    mesh = mesh_from_meshio(flipped, orient=True)
    assert (mesh.cell_measures() > 0).all()


def test_reads_gmsh_physical_groups_from_a_gmsh_file(tmp_path):
    import gmsh

    path = tmp_path / "g.msh"
    gmsh.initialize(readConfigFiles=False, interruptible=False)
    try:
        gmsh.option.setNumber("General.Terminal", 0)
        gmsh.model.add("t")
        gmsh.model.occ.addRectangle(0, 0, 0, 1, 1)
        gmsh.model.occ.synchronize()
        gmsh.model.addPhysicalGroup(1, [1, 2, 3, 4], name="walls")
        gmsh.model.addPhysicalGroup(2, [1], name="fluid")
        gmsh.model.mesh.setSize(gmsh.model.getEntities(0), 0.25)
        gmsh.model.mesh.generate(2)
        gmsh.write(str(path))
    finally:
        gmsh.finalize()
    mesh = read_mesh(path, orient=True)
    assert mesh.dim == 2 and set(mesh.facet_sets.keys()) == {"walls"}
    assert mesh.facet_set("walls").shape[0] == mesh.boundary_facets.shape[0] == 16


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_mesh(tmp_path / "nope.msh")


@pytest.mark.parametrize("name", ["bad.msh", "bad.vtu", "bad.xdmf", "bad.vtk"])
def test_garbage_file_raises_mesh_error_with_path(tmp_path, name, capfd):
    path = tmp_path / name
    path.write_bytes(b"\x00\x01garbage\xff" * 20)
    with pytest.raises(MeshError) as info:
        read_mesh(path)
    assert str(path) in str(info.value)
    assert capfd.readouterr() == ("", "")  # meshio's readers are not allowed to print


@pytest.mark.parametrize(
    "name,kwargs", [("t.msh", {}), ("t.msh", {"file_format": "gmsh22"}), ("t.vtu", {}), ("t.vtk", {})]
)
def test_truncated_file_raises_mesh_error_with_path(tmp_path, name, kwargs):
    path = tmp_path / name
    mesh = rectangle(0.2)
    write_mesh(mesh, path, point_data={"u": np.zeros(mesh.n_points)}, **kwargs)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(MeshError) as info:
        read_mesh(path)
    assert str(path) in str(info.value)


def test_unknown_extension(tmp_path):
    path = tmp_path / "mesh.unknownext"
    path.write_text("x")
    with pytest.raises(MeshError, match="format"):
        read_mesh(path)


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    mesh = rectangle(0.3)
    with pytest.raises(MeshError, match="point_data"):
        write_mesh(mesh, tmp_path / "a.vtu", point_data={"u": np.zeros(mesh.n_points + 1)})
    assert os.listdir(tmp_path) == []

    def broken_write(filename, m, **kwargs):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise meshio.WriteError("disk full")

    (tmp_path / "b.xdmf").write_text("old")
    monkeypatch.setattr(meshio, "write", broken_write)
    with pytest.raises(MeshError, match="disk full"):
        write_mesh(mesh, tmp_path / "a.vtu")
    with pytest.raises(MeshError):
        write_mesh(mesh, tmp_path / "b.xdmf")
    assert os.listdir(tmp_path) == ["b.xdmf"] and (tmp_path / "b.xdmf").read_text() == "old"
