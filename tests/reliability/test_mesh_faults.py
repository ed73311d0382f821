"""Meshes that load but are wrong (issue 17): a crack of doubled nodes, overlapping copies,
unused duplicate nodes; runaway mesh requests; gmsh failures; Ctrl-C during meshing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tmcore import Condenser, Mesh, MeshError
from tmcore.core.mesh import generate
from tmcore.forms import Diffusion, Source

ROOT = Path(__file__).resolve().parents[2]
F64 = torch.float64


def cracked_grid(n: int = 8):
    """A unit-square grid whose halves x <= 0.5 and x >= 0.5 meet with coincident, distinct nodes."""
    grid = Mesh.gen_grid((n, n))
    points, cells = grid.points, grid.elements
    on_seam = torch.isclose(points[:, 0], torch.tensor(0.5, dtype=F64))
    right = points[cells].mean(1)[:, 0] > 0.5
    copies = torch.nonzero(on_seam).flatten()
    index = torch.arange(points.shape[0])
    index[copies] = points.shape[0] + torch.arange(copies.numel())
    cells = torch.where(right[:, None], index[cells], cells)
    return torch.cat([points, points[copies]]), cells, copies


def u_max(mesh: Mesh) -> float:
    K = Diffusion.from_mesh(mesh)(point_data={"kappa": torch.ones(mesh.n_points, dtype=F64)})
    b = Source.from_mesh(mesh)(point_data={"f": torch.ones(mesh.n_points, dtype=F64)})
    cond = Condenser(mesh.boundary_mask)
    K_, b_ = cond(K, b)
    return float(cond.recover(K_.solve(b_)).max())


def test_a_crack_of_coincident_nodes_is_refused_naming_the_nodes_and_the_file(tmp_path):
    points, cells, copies = cracked_grid()
    with pytest.raises(
        MeshError,
        match=r"check 'coincident nodes' failed: 9 nodes lie within .* e\.g\. nodes \d+ and \d+ "
        r"at \(0\.5, 0\) and \(0\.5, 0\).*coincident='merge'.*coincident='allow'",
    ):
        Mesh(points, cells)
    path = tmp_path / "crack.vtu"
    Mesh(points, cells, coincident="allow").write(path)
    with pytest.raises(MeshError, match=rf"mesh file '{path}': check 'coincident nodes' failed"):
        Mesh.read(path)


def test_a_crack_merged_on_purpose_solves_like_the_intact_mesh_and_one_allowed_keeps_its_faces():
    points, cells, copies = cracked_grid()
    intact = Mesh.gen_grid((8, 8))
    merged = Mesh(points, cells, coincident="merge")
    assert merged.n_points == intact.n_points
    assert torch.equal(merged.points, intact.points) and torch.equal(merged.elements, intact.elements)
    assert u_max(merged) == pytest.approx(u_max(intact), rel=1e-12)
    cracked = Mesh(points, cells, coincident="allow")
    # both faces of the crack are boundary: its 7 inner nodes and the 9 copies join the 32 outer nodes
    assert int(cracked.boundary_mask.sum()) == int(intact.boundary_mask.sum()) + 7 + 9
    assert u_max(cracked) < 0.6 * u_max(intact)  # what the crack does to the answer, when it is wanted


def test_two_overlapping_copies_of_a_mesh_are_refused():
    grid = Mesh.gen_grid((4, 4))
    n = grid.n_points
    with pytest.raises(MeshError, match=r"check 'overlapping cells' failed: 25 nodes coincide .* overlapping copies"):
        Mesh(torch.cat([grid.points, grid.points]), torch.cat([grid.elements, grid.elements + n]))
    other_diagonal = Mesh.gen_grid((4, 4), element_type="quad").elements[:, [0, 1, 3, 1, 2, 3]].reshape(-1, 3)
    with pytest.raises(
        MeshError, match=r"check 'overlapping cells' failed: \d+\+? facets are shared by more than two cells"
    ):
        Mesh(grid.points, torch.cat([grid.elements, other_diagonal]))


def test_unused_duplicate_nodes_are_refused_at_load_not_at_the_solve(tmp_path):
    grid = Mesh.gen_grid((4, 4))
    points = torch.cat([grid.points, grid.points[[6, 7]]])
    with pytest.raises(
        MeshError,
        match=r"check 'unused nodes' failed: 2 of 27 nodes belong to no cell, e\.g\. nodes "
        r"\[25, 26\] at \(0\.25, 0\.25\) and \(0\.5, 0\.25\).*unused='drop'",
    ):
        Mesh(points, grid.elements)
    dropped = Mesh(points, grid.elements, unused="drop")
    assert torch.equal(dropped.points, grid.points)
    path = tmp_path / "unused.vtu"
    Mesh(points, grid.elements, unused="allow", coincident="allow").write(path)
    with pytest.raises(MeshError, match=rf"mesh file '{path}': check 'unused nodes'"):
        Mesh.read(path)
    assert Mesh.read(path, unused="drop").n_points == grid.n_points


@pytest.mark.parametrize(
    "call, estimate",
    [(lambda: Mesh.gen_rectangle(chara_length=1e-4), r"1\.2e\+08"), (lambda: Mesh.gen_box(1e-3), r"9\.03e\+08")],
    ids=["rectangle-1e-4", "box-1e-3"],
)
def test_runaway_mesh_requests_are_refused_before_gmsh_starts(call, estimate):
    start = time.perf_counter()
    with pytest.raises(
        MeshError,
        match=rf"would make about {estimate} nodes, above the limit of 2e\+06.*max_nodes=\d+ "
        r"\(or \$TMCORE_MAX_MESH_NODES=\d+\)",
    ):
        call()
    assert time.perf_counter() - start < 1.0


def test_the_node_limit_can_be_raised_and_lowered(monkeypatch):
    with pytest.raises(MeshError, match="above the limit of 100"):
        Mesh.gen_rectangle(chara_length=0.05, max_nodes=100)
    monkeypatch.setenv("TMCORE_MAX_MESH_NODES", "100")
    with pytest.raises(MeshError, match="above the limit of 100"):
        Mesh.gen_rectangle(chara_length=0.05)
    assert Mesh.gen_rectangle(chara_length=0.05, max_nodes=10_000).n_points > 100


def test_a_gmsh_process_that_dies_becomes_a_mesh_error_with_its_reason():
    assert "signal SIGKILL (killed: out of memory" in generate._child_reason(-9, b"")
    assert generate._child_reason(3, b'{"error": "Exception with no message (gmsh logged nothing)"}\n') == (
        "Exception with no message (gmsh logged nothing)"
    )
    with pytest.raises(
        MeshError,
        match=(
            r"gmsh failed meshing a rectangle of about 100 nodes: Exception: Could not set option "
            r"'Mesh.NoSuchOption'"
        ),
    ):
        generate._in_child(
            {
                "kind": "rectangle",
                "h": 0.1,
                "left": 0.0,
                "right": 1.0,
                "bottom": 0.0,
                "top": 1.0,
                "options": {"Mesh.NoSuchOption": 1},
            },
            100,
        )


@pytest.mark.slow  # about a minute: gmsh meshes until the limit stops it
def test_a_gmsh_process_out_of_memory_becomes_a_mesh_error():
    """The issue's case (gen_rectangle(0.001) under a memory limit died with a bare, empty
    Exception): gmsh's child under a 600 MiB address-space limit; a MeshError with a reason."""
    script = (
        "from tmcore.core.mesh import generate\n"
        "import resource; resource.setrlimit(resource.RLIMIT_AS, (600 << 20, 600 << 20))\n"
        "try:\n"
        "    generate._in_child({'kind': 'rectangle', 'h': 0.001, 'left': 0.0, 'right': 1.0, 'bottom': 0.0, 'top': 1.0,"
        " 'options': {}}, 1200000)\n"
        "except Exception as e:\n"
        "    print(type(e).__name__, e)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.stdout.startswith("MeshError gmsh failed meshing a rectangle of about 1.2e+06 nodes: "), (
        out.stdout + out.stderr
    )


def test_ctrl_c_stops_a_large_mesh_within_a_second():
    script = (
        "import os, signal, time, tmcore\n"
        # a terminal's process: Ctrl-C raises KeyboardInterrupt, whatever disposition the test runner passed on
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "print('ready', flush=True)\n"
        "try:\n"
        "    tmcore.Mesh.gen_rectangle(chara_length=0.0015)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', flush=True)\n"
        "    os._exit(130)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        assert child.stdout.readline().strip() == "ready"
        time.sleep(3.0)  # gmsh is meshing (about 5e5 nodes: a minute or more)
        assert child.poll() is None
        gmsh = subprocess.run(["pgrep", "-f", "-P", str(child.pid), "gmsh_worker"], capture_output=True, text=True)
        assert gmsh.stdout.split(), "gmsh runs in a child process"
        start = time.perf_counter()
        os.killpg(child.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group
        line = child.stdout.readline().strip()
        elapsed = time.perf_counter() - start
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
    assert line == "interrupted" and elapsed < 1.0
    assert (
        subprocess.run(["pgrep", "-g", str(child.pid)], capture_output=True, text=True).stdout.split() == []
    )  # gmsh gone too
