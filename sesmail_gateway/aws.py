"""AWS clients: created once per (service, region, endpoint), shared by every store and command.

Credentials come from the standard boto3 chain (the instance profile on
EC2, ``AWS_*`` variables elsewhere); ``aws.region`` and ``aws.endpoint_url``
are honoured by every client (moto server in tests). boto3 clients are
thread-safe once built, but building them is not, so creation holds a lock.
Every call through these clients blocks: callers on the event loop use a
thread.
"""

from __future__ import annotations

import threading
from typing import Any

import boto3
from botocore.config import Config as BotoConfig

from sesmail_gateway.config import AwsConfig

# Short timeouts: a rule look-up at RCPT must fail fast into 451, not hang the session.
_TIMEOUTS = {"connect_timeout": 3.0, "read_timeout": 10.0}
# Per-call retries botocore makes itself (throttling, 5xx, connection errors), then we classify.
_RETRIES = {"mode": "standard", "max_attempts": 3}

_lock = threading.Lock()
_clients: dict[tuple[str, str, str], Any] = {}


def client(config: AwsConfig, service: str) -> Any:
    """The shared boto3 client for ``service`` under ``config`` (created on first use)."""
    key = (service, config.region, config.endpoint_url)
    found = _clients.get(key)
    if found is not None:
        return found
    with _lock:
        found = _clients.get(key)
        if found is None:
            session = boto3.session.Session()
            found = session.client(
                service,  # type: ignore[call-overload]
                region_name=config.region or None,
                endpoint_url=config.endpoint_url or None,
                config=BotoConfig(retries=_RETRIES, **_TIMEOUTS),  # type: ignore[arg-type]
            )
            _clients[key] = found
    return found


def default_region() -> str:
    """The region boto3 would use without ``aws.region`` (environment, ~/.aws/config), or ""."""
    return boto3.session.Session().region_name or ""
