# Two entry points for a fresh machine: `make reproduce` (the whole study on the synthetic
# cohort) and `make test` (the test suite). Both create .venv and install on first use.
VENV ?= .venv
PYTHON ?= python3
# The torch build to install first; a GPU machine may pin another (e.g. TORCH=torch==2.13.0
# from the CUDA index). The project itself accepts any torch 2.x >= 2.4.
TORCH ?= torch==2.13.0
CORES ?= all
BIN := $(VENV)/bin

.PHONY: setup reproduce test lint format clean gpu-check

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install "$(TORCH)"
	$(BIN)/pip install -e ".[test]"
	touch $@

reproduce: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --cores $(CORES) --workflow-profile workflow/profiles/default reproduce

test: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q

# On a CUDA machine with PyTorch installed (no venv, no network needed): the bench on the GPU
# and two same-seed 300-iteration DeepRS trainings at 128x128x96; fails on any CPU fallback.
gpu-check:
	PYTHONPATH="$(CURDIR)" $(PYTHON) -m deeprs.gpu_check

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf results/* logs .snakemake
