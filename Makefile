# The README's two commands: `make demo` and `make test`. Both start from nothing but Python.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# One torch thread per process: on small CPU machines two threads were up to 10x slower.
export OMP_NUM_THREADS ?= 1

.PHONY: install dev demo test lint datasets clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch first, pinned: on CPU machines this takes the local CPU wheel instead of GBs of CUDA wheels;
# the project's `torch>=2.4` range then accepts it.
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

dev: $(VENV)/.installed-dev

demo: install
	$(BIN)/archdiff train --recipe demo-tiny --overwrite
	$(BIN)/archdiff sample "timber house in mountains" --lora runs/demo-tiny --output runs/demo-tiny/sample
	@echo
	@echo "LoRA:             runs/demo-tiny/pytorch_lora_weights.safetensors"
	@echo "training samples: runs/demo-tiny/samples/"
	@echo "your sample:      runs/demo-tiny/sample/grid.png"

# Two pytest-xdist workers, one test file at a time each: the tests are single-threaded, and a module's fixtures are
# built once; the finished runs several modules read are built once per session (tests/session_runs.py). `make test TEST_WORKERS=0` runs in one process.
TEST_WORKERS ?= 2
test: dev
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

lint: dev
	$(BIN)/ruff check archdiff tests

datasets: install
	$(BIN)/python -m archdiff.data.synth datasets

clean:
	rm -rf runs .pytest_cache
