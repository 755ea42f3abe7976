# The few commands a contributor needs. Everything runs from a local virtualenv (.venv).
VENV ?= .venv
PY := $(VENV)/bin/python
UPSTREAM ?= http://127.0.0.1:8000
PORT ?=
ADMIN_PORT ?=
PIP := $(VENV)/bin/pip install --disable-pip-version-check

.PHONY: help setup run-setup deps serve demo test lint format bench bench-backup rules-test generate

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

# What running Sentinel needs (serve, demo), apart from what developing it needs (tests, linters):
# a first `make demo` installs only the former, and says so while it does.
$(VENV)/.runtime: pyproject.toml
	@echo ">> First run: creating $(VENV) and installing what Sentinel needs to run (a few minutes; once)"
	python3 -m venv $(VENV)
	$(PIP) --progress-bar on --upgrade pip
	$(PIP) --progress-bar on -e .
	@echo ">> Installed."
	touch $@

$(VENV)/.installed: $(VENV)/.runtime
	@echo ">> Installing the development and test tools (pytest, ruff, mypy, ...)"
	$(PIP) --progress-bar on -e ".[dev]"
	touch $@

setup: $(VENV)/.installed  ## create .venv and install Sentinel with its dev and test tools

run-setup: $(VENV)/.runtime  ## create .venv and install only what running Sentinel needs

deps:  ## install the system packages the tests use (Debian/Ubuntu; needs root or sudo)
	scripts/install-system-deps

serve: $(VENV)/.runtime  ## run Sentinel in front of UPSTREAM (http://127.0.0.1:8000); PORT=8080 ADMIN_PORT=9464
	$(VENV)/bin/sentinel serve --upstream $(UPSTREAM) $(if $(PORT),--port $(PORT)) $(if $(ADMIN_PORT),--admin-port $(ADMIN_PORT))

demo: $(VENV)/.runtime  ## see Sentinel work with a built-in demo model server
	$(VENV)/bin/sentinel demo

test: setup deps  ## run the whole test suite
	$(PY) -m pytest

lint: setup  ## ruff, formatting check and mypy
	$(VENV)/bin/ruff check sentinel tests bench
	$(VENV)/bin/ruff format --check sentinel tests bench
	$(VENV)/bin/mypy

format: setup  ## apply ruff formatting and safe fixes
	$(VENV)/bin/ruff check --fix sentinel tests bench
	$(VENV)/bin/ruff format sentinel tests bench

generate: setup  ## regenerate rules/, dashboards/ and docs/dashboards.md from sentinel/monitoring
	$(VENV)/bin/sentinel generate

rules-test: deps  ## promtool: check the alert rules and run their unit tests (rules/tests)
	promtool check rules rules/sentinel.rules.yml
	promtool test rules rules/tests/*.yml

bench: setup deps  ## proxy overhead benchmark (direct vs via Sentinel), results in bench/results/
	$(PY) bench/proxy.py

bench-backup: setup deps  ## backup/restore throughput vs plain boto3 and restic on SeaweedFS (SIZE_GIB=2)
	$(PY) bench/backup.py --size-gib $(or $(SIZE_GIB),2)
