"""Real scanners from Debian's packages, run by the tests on 127.0.0.1: rspamd, spamd, clamd.

Each gets a private configuration in a temporary folder and a free port,
runs as a child process in its own process group, and counts as started
once it answers its own protocol's ping. Nothing reaches the network:

- rspamd resolves through a test DNS server on 127.0.0.1 (so its maps and
  RBL look-ups fail locally and at once), modules that talk to outside
  services are switched off, and a tiny public-suffix list stands in for
  the full one (compiling that takes ~20 s and only matters for URL checks).
  Its ``http_headers`` module is on, so it takes our SPF/DKIM/DMARC verdicts.
- spamd runs with the rules the package ships (GTUBE among them), ``-L``
  (no network tests) and no Bayes; ``sa-update`` is never needed.
- clamd loads only a signature database that the tests write: one ``.ndb``
  body signature for :data:`VIRUS_PATTERN` (the official databases cannot
  be downloaded here).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import free_port, wait_for
from tests.dnsserver import TestDNSServer

GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
VIRUS_PATTERN = b"SESMAIL-GATEWAY-TEST-VIRUS-SIGNATURE-7f3a9c"
VIRUS_NAME = "Sesmail.Test.Signature.UNOFFICIAL"  # clamd adds .UNOFFICIAL to signatures of its own databases

# rspamd modules that would ask outside services (or Redis) for an answer.
RSPAMD_OFF = (
    "fuzzy_check", "rbl", "surbl", "phishing", "asn", "mx_check", "url_redirector", "rspamd_update",
    "reputation", "ratelimit", "greylist", "neural", "replies", "dcc", "spamassassin", "antivirus",
    "external_services", "history_redis", "clickhouse", "elastic", "metric_exporter", "p0f", "emails",
    "multimap", "hfilter",
)
SPAMD_SITE = """\
use_bayes 0
bayes_auto_learn 0
dns_available no
skip_rbl_checks 1
"""


class ScannerProcess:
    """One scanner daemon started by the tests."""

    def __init__(self, name: str, argv: list[str], probe: Callable[[], bool], folder: Path, address: str,
                 cleanup: Callable[[], None] | None = None) -> None:
        self.name, self.argv, self.probe, self.folder, self.address = name, argv, probe, folder, address
        self.log_path = folder / f"{name}.out"
        self.proc: subprocess.Popen[bytes] | None = None
        self._cleanup = cleanup
        self.unix_socket = ""

    def start(self, timeout: float = 120) -> ScannerProcess:
        binary = shutil.which(self.argv[0]) or shutil.which(self.argv[0], path="/usr/sbin:/usr/bin")
        assert binary, f"{self.argv[0]} is not installed (.ci/run installs it from Debian's packages)"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([binary, *self.argv[1:]], stdout=log, stderr=log, cwd=self.folder,
                                         start_new_session=True)
        wait_for(self._ready, timeout=timeout, interval=0.1)
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
        try:
            return self.probe()
        except OSError:
            return False

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM to its process group (rspamd and spamd have workers), then wait for it."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        # Workers that outlived the main process.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections (the kernel's backlog) but nothing answers."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGCONT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def close(self) -> None:
        self.stop()
        if self._cleanup is not None:
            self._cleanup()


def _root_args(user_flag: str, group_flag: str | None = None, user: str = "root") -> list[str]:
    """Daemons that refuse root, or drop to a user, are told which one only when we are root."""
    if os.geteuid() != 0:
        return []
    return [user_flag, user] + ([group_flag, user] if group_flag else [])


# -- rspamd --------------------------------------------------------------------------------------


def rspamd(folder: Path, dns: TestDNSServer, *, workers: int = 1,
           cleanup: Callable[[], None] | None = None) -> ScannerProcess:
    port = free_port()
    local = folder / "local"
    (local / "local.d").mkdir(parents=True)
    for sub in ("db", "run", "log"):
        (folder / sub).mkdir()
    (folder / "tld.dat").write_text("com\norg\nnet\ntest\nexample\n")
    (folder / "rspamd.conf").write_text(f"""\
