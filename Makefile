PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?= config/local.toml

.PHONY: run test lint typecheck unit bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/sesmail-gateway serve --config $(CONFIG)

lint: $(STAMP)
	$(VENV)/bin/ruff check sesmail_gateway tests benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy sesmail_gateway

test: $(STAMP) lint typecheck
	$(PY) -m pytest -q -ra

bench: $(STAMP)
	$(PY) benchmarks/smtp_accept.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
