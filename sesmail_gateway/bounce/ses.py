"""The SES adapter for DSNs: one ``SendRawEmail`` call, nothing else."""

from __future__ import annotations

from sesmail_gateway import aws
from sesmail_gateway.config import AwsConfig


class SesSender:
    """Sends a finished message through SES (blocks; raises botocore errors)."""

    def __init__(self, aws_config: AwsConfig) -> None:
        self.client = aws.client(aws_config, "ses")

    def send(self, raw: bytes, *, source: str, destination: str) -> str:
        """Send ``raw`` from ``source`` (a verified identity) to ``destination``; returns the SES message id."""
        response = self.client.send_raw_email(Source=source, Destinations=[destination], RawMessage={"Data": raw})
        return str(response["MessageId"])
