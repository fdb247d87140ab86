# The two commands of the README: `make demo` and `make test`. Both set up .venv on first use.
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch by default; with a GPU, install your own torch first:
#   make demo TORCH=
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: demo test install lint clean gpu-check gpu-kit

demo: install
	$(BIN)/timedistill retrain conf/smoke.yaml

# the multi-node tests start Ray clusters of their own: a second pytest process keeps them apart
test: install
	$(BIN)/python -m pytest -m "not cluster"
	$(BIN)/python -m pytest -m cluster

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(if $(TORCH),$(BIN)/python -m pip install --quiet "$(TORCH)")
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

# the GPU path against a CPU run of the same work; without CUDA it says so and exits 0
gpu-check: install
	$(BIN)/python -m bench.gpu_check

# for GPU machines without a package index that bring their own torch (an air-gapped cluster): the
# other dependencies and this checkout packed in .kit/ for the target's Python (KIT_PYTHON, by default
# $(PYTHON)'s), leaving out what the target's image already has (KIT_HAVE, a file of package names;
# bench/example_gpu_image_packages.txt is one). bench/offline_kit.py says how to unpack them there.
#   make gpu-kit KIT_PYTHON=3.12 KIT_HAVE=packages.txt
KIT_PYTHON ?= $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
KIT_HAVE ?=
gpu-kit: install
	$(BIN)/python -m bench.offline_kit build --python $(KIT_PYTHON) $(if $(KIT_HAVE),--have $(KIT_HAVE))

# ruff, and mypy over the package (timedistill/ links to the folders at the top: pyproject.toml)
lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) artifacts
