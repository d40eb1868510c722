"""SMTP accept benchmark: sesmail-gateway with and without authentication checks, a bare aiosmtpd server, and Postfix.

Measures, per target and message size, accepted messages per second and the
p50/p99 accept latency -- from sending ``MAIL FROM`` to receiving the final
``250`` after the DATA terminator -- with the same load client (N concurrent
connections, each reusing its session for many transactions).

Targets (the default ``--mode all`` runs all seven, per size, in one run):

* ``bare`` -- ``benchmarks/discard_server.py`` (aiosmtpd, ``handle_DATA`` returns 250);
* ``bare+checks`` -- the same server running the gateway's checks (as many
  processes as the gateway has SMTP workers), sent the signed mail below;
* ``bare+durable`` -- the floor: ``bare+checks`` plus the least durable work
  of the gateway's local default (journal fdatasync before the 250, one
  archive file linked into a Maildir, fsynced each second; see
  ``discard_server.py``). Every accepted message must reach its Maildir;
* ``gateway`` -- ``python -m sesmail_gateway serve`` with a fresh data dir
  (durable spool, sqlite rules, file archive, maildir catch-all), sent plain
  mail from ``sender.test``, a domain with no auth records: the checks still
  run but every lookup is a cheap NXDOMAIN (spf/dkim/dmarc = none);
* ``gateway+checks`` -- the same gateway sent mail from ``bench-sender.test``:
  DKIM-signed (RSA-2048 key generated at start, signed once per size; the
  Message-ID stays unsigned so each transaction gets a unique one), SPF
  ``v=spf1 ip4:127.0.0.1 -all``, DMARC ``p=reject`` with ``checks.dmarc =
  "enforce"``.  After the run the gateway's ``/metrics`` must show
  dkim=pass, spf=pass and dmarc=pass for every accepted message, or the row
  fails;
* ``postfix`` -- a private Debian Postfix on a loopback port (see
  ``benchmarks/postfix_peer.py``), no checks, queueing to ``discard:``; it is
  sent the same signed mail as ``gateway+checks``; ``in_flow_delay = 0s``
  unless ``--postfix-in-flow-delay`` says otherwise (Postfix's own 1 s
  arrival throttle would make it the weaker peer).  Skipped, with a hint,
  when Postfix is not installed or we are not root;
* ``postfix+maildir`` -- the same private Postfix doing the gateway's work:
  smtpd -> queue -> ``virtual(8)`` into one Maildir, Postfix's fsyncs at
  their default; sent the same signed mail.  After the run every accepted
  message must be a file in that Maildir, or the row fails;
* ``--target HOST:PORT`` -- any SMTP server already listening on loopback
  (then only that one is measured; ``--checks`` sends it the signed mail).

Every gateway row, too, fails unless every accepted message reached its
Maildir within two minutes of the last 250.  For the gateway and Postfix
rows the measured phase starts once the warm-up's messages are delivered and
ends once the measured ones are; the report gives CPU ms per accepted
message per process group (gateway: the main process with its runner, and
the SMTP workers; Postfix: per daemon), and with ``--strace`` the system
calls per accepted message (``strace -c -f`` attached for that phase only;
it slows the server, so traced figures are not untraced rates).

``--mode basic`` runs bare + gateway; ``--mode checks`` (or ``--checks``)
runs gateway + gateway+checks; ``--mode floor`` runs bare, bare+checks,
bare+durable and gateway+checks.  ``--scan rspamd`` runs gateway against
``gateway+rspamd``: the same gateway with ``scan.rspamd_url`` pointing at a
private rspamd (Debian's package, started here on a loopback port with the
test suite's configuration: no network modules, DNS through the stub); after
the run ``/metrics`` must show one rspamd verdict, none an error, per
accepted message, or the row fails.  The tests' DNS server (``tests/dnsserver.py``) serves
the sender domain's TXT records to the gateway and NXDOMAIN for the rest;
the DKIM signature is verified through it before anything is measured.

Every target is started fresh for each message size, so a delivery backlog
from one size does not bleed into the next.  Everything talks to 127.0.0.1
only; subprocesses, Postfix and temp dirs are cleaned up on exit, error,
Ctrl-C or SIGTERM (the temp dirs stay with ``--keep-scratch``).  Run::

    .venv/bin/python benchmarks/smtp_accept.py [--mode all|basic|checks|floor] [--connections 20]
        [--sizes 4096,102400] [--messages N] [--workers N] [--json] [--strace] [--keep-scratch]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import IO, Any

import postfix_peer
from _authmail import SENDER_DOMAIN, AuthSetup, AuthSetupError, verify_against_stub
from _memory import TreeSampler
from _phase import PhaseMeter, gateway_group
from _procstat import ProcCpu
from _report import (
    AuthCounts,
    Commits,
    Row,
    all_verdicts_in,
    format_report,
    missing_passes,
    ratios,
    size_label,
)
from _scratch import keep_all, scratch_folder
from _smtpload import Address, MessageSource, MessageTemplate, check_loopback, run_load

LOOPBACK = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
from tests.dnsserver import TestDNSServer  # noqa: E402  (the one DNS test server, shared with the tests)

DISCARD_SERVER = Path(__file__).resolve().parent / "discard_server.py"
READY_TIMEOUT = 30.0
EXTERNAL_READY_TIMEOUT = 5.0
STOP_GRACE = 10.0
SETTLE_SECONDS = 0.5
"""Pause after ``sync`` between targets, so one target's disk writeback does not land in the next one's figures."""
MEMORY_SAMPLE_SECONDS = 1.0
"""How often the gateway's PSS is read under load: each read walks every page table of its processes."""
METRICS_SETTLE = 10.0
"""Seconds to wait for worker processes to relay their last auth verdicts to /metrics."""

