# retrofit: install, demo, test, lint, bench.
# TORCH picks the torch build. Default: the pin in constraints.txt (the CPU build on our machines).
# GPU users: `make install TORCH=` keeps the torch already importable by $(PYTHON) (the venv sees
# the system site-packages), or e.g.
# `make install TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"`.
# Whatever torch ends up in the venv is then pinned for every later install step.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= $(shell grep -m1 '^torch' constraints.txt)
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
PYTEST_ARGS ?=

.PHONY: install demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(if $(TORCH),,--system-site-packages) $(VENV)

$(VENV)/.installed: $(BIN)/python setup.cfg constraints.txt
	$(PIP) install --upgrade --quiet pip setuptools wheel
	$(if $(TORCH),$(PIP) install --quiet $(TORCH))
	@# Pin the torch now in the venv so no later dependency swaps it for a CUDA build.
	$(BIN)/python -c "import torch; print('torch==' + torch.__version__)" > $(VENV)/torch-pin.txt
	@# DeepSpeed ships only an sdist whose setup imports torch: build it against the pinned torch,
	@# with no ops compiled at install time (they JIT-compile on first use).
	DS_BUILD_OPS=0 DS_BUILD_AIO=0 DS_BUILD_GDS=0 $(PIP) install --quiet --no-build-isolation \
		-c $(VENV)/torch-pin.txt "deepspeed>=0.17"
	$(PIP) install --quiet -c $(VENV)/torch-pin.txt -e ".[dev]"
	$(BIN)/python -c "import retrofit, torch, deepspeed; print('retrofit', retrofit.__version__, 'torch', torch.__version__, 'deepspeed', deepspeed.__version__)"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/retrofit demo

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check retrofit tests benchmarks
	$(BIN)/lint-imports

bench: install
	$(BIN)/python benchmarks/training.py
	$(BIN)/python benchmarks/sampling.py
	$(BIN)/python benchmarks/fast_sampling.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