.include "$CONFDIR/common.conf"
options {{
    pidfile = "$RUNDIR/rspamd.pid";
    .include "$CONFDIR/options.inc"
    .include(try=true; priority=1,duplicate=merge) "$LOCAL_CONFDIR/local.d/options.inc"
}}
logging {{
    type = "file";
    filename = "$LOGDIR/rspamd.log";
    level = "notice";
}}
worker "normal" {{
    bind_socket = "127.0.0.1:{port}";
    count = {workers};
    mime = true;
}}
""")
    (local / "local.d" / "options.inc").write_text(f"""\
dns {{
    nameserver = ["{dns.address}"];
    timeout = 0.5s;
    retransmits = 1;
}}
url_tld = "{folder / 'tld.dat'}";
""")
    for module in RSPAMD_OFF:
        (local / "local.d" / f"{module}.conf").write_text("enabled = false;\n")
    (local / "local.d" / "http_headers.conf").write_text("enabled = true;\n")
    argv = ["rspamd", "-f", *_root_args("-u", "-g"), "-c", str(folder / "rspamd.conf"),
            "--var", f"LOCAL_CONFDIR={local}", "--var", f"DBDIR={folder / 'db'}",
            "--var", f"RUNDIR={folder / 'run'}", "--var", f"LOGDIR={folder / 'log'}"]
    return ScannerProcess("rspamd", argv, lambda: _rspamd_ping(port), folder, f"http://127.0.0.1:{port}",
                          cleanup=cleanup)


def _rspamd_ping(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", "/ping")
        return connection.getresponse().read().strip() == b"pong"
    except http.client.HTTPException:
        return False
    finally:
        connection.close()


# -- spamd ---------------------------------------------------------------------------------------


def spamd(folder: Path) -> ScannerProcess:
    # spamd's children run as nobody: they must be able to read the site folder.
    site_root = Path(tempfile.mkdtemp(prefix="sesmail-spamd-"))
    site_root.chmod(0o755)
    site = site_root / "site"
    site.mkdir(mode=0o755)
    for pre in Path("/etc/spamassassin").glob("*.pre"):
        shutil.copy(pre, site / pre.name)  # the plugin loaders; the rules come from /usr/share/spamassassin
    (site / "local.cf").write_text(SPAMD_SITE)
    port = free_port()
    argv = ["spamd", f"--listen=127.0.0.1:{port}", "--max-children=2", "--min-children=1", "-L", "-x",
            *([f"--username={'nobody'}"] if os.geteuid() == 0 else []),
            f"--siteconfigpath={site}", "--configpath=/usr/share/spamassassin", "--syslog=stderr",
            f"--pidfile={folder / 'spamd.pid'}", f"--helper-home-dir={site_root}"]
    return ScannerProcess("spamd", argv, lambda: _spamd_ping(port), folder, f"127.0.0.1:{port}",
                          cleanup=lambda: shutil.rmtree(site_root, ignore_errors=True))


def _spamd_ping(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(b"PING SPAMC/1.5\r\n\r\n")
        return b"PONG" in sock.recv(100)


# -- clamd ---------------------------------------------------------------------------------------


def clamd(folder: Path) -> ScannerProcess:
    database = folder / "db"
    database.mkdir()
    # .ndb: Name:TargetType:Offset:HexSignature; target 0 = any file, offset * = anywhere.
    (database / "sesmail-test.ndb").write_text(f"Sesmail.Test.Signature:0:*:{VIRUS_PATTERN.hex()}\n")
    port = free_port()
    (folder / "clamd.conf").write_text(f"""\
DatabaseDirectory {database}
TCPSocket {port}
TCPAddr 127.0.0.1
LocalSocket {folder / 'clamd.sock'}
Foreground yes
LogFile {folder / 'clamd.log'}
PidFile {folder / 'clamd.pid'}
StreamMaxLength 30M
{'User root' if os.geteuid() == 0 else ''}
""")
    argv = ["clamd", "-c", str(folder / "clamd.conf")]
    process = ScannerProcess("clamd", argv, lambda: _clamd_ping(port), folder, f"127.0.0.1:{port}")
    process.unix_socket = str(folder / "clamd.sock")
    return process


def _clamd_ping(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(b"zPING\0")
        return sock.recv(100).startswith(b"PONG")


def started(make: Callable[[], ScannerProcess]) -> ScannerProcess:
    """Start a scanner, timing its start-up for the log of a slow CI run."""
    began = time.monotonic()
    process = make().start()
    print(f"{process.name} ready at {process.address} in {time.monotonic() - began:.1f}s")
    return process