RSPAMD_WORKERS = os.cpu_count() or 1
"""rspamd normal workers for ``--scan rspamd`` (rspamd's own advice: one per core)."""

MODES = {
    "all": ("bare", "bare+checks", "bare+durable", "gateway", "gateway+checks", "postfix", "postfix+maildir"),
    "basic": ("bare", "gateway"),
    "checks": ("gateway", "gateway+checks"),
    "floor": ("bare", "bare+checks", "bare+durable", "gateway+checks"),
}
LEGEND = {
    "bare": "aiosmtpd discard server (no spool, no checks)",
    "bare+checks": "aiosmtpd discard server running the gateway's checks only, one process per gateway SMTP worker "
                   "(same signed mail; no spool, no delivery)",
    "bare+durable": "bare+checks, then each message journaled (fdatasync) before the 250, written once into an archive "
                    "folder and linked into a Maildir, fsynced each second: the least work of the local default",
    "gateway": "gateway, sender domain without auth records (spf/dkim/dmarc = none, NXDOMAIN lookups)",
    "gateway+checks": "gateway, DKIM-signed mail, SPF pass, DMARC p=reject enforced (all must pass)",
    "postfix": "Debian Postfix smtpd -> queue -> discard:, no checks, in_flow_delay {delay} (same signed mail)",
    "postfix+maildir": "Debian Postfix smtpd -> queue -> virtual(8) into a Maildir, no checks, in_flow_delay {delay}",
    "gateway+rspamd": "gateway, plain mail, every message scanned by rspamd (/checkv2) before the 250",
    "external": "--target server, plain mail from sender.test",
    "external+signed": f"--target server, DKIM-signed mail from {SENDER_DOMAIN} (records only in our DNS stub)",
}


def legend(in_flow_delay: str) -> dict[str, str]:
    """:data:`LEGEND`, with the Postfix peer's settings and the installed Postfix version when there is one."""
    postfix = LEGEND["postfix"].format(delay=in_flow_delay)
    if version := postfix_peer.version():
        postfix = postfix.replace("Postfix", f"Postfix {version}", 1)
    maildir = LEGEND["postfix+maildir"].format(delay=in_flow_delay)
    if version:
        maildir = maildir.replace("Postfix", f"Postfix {version}", 1)
    return {**LEGEND, "postfix": postfix, "postfix+maildir": maildir}


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


