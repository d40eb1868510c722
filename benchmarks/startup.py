"""Start-up with a large queue: seconds from `serve` to the first 220 banner, and to the first delivery.

Fills a fresh data dir with N queued messages (real spool folders written
through the spool's own code, as a crash or a long outage would leave
them), starts the daemon and times it. Run::

    .venv/bin/python benchmarks/startup.py [--messages 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sesmail_gateway.fsutil import write_file  # noqa: E402
from sesmail_gateway.message import QueueItem, RecipientRoute, plan_deliveries  # noqa: E402
from sesmail_gateway.spool import Spool, new_queue_id  # noqa: E402


def fill(data: Path, count: int) -> None:
    """Queued message folders, as a long outage leaves them (written directly: filling is not measured)."""
    spool = Spool(data / "spool")
    body = b"From: a@sender.test\r\nSubject: queued\r\n\r\n" + b"x" * 2000 + b"\r\n"
    route = RecipientRoute("bob@example.test", "*", "catch-all", [{"type": "maildir", "target": "mail"}])
    for _ in range(count):
        item = QueueItem(id=new_queue_id(), sender="a@sender.test", recipients=[route],
                         deliveries=plan_deliveries([route]))
        folder = spool.root / "incoming" / item.id
        folder.mkdir()
        write_file(folder / "message.eml", body, sync=False)
        write_file(folder / "meta.json", json.dumps(item.to_dict()).encode(), sync=False)
    os.sync()  # the benchmark's own set-up, not the gateway's durability


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="startup-bench-") as folder:
        data = Path(folder) / "data"
        started = time.perf_counter()
        fill(data, args.messages)
        print(f"queued {args.messages} messages in {time.perf_counter() - started:.1f} s", flush=True)
        port = free_port()
        config = Path(folder) / "gateway.toml"
        config.write_text(f"""
[gateway]
hostname = "mx.bench.test"
domains = ["example.test"]
data_dir = "{data}"
[smtp]
listen = ["127.0.0.1:{port}"]
workers = 1
[checks]
dns_servers = ["127.0.0.1:9"]
[metrics]
listen = ""
""")
        log = (Path(folder) / "gateway.log").open("wb")
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "sesmail_gateway", "serve", "--config", str(config)],
                                cwd=REPO, stdout=log, stderr=log)
        try:
            banner = None
            while banner is None:
                if proc.poll() is not None:
                    print((Path(folder) / "gateway.log").read_text()[-2000:])
                    return 1
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                        if sock.recv(100).startswith(b"220"):
                            banner = time.perf_counter() - started
                except OSError:
                    time.sleep(0.05)
            new = data / "mail" / "new"
            while not (new.exists() and any(new.iterdir())):
                time.sleep(0.05)
            first = time.perf_counter() - started
            print(f"{args.messages} queued: first 220 after {banner:.2f} s, first delivery after {first:.2f} s",
                  flush=True)
        finally:
            proc.terminate()
            proc.wait(300)
    return 0


if __name__ == "__main__":
    sys.exit(main())
