"""S3 archive: ``s3://BUCKET/PREFIX/<yyyy>/<mm>/<dd>/<queue-id>.eml``, encrypted at rest.

The object is streamed from the spool file (never read whole into memory);
above ``multipart_threshold`` it goes up in parts, several at once
(s3transfer). Every object is written with server-side encryption, AES256
or SSE-KMS with ``archive.kms_key_id``, and carries the envelope and the
verdicts as user metadata, so an operator can find and judge a message
without opening it. The metadata holds no secret, only what the
Authentication-Results header already says.

Failures are raised as botocore exceptions; ``errors.classify`` decides
whether a retry can help. Writing the same key again replaces the object,
so a retried archive is idempotent.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Mapping
from typing import Any

from s3transfer.manager import TransferConfig, TransferManager

from sesmail_gateway import aws
from sesmail_gateway.config import AwsConfig
from sesmail_gateway.message import QueueItem, StoredMessage

MULTIPART_THRESHOLD = 8 * 1024 * 1024
MULTIPART_CHUNKSIZE = 8 * 1024 * 1024
# S3 allows 2 KB of user metadata (keys and values, UTF-8 bytes); keep a margin.
METADATA_BUDGET = 1900
# Printable ASCII survives HTTP headers unchanged; anything else is percent-encoded.
_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in "%")


def object_key(prefix: str, item: QueueItem) -> str:
    """``PREFIX/<yyyy>/<mm>/<dd>/<queue-id>.eml``, the day of arrival in UTC."""
    day = time.strftime("%Y/%m/%d", time.gmtime(item.created))
    return f"{prefix.strip('/')}/{day}/{item.id}.eml" if prefix.strip("/") else f"{day}/{item.id}.eml"


def object_metadata(item: QueueItem, budget: int = METADATA_BUDGET) -> dict[str, str]:
    """Envelope and verdicts as S3 user metadata: ASCII values, within S3's 2 KB limit.

    Recipients come last and are cut short (with a count of those left out)
    when the whole would not fit.
    """
    verdicts = item.verdicts or {}
    fields = {
        "queue-id": item.id,
        "sender": item.sender or "<>",
        "client-ip": item.client.ip,
        "received-at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(item.created)),
        "spf": _result(verdicts.get("spf")),
        "dkim": " ".join(_dkim(entry) for entry in verdicts.get("dkim") or []) or "none",
        "dmarc": _dmarc(verdicts.get("dmarc")),
        "arc": _result(verdicts.get("arc")),
    }
    metadata = {key: _ascii(value) for key, value in fields.items() if value}
    used = sum(len(key) + len(value) for key, value in metadata.items())
    metadata["recipients"] = _fit(item.recipient_addresses, budget - used - len("recipients"))
    return metadata


class S3Archiver:
    """Archiver that writes each message to S3 (blocks; called from the runner's threads)."""

    def __init__(
        self,
        bucket: str,
        prefix: str,
        *,
        aws_config: AwsConfig,
        kms_key_id: str = "",
        multipart_threshold: int = MULTIPART_THRESHOLD,
        multipart_chunksize: int = MULTIPART_CHUNKSIZE,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.kms_key_id = kms_key_id
        self.client = aws.client(aws_config, "s3")
        config = TransferConfig(multipart_threshold=multipart_threshold, multipart_chunksize=multipart_chunksize)
        self._transfers = TransferManager(self.client, config)

    def __repr__(self) -> str:
        return f"S3Archiver('s3://{self.bucket}/{self.prefix}')"

    def archive(self, item: QueueItem, message: StoredMessage) -> str:
        """Upload the spool file; return ``s3://BUCKET/KEY``. Raises botocore errors."""
        key = object_key(self.prefix, item)
        extra: dict[str, Any] = {
            "ContentType": "message/rfc822",
            "Metadata": object_metadata(item),
            "ServerSideEncryption": "aws:kms" if self.kms_key_id else "AES256",
        }
        if self.kms_key_id:
            extra["SSEKMSKeyId"] = self.kms_key_id
        with message.open() as body:
            self._transfers.upload(body, self.bucket, key, extra_args=extra).result()
        return f"s3://{self.bucket}/{key}"

    def close(self) -> None:
        self._transfers.shutdown()


def _result(value: object) -> str:
    return str(value.get("result", "")) if isinstance(value, Mapping) else ""


def _dkim(entry: object) -> str:
    if not isinstance(entry, Mapping):
        return ""
    domain = entry.get("domain")
    return f"{entry.get('result', '')}({domain})" if domain else str(entry.get("result", ""))


def _dmarc(value: object) -> str:
    if not isinstance(value, Mapping):
        return "none"
    from_domain = value.get("from_domain")
    return f"{value.get('result', '')}({from_domain})" if from_domain else str(value.get("result", ""))


def _ascii(text: str) -> str:
    return urllib.parse.quote(text, safe=_SAFE)


def _fit(addresses: list[str], room: int) -> str:
    """As many addresses as fit in ``room`` bytes, then ``(+N more)``."""
    encoded = [_ascii(address) for address in addresses]
    text = ",".join(encoded)
    if len(text) <= room:
        return text
    kept: list[str] = []
    for index, address in enumerate(encoded):
        tail = f" (+{len(encoded) - index - 1} more)"
        if len(",".join([*kept, address])) + len(tail) > room:
            break
        kept.append(address)
    return ",".join(kept) + f" (+{len(encoded) - len(kept)} more)"
