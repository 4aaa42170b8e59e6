# EAIO — the two commands a newcomer needs are `make demo` and `make test`.
# Every target creates the virtual environment first when it is missing.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DURATION ?=

.PHONY: install demo test bench lint clean system-deps

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall when the dependency list changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

## Run the whole suite against the virtual building on embedded defaults (Ctrl-C stops it).
demo: install
	$(BIN)/eaio demo --config config/site.example.yaml $(if $(DURATION),--duration $(DURATION),)

## Install what the tests need (Debian packages when missing and root), then run the suite.
test: install system-deps
	$(BIN)/python -m pytest

system-deps:
	@bash scripts/system-deps.sh

bench: install
	$(BIN)/python -m bench

lint: install
	$(BIN)/ruff check src tests bench

clean:
	rm -rf $(VENV) .eaio .pytest_cache .ruff_cache bench/results
