PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RUN_STAMP := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test
CONFIG ?= config/local.toml

.PHONY: run test test-slow lint typecheck bench bench-aws clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# `make run` needs only the package; `make test` adds the test tools (moto, dnslib, ruff, mypy, ...).
$(RUN_STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e .
	touch $(RUN_STAMP)

$(TEST_STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(RUN_STAMP) $(TEST_STAMP)

run: $(RUN_STAMP)
	$(VENV)/bin/sesmail-gateway serve --config $(CONFIG)

lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check sesmail_gateway tests benchmarks

typecheck: $(TEST_STAMP)
	$(VENV)/bin/mypy sesmail_gateway

# The suite without the long scenarios (crash, power loss, fuzzing, 30 MiB uploads); CI runs both.
test: $(TEST_STAMP) lint typecheck
	$(PY) -m pytest -q -ra -m "not slow"

test-slow: $(TEST_STAMP)
	$(PY) -m pytest -q -ra -m slow

bench: $(TEST_STAMP)
	$(PY) benchmarks/smtp_accept.py

bench-aws: $(TEST_STAMP)
	$(PY) benchmarks/aws_backends.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
