# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CONFIG ?= config/sluice.yaml

.PHONY: run test test-lane-newest-uvicorn bench install install-test system-test-deps clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.installed: $(PY) pyproject.toml
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install -q -e '.[test]'
	touch $@

$(VENV)/.installed-bench: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install -q -e '.[bench]'
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test system-test-deps

# Debian packages the tests use for real: redis-server, chromium (dashboard test), tinyproxy (forward proxy).
system-test-deps:
	@./tests/install-system-deps.sh

run: install
	$(VENV)/bin/sluice serve --config $(CONFIG)

test: install-test
	$(PY) -m pytest $(PYTEST_ARGS)
	$(MAKE) test-lane-newest-uvicorn

# The hit lane extends uvicorn's protocol and checks its internals at startup instead of pinning
# uvicorn: its tests run here on the newest uvicorn too, in a venv of their own, so an upgrade
# that changes those internals shows up in CI (production would run with the lane off).
LANE_VENV := .venv-uvicorn-newest
test-lane-newest-uvicorn: install-test
	test -x $(LANE_VENV)/bin/python || $(PYTHON) -m venv $(LANE_VENV)
	$(LANE_VENV)/bin/python -m pip install -q -e '.[test]'
	$(LANE_VENV)/bin/python -m pip install -q --upgrade uvicorn
	$(LANE_VENV)/bin/python -m pytest tests/test_hit_lane.py $(PYTEST_ARGS)

bench: $(VENV)/.installed-bench system-test-deps
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(LANE_VENV) .pytest_cache tests/artifacts
