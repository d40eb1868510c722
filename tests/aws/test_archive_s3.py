"""The S3 archive against moto server: key, encryption, metadata, multipart, failures."""

from __future__ import annotations

import hashlib
import os
import smtplib
from collections.abc import Callable
from pathlib import Path

import pytest

from sesmail_gateway.archive.s3 import S3Archiver, object_key, object_metadata
from sesmail_gateway.config import AwsConfig
from sesmail_gateway.errors import PermanentFailure, TemporaryFailure, classify
from sesmail_gateway.message import Client, QueueItem, RecipientRoute, StoredMessage
from tests.aws.motoserver import REGION, Moto
from tests.conftest import Gateway, free_port, wait_for

CREATED = 1767225600.0  # 2026-01-01T00:00:00Z
VERDICTS = {
    "spf": {"result": "pass", "domain": "sender.test", "explanation": "", "scope": "mailfrom"},
    "dkim": [{"result": "pass", "domain": "sender.test", "selector": "s1", "algorithm": "rsa-sha256",
              "reason": "", "partial_body": False}],
    "arc": {"result": "none", "reason": ""},
    "dmarc": {"result": "pass", "from_domain": "sender.test", "policy": "reject", "disposition": "none",
              "aligned": ["spf", "dkim"], "reason": "aligned", "record_domain": "sender.test", "pct": 100,
              "adkim": "r", "aspf": "r"},
}


def make_item(queue_id: str = "Q1a2b3c", recipients: list[str] | None = None, sender: str = "a@sender.test") -> QueueItem:
    return QueueItem(id=queue_id, sender=sender, created=CREATED, client=Client(ip="192.0.2.7"),
                     recipients=[RecipientRoute(r) for r in (recipients or ["bob@example.test"])],
                     verdicts=VERDICTS)


def spooled(tmp_path: Path, size: int) -> StoredMessage:
    """A spool file of ``size`` bytes."""
    path = tmp_path / "message.eml"
    header = b"From: a@sender.test\r\nSubject: archive\r\n\r\n"
    with path.open("wb") as handle:
        handle.write(header)
        handle.write(os.urandom(max(0, size - len(header))))
    return StoredMessage.at(path)


@pytest.fixture
def bucket(moto: Moto, unique: Callable[[str], str]) -> str:
    name = unique("archive")
    moto.client("s3").create_bucket(Bucket=name)
    return name


def test_key_is_prefix_and_utc_day_of_arrival() -> None:
    item = make_item()
    assert object_key("inbound/", item) == "inbound/2026/01/01/Q1a2b3c.eml"
    assert object_key("", item) == "2026/01/01/Q1a2b3c.eml"


def test_metadata_is_ascii_and_fits_in_two_kilobytes() -> None:
    many = [f"recipient-number-{i:03d}@example.test" for i in range(100)]
    metadata = object_metadata(make_item(recipients=many, sender="jörg@exämple.test"))
    assert metadata["sender"] == "j%C3%B6rg@ex%C3%A4mple.test"
    assert metadata["spf"] == "pass" and metadata["dkim"] == "pass(sender.test)"
    assert metadata["dmarc"] == "pass(sender.test)"
    assert metadata["recipients"].startswith("recipient-number-000@example.test,")
    assert metadata["recipients"].endswith(" more)")
    assert sum(len(k) + len(v) for k, v in metadata.items()) <= 2048
    assert all(v.isascii() for v in metadata.values())


def test_archived_object_has_key_aes256_metadata_and_the_exact_bytes(
    moto: Moto, bucket: str, tmp_path: Path
) -> None:
    archiver = S3Archiver(bucket, "inbound", aws_config=moto.aws_config)
    message = spooled(tmp_path, 4096)
    location = archiver.archive(make_item(), message)
    assert location == f"s3://{bucket}/inbound/2026/01/01/Q1a2b3c.eml"

    s3 = moto.client("s3")
    stored = s3.get_object(Bucket=bucket, Key="inbound/2026/01/01/Q1a2b3c.eml")
    assert stored["Body"].read() == message.path.read_bytes()
    assert stored["ServerSideEncryption"] == "AES256"
    assert stored["ContentType"] == "message/rfc822"
    assert stored["Metadata"]["sender"] == "a@sender.test"
    assert stored["Metadata"]["recipients"] == "bob@example.test"
    assert stored["Metadata"]["queue-id"] == "Q1a2b3c"
    # Archiving again (a retry) replaces the same object.
    assert archiver.archive(make_item(), message) == location
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 1