def postfix_time(text: str) -> str:
    """Validate a Postfix time value such as ``0s``, ``1s`` or ``500ms``."""
    if not re.fullmatch(r"\d+(ms|s|m|h|d|w)?", text):
        raise argparse.ArgumentTypeError(f"not a Postfix time value: {text!r} (e.g. 0s, 1s)")
    return text


def default_count(size: int) -> int:
    """Messages to measure for ``size`` when ``--messages`` is not given (a default run stays under 3 minutes)."""
    if size <= 16 * 1024:
        return 5000
    if size <= 256 * 1024:
        return 1500
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


# --------------------------------------------------------------------------- workload


@dataclass
class Workload:
    """What every target of one run shares: the DNS stub, and the messages per size (signed once each)."""

    dns: TestDNSServer
    auth: AuthSetup
    plain: dict[int, MessageTemplate]
    signed: dict[int, MessageTemplate]

    @property
    def dns_server(self) -> str:
        """``"127.0.0.1:PORT"`` of the stub, for ``checks.dns_servers``."""
        return f"{LOOPBACK}:{self.dns.port}"

    def message(self, size: int, signed: bool) -> MessageSource:
        """The template to send at ``size``: DKIM-signed from the authenticated domain, or plain."""
        return (self.signed if signed else self.plain)[size]


async def prepare_workload(sizes: Sequence[int]) -> Workload:
    """Generate the DKIM key, sign one message per size, start the DNS stub, and prove a message verifies."""
    auth = AuthSetup.generate()
    dns = TestDNSServer({name: {"TXT": values} for name, values in auth.records().items()})
    try:
        dns.start()
        workload = Workload(dns, auth, {size: MessageTemplate.build(size) for size in sizes},
                            {size: auth.template(size) for size in sizes})
        for template in workload.signed.values():
            await asyncio.to_thread(verify_against_stub, auth, template, (LOOPBACK, dns.port))
    except (AuthSetupError, OSError, ValueError) as exc:
        dns.stop()
        raise BenchError(f"checks set-up: {exc}") from None
    except BaseException:
        dns.stop()
        raise
    progress(f"signed {len(sizes)} message(s) as {auth.sender} (s={auth.selector}, RSA-2048); "
             f"DKIM verifies through the DNS stub at {workload.dns_server}")
    return workload


# --------------------------------------------------------------------------- targets


class Target:
    """Something to benchmark: a name, an SMTP address, and a lifecycle.

    ``start()`` must return only once the server greets with 220; ``stop()``
    must be idempotent and safe to call from ``finally`` blocks.
    """

    name = "target"
    signed = False
    """Whether this target is sent the DKIM-signed mail from the authenticated domain."""

    def __init__(self) -> None:
        self.address: Address = (LOOPBACK, 0)
        self.meter: PhaseMeter | None = None
        """The server's figures for the measured phase, once ``before_load`` has started it."""

    def unavailable(self) -> str:
        """Non-empty when this target cannot run here (it is then reported as skipped, not failed)."""
        return ""

    async def start(self) -> None:
        """Bring the server up (no-op for an external server)."""

    async def before_load(self, row: Row) -> None:
        """Hook run after the warm-up, just before the measurement (e.g. start sampling the server)."""

    async def metered(self, row: Row, root: int, group: Callable[[ProcCpu], str], maildir: Path | None = None,
                      strace: bool = False) -> None:
        """Start this target's :class:`PhaseMeter` on the process tree under ``root`` (for ``before_load``)."""
        self.meter = PhaseMeter(root, group, maildir, strace)
        await self.meter.begin(row)

    async def after_load(self, row: Row) -> None:
        """Hook run after the measurement, before ``stop()``: collect server-side figures into ``row``
        (here: the meter's, which waits for the Maildir when there is one)."""
        if self.meter is not None:
            await self.meter.end(row)

    def stop(self) -> None:
        """Tear the server down and remove anything it left behind (here: detach the meter's strace)."""
        if self.meter is not None:
            self.meter.close()

    def diagnostics(self) -> str:
        """Return text that helps explain a failure (e.g. the tail of a server log)."""
        return ""


