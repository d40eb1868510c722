PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RUN_STAMP := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test
# Deployment checkers pin many dependencies of their own: they live in a venv apart,
# so they never change the project's boto3 or moto.
TOOLS := .venv-tools
TOOLS_STAMP := $(TOOLS)/.installed
TOOLS_PINS := checkov==3.3.30 ansible-core==2.19.14 ansible-lint==26.10.1
CONFIG ?= config/local.toml

.PHONY: run test test-slow lint typecheck bench bench-aws clean checkov

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

$(TOOLS_STAMP): Makefile
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --upgrade pip
	$(TOOLS)/bin/pip install --quiet $(TOOLS_PINS)
	touch $(TOOLS_STAMP)

checkov: $(TOOLS_STAMP)
	$(TOOLS)/bin/checkov -d terraform --framework terraform --compact --quiet --skip-download

run: $(RUN_STAMP)
	$(VENV)/bin/sesmail-gateway serve --config $(CONFIG)

lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check sesmail_gateway tests benchmarks

typecheck: $(TEST_STAMP)
	$(VENV)/bin/mypy sesmail_gateway

# The suite without the long scenarios (crash, power loss, fuzzing, 30 MiB uploads); CI runs both.
test: $(TEST_STAMP) $(TOOLS_STAMP) lint typecheck
	$(PY) -m pytest -q -ra -m "not slow"

test-slow: $(TEST_STAMP) $(TOOLS_STAMP)
	$(PY) -m pytest -q -ra -m slow

bench: $(TEST_STAMP)
	$(PY) benchmarks/smtp_accept.py

bench-aws: $(TEST_STAMP)
	$(PY) benchmarks/aws_backends.py

clean:
	rm -rf $(VENV) $(TOOLS) var .pytest_cache .mypy_cache .ruff_cache
