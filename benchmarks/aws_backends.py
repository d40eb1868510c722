"""AWS backends against moto server on 127.0.0.1: RCPT rule look-ups and the S3 archive path.

Run: ``.venv/bin/python benchmarks/aws_backends.py``. Starts its own moto
server in a separate process (real HTTP, real boto3), so the figures are the gateway's own cost
plus one local HTTP round trip per call; against real DynamoDB and S3
network latency (about 3-10 ms per call inside a region) dominates.

* RCPT look-ups per second through ``RouteResolver`` + ``DynamoRouteStore``:
  cold (every address new: one BatchGetItem of its candidate keys) and warm
  (answered from the resolver's cache), single thread and 16 threads.
* Archive path: messages per second through ``S3Archiver`` (AES256), 16 KiB
  messages, 16 threads (the runner's default delivery concurrency).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sesmail_gateway.archive.s3 import S3Archiver  # noqa: E402
from sesmail_gateway.config import AwsConfig  # noqa: E402
from sesmail_gateway.message import QueueItem, RecipientRoute, StoredMessage  # noqa: E402
from sesmail_gateway.routes.dynamodb import DynamoRouteStore  # noqa: E402
from sesmail_gateway.routes.resolver import RouteResolver  # noqa: E402

REGION = "us-east-1"
RULES = 1000
LOOKUPS = 2000
MESSAGES = 500
THREADS = 16


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:8.0f}/s  ({1000 * seconds / count:.2f} ms each)"


def bench_rcpt(aws: AwsConfig, table: str) -> None:
    store = DynamoRouteStore(table, aws_config=aws)
    store.put_items([{"PK": f"ROUTE#user{i}@example.test", "SK": "RULE#v1", "entity_type": "ROUTE",
                      "recipient": f"user{i}@example.test", "action": "store"} for i in range(RULES)])
    for threads in (1, THREADS):
        resolver = RouteResolver(store, cache_seconds=60)
        addresses = [f"user{i % RULES}+t{i}@example.test" for i in range(LOOKUPS)]
        started = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(resolver.resolve_sync, addresses))
        cold = time.perf_counter() - started
        started = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(resolver.resolve_sync, addresses))
        warm = time.perf_counter() - started
        print(f"RCPT look-ups, {threads:2d} thread(s), cold (one BatchGetItem each): {rate(LOOKUPS, cold)}")
        print(f"RCPT look-ups, {threads:2d} thread(s), warm (cached):                 {rate(LOOKUPS, warm)}")


def bench_archive(aws: AwsConfig, bucket: str) -> None:
    archiver = S3Archiver(bucket, "bench", aws_config=aws)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "message.eml"
        path.write_bytes(b"From: a@sender.test\r\nSubject: bench\r\n\r\n" + os.urandom(16 * 1024))
        message = StoredMessage.at(path)
        items = [QueueItem(id=f"B{i:06d}", sender="a@sender.test", recipients=[RecipientRoute("b@example.test")])
                 for i in range(MESSAGES)]
        started = time.perf_counter()
        with ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(lambda item: archiver.archive(item, message), items))
        elapsed = time.perf_counter() - started
    archiver.close()
    print(f"S3 archive, 16 KiB messages, {THREADS} threads:                  {rate(MESSAGES, elapsed)}")


def main() -> None:
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": REGION})
    port = free_port()
    # moto in its own process, so its request handling does not share this process's GIL.
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port)
    endpoint = f"http://127.0.0.1:{port}"
    aws = AwsConfig(region=REGION, endpoint_url=endpoint)
    boto3.client("dynamodb", region_name=REGION, endpoint_url=endpoint).create_table(
        TableName="bench", BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "PK", "KeyType": "HASH"}, {"AttributeName": "SK", "KeyType": "RANGE"}],
        AttributeDefinitions=[{"AttributeName": "PK", "AttributeType": "S"},
                              {"AttributeName": "SK", "AttributeType": "S"}])
    boto3.client("s3", region_name=REGION, endpoint_url=endpoint).create_bucket(Bucket="bench")
    try:
        bench_rcpt(aws, "bench")
        bench_archive(aws, "bench")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
