# The two set-up commands from a fresh clone are `make demo` and `make test`;
# each creates .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo serve test lint bench bench-quick soak clean

$(VENV)/.base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.test: $(VENV)/.base
	$(PY) -m pip install -q -e '.[test]'
	touch $@

$(VENV)/.gateway: $(VENV)/.base
	$(PY) -m pip install -q -e '.[gateway]'
	touch $@

$(VENV)/.bench: $(VENV)/.base
	$(PY) -m pip install -q -e '.[bench]'
	touch $@

demo: $(VENV)/.base
	$(PY) -m pipeline demo

# The gateway with simulated agents: open the printed viewer URL (it carries the admin token).
serve: $(VENV)/.gateway
	$(PY) -m pipeline serve --simulate

lint: $(VENV)/.test
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

test: lint
	$(PY) -m pytest

# The full suite, every figure of docs/benchmarks.md (about 10 minutes plus the soaks).
bench: $(VENV)/.bench
	$(PY) -m benchmarks

# Every section on a smaller workload, in a few minutes (JSON in benchmarks/results/quick-*).
bench-quick: $(VENV)/.bench
	$(PY) -m benchmarks --quick

# The full memory soak of the bus: a million runs (python -m benchmarks.soak_run defaults to
# 100,000; add --leaky for the leaking model).
soak: $(VENV)/.base
	$(PY) -m benchmarks.soak_run --runs 1000000 --no-tracemalloc

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
