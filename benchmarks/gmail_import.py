"""Gmail delivery throughput: the deliverer alone, and the whole gateway end to end.

Google cannot be reached from here, so the local Gmail-speaking HTTPS server
of the tests (``tests/gmailserver.py``) runs in its own process and answers
the real google-api-python-client and google-auth.

1. **Deliverer**: ``GmailDeliverer`` in this process, 16 concurrent
   deliveries (threads, as the runner runs them), 4 KiB and 1 MiB messages.
   Prints delivered messages per second, this process's CPU per delivered
   message, the server's CPU per import, and peak RSS.
2. **End to end**: the daemon (``serve``, SMTP workers = cores) with one
   route per recipient to 256 Gmail accounts (Gmail's per-user quota of 10
   imports a second would otherwise be the limit), 20 SMTP connections.
   Prints the SMTP accept rate and the end-to-end rate (first MAIL FROM to
   the last import answered); the delivery path keeps up when the two match.

Run::

    .venv/bin/python benchmarks/gmail_import.py [--messages N] [--sizes 4096,1048576] [--skip-e2e]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from _smtpload import MessageTemplate, run_load

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

ACCOUNTS = 256
CONCURRENCY = 16
CONNECTIONS = 20


class GmailServer:
    """``python -m tests.gmailserver`` in a subprocess."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.gmailserver"], cwd=REPO,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        info = json.loads(self.proc.stdout.readline())
        self.url: str = info["url"]
        self.token_uri: str = info["token_uri"]
        self.cert: str = info["cert"]
        self.client: dict[str, Any] = info["client"]

    def stats(self) -> dict[str, Any]:
        import ssl

        context = ssl.create_default_context(cafile=self.cert)
        with urllib.request.urlopen(self.url + "_stats", context=context, timeout=10) as response:
            return dict(json.loads(response.read()))

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(10)


def write_tokens(folder: Path, client: dict[str, Any]) -> None:
    from sesmail_gateway.tokens import StoredToken
    from sesmail_gateway.tokens.file import FileTokenStore

    store = FileTokenStore(folder)
    for index in range(ACCOUNTS):
        account = f"acct{index}@gmail.test"
        store.put(StoredToken(account, f"1//open:{account}", time.time()))
    (folder / "client_secret.json").write_text(json.dumps(client))


def message_file(folder: Path, size: int) -> Path:
    template = MessageTemplate.build(size)
    raw = template.render(1)[:-3]  # without the final ".\r\n"
    path = folder / f"message-{size}.eml"
    path.write_bytes(b"Received: from bench\r\n" + raw.replace(b"\r\n..", b"\r\n."))
    return path