class ExternalTarget(Target):
    """A server someone else runs; we only check that it answers."""

    def __init__(self, address: Address, name: str = "external", signed: bool = False) -> None:
        super().__init__()
        self.address = address
        self.name = name
        self.signed = signed

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
        self.tmpdir = scratch_folder(f"smtpbench-{self.name.replace('+', '-')}-")
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
        """SIGTERM the process group, SIGKILL it after a grace period; the temp dir goes when the run ends."""
        super().stop()
        if self.proc is not None:
            terminate_group(self.proc, STOP_GRACE)
            self.proc = None
        if self.log is not None:
            self.log.close()
            self.log = None
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
    """``benchmarks/discard_server.py``: aiosmtpd with a handler that drops every message.

    With ``checks_dns`` (the ``bare+checks`` row) it first runs the gateway's checks on the
    signed mail: the rate the checks alone allow on this machine. With ``durable`` as well
    (the ``bare+durable`` row) it then journals each message before the 250, writes it once
    into an archive folder and links it into a Maildir, fsynced each second: the least work
    the gateway's local default does, with nothing else around it.
    """

    name = "bare"

    def __init__(self, checks_dns: str = "", processes: int = 1, durable: bool = False) -> None:
        super().__init__()
        self.checks_dns = checks_dns
        self.processes = processes
        self.durable = durable
        if checks_dns:
            self.name, self.signed = ("bare+durable" if durable else "bare+checks"), True

    def command(self) -> list[str]:
        """Run the discard server on our chosen port."""
        assert self.tmpdir is not None
        extra = ["--checks-dns", self.checks_dns, "--processes", str(self.processes)] if self.checks_dns else []
        if self.durable:
            extra += ["--durable", str(self.tmpdir / "durable")]
        return [sys.executable, str(DISCARD_SERVER), "--port", str(self.address[1]), *extra]

    async def before_load(self, row: Row) -> None:
        """Sample the server's processes (with ``durable``, once the warm-up is in the Maildir)."""
        assert self.proc is not None and self.tmpdir is not None
        await self.metered(row, self.proc.pid, lambda p: "servers",
                           self.tmpdir / "durable" / "mail" if self.durable else None)


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
dmarc = "enforce"

[rules]
url = "sqlite://rules.db"

[archive]
url = "file://archive"

