"""The one set of test helpers: a raw SMTP client, a clock, the DNS test server, the gateway fixture.

Tests import from here (``from tests.helpers import RawSMTP``); ``tests/conftest.py``
re-exports the gateway names so older imports (``from conftest import Gateway``)
keep working.
"""

from __future__ import annotations

import contextlib
import email
import email.message
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.dnsserver import TestDNSServer

__all__ = ["ROOT", "Clock", "Gateway", "RawSMTP", "TestDNSServer", "free_port", "parse", "run_cli", "toml_value",
           "wait_for", "without_auth_results", "write_config"]



class RawSMTP:
    """A line-level SMTP client: exact bytes out, reply lines in (smtplib rewrites
    line endings and dots, and cannot send bytes that are not UTF-8)."""

    def __init__(self, port: int, *, source: str = "127.0.0.1", timeout: float = 10) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))
        self.file = self.sock.makefile("rb")

    def line(self) -> str:
        """One reply line without CRLF; "" when the server has closed the connection."""
        return self.file.readline().decode().rstrip("\r\n")

    def reply(self) -> str:
        """One whole reply, multi-line replies joined with newlines."""
        lines = []
        while True:
            line = self.line()
            if not line:
                raise ConnectionError(f"connection closed after {lines!r}")
            lines.append(line)
            if line[3:4] != "-":
                return "\n".join(lines)

    def coded_reply(self) -> tuple[int, str]:
        """One whole reply as (code, text of every line joined with newlines)."""
        text = self.reply()
        return int(text[:3]), "\n".join(line[4:] for line in text.split("\n"))

    def command(self, line: bytes) -> str:
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def coded_command(self, line: bytes) -> tuple[int, str]:
        self.sock.sendall(line + b"\r\n")
        return self.coded_reply()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def rest(self) -> list[str]:
        """Every line until the server closes the connection."""
        lines = []
        while line := self.line():
            lines.append(line)
        return lines

    def closed(self) -> bool:
        try:
            return self.file.readline() == b""
        except ConnectionResetError:
            return True

    def start_transaction(self, recipient: bytes = b"alice@example.test") -> None:
        assert self.reply().startswith("220 mx.test ")
        assert self.command(b"EHLO client.test").startswith("250-mx.test")
        assert self.command(b"MAIL FROM:<sender@elsewhere.test>") == "250 2.1.0 Sender ok"
        assert self.command(b"RCPT TO:<" + recipient + b">") == "250 2.1.5 Recipient ok"

    def close(self) -> None:
        self.file.close()
        self.sock.close()


class Clock:
    """A settable clock for code that takes ``clock=`` (seconds, like ``time.time``)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# -- the gateway daemon ------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll until ``predicate()`` is truthy; fail the test with a clear message otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        time.sleep(interval)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    lines: list[str] = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in values.items())
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def run_cli(config: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the real ``sesmail-gateway`` command line in a subprocess."""
    result = subprocess.run(
        [sys.executable, "-m", "sesmail_gateway", *args, "--config", str(config)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"cli {args} failed ({result.returncode}): {result.stderr}")
    return result


class Gateway:
    """A gateway daemon in a subprocess, with its own data dir, config and ports."""

    def __init__(self, tmp: Path, overrides: dict[str, dict[str, Any]] | None = None) -> None:
        self.tmp = tmp
        self.data_dir = tmp / "data"
        # Every gateway asks its own DNS server on 127.0.0.1; tests add zones to it.
        self.dns = TestDNSServer()
        self.dns.start()
        self.port = free_port()
        self.metrics_port = free_port()
        sections: dict[str, dict[str, Any]] = {
            "gateway": {"hostname": "mx.test", "domains": ["example.test", "localhost"], "data_dir": str(self.data_dir)},
            "smtp": {"listen": [f"127.0.0.1:{self.port}"], "workers": 1},
            # SMTP-mechanics tests send bare test messages (no From); the policy tests set "enforce".
            "checks": {"dns_servers": [self.dns.address], "dns_timeout": 1.0, "dmarc": "monitor"},
            "delivery": {"backoff_base": "1s", "backoff_max": "2s"},
            "metrics": {"listen": f"127.0.0.1:{self.metrics_port}"},
        }
        for section, values in (overrides or {}).items():
            sections.setdefault(section, {}).update(values)
        self.config = write_config(tmp / "gateway.toml", sections)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = tmp / "gateway.log"

    @property
    def maildir(self) -> Path:
        return self.data_dir / "mail"

    def start(self, wait: bool = True) -> Gateway:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sesmail_gateway", "serve", "--config", str(self.config)],
            stdout=log, stderr=log, cwd=ROOT,
        )
        if wait:
            wait_for(self._ready, timeout=20, interval=0.05)
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"gateway exited with {self.proc.returncode}:\n{self.log()}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                return sock.recv(512).startswith(b"220")
        except OSError:
            return False

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 20) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("gateway did not stop on SIGTERM") from None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def kill_all(self) -> None:
        """kill -9 the daemon and every process below it (the workers' fork server, the workers)."""
        assert self.proc is not None
        # Freeze the tree first (until no new process appears): a worker forked meanwhile must not
        # outlive its killed parents and go on draining its sessions.
        frozen: list[str] = []
        while True:
            below, parents = [], [str(self.proc.pid)]
            while parents:
                parents = subprocess.run(["pgrep", "-P", ",".join(parents)], capture_output=True,
                                         text=True).stdout.split()
                below += parents
            found = [pid for pid in [str(self.proc.pid), *below] if pid not in frozen]
            if not found:
                break
            for pid in found:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGSTOP)
            frozen += found
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The mail-event JSON lines logged so far."""
        found = []
        for line in self.log().splitlines():
            if not line.startswith("{"):
                continue
            record = json.loads(line)
            if "event" in record and (name is None or record["event"] == name):
                found.append(record)
        return found

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_cli(self.config, *args, check=check)

    def delivered(self, maildir: Path | None = None) -> list[bytes]:
        folder = (maildir or self.maildir) / "new"
        if not folder.exists():
            return []
        return [p.read_bytes() for p in sorted(folder.iterdir())]

    def wait_delivered(self, count: int, maildir: Path | None = None, timeout: float = 15) -> list[bytes]:
        wait_for(lambda: len(self.delivered(maildir)) >= count, timeout=timeout)
        return self.delivered(maildir)


def without_auth_results(raw: bytes) -> bytes:
    """The delivered bytes without the gateway's leading Authentication-Results field."""
    if not raw.startswith(b"Authentication-Results:"):
        return raw
    end = raw.index(b"\r\n")
    while raw[end + 2: end + 3] in (b"\t", b" "):
        end = raw.index(b"\r\n", end + 2)
    return raw[end + 2:]


def parse(raw: bytes) -> email.message.Message:
    return email.message_from_bytes(raw)
