# The two commands a new machine needs (see README.md):
#   make run    set up, then run the main job (qa-kernels bench: eager vs torch.compile vs ours, here)
#   make test   set up, then run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup run test lint format

# torch is installed first, under constraints.txt (the local CPU wheel): installed later or as a
# dependency, pip would fetch the newest torch with several GB of CUDA packages. (numpy and ninja
# with it: setup.py imports torch and builds csrc/ with ninja, without build isolation.)
$(BIN)/.installed: pyproject.toml setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet -c constraints.txt torch numpy ninja
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
