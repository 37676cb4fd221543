# The two commands a new machine needs (see README.md):
#   make run    set up, then run the main job (qa-kernels bench: eager vs torch.compile vs ours, here)
#   make test   set up, then run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup run test lint format

# torch is installed first, the CPU build of the version constraints.txt pins: installed later or as
# a dependency, pip would fetch the newest torch, on Linux with several GB of CUDA packages.
# tools/install_torch.py takes it from the configured indexes where they hold a CPU build (this
# project's machines have one on disk), else from PyTorch's CPU index (CPU_TORCH_INDEX). numpy and
# ninja come with it: setup.py imports torch and builds csrc/ with ninja, without build isolation.
CPU_TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

$(BIN)/.installed: pyproject.toml setup.py constraints.txt tools/install_torch.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python tools/install_torch.py --constraints constraints.txt --cpu-index $(CPU_TORCH_INDEX) torch numpy ninja
	$(BIN)/python -m pip install --quiet -c constraints.txt --no-build-isolation -e ".[test,bench,dev]"
	touch $@

setup: $(BIN)/.installed

# The main job: `qa-kernels bench` with its defaults on this machine's device (CUDA, else CPU: about
# a minute there); the table goes to the terminal, the CSV and the plot under build/bench/.
run: setup
	$(BIN)/python -m qa_kernels bench --csv build/bench/results.csv --plot build/bench/results.png

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .
