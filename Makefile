# CML Fleet: one entry point for set-up, the local stack and the checks.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
REQUIREMENTS := requirements/dev.txt requirements/constraints.txt \
	layers/dependencies/requirements.txt relay_service/requirements.txt
export PYTHONPATH := $(CURDIR)/layers/cmlfleet/python:$(CURDIR)/relay_service:$(CURDIR)/functions/api:$(CURDIR)
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: help venv lint typecheck test test-fast test-js iam-simulator browser screenshot soak run event token bench bench-jobs bench-local bench-relay bench-hostile clean lock

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

test: lint typecheck test-js browser check-iac iam-simulator
	$(VENV)/bin/pytest

# The dashboard's modules under Node's own test runner (no npm packages).
test-js:
	@command -v node >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq nodejs; }
	node --test tests/js/

# The IAM policy evaluator the IAM check runs (npm's @cloud-copilot/iam-simulate, pinned
# by devstack/iam/package-lock.json; a test tool only, never deployed).
IAM_SIMULATOR := devstack/iam/node_modules/.installed
iam-simulator: $(IAM_SIMULATOR)
$(IAM_SIMULATOR): devstack/iam/package-lock.json
	@command -v npm >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq nodejs npm; }
	npm ci --prefix devstack/iam --no-audit --no-fund --loglevel=error
	@touch $(IAM_SIMULATOR)

# Debian's Chromium for the browser tests (Playwright drives it; no browser download).
browser:
	@test -x "$(CHROMIUM)" || { echo "installing Debian's chromium for the browser tests"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium; }

# The relay soak test in its long form (make test runs a 40 s one).
SOAK_SECONDS ?= 300
soak: $(STAMP)
	SOAK_SECONDS=$(SOAK_SECONDS) $(VENV)/bin/pytest tests/soak -m soak -rP

# Refresh the README's screenshot of the dashboard (taken by the browser tests).
screenshot: $(STAMP) browser
	SCREENSHOT_DIR=docs $(VENV)/bin/pytest tests/browser -k screenshot -q

test-fast: $(STAMP) $(IAM_SIMULATOR)
	$(VENV)/bin/pytest -m "not e2e"

run: $(STAMP)
	$(PY) -m devstack run $(if $(PORT),--port $(PORT))

token: $(STAMP)
	@$(PY) -m devstack token $(if $(AS),--user $(AS)) $(if $(ROLE),--role $(ROLE))

event: $(STAMP)
	$(PY) -m devstack ec2-event $(ARGS)

bench: bench-jobs bench-local bench-relay bench-hostile

bench-jobs: $(STAMP)
	$(PY) -m benchmarks.jobs --workers 1000

bench-local: $(STAMP)
	$(PY) -m benchmarks.local_latency

# The relay against Pushpin (Debian's package, installed when absent).
bench-relay: $(STAMP)
	@command -v pushpin >/dev/null || { apt-get update -qq && apt-get install -y -qq pushpin; }
	$(PY) -m benchmarks.relay --out .devstack/relay-bench.json

# Issue 13: a hostile client reconnecting with old cursors beside 1,000 honest streams.
bench-hostile: $(STAMP)
	$(PY) -m benchmarks.hostile --out .devstack/hostile-bench.json

lock: $(STAMP)
	$(PY) -m pip freeze --exclude pip > requirements/constraints.txt.new
	@echo "review and move requirements/constraints.txt.new over requirements/constraints.txt"

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .devstack

# ---- AWS: template checks, deploy, cold start (SAM CLI in its own venv) ---------------
.PHONY: check-template deploy bench-coldstart

SAM_VENV := .venv-sam
SAM := $(SAM_VENV)/bin/sam
SAM_STAMP := $(SAM_VENV)/.installed
export SAM_CLI_TELEMETRY := 0
# `sam build` needs python3.12 (the functions' runtime) on PATH.
PYTHON312_DIR = $(shell dirname "$$(PATH="$$(ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.12*/bin 2>/dev/null | tail -1):$$PATH" command -v python3.12)")
SAM_PATH = $(PYTHON312_DIR):$(PATH)

$(SAM_STAMP): requirements/sam.txt
	@test -x $(SAM_VENV)/bin/python || { py=$$(scripts/find-python) && $$py -m venv $(SAM_VENV); }
	$(SAM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(SAM_VENV)/bin/python -m pip install --quiet -r requirements/sam.txt
	@touch $(SAM_STAMP)

# Offline: SAM's lint, a full `sam build`, every built handler imported with only its
# packages, the relay image's layout, and what `make deploy` would run.
check-template: $(STAMP) $(SAM_STAMP)
	@PATH=$(SAM_PATH) python3.12 -c 'import sys; assert sys.version_info[:2] == (3, 12)' \
		|| { echo "check-template: sam build needs python3.12 on PATH"; exit 1; }
	$(SAM) validate --lint --template template.yaml
	PATH=$(SAM_PATH) $(SAM) build --template template.yaml --cached --parallel
	$(PY) -m benchmarks.coldstart --check
	scripts/check-relay-image
	$(PY) scripts/deploy.py --dry-run

# Build and push the relay image, then `sam deploy` (ENV=production, GUIDED=1 the first time).
deploy: $(STAMP) $(SAM_STAMP)
	PYTHON312_DIR=$(PYTHON312_DIR) $(PY) scripts/deploy.py \
		$(if $(ENV),--config-env $(ENV)) $(if $(GUIDED),--guided)

bench-coldstart: $(STAMP) $(SAM_STAMP)
	PATH=$(SAM_PATH) $(SAM) build --template template.yaml --cached --parallel
	$(PY) -m benchmarks.coldstart --runs 7

# ---- IaC static analysis: checkov and parliament (in their own venv) -------------------
.PHONY: check-iac

IAC_VENV := .venv-iac
IAC_PY := $(IAC_VENV)/bin/python
IAC_STAMP := $(IAC_VENV)/.installed
IAC_TRANSFORMED := .devstack/iac/template.transformed.yaml
# Offline: no PyPI version check, no Prisma Cloud/Bridgecrew calls (.checkov.yaml adds
# skip-download), no external checks.
CHECKOV := CKV_SKIP_PACKAGE_UPDATE_CHECK=true BC_SKIP_MAPPING=TRUE $(IAC_VENV)/bin/checkov

$(IAC_STAMP): requirements/iac.txt
	@test -x $(IAC_PY) || { py=$$(scripts/find-python) && $$py -m venv $(IAC_VENV); }
	$(IAC_PY) -m pip install --quiet --upgrade pip
	$(IAC_PY) -m pip install --quiet -r requirements/iac.txt
	@touch $(IAC_STAMP)

# parliament on every IAM policy of the SAM-transformed template (scripts/lint-policies,
# accepted findings in scripts/policy-allowlist.yaml), then checkov on template.yaml and
# on that transform (skipped checks and why: .checkov.yaml). Both run; either fails it.
check-iac: $(IAC_STAMP)
	@status=0; \
	$(IAC_PY) scripts/lint-policies --transformed-out $(IAC_TRANSFORMED) || status=1; \
	$(CHECKOV) --config-file .checkov.yaml --file template.yaml --file $(IAC_TRANSFORMED) \
		|| status=1; \
	exit $$status
