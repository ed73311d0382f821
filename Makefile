# The README's commands. `make figures` and `make test` set everything up themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# QUICK=1 shortens the studies behind `make figures` (a smoke run, not the chapter's figures)
QUICK  ?=
# Prefect for `make figures` / `make serve`: a project-local home (git-ignored), no telemetry,
# and time for the temporary (ephemeral) API server to start on a cold home. prefect.toml
# holds the same settings for commands run by hand from the repository root.
PREFECT_ENV := PREFECT_HOME="$(CURDIR)/.prefect" DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false \
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=180

.PHONY: setup test lint test-all figures bench bench-examples bench-peers mosaic serve gpu-check clean

setup: $(STAMP)

# torch==2.13.0 first: it is the CPU wheel on local disk; a bare `torch` would pull a CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: setup lint
	$(BIN)/python -m pytest -q

# ruff (lint, format) and the layer contracts of docs/architecture.md (import-linter)
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

# every test, the slow studies included
test-all: setup
	$(BIN)/python -m pytest -q -m ""

# the differentiability-figures flow: cached stages in data/artifacts, figures in reports/figures
figures: setup
	$(PREFECT_ENV) $(BIN)/python -m flows.differentiability $(if $(QUICK),--quick,)

# the performance suite: reports/benchmarks/<date>.{nc,md}; QUICK=1 for sizes up to 1e5 nodes
bench: setup
	$(BIN)/python -m benchmarks.suite $(if $(QUICK),--quick,)
	$(BIN)/python -m benchmarks.studies $(if $(QUICK),--quick,)
	$(BIN)/python -m benchmarks.steps $(if $(QUICK),--quick,)
	$(BIN)/python -m benchmarks.paths
	$(BIN)/python -m benchmarks.mesh_checks $(if $(QUICK),--sizes 1e5,)

# the methods' examples at full size, their figures in reports/figures (tens of minutes on 2 cores)
bench-examples: setup
	mkdir -p reports/figures
	$(BIN)/python examples/mma_topology.py mbb --png reports/figures/mma_mbb_60x20.png
	$(BIN)/python examples/mma_topology.py cantilever --png reports/figures/mma_cantilever_60x30.png
	$(BIN)/python examples/mma_topology.py regions --png reports/figures/mma_two_regions_60x20.png
	$(BIN)/python examples/frequency_topology.py 40 20 --steps 100 --png reports/figures/frequency_cantilever_40x20.png
	$(BIN)/python examples/stress_topology.py 100 --png reports/figures/stress_lbracket.png
	$(BIN)/python examples/stress_topology.py 100 --p-norm 8 --steps 300 --png reports/figures/stress_lbracket_p8.png
	$(BIN)/python examples/stress_topology.py 200 --x0 0.01 --move 0.1 --radius 4 --beta-from 200 --steps 600 --p-norm 8 \
		--backend splu --png reports/figures/stress_lbracket_200_from_void.png
	$(BIN)/python examples/auxetic_cell.py --png reports/figures/auxetic_cell_3x3.png
	$(BIN)/python examples/hyperelastic_identification.py --png reports/figures/hyperelastic_identification.png
	$(BIN)/python examples/hyperelastic_timing.py 1e4 1e5

# TensorMesh 0.2.1 in its own environment (it pins its own versions), then the chapter's steps against it
bench-peers: setup
	bash benchmarks/peers_setup.sh .venv-peers
	$(BIN)/python -m benchmarks.steps --peers .venv-peers $(if $(QUICK),--quick,)

MOSAIC_VENV := .venv-mosaic
# mosaic's harness on tmcore (docs/mosaic.md) in its own environment: reports/mosaic/<full|quick>/;
# QUICK=1: the smallest sizes (about 4 minutes)
$(MOSAIC_VENV)/.installed: pyproject.toml
	test -x $(MOSAIC_VENV)/bin/python || $(PYTHON) -m venv $(MOSAIC_VENV)
	$(MOSAIC_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(MOSAIC_VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(MOSAIC_VENV)/bin/python -m pip install --quiet -e '.[mosaic,test]'
	touch $@

mosaic: $(MOSAIC_VENV)/.installed
	OMP_NUM_THREADS=1 $(MOSAIC_VENV)/bin/python -m pytest -q tests/integrations
	$(MOSAIC_VENV)/bin/python -m integrations.mosaic.run $(if $(QUICK),--quick,)

# a local Prefect server on 127.0.0.1:4200 (unless $$PREFECT_API_URL answers) and every deployment; Ctrl-C stops
serve: setup
	$(PREFECT_ENV) $(BIN)/python -m flows.serve

# on a machine with CUDA: the GPU-marked tests, then the GPU benchmark at 1e5 and 1e6 nodes
# (report in $(GPU_REPORT_DIR), default reports/gpu); CPU-only machines skip both with a reason
gpu-check: setup
	$(BIN)/python -m pytest -q -m gpu -rs
	$(BIN)/python -m benchmarks.gpu

clean:
	rm -rf $(VENV) .venv-peers $(MOSAIC_VENV) .pytest_cache