def bench_deliverer(server: GmailServer, tmp: Path, size: int, count: int) -> dict[str, float]:
    from sesmail_gateway.deliver.gmail import GmailDeliverer
    from sesmail_gateway.message import Delivery, QueueItem, StoredMessage
    from sesmail_gateway.tokens import ClientCredentials
    from sesmail_gateway.tokens.file import FileTokenStore

    store = FileTokenStore(tmp / "tokens")
    client = ClientCredentials.from_json(server.client)
    deliverer = GmailDeliverer(store=store, client=lambda: client, api_endpoint=server.url,
                               token_uri=server.token_uri)
    message = StoredMessage.at(message_file(tmp, size))
    item = QueueItem(id="BENCH", sender="bench@sender.test", recipients=[])

    def one(seq: int) -> None:
        account = f"acct{seq % ACCOUNTS}@gmail.test"
        deliverer.deliver(item, Delivery("forward-to-gmail", account, [f"user{seq}@bench.test"]), message)

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(one, range(ACCOUNTS)))  # warm-up: one access token per account, the client built
        before = server.stats()
        cpu, wall = time.process_time(), time.perf_counter()
        list(pool.map(one, range(count)))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    after = server.stats()
    imported = after["imports"] - before["imports"]
    assert imported == count, f"{imported} imports for {count} deliveries"
    return {"size": size, "messages": count, "msg_per_s": count / wall, "cpu_ms_per_msg": cpu * 1000 / count,
            "server_cpu_ms_per_msg": (after["cpu"] - before["cpu"]) * 1000 / count,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


class Spread(MessageTemplate):
    """The benchmark template, one recipient per account in turn."""

    def recipient(self, seq: int) -> str:
        return f"user{seq % ACCOUNTS}@bench.test"


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def bench_end_to_end(server: GmailServer, tmp: Path, size: int, count: int) -> dict[str, float]:
    from sesmail_gateway.routes import Action, Rule
    from sesmail_gateway.routes.sqlite import SqliteRouteStore
    from tests.dnsserver import TestDNSServer

    data = tmp / f"e2e-{size}"
    data.mkdir()
    write_tokens(data / "tokens", server.client)
    routes = SqliteRouteStore(data / "rules.db")
    for index in range(ACCOUNTS):
        routes.put(Rule(f"user{index}@bench.test", (Action("forward-to-gmail", f"acct{index}@gmail.test"),)))
    routes.close()
    dns = TestDNSServer().start()  # no records: every name is NXDOMAIN
    dns_address = dns.address
    smtp_port, metrics_port = free_port(), free_port()
    config = data / "gateway.toml"
    config.write_text(f"""
[gateway]
hostname = "mx.bench.test"
domains = ["bench.test"]
data_dir = "{data}"
[smtp]
listen = ["127.0.0.1:{smtp_port}"]
workers = 0
[checks]
dns_servers = ["{dns_address}"]
dmarc = "monitor"
[gmail]
api_endpoint = "{server.url}"
token_uri = "{server.token_uri}"
[metrics]
listen = "127.0.0.1:{metrics_port}"
""")
    env = dict(os.environ, REQUESTS_CA_BUNDLE=server.cert, HTTPLIB2_CA_CERTS=server.cert)
    log = (data / "gateway.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "sesmail_gateway", "serve", "--config", str(config)],
                            cwd=REPO, env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", smtp_port), timeout=1) as sock:
                    if sock.recv(100).startswith(b"220"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"gateway did not start: {(data / 'gateway.log').read_text()[-2000:]}")
            await asyncio.sleep(0.1)
        template = Spread.build(size)
        await run_load(("127.0.0.1", smtp_port), template, CONNECTIONS, ACCOUNTS)  # warm-up
        while server.stats()["imports"] < ACCOUNTS:  # every account has its access token
            await asyncio.sleep(0.05)
        before = server.stats()["imports"]
        workers = children(proc.pid)
        main_cpu, workers_cpu = cpu_seconds(proc.pid), sum(cpu_seconds(w) for w in workers)
        started = time.perf_counter()
        result = await run_load(("127.0.0.1", smtp_port), template, CONNECTIONS, count)
        accepted_at = time.perf_counter()
        while server.stats()["imports"] - before < result.accepted:
            if time.perf_counter() - accepted_at > 300:
                raise RuntimeError("imports did not catch up within 300 s")
            await asyncio.sleep(0.02)
        finished = time.perf_counter()
        main_cpu = cpu_seconds(proc.pid) - main_cpu
        workers_cpu = sum(cpu_seconds(w) for w in workers) - workers_cpu
    finally:
        proc.terminate()
        proc.wait(30)
        dns.stop()
    return {"size": size, "messages": result.accepted, "errors": result.error_count,
            "accept_msg_per_s": result.rate, "end_to_end_msg_per_s": result.accepted / (finished - started),
            "drain_after_last_250_s": finished - accepted_at,
            "runner_cpu_ms_per_msg": main_cpu * 1000 / max(result.accepted, 1),
            "smtp_workers_cpu_ms_per_msg": workers_cpu * 1000 / max(result.accepted, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=0, help="per size (default 2000 at 4 KiB, 300 at 1 MiB)")
    parser.add_argument("--sizes", default="4096,1048576")
    parser.add_argument("--skip-e2e", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    server = GmailServer()
    os.environ["REQUESTS_CA_BUNDLE"] = os.environ["HTTPLIB2_CA_CERTS"] = server.cert
    rows: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="gmail-bench-") as folder:
            tmp = Path(folder)
            write_tokens(tmp / "tokens", server.client)
            for size in sizes:
                count = args.messages or (2000 if size <= 65536 else 300)
                row = bench_deliverer(server, tmp, size, count)
                rows.append({"kind": "deliverer", **row})
                print(f"deliverer  {size:>8} B  {row['msg_per_s']:7.1f} msg/s  {row['cpu_ms_per_msg']:6.2f} ms CPU/msg"
                      f"  (server {row['server_cpu_ms_per_msg']:.2f} ms/msg)  peak RSS {row['peak_rss_mb']:.0f} MB",
                      flush=True)
            if not args.skip_e2e:
                for size in sizes:
                    count = args.messages or (2000 if size <= 65536 else 300)
                    row = asyncio.run(bench_end_to_end(server, tmp, size, count))
                    rows.append({"kind": "end-to-end", **row})
                    print(f"end-to-end {size:>8} B  accept {row['accept_msg_per_s']:7.1f} msg/s  end-to-end "
                          f"{row['end_to_end_msg_per_s']:7.1f} msg/s  (ratio "
                          f"{row['end_to_end_msg_per_s'] / row['accept_msg_per_s']:.2f}, imports done "
                          f"{row['drain_after_last_250_s']:.2f} s after the last 250, {row['errors']} errors); "
                          f"CPU per message: runner process {row['runner_cpu_ms_per_msg']:.2f} ms, SMTP workers "
                          f"{row['smtp_workers_cpu_ms_per_msg']:.2f} ms", flush=True)
    finally:
        server.stop()
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
