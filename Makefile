# The README's commands. `make figures` and `make test` set everything up themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# QUICK=1 shortens the studies behind `make figures` (a smoke run, not the chapter's figures)
QUICK  ?=

.PHONY: setup test test-all figures bench serve gpu-check clean

setup: $(STAMP)

# torch==2.13.0 first: it is the CPU wheel on local disk; a bare `torch` would pull a CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q

# every test, the slow studies included
test-all: setup
	$(BIN)/python -m pytest -q -m ""

figures: setup
	$(BIN)/python -m flows.figures_script $(if $(QUICK),--quick,)

bench: setup
	@echo "make bench: the benchmark suite is not built yet (see issue 5)"; exit 1

serve: setup
	@echo "make serve: Prefect deployments are not built yet (see issue 4)"; exit 1

gpu-check: setup
	$(BIN)/python -m pytest -q -m gpu

clean:
	rm -rf $(VENV) .pytest_cache
