#!/usr/bin/env bash
# Create the peers' environment for `make bench-peers` / `python -m benchmarks.steps`:
# TensorMesh 0.2.1 (PyPI tensormesh-fem) in a virtual environment of its own, because it
# brings its own versions of torch-sla and friends that must not replace ours in .venv.
#
#   bash benchmarks/peers_setup.sh [VENV]        (default .venv-peers; PYTHON=python3.11 to choose)
#
# torch==2.13.0 goes in first, as in .venv: it is the CPU wheel, and TensorMesh's bare
# `torch>=2.0.0` requirement would otherwise pull a CUDA build of several GB (checked with
# `pip install --dry-run tensormesh-fem==0.2.1`: torch 2.14.1 + 17 nvidia-* packages; with
# torch==2.13.0 first: torch-sla 0.4.0, gmsh 4.15.2, meshio 5.3.5, scipy, matplotlib, psutil,
# toml, tqdm and their dependencies, nothing from CUDA). Safe to repeat: a stamp file
# records a finished install.
set -euo pipefail
VENV="${1:-.venv-peers}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.installed-tensormesh-fem-0.2.1"
if [ -f "$STAMP" ]; then
    exit 0
fi
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet torch==2.13.0
"$VENV/bin/python" -m pip install --quiet tensormesh-fem==0.2.1
"$VENV/bin/python" -c "import tensormesh, torch; print('tensormesh', tensormesh.__file__, 'torch', torch.__version__)"
touch "$STAMP"
