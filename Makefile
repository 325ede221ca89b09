# The two set-up commands from a fresh clone are `make demo` and `make test`;
# each creates .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint bench soak clean

$(VENV)/.base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.test: $(VENV)/.base
	$(PY) -m pip install -q -e '.[test]'
	touch $@

$(VENV)/.bench: $(VENV)/.base
	$(PY) -m pip install -q -e '.[bench]'
	touch $@

demo: $(VENV)/.base
	$(PY) -m pipeline demo

lint: $(VENV)/.test
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

test: lint
	$(PY) -m pytest

bench: $(VENV)/.bench
	$(PY) -m benchmarks

# The full memory soak: a million runs (python -m pipeline soak defaults to 100,000).
soak: $(VENV)/.base
	$(PY) -m pipeline soak --runs 1000000 --no-tracemalloc

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
