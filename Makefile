# CML Fleet: one entry point for set-up, the local stack and the checks.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
REQUIREMENTS := requirements/dev.txt requirements/constraints.txt \
	layers/dependencies/requirements.txt relay_service/requirements.txt
export PYTHONPATH := $(CURDIR)/layers/cmlfleet/python:$(CURDIR)/relay_service:$(CURDIR)/functions/api:$(CURDIR)
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: help venv lint typecheck test test-fast test-js browser screenshot run event token bench bench-jobs bench-local bench-relay clean lock

# Debian's packages, installed when absent (as root, or through sudo).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
CHROMIUM ?= $(or $(shell command -v chromium 2>/dev/null),/usr/bin/chromium)
export CHROMIUM

help:
	@echo "make run    start the local stack (moto, simulated fleet, relay) and print where to connect"
	@echo "make event  put an EC2 state-change event for a demo worker on the local bus"
	@echo "make token  print a bearer token of the local issuer (AS=ada|max|alice|bob)"
	@echo "make test   ruff, mypy and the whole pytest suite"
	@echo "make bench  benchmarks (results go in BENCHMARKS.md)"
	@echo "make clean  remove the virtualenv and caches"

$(STAMP): $(REQUIREMENTS)
	@test -x $(PY) || { py=$$(scripts/find-python) && echo "creating $(VENV) with $$py" && $$py -m venv $(VENV); }
	$(PY) -m pip install --quiet --upgrade pip
	cd requirements && ../$(PY) -m pip install --quiet -c constraints.txt -r dev.txt
	@touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

test: lint typecheck test-js browser
	$(VENV)/bin/pytest

# The dashboard's modules under Node's own test runner (no npm packages).
test-js:
	@command -v node >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq nodejs; }
	node --test tests/js/

# Debian's Chromium for the browser tests (Playwright drives it; no browser download).
browser:
	@test -x "$(CHROMIUM)" || { echo "installing Debian's chromium for the browser tests"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium; }

# Refresh the README's screenshot of the dashboard (taken by the browser tests).
screenshot: $(STAMP) browser
	SCREENSHOT_DIR=docs $(VENV)/bin/pytest tests/browser -k screenshot -q

test-fast: $(STAMP)
	$(VENV)/bin/pytest -m "not e2e"

run: $(STAMP)
	$(PY) -m devstack run $(if $(PORT),--port $(PORT))

token: $(STAMP)
	@$(PY) -m devstack token $(if $(AS),--user $(AS)) $(if $(ROLE),--role $(ROLE))

event: $(STAMP)
	$(PY) -m devstack ec2-event $(ARGS)

bench: bench-jobs bench-local bench-relay

bench-jobs: $(STAMP)
	$(PY) -m benchmarks.jobs --workers 1000

bench-local: $(STAMP)
	$(PY) -m benchmarks.local_latency

# The relay against Pushpin (Debian's package, installed when absent).
bench-relay: $(STAMP)
	@command -v pushpin >/dev/null || { apt-get update -qq && apt-get install -y -qq pushpin; }
	$(PY) -m benchmarks.relay --out .devstack/relay-bench.json

lock: $(STAMP)
	$(PY) -m pip freeze --exclude pip > requirements/constraints.txt.new
	@echo "review and move requirements/constraints.txt.new over requirements/constraints.txt"

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .devstack
