"""Moto server helpers for the AWS tests: one moto server (S3, DynamoDB, SSM, SES, KMS, CloudWatch) on 127.0.0.1 per test session.

Everything talks to it through real boto3 clients over HTTP. Moto keeps its
state in this process, so a second server started by a test (to stop and
restart it) sees the same tables and buckets. Names are unique per test.
"""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from moto.server import ThreadedMotoServer

from sesmail_gateway.config import AwsConfig
from tests.conftest import free_port

REGION = "us-east-1"
# Dummy credentials: moto accepts any; nothing here can reach AWS.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION}


@dataclass
class Moto:
    url: str
    server: ThreadedMotoServer
    port: int

    @property
    def aws_config(self) -> AwsConfig:
        return AwsConfig(region=REGION, endpoint_url=self.url)

    @property
    def aws_section(self) -> dict[str, str]:
        """The ``[aws]`` config section pointing at this server."""
        return {"region": REGION, "endpoint_url": self.url}

    def client(self, service: str) -> Any:
        return boto3.client(service, region_name=REGION, endpoint_url=self.url)  # type: ignore[call-overload]


def start_moto(port: int | None = None) -> Moto:
    chosen = port or free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=chosen, verbose=False)
    server.start()
    return Moto(f"http://127.0.0.1:{chosen}", server, chosen)


def stop_moto(server: Moto) -> None:
    """Stop serving and close the listening socket, so clients get "connection refused"."""
    server.server.stop()
    if server.server._server is not None:
        server.server._server.server_close()


def create_rule_table(moto: Moto, name: str) -> str:
    """A table shaped like the seed system's: string PK and SK, on-demand."""
    moto.client("dynamodb").create_table(
        TableName=name, BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "PK", "KeyType": "HASH"}, {"AttributeName": "SK", "KeyType": "RANGE"}],
        AttributeDefinitions=[{"AttributeName": "PK", "AttributeType": "S"},
                              {"AttributeName": "SK", "AttributeType": "S"}],
    )
    return name


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def cli(config: Path, *args: str, check: bool = True) -> CliResult:
    """The real command line, run in this process (a subprocess costs seconds of imports per call)."""
    from sesmail_gateway.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main([*args, "--config", str(config)])
        except SystemExit as exc:
            code = int(exc.code or 0)
    result = CliResult(code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"cli {args} failed ({code}): {result.stderr}")
    return result
