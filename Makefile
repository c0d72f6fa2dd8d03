# Every target installs what it needs into .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := all
.PHONY: all install run test lint types format fuzz bench clean

# `make run` installs what running needs (the worker and the stand-in: moto's S3 server);
# the test, lint and type tools come with the first target that needs them.
$(VENV)/.run-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[standin]'
	touch $@

$(STAMP): $(VENV)/.run-installed
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

all: test

run: $(VENV)/.run-installed
	$(BIN)/python -m csvgen demo $(if $(REQUEST),--request $(REQUEST))

lint: $(STAMP)
	$(BIN)/ruff check csvgen tests bench
	$(BIN)/ruff format --check csvgen tests bench
	$(BIN)/mypy

types: $(STAMP)
	$(BIN)/mypy

# Tests under coverage (branches, child processes too) on two cores (pytest-xdist), the
# ten slowest named; the report fails below 90 %, and a data file coverage cannot read
# fails the run instead of being dropped in silence.
test: lint
	rm -rf .coverage && mkdir -p .coverage
	PYTHONWARNINGS=default $(BIN)/coverage run -m pytest -n 2 --durations=10
	$(BIN)/python -W error::coverage.exceptions.CoverageWarning -m coverage combine -q
	$(BIN)/coverage report

# The property tests at 100,000 examples each (CI runs 100).
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/pytest tests/test_properties.py --timeout=0 -q

format: $(STAMP)
	$(BIN)/ruff format csvgen tests bench
	$(BIN)/ruff check --fix csvgen tests bench

$(VENV)/.bench-installed: $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $@

bench: $(VENV)/.bench-installed
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .coverage csvgen.egg-info
