"""Fixtures of the AWS tests: the session's moto server, unique names, a rule table (see motoserver.py)."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterator

import pytest

from tests.aws.motoserver import CREDENTIALS, Moto, create_rule_table, start_moto, stop_moto


@pytest.fixture(scope="session")
def moto() -> Iterator[Moto]:
    saved = {key: os.environ.get(key) for key in [*CREDENTIALS, "AWS_PROFILE", "AWS_CONFIG_FILE"]}
    os.environ.update(CREDENTIALS)
    os.environ.pop("AWS_PROFILE", None)
    os.environ["AWS_CONFIG_FILE"] = os.devnull
    # moto's request log would mix into the output of commands run in this process.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = start_moto()
    yield server
    stop_moto(server)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def unique() -> Callable[[str], str]:
    """A name unique to this test (tables, buckets and parameters share moto's one state)."""
    def make(prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex[:10]}"
    return make




@pytest.fixture
def rule_table(moto: Moto, unique: Callable[[str], str]) -> str:
    return create_rule_table(moto, unique("routing"))