def test_kms_key_id_means_sse_kms_with_that_key(moto: Moto, bucket: str, tmp_path: Path) -> None:
    key_id = moto.client("kms").create_key(Description="archive")["KeyMetadata"]["KeyId"]
    archiver = S3Archiver(bucket, "kms", aws_config=moto.aws_config, kms_key_id=key_id)
    archiver.archive(make_item(), spooled(tmp_path, 100))
    head = moto.client("s3").head_object(Bucket=bucket, Key="kms/2026/01/01/Q1a2b3c.eml")
    assert head["ServerSideEncryption"] == "aws:kms"
    assert key_id in head["SSEKMSKeyId"]


def test_twenty_mebibytes_go_up_in_parts_streamed_from_the_spool_file(
    moto: Moto, bucket: str, tmp_path: Path
) -> None:
    archiver = S3Archiver(bucket, "big", aws_config=moto.aws_config)
    calls: list[str] = []
    archiver.client.meta.events.register("before-send.s3.*", lambda event_name, **_: calls.append(event_name))
    message = spooled(tmp_path, 20 * 1024 * 1024)
    archiver.archive(make_item(), message)
    assert calls.count("before-send.s3.UploadPart") == 3  # 8 + 8 + 4 MiB
    assert calls.count("before-send.s3.CompleteMultipartUpload") == 1
    assert "before-send.s3.PutObject" not in calls
    body = moto.client("s3").get_object(Bucket=bucket, Key="big/2026/01/01/Q1a2b3c.eml")["Body"].read()
    assert hashlib.sha256(body).digest() == hashlib.sha256(message.path.read_bytes()).digest()


def test_missing_bucket_is_permanent_and_unreachable_s3_temporary(moto: Moto, tmp_path: Path) -> None:
    message = spooled(tmp_path, 100)
    with pytest.raises(Exception) as missing:
        S3Archiver("no-such-bucket", "x", aws_config=moto.aws_config).archive(make_item(), message)
    assert isinstance(classify(missing.value), PermanentFailure)
    assert "NoSuchBucket" in str(classify(missing.value))

    closed = AwsConfig(region=REGION, endpoint_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(Exception) as unreachable:
        S3Archiver("any-bucket", "x", aws_config=closed).archive(make_item(), message)
    assert isinstance(classify(unreachable.value), TemporaryFailure)


def test_gateway_archives_to_s3_before_delivery_and_retries_until_the_bucket_exists(
    make_gateway: Callable[..., Gateway], moto: Moto, unique: Callable[[str], str]
) -> None:
    bucket = unique("later")
    gateway = make_gateway({"archive": {"url": f"s3://{bucket}/inbound"}, "aws": moto.aws_section})
    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=30) as client:
        client.sendmail("sender@elsewhere.test", ["bob@example.test"],
                        b"From: s@elsewhere.test\r\nSubject: archived\r\n\r\nbody\r\n")
    deferred = wait_for(lambda: gateway.events("deferred"))
    assert "archive failed" in deferred[0]["reason"] and "NoSuchBucket" in deferred[0]["reason"]
    assert gateway.delivered() == []  # never delivered without its archive copy

    moto.client("s3").create_bucket(Bucket=bucket)
    delivered = gateway.wait_delivered(1)
    archived = gateway.events("archived")[0]
    queue_id = archived["queue_id"]
    assert archived["location"].startswith(f"s3://{bucket}/inbound/") and archived["location"].endswith(
        f"/{queue_id}.eml")
    key = archived["location"].removeprefix(f"s3://{bucket}/")
    stored = moto.client("s3").get_object(Bucket=bucket, Key=key)
    assert stored["Body"].read() == delivered[0]
    assert stored["Metadata"]["recipients"] == "bob@example.test"
    assert stored["Metadata"]["spf"]  # the verdicts travel with the object
