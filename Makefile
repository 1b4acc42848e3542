# Two commands take a fresh clone to a running demo or a green test run:
#   make run    install, migrate, seed the demo, serve on http://127.0.0.1:8000
#   make test   install the dev extras, lint, run the whole suite
# Each target installs what it needs into .venv; stamps keep re-runs fast.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Re-install only when the dependencies change, not on every run.
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
DEMO_DATABASE_URL ?= sqlite+aiosqlite:///$(CURDIR)/data/demo.db
DEMO_HOST := 127.0.0.1
DEMO_PORT := 8000
# Test processes: the suite waits on servers, browsers and databases as much as it
# computes, so it runs over two; TEST_WORKERS=0 runs it in this process alone.
TEST_WORKERS ?= 2
# Lint what exists: benchmarks/ may not be there in every checkout.
LINT_PATHS := $(wildcard src tests benchmarks)

.PHONY: help run test lint fmt bench clean

help:
	@echo "make run     seed the demo and serve on http://$(DEMO_HOST):$(DEMO_PORT)"
	@echo "make test    lint, then run the whole test suite"
	@echo "make lint    ruff check, ruff format --check, mypy"
	@echo "make fmt     fix what ruff can fix and format the code"
	@echo "make bench   run the benchmarks in benchmarks/"
	@echo "make clean   remove caches, build output and the demo database"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e .
	@touch $@

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@ $(STAMP)

run: export TOKENDESK_DEMO := 1
run: export TOKENDESK_DATABASE_URL := $(DEMO_DATABASE_URL)
run: $(STAMP)
	@mkdir -p data
	$(BIN)/tokendesk db upgrade
	@$(BIN)/tokendesk demo
	@echo
	@echo "Open http://$(DEMO_HOST):$(DEMO_PORT) and sign in with a login above (Ctrl-C stops)."
	$(BIN)/tokendesk serve --host $(DEMO_HOST) --port $(DEMO_PORT)

test: $(DEV_STAMP)
	@$(MAKE) --no-print-directory lint
	$(BIN)/pytest -n $(TEST_WORKERS)

lint: $(DEV_STAMP)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy

fmt: $(DEV_STAMP)
	$(BIN)/ruff check --fix $(LINT_PATHS)
	$(BIN)/ruff format $(LINT_PATHS)

# Every benchmarks/bench_*.py script; the other modules there are shared helpers.
# TOKENDESK_BENCH_PG_URL (a database the scripts may wipe) adds PostgreSQL figures.
bench: $(DEV_STAMP)
	@scripts=$$(ls benchmarks/bench_*.py 2>/dev/null); \
	if [ -z "$$scripts" ]; then echo "no benchmarks in benchmarks/"; exit 0; fi; \
	for script in $$scripts; do \
		echo "== $$script"; \
		$(BIN)/python "$$script" || exit 1; \
	done

clean:
	rm -rf build dist src/*.egg-info test-artifacts .pytest_cache .mypy_cache .ruff_cache
	rm -f data/demo.db data/demo.db-wal data/demo.db-shm
	find src tests $(wildcard benchmarks) -name __pycache__ -type d -prune -exec rm -rf {} +