[metrics]
listen = "{metrics}"
"""


class GatewayTarget(SubprocessTarget):
    """``python -m sesmail_gateway serve`` with a fresh data dir, resolving through the run's DNS stub.

    After the measurement it scrapes its own ``/metrics`` for the auth
    verdicts; with ``signed=True`` every accepted message must have passed
    DKIM, SPF and DMARC, or the row fails.
    """

    def __init__(self, dns_server: str, workers: int = 0, signed: bool = False, rspamd_url: str = "",
                 strace: bool = False) -> None:
        super().__init__()
        self.strace = strace
        self.name = "gateway+checks" if signed else "gateway+rspamd" if rspamd_url else "gateway"
        self.rspamd_url = rspamd_url
        self.signed = signed
        self.dns_server = dns_server
        self.workers = workers
        self.config_path: Path | None = None
        self.metrics_address: Address = (LOOPBACK, 0)

    async def prepare(self) -> None:
        """Write the TOML config into the temp dir."""
        assert self.tmpdir is not None
        data_dir = self.tmpdir / "data"
        data_dir.mkdir()
        self.metrics_address = (LOOPBACK, free_port())
        self.config_path = self.tmpdir / "gateway.toml"
        self.config_path.write_text(GATEWAY_CONFIG.format(
            data_dir=data_dir, smtp=f"{LOOPBACK}:{self.address[1]}", dns=self.dns_server,
            metrics=f"{LOOPBACK}:{self.metrics_address[1]}", workers=self.workers,
        ) + (f'\n[scan]\nrspamd_url = "{self.rspamd_url}"\n' if self.rspamd_url else ""))

    def command(self) -> list[str]:
        """Run the gateway's ``serve`` subcommand."""
        return [sys.executable, "-m", "sesmail_gateway", "serve", "--config", str(self.config_path)]

    async def before_load(self, row: Row) -> None:
        """Once the warm-up is delivered, sample the main process and its workers (and attach strace)."""
        assert self.proc is not None and self.tmpdir is not None
        await self.metered(row, self.proc.pid, gateway_group(self.proc.pid), self.tmpdir / "data" / "mail",
                           self.strace)

    async def after_load(self, row: Row) -> None:
        """Record the auth verdicts; for signed mail, fail the row unless all three checks passed every time."""
        await super().after_load(row)
        expected = row.total_accepted
        try:
            row.auth = await settled_auth_counts(self.metrics_address, expected)
        except OSError as exc:
            row.failure = f"could not scrape /metrics for the auth verdicts: {exc}"
            return
        if self.signed and (short := missing_passes(row.auth, expected)):
            row.failure = f"checks did not pass for every accepted message: {short}"
        with contextlib.suppress(OSError):
            row.commits = parse_commits(await asyncio.to_thread(fetch_metrics, self.metrics_address))
        if self.rspamd_url:
            scans = await settled_scan_counts(self.metrics_address, expected)
            # One verdict per accepted message (warm-up included), none an error.
            if scans.get("error", 0) or sum(scans.values()) < expected:
                row.failure = f"rspamd did not scan every accepted message: {scans}"


# --------------------------------------------------------------------------- gateway /metrics


_AUTH_SAMPLE = re.compile(r"^sesmail_auth_results_total\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)", re.MULTILINE)
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_auth_results(text: str) -> AuthCounts:
    """Extract ``sesmail_auth_results_total{method=..,result=..}`` samples from Prometheus text."""
    counts: AuthCounts = {}
    for match in _AUTH_SAMPLE.finditer(text):
        labels = dict(_LABEL.findall(match["labels"]))
        if "method" in labels and "result" in labels:
            counts.setdefault(labels["method"], {})[labels["result"]] = int(float(match["value"]))
    return counts


_SAMPLE = re.compile(r"^(?P<name>sesmail_spool_(?:fsync_seconds|commit_batch_size)_(?:bucket|count|sum))"
                     r"(?:\{le=\"(?P<le>[^\"]+)\"\})?\s+(?P<value>\S+)", re.MULTILINE)


def parse_commits(text: str) -> Commits:
    """The journal group commit histograms (``sesmail_spool_fsync_seconds``, ``..._commit_batch_size``)."""
    buckets: dict[float, float] = {}
    values: dict[str, float] = {}
    for match in _SAMPLE.finditer(text):
        if match["name"] == "sesmail_spool_fsync_seconds_bucket":
            buckets[float(match["le"])] = float(match["value"])
        else:
            values[match["name"]] = float(match["value"])
    count = int(values.get("sesmail_spool_fsync_seconds_count", 0))
    slower = {bound: count - int(n) for bound, n in buckets.items() if bound in (0.01, 0.025, 0.05)}
    return Commits(count, int(values.get("sesmail_spool_commit_batch_size_sum", 0)),
                   values.get("sesmail_spool_fsync_seconds_sum", 0.0), slower)


_SCAN_SAMPLE = re.compile(r'^sesmail_scan_results_total\{result="(?P<result>\w+)",scanner="rspamd"\}\s+(?P<value>\S+)',
                          re.MULTILINE)


def parse_scan_results(text: str) -> dict[str, int]:
    """rspamd's ``sesmail_scan_results_total`` samples by result."""
    return {m["result"]: int(float(m["value"])) for m in _SCAN_SAMPLE.finditer(text)}


