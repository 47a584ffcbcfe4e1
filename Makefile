# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CONFIG ?= config/sluice.yaml

.PHONY: run test bench install install-test system-test-deps clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.installed: $(PY) pyproject.toml
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test system-test-deps

# Debian packages the tests use for real: redis-server, chromium (dashboard test).
system-test-deps:
	@./tests/install-system-deps.sh

run: install
	$(VENV)/bin/sluice serve --config $(CONFIG)

test: install-test
	$(PY) -m pytest $(PYTEST_ARGS)

bench: install system-test-deps
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache tests/artifacts
