# The two commands of the README: `make demo` and `make test`. Both set up .venv on first use.
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch installs in seconds here; with a GPU, install your own torch first:
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

# the same check's dependencies for an offline GPU machine with its own torch (default: the H200
# this project borrows, Python 3.12), in .kit/; bench/offline_kit.py says how to carry them
gpu-kit: install
	$(BIN)/python -m bench.offline_kit build --have bench/gpu_machine_packages.txt

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) artifacts