async def settled_scan_counts(address: Address, expected: int) -> dict[str, int]:
    """Scrape rspamd's verdict counts until there are ``expected`` (workers relay them periodically)."""
    deadline = time.monotonic() + METRICS_SETTLE
    while True:
        counts = parse_scan_results(await asyncio.to_thread(fetch_metrics, address))
        if sum(counts.values()) >= expected or time.monotonic() >= deadline:
            return counts
        await asyncio.sleep(0.25)


def fetch_metrics(address: Address, timeout: float = 5.0) -> str:
    """GET ``http://127.0.0.1:PORT/metrics`` (never through a proxy)."""
    check_loopback(address[0])
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{address[0]}:{address[1]}/metrics", timeout=timeout) as response:
        return str(response.read().decode("utf-8", "replace"))


async def settled_auth_counts(address: Address, expected: int) -> AuthCounts:
    """Scrape the auth verdicts until dkim, spf and dmarc each have ``expected`` verdicts (or time runs out).

    Worker processes relay their counters to the main process periodically,
    so the last few verdicts may arrive a moment after the last 250.
    """
    deadline = time.monotonic() + METRICS_SETTLE
    while True:
        counts = parse_auth_results(await asyncio.to_thread(fetch_metrics, address))
        if all_verdicts_in(counts, expected) or time.monotonic() >= deadline:
            return counts
        await asyncio.sleep(0.25)


# --------------------------------------------------------------------------- postfix


class PostfixTarget(Target):
    """A private Postfix instance (``postfix_peer.PostfixPeer``): smtpd -> queue -> discard or Maildir, no checks."""

    name = "postfix"
    signed = True

    def __init__(self, domain: str = "bench.test", in_flow_delay: str = "0s", delivery: str = "discard",
                 strace: bool = False) -> None:
        super().__init__()
        self.domain = domain
        self.in_flow_delay = in_flow_delay
        self.peer: postfix_peer.PostfixPeer | None = None
        self.delivery = delivery
        self.name = "postfix+maildir" if delivery == "maildir" else "postfix"
        self.strace = strace

    def unavailable(self) -> str:
        """Why Postfix cannot run here (not installed, not root), with the install hint."""
        return postfix_peer.unavailable_reason()

    async def start(self) -> None:
        """Set up and start the instance (blocking for a few seconds: nothing else runs meanwhile)."""
        self.peer = postfix_peer.PostfixPeer(free_port(), self.domain, self.in_flow_delay, self.delivery)
        self.address = (LOOPBACK, self.peer.port)
        try:
            self.peer.start()
        except postfix_peer.PostfixError as exc:
            raise BenchError(f"postfix: {exc}") from None

    async def before_load(self, row: Row) -> None:
        """Once the warm-up is delivered, sample every Postfix daemon by name (and attach strace)."""
        assert self.peer is not None and self.peer.master_pid is not None
        maildir = self.peer.maildir if self.delivery == "maildir" else None
        await self.metered(row, self.peer.master_pid, lambda p: p.comm, maildir, self.strace)

    def stop(self) -> None:
        """``postfix stop`` and remove the temp dir."""
        super().stop()
        if self.peer is not None:
            self.peer.stop()
            self.peer = None

    def diagnostics(self) -> str:
        """The tail of the instance's maillog."""
        return self.peer.diagnostics() if self.peer is not None else ""


# --------------------------------------------------------------------------- measuring


