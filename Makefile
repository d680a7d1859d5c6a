# Two commands do everything on a fresh machine: `make train` and `make test`.
# Each creates .venv from the pinned requirements the first time.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Huge pages for glibc malloc: XLA allocates its temporaries afresh every step
# (see docs/performance notes); harmless where transparent huge pages are off.
export GLIBC_TUNABLES ?= glibc.malloc.hugetlb=1
CONFIG ?= configs/default.py
WORKDIR ?= workdirs/default

.PHONY: setup train eval test test-fast lint format clean

$(VENV)/.stamp: requirements.txt requirements-dev.txt pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $@

setup: $(VENV)/.stamp

train: setup
	$(BIN)/python train.py --config $(CONFIG) --workdir $(WORKDIR)

# Evaluates the workdir's latest checkpoint with the config saved beside it.
eval: setup
	$(BIN)/python eval.py --workdir $(WORKDIR)

# Two workers: the tests spend most of their time compiling, on one core each.
# Tests that share a trained fixture run in one worker (xdist_group marks).
PYTEST := $(BIN)/python -m pytest -q -n 2 --dist loadgroup

test: setup
	$(PYTEST) tests

test-fast: setup
	$(PYTEST) -m "not slow" tests

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache
