"""SMTP accept benchmark: sesmail-gateway versus a bare aiosmtpd server that discards mail.

Measures, per target and message size, accepted messages per second and the
p50/p99 accept latency -- from sending ``MAIL FROM`` to receiving the final
``250`` after the DATA terminator -- with the same load client (N concurrent
connections, each reusing its session for many transactions).

Targets:

* ``gateway`` -- ``python -m sesmail_gateway serve --config <tmp>`` with a fresh
  data dir (durable spool, sqlite rules, file archive, maildir catch-all) and
  a loopback DNS stub answering NXDOMAIN, so SPF/DMARC never leave the host;
* ``bare`` -- ``benchmarks/discard_server.py`` (aiosmtpd, ``handle_DATA`` returns 250);
* ``--target HOST:PORT`` -- any SMTP server already listening on loopback
  (then only that one is measured).

Every target is started fresh for each message size, so the gateway's
delivery backlog from one size does not bleed into the next.  Everything
talks to 127.0.0.1 only; subprocesses and temp dirs are cleaned up on exit,
error, Ctrl-C or SIGTERM.  Run::

    .venv/bin/python benchmarks/smtp_accept.py [--connections 20] [--sizes 4096,102400] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

from _smtpload import Address, MessageTemplate, Result, check_loopback, run_load

LOOPBACK = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parent.parent
DISCARD_SERVER = Path(__file__).resolve().parent / "discard_server.py"
READY_TIMEOUT = 30.0
EXTERNAL_READY_TIMEOUT = 5.0
STOP_GRACE = 10.0


class BenchError(Exception):
    """A target could not be started or the run could not proceed."""


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def parse_address(text: str) -> Address:
    """Parse ``HOST:PORT`` (or just ``PORT``) into a loopback address."""
    host, _, port = text.rpartition(":")
    host = (host or LOOPBACK).strip("[]")
    if host == "localhost":
        host = LOOPBACK
    try:
        check_loopback(host)
        return host, int(port)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def size_label(size: int) -> str:
    """Render a byte count the way people read it: ``4 KiB``, ``100 KiB``, ``1.5 MiB``."""
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            value = size / scale
            return f"{value:.0f} {unit}" if value.is_integer() else f"{value:.1f} {unit}"
    return f"{size} B"


def default_count(size: int) -> int:
    """Messages to measure for ``size`` when ``--messages`` is not given (keeps a run ~1-2 minutes)."""
    if size <= 16 * 1024:
        return 2000
    if size <= 256 * 1024:
        return 500
    return 100


async def wait_for_banner(address: Address, deadline: float, alive: Callable[[], str] | None = None) -> None:
    """Poll until ``address`` accepts a connection and greets with ``220``, or raise :class:`BenchError`.

    ``alive`` is an optional zero-argument callable returning an error string
    when the server process died, so start-up failures are reported at once.
    """
    last = "no attempt"
    while time.monotonic() < deadline:
        if alive is not None and (died := alive()):
            raise BenchError(died)
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(*address), 2.0)
        except (OSError, TimeoutError) as exc:
            last = f"connect: {exc or type(exc).__name__}"
            await asyncio.sleep(0.1)
            continue
        try:
            banner = await asyncio.wait_for(reader.readline(), 5.0)
            if banner.startswith(b"220"):
                writer.write(b"QUIT\r\n")
                with contextlib.suppress(OSError, TimeoutError):
                    await asyncio.wait_for(reader.readline(), 2.0)
                return
            last = f"banner {banner[:60]!r}"
        except (OSError, TimeoutError) as exc:
            last = f"banner: {exc or type(exc).__name__}"
        finally:
            writer.close()
        await asyncio.sleep(0.1)
    raise BenchError(f"{address[0]}:{address[1]} not ready ({last})")


# --------------------------------------------------------------------------- loopback DNS stub


class _NxdomainProtocol(asyncio.DatagramProtocol):
    """Answer every DNS query with NXDOMAIN (no network, no cache misses upstream)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport to reply on."""
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        reply = nxdomain_reply(data)
        if reply:
            self.transport.sendto(reply, addr)


def nxdomain_reply(query: bytes) -> bytes | None:
    """Build an NXDOMAIN response echoing the first question of ``query`` (None if malformed)."""
    if len(query) < 12:
        return None
    qid, flags, qdcount = struct.unpack("!HHH", query[:6])
    end = 12
    while end < len(query) and query[end] != 0:
        end += 1 + query[end]
    end += 5  # root label + QTYPE + QCLASS
    if qdcount < 1 or end > len(query):
        return None
    reply_flags = 0x8000 | (flags & 0x7900) | 0x0080 | 3  # QR, opcode+RD copied, RA, NXDOMAIN
    return struct.pack("!HHHHHH", qid, reply_flags, 1, 0, 0, 0) + query[12:end]


class DnsStub:
    """A UDP DNS server on 127.0.0.1 that says NXDOMAIN to everything."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0

    async def start(self) -> str:
        """Start listening; return ``"127.0.0.1:PORT"`` for ``checks.dns_servers``."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(_NxdomainProtocol, local_addr=(LOOPBACK, 0))
        self.transport = transport
        self.port = int(transport.get_extra_info("sockname")[1])
        return f"{LOOPBACK}:{self.port}"

    def stop(self) -> None:
        """Close the socket."""
        if self.transport is not None:
            self.transport.close()
            self.transport = None


# --------------------------------------------------------------------------- targets


class Target:
    """Something to benchmark: a name, an SMTP address, and a lifecycle.

    ``start()`` must return only once the server greets with 220; ``stop()``
    must be idempotent and safe to call from ``finally`` blocks.
    """

    name = "target"

    def __init__(self) -> None:
        self.address: Address = (LOOPBACK, 0)

    async def start(self) -> None:
        """Bring the server up (no-op for an external server)."""

    def stop(self) -> None:
        """Tear the server down and remove anything it left behind."""

    def diagnostics(self) -> str:
        """Return text that helps explain a failure (e.g. the tail of a server log)."""
        return ""


class ExternalTarget(Target):
    """A server someone else runs; we only check that it answers."""

    def __init__(self, address: Address, name: str = "external") -> None:
        super().__init__()
        self.address = address
        self.name = name

    async def start(self) -> None:
        """Verify the server greets with 220 (it is already running, so do not wait long)."""
        await wait_for_banner(self.address, time.monotonic() + EXTERNAL_READY_TIMEOUT)


class SubprocessTarget(Target):
    """A server started as a child process in its own process group and temp dir."""

    def __init__(self) -> None:
        super().__init__()
        self.tmpdir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: IO[bytes] | None = None

    def command(self) -> list[str]:
        """Return the argv of the server; ``self.tmpdir`` and ``self.address`` are set."""
        raise NotImplementedError

    async def prepare(self) -> None:
        """Hook run before the process starts (write config, start helpers)."""

    async def start(self) -> None:
        """Create the temp dir, spawn the process, and wait for its 220 banner."""
        self.tmpdir = Path(tempfile.mkdtemp(prefix=f"smtpbench-{self.name}-"))
        self.address = (LOOPBACK, free_port())
        await self.prepare()
        self.log = open(self.tmpdir / "server.log", "wb")  # noqa: SIM115 -- closed in stop()
        env = {k: v for k, v in os.environ.items() if not k.startswith("SESMAIL_GATEWAY_")}
        self.proc = subprocess.Popen(
            self.command(), cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        await wait_for_banner(self.address, time.monotonic() + READY_TIMEOUT, self._died)

    def _died(self) -> str:
        """Return an error string if the process has exited, else empty."""
        if self.proc is not None and (code := self.proc.poll()) is not None:
            return f"{self.name} exited with status {code} during start-up"
        return ""

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL it after a grace period, then delete the temp dir."""
        if self.proc is not None:
            terminate_group(self.proc, STOP_GRACE)
            self.proc = None
        if self.log is not None:
            self.log.close()
            self.log = None
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None

    def diagnostics(self) -> str:
        """Return the last lines of the server's combined stdout/stderr."""
        if self.tmpdir is None or not (self.tmpdir / "server.log").exists():
            return ""
        if self.log is not None:
            self.log.flush()
        lines = (self.tmpdir / "server.log").read_bytes().decode("utf-8", "replace").splitlines()
        return "\n".join(lines[-25:])


def terminate_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """Stop ``proc`` and every process in its group: SIGTERM, wait ``grace`` seconds, then SIGKILL."""
    pgid = proc.pid  # start_new_session=True makes the child a group leader
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; make sure no worker it forked survives.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        return


class DiscardTarget(SubprocessTarget):
    """``benchmarks/discard_server.py``: aiosmtpd with a handler that drops every message."""

    name = "bare"

    def command(self) -> list[str]:
        """Run the discard server on our chosen port."""
        return [sys.executable, str(DISCARD_SERVER), "--port", str(self.address[1])]


GATEWAY_CONFIG = """\
[gateway]
hostname = "mx.bench.test"
domains = ["bench.test"]
data_dir = "{data_dir}"

[smtp]
listen = ["{smtp}"]
workers = {workers}
max_connections = 1000
max_connections_per_ip = 1000

[checks]
dns_servers = ["{dns}"]
dns_timeout = 2.0

[rules]
url = "sqlite://rules.db"

[archive]
url = "file://archive"

[metrics]
listen = "{metrics}"
"""


class GatewayTarget(SubprocessTarget):
    """``python -m sesmail_gateway serve`` with a fresh data dir and a loopback DNS stub."""

    name = "gateway"

    def __init__(self, workers: int = 0) -> None:
        super().__init__()
        self.dns = DnsStub()
        self.workers = workers
        self.config_path: Path | None = None

    async def prepare(self) -> None:
        """Start the DNS stub and write the TOML config into the temp dir."""
        assert self.tmpdir is not None
        dns = await self.dns.start()
        data_dir = self.tmpdir / "data"
        data_dir.mkdir()
        self.config_path = self.tmpdir / "gateway.toml"
        self.config_path.write_text(GATEWAY_CONFIG.format(
            data_dir=data_dir, smtp=f"{LOOPBACK}:{self.address[1]}", dns=dns,
            metrics=f"{LOOPBACK}:{free_port()}", workers=self.workers,
        ))

    def command(self) -> list[str]:
        """Run the gateway's ``serve`` subcommand."""
        return [sys.executable, "-m", "sesmail_gateway", "serve", "--config", str(self.config_path)]

    def stop(self) -> None:
        """Stop the gateway, then the DNS stub."""
        super().stop()
        self.dns.stop()


# --------------------------------------------------------------------------- measuring


@dataclass
class Row:
    """One line of the results table."""

    target: str
    size: int
    result: Result | None = None
    failure: str = ""
    warmup_errors: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        """Machine-readable form (NaN latencies become null)."""
        res = self.result
        out: dict[str, Any] = {"target": self.target, "size": self.size, "failure": self.failure or None}
        if res is not None:
            out.update(
                attempted=res.attempted, accepted=res.accepted, errors=dict(res.errors),
                error_count=res.error_count, seconds=round(res.seconds, 3),
                msg_per_s=round(res.rate, 1), p50_ms=_finite(res.percentile_ms(50)),
                p99_ms=_finite(res.percentile_ms(99)), warmup_errors=self.warmup_errors,
            )
        return out


def _finite(value: float) -> float | None:
    """Round a latency for JSON, mapping NaN to None."""
    return None if math.isnan(value) else round(value, 2)


async def measure(target: Target, size: int, count: int, connections: int, warmup: int) -> Row:
    """Start ``target``, warm it up, measure ``count`` messages of ``size`` bytes, stop it."""
    row = Row(target.name, size)
    message = MessageTemplate.build(size)
    progress(f"{target.name} {size_label(size)}: starting")
    try:
        await target.start()
        if warmup:
            row.warmup_errors = dict((await run_load(target.address, message, connections, warmup)).errors)
        progress(f"{target.name} {size_label(size)}: sending {count} messages over {connections} connections")
        row.result = await run_load(target.address, message, connections, count)
    except BenchError as exc:
        row.failure = str(exc)
        if details := target.diagnostics():
            progress(f"{target.name} log tail:\n{details}")
    finally:
        target.stop()
    return row


def progress(text: str) -> None:
    """Progress goes to stderr so stdout carries only the results."""
    print(f"[smtp-bench] {text}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- reporting


def format_table(rows: Sequence[Row]) -> str:
    """Render the results as an aligned text table."""
    header = ("target", "size", "messages", "errors", "seconds", "msg/s", "p50 ms", "p99 ms")
    lines = [header]
    for row in rows:
        res = row.result
        if res is None:
            lines.append((row.target, size_label(row.size), "-", "-", "-", "-", "-", f"FAILED: {row.failure}"))
            continue
        lines.append((
            row.target, size_label(row.size), str(res.accepted), str(res.error_count), f"{res.seconds:.2f}",
            f"{res.rate:.1f}", f"{res.percentile_ms(50):.2f}", f"{res.percentile_ms(99):.2f}",
        ))
    widths = [max(len(line[i]) for line in lines if not line[i].startswith("FAILED")) for i in range(len(header))]
    out = []
    for line in lines:
        cells = [cell.rjust(widths[i]) if i >= 2 and not cell.startswith("FAILED") else cell.ljust(widths[i])
                 for i, cell in enumerate(line)]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)


def ratios(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Gateway/bare ratios per size for throughput and latency percentiles."""
    by_key = {(row.target, row.size): row.result for row in rows if row.result is not None}
    out = []
    for size in sorted({row.size for row in rows}):
        gateway, bare = by_key.get(("gateway", size)), by_key.get(("bare", size))
        if gateway is None or bare is None or not bare.accepted or not gateway.accepted:
            continue
        out.append({
            "size": size,
            "msg_per_s": round(gateway.rate / bare.rate, 3),
            "p50": round(gateway.percentile_ms(50) / bare.percentile_ms(50), 2),
            "p99": round(gateway.percentile_ms(99) / bare.percentile_ms(99), 2),
        })
    return out


def format_report(rows: Sequence[Row], connections: int) -> str:
    """The full human-readable report: table, ratios, and every error kind seen."""
    parts = [f"SMTP accept benchmark -- {connections} connections, latency = MAIL FROM .. final 250", "",
             format_table(rows)]
    if ratio_rows := ratios(rows):
        parts += ["", "gateway/bare:"]
        parts += [f"  {size_label(r['size']):>8}: msg/s x{r['msg_per_s']:.3f}   p50 x{r['p50']:.2f}   "
                  f"p99 x{r['p99']:.2f}" for r in ratio_rows]
    errors = [(row, kind, n) for row in rows if row.result for kind, n in sorted(row.result.errors.items())]
    warm = [(row, kind, n) for row in rows for kind, n in sorted(row.warmup_errors.items())]
    if errors or warm:
        parts += ["", "errors (non-250 replies and connection failures):"]
        parts += [f"  {row.target} {size_label(row.size)}: {kind} x{n}" for row, kind, n in errors]
        parts += [f"  {row.target} {size_label(row.size)} (warm-up): {kind} x{n}" for row, kind, n in warm]
    return "\n".join(parts)


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--target", type=parse_address, metavar="HOST:PORT",
                        help="measure only this already-running SMTP server (loopback only)")
    parser.add_argument("--connections", type=int, default=20, help="concurrent connections (default 20)")
    parser.add_argument("--messages", type=int, metavar="N",
                        help="messages per size (default 2000 up to 16 KiB, 500 up to 256 KiB, else 100)")
    parser.add_argument("--sizes", default="4096,102400", help="comma-separated message sizes in bytes")
    parser.add_argument("--warmup", type=int, default=50, help="warm-up messages before each measurement")
    parser.add_argument("--timeout", type=float, default=300.0, help="global time limit in seconds")
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    parser.add_argument("--workers", type=int, default=0,
                        help="gateway smtp.workers (default 0: one per core, the gateway's own default)")
    return parser


def make_targets(args: argparse.Namespace) -> list[Target]:
    """Fresh target objects for one message size."""
    if args.target is not None:
        return [ExternalTarget(args.target)]
    return [DiscardTarget(), GatewayTarget(args.workers)]


async def run(args: argparse.Namespace, sizes: list[int]) -> list[Row]:
    """Measure every target at every size within the global timeout."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    rows: list[Row] = []
    async with asyncio.timeout(args.timeout):
        for size in sizes:
            count = args.messages or default_count(size)
            for target in make_targets(args):
                rows.append(await measure(target, size, count, args.connections, args.warmup))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; exit 0 when everything was accepted, 1 on errors, 2 on failures, 130 on interrupt."""
    args = build_parser().parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        print("smtp_accept: --sizes must be comma-separated integers", file=sys.stderr)
        return 2
    if not sizes or min(sizes) < 256 or args.connections < 1 or (args.messages is not None and args.messages < 1):
        print("smtp_accept: need sizes >= 256, --connections >= 1, --messages >= 1", file=sys.stderr)
        return 2
    try:
        rows = asyncio.run(run(args, sizes))
    except TimeoutError:
        print(f"smtp_accept: global timeout of {args.timeout:.0f}s reached", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("smtp_accept: interrupted", file=sys.stderr)
        return 130
    print(format_report(rows, args.connections))
    if args.json:
        print(json.dumps({"connections": args.connections, "results": [r.as_json() for r in rows],
                          "ratios": ratios(rows)}, indent=2))
    if any(row.failure for row in rows):
        return 2
    return 1 if any(row.result and row.result.error_count for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