async def measure(target: Target, message: MessageSource, count: int, connections: int, warmup: int,
                  dns: TestDNSServer | None = None) -> Row:
    """Start ``target``, warm it up, measure ``count`` messages, collect its figures, stop it.

    ``dns`` is the run's DNS stub: for the gateway the row records how many
    queries it answered during the measured phase (the cache is warm after warm-up).
    """
    row = Row(target.name, message.size)
    label = f"{target.name} {size_label(message.size)}"
    if reason := target.unavailable():
        row.skipped = reason
        progress(f"{label}: skipped -- {reason}")
        return row
    progress(f"{label}: starting")
    try:
        await target.start()
        # Idle now; the peak under load once a second (reading smaps costs the server's cores CPU too).
        memory = TreeSampler(target.proc.pid if isinstance(target, GatewayTarget) and target.proc else None,
                             interval=MEMORY_SAMPLE_SECONDS)
        if warmup:
            warm = await run_load(target.address, message, connections, warmup)
            row.warmup_accepted, row.warmup_errors = warm.accepted, dict(warm.errors)
        await target.before_load(row)
        progress(f"{label}: sending {count} messages over {connections} connections")
        queries = dns.query_count() if dns else 0
        memory.start()
        client = time.thread_time()  # the load runs on this thread; the memory sampler and DNS stub on others
        row.result = await run_load(target.address, message, connections, count)
        row.client_cpu = time.thread_time() - client
        row.memory = await memory.stop()
        if dns and isinstance(target, GatewayTarget):
            row.dns_queries = dns.query_count() - queries
        await target.after_load(row)
    except BenchError as exc:
        row.failure = str(exc)
    finally:
        if row.failure and (details := target.diagnostics()):
            progress(f"{target.name} failed: {row.failure}\n{target.name} log tail:\n{details}")
        target.stop()
    await settle_disk()
    return row


async def settle_disk() -> None:
    """Flush what the last target left behind (its spool, its deleted temp dir) before the next one starts.

    Without this, the next target's fsyncs queue behind the previous one's
    writeback, and a stall of a second shows up in the wrong row's p99.
    """
    await asyncio.to_thread(os.sync)
    await asyncio.sleep(SETTLE_SECONDS)


def progress(text: str) -> None:
    """Progress goes to stderr so stdout carries only the results."""
    print(f"[smtp-bench] {text}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--target", type=parse_address, metavar="HOST:PORT",
                        help="measure only this already-running SMTP server (loopback only)")
    parser.add_argument("--mode", choices=sorted(MODES), default="all",
                        help="all: bare, bare+checks, bare+durable, gateway, gateway+checks, postfix, postfix+maildir "
                             "(default); basic: bare, gateway; checks: gateway, gateway+checks; "
                             "floor: bare, bare+checks, bare+durable, gateway+checks")
    parser.add_argument("--checks", action="store_const", const="checks", dest="mode",
                        help="same as --mode checks (with --target: send it the DKIM-signed mail)")
    parser.add_argument("--connections", type=int, default=20, help="concurrent connections (default 20)")
    parser.add_argument("--messages", type=int, metavar="N",
                        help="messages per size (default 5000 up to 16 KiB, 1500 up to 256 KiB, else 100)")
    parser.add_argument("--sizes", default="4096,102400", help="comma-separated message sizes in bytes")
    parser.add_argument("--warmup", type=int, default=100,
                        help="warm-up messages before each measurement (also warms the DNS caches)")
    parser.add_argument("--timeout", type=float, default=600.0, help="global time limit in seconds")
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    parser.add_argument("--postfix-in-flow-delay", default="0s", metavar="TIME", type=postfix_time,
                        help="the Postfix peer's in_flow_delay (default 0s: full speed; 1s is Postfix's stock throttle)")
    parser.add_argument("--scan", choices=["rspamd"],
                        help="measure gateway against gateway+rspamd (accept rate with scanning off and on)")
    parser.add_argument("--strace", action="store_true",
                        help="count the gateway's and Postfix's system calls per message (strace -c -f; slows them)")
    parser.add_argument("--keep-scratch", action="store_true",
                        help="leave the servers' folders when the run ends, for a run right after this one: "
                             "removing thousands of files slows file creation for minutes on some filesystems")
    parser.add_argument("--workers", type=int, default=0,
                        help="gateway smtp.workers (default 0: one per core, the gateway's own default)")
    return parser


