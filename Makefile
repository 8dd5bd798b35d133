# Two entry points for a fresh machine: `make reproduce` (the whole study on the synthetic
# cohort) and `make test` (the test suite). Both create .venv and install on first use.
VENV ?= .venv
PYTHON ?= python3
# The torch build to install first (the project accepts any torch >=2.4,<3). Where does it
# come from: without an NVIDIA GPU (no `nvidia-smi`) from PyTorch's CPU index, a wheel of
# about 200 MB instead of PyPI's multi-GB CUDA build; with one from PyPI (CUDA 12 wheels).
# Override either, e.g. `make setup TORCH_INDEX=https://download.pytorch.org/whl/cu126`
# or `make setup TORCH_INDEX=` (PyPI). An installed torch is kept as it is. One retry, not
# pip's five: where the index is unreachable but pip has a local copy (find-links), five
# retries per package cost 77 s against 3 s (measured with `pip install --dry-run`).
TORCH ?= torch==2.13.0
TORCH_INDEX ?= $(if $(shell command -v nvidia-smi 2>/dev/null),,https://download.pytorch.org/whl/cpu)
CORES ?= all
# Test processes: two, one per core of the CI machine (each test keeps torch to one thread);
# files are not split, so a file's module fixtures are built once. `make test TEST_WORKERS=0`
# runs the suite in one process.
TEST_WORKERS ?= 2
BIN := $(VENV)/bin

.PHONY: setup reproduce test lint format clean gpu-check

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --retries 1 "$(TORCH)"$(if $(TORCH_INDEX), --index-url $(TORCH_INDEX))
	$(BIN)/pip install -e ".[test]"
	touch $@

reproduce: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --cores $(CORES) --workflow-profile workflow/profiles/default reproduce

test: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

# On a CUDA machine with PyTorch installed (no venv, no network needed): the bench on the GPU
# and two same-seed 300-iteration DeepRS trainings at 128x128x96; fails on any CPU fallback.
gpu-check:
	PYTHONPATH="$(CURDIR)" $(PYTHON) -m deeprs.gpu_check

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q tests/test_lint.py

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf results/* logs .snakemake
