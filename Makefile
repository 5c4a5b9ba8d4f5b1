# Two commands, each setting up what it needs on first use (a virtual environment with PyTorch and hf_hstu):
#   make train    the main job: scripts/train.py (arguments: make train ARGS="--preset ml-1m-hstu ...")
#   make test     the test suite, as CI runs it (arguments: make test PYTEST_ARGS="-k triton")
# PyTorch comes from its CPU index; a CUDA machine names its build: make train TORCH_INDEX=https://download.pytorch.org/whl/cu128

VENV ?= .venv
PYTHON := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
ARGS ?=
PYTEST_ARGS ?=

.PHONY: train test setup

train: $(VENV)/.installed
	$(PYTHON) scripts/train.py $(ARGS)

test: $(VENV)/.installed
	$(PYTHON) -m pytest $(PYTEST_ARGS)

setup: $(VENV)/.installed

# The local version label (2.13.0+cpu, +cu128) ranks above the plain PyPI release, so the index's build is chosen.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet torch==$(TORCH_VERSION) --extra-index-url $(TORCH_INDEX)
	$(PYTHON) -m pip install --quiet -e ".[test]"
	touch $@