def make_targets(args: argparse.Namespace, workload: Workload) -> list[Target]:
    """Fresh target objects for one message size."""
    if args.target is not None:
        signed = args.mode == "checks"
        return [ExternalTarget(args.target, "external+signed" if signed else "external", signed)]
    factories: dict[str, Callable[[], Target]] = {
        "bare": DiscardTarget,
        # As many processes as the gateway has SMTP workers: the checks' own limit on this machine.
        "bare+checks": lambda: DiscardTarget(workload.dns_server, args.workers or os.cpu_count() or 1),
        "bare+durable": lambda: DiscardTarget(workload.dns_server, args.workers or os.cpu_count() or 1, durable=True),
        "gateway": lambda: GatewayTarget(workload.dns_server, args.workers, strace=args.strace),
        "gateway+checks": lambda: GatewayTarget(workload.dns_server, args.workers, signed=True, strace=args.strace),
        "postfix": lambda: PostfixTarget(in_flow_delay=args.postfix_in_flow_delay, strace=args.strace),
        "postfix+maildir": lambda: PostfixTarget(in_flow_delay=args.postfix_in_flow_delay, delivery="maildir",
                                                 strace=args.strace),
        "gateway+rspamd": lambda: GatewayTarget(workload.dns_server, args.workers, rspamd_url=args.rspamd_url,
                                                strace=args.strace),
    }
    names = ("gateway", "gateway+rspamd") if args.scan else MODES[args.mode]
    return [factories[name]() for name in names]


async def run(args: argparse.Namespace, sizes: list[int]) -> list[Row]:
    """Measure every target at every size within the global timeout."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    rows: list[Row] = []
    async with asyncio.timeout(args.timeout):
        workload = await prepare_workload(sizes)
        scanner = None
        try:
            if args.scan:
                scanner = await asyncio.to_thread(start_rspamd, workload)
                args.rspamd_url = scanner.address
            for size in sizes:
                count = args.messages or default_count(size)
                for target in make_targets(args, workload):
                    message = workload.message(size, target.signed)
                    rows.append(await measure(target, message, count, args.connections, args.warmup,
                                              workload.dns))
        finally:
            if scanner is not None:
                scanner.close()
            workload.dns.stop()
    return rows


def start_rspamd(workload: Workload) -> Any:
    """A private rspamd from Debian's package, configured as the test suite's (tests/scanners.py)."""
    sys.path.insert(0, str(REPO_ROOT))
    from tests.scanners import rspamd

    folder = scratch_folder("smtp-bench-rspamd-")
    process = rspamd(folder, SimpleNamespace(address=workload.dns_server), workers=RSPAMD_WORKERS,
                     cleanup=None)
    try:
        process.start()
    except (AssertionError, OSError) as exc:
        process.close()
        raise BenchError(f"rspamd: {exc}") from None
    progress(f"rspamd ready at {process.address}")
    return process


def parse_sizes(text: str) -> list[int] | None:
    """Parse ``--sizes``; None when it is not a list of integers."""
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; exit 0 when everything was accepted, 1 on errors, 2 on failures, 130 on interrupt."""
    args = build_parser().parse_args(argv)
    sizes = parse_sizes(args.sizes)
    if sizes is None:
        print("smtp_accept: --sizes must be comma-separated integers", file=sys.stderr)
        return 2
    if not sizes or min(sizes) < 256 or args.connections < 1 or (args.messages is not None and args.messages < 1):
        print("smtp_accept: need sizes >= 256, --connections >= 1, --messages >= 1", file=sys.stderr)
        return 2
    if args.keep_scratch:
        keep_all()
    try:
        rows = asyncio.run(run(args, sizes))
    except TimeoutError:
        print(f"smtp_accept: global timeout of {args.timeout:.0f}s reached", file=sys.stderr)
        return 2
    except BenchError as exc:
        print(f"smtp_accept: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("smtp_accept: interrupted", file=sys.stderr)
        return 130
    print(format_report(rows, args.connections, legend(args.postfix_in_flow_delay)))
    if args.json:
        print(json.dumps({"connections": args.connections, "mode": args.mode,
                          "results": [r.as_json() for r in rows], "ratios": ratios(rows)}, indent=2))
    if any(row.failure for row in rows):
        return 2
    return 1 if any(row.result and row.result.error_count for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
