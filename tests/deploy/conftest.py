"""Fixtures for the deployment tests: moto in server mode on 127.0.0.1, real boto3 clients."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from tests.conftest import free_port

REGION = "eu-central-1"


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """One moto server for the session; each test starts from an empty account (see `aws`)."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


class Aws:
    """boto3 clients pointed at the moto server."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint

    def client(self, service: str) -> Any:
        return boto3.client(
            service, region_name=REGION, endpoint_url=self.endpoint,
            aws_access_key_id="testing", aws_secret_access_key="testing",
        )


@pytest.fixture
def aws(moto_endpoint: str) -> Aws:
    urllib.request.urlopen(urllib.request.Request(f"{moto_endpoint}/moto-api/reset", method="POST")).close()
    return Aws(moto_endpoint)
