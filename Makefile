# trackrelay: `make run` starts the server on its embedded defaults, `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONFIG ?= config/trackrelay.yaml

.PHONY: venv install install-test run test lint docs test-image check bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.installed: $(VENV)/bin/python pyproject.toml
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-bench: $(VENV)/.installed
	$(PIP) install -q -e '.[bench]'
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -q -e '.[test]'
	touch $@

venv install: $(VENV)/.installed

install-test: $(VENV)/.installed-test
	cd tests/sdk && npm ci --no-audit --no-fund --loglevel=error

run: $(VENV)/.installed
	mkdir -p data
	@echo "trackrelay: Tracking API on http://127.0.0.1:$${TRACKRELAY_PORT:-8088}/v1, operator console on" \
	  "http://127.0.0.1:$${TRACKRELAY_ADMIN_PORT:-8089}/ (token: $${TRACKRELAY_ADMIN_TOKEN:-dev-admin-token-change-me})"
	$(VENV)/bin/trackrelay serve --config $(CONFIG)

check: $(VENV)/.installed
	$(VENV)/bin/trackrelay check --config $(CONFIG)

test: install-test lint
	$(PY) -m pytest -q -ra -m "not image" $(PYTEST_ARGS)

# ruff over the whole repository and mypy as configured in pyproject.toml (strict for destinations/
# and the spool port); both before the tests, so CI fails fast.
lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# README.md's configuration reference and settings tables, from the models (proxy/docs.py)
docs: $(VENV)/.installed
	$(VENV)/bin/trackrelay docs

# Builds the container image (debootstrap base, buildah) and runs tests/image with podman; installs
# podman/buildah/debootstrap/runc with apt if missing; says loudly when podman cannot run here.
test-image: install-test
	PY=$(PY) bash tests/image/run.sh $(PYTEST_ARGS)

bench: $(VENV)/.installed-bench
	$(PY) benchmarks/event_store.py
	$(PY) benchmarks/ingest.py
	$(PY) benchmarks/delivery.py

clean:
	rm -rf $(VENV) data .pytest_cache
	rm -rf --one-file-system .cache/image .cache/image.lock
