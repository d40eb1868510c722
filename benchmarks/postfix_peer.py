"""A private Postfix instance on a loopback port that accepts mail and discards it or delivers it to a Maildir.

This is Debian's stock ``postfix`` (smtpd, cleanup, qmgr, ...) with its own
``config_directory``, ``queue_directory`` and ``data_directory`` under one temp
dir, so it never touches ``/etc/postfix`` or the system queue.  It listens on
``127.0.0.1:PORT`` only, accepts mail for the benchmark's recipient domain
with no checks at all (no SPF/DKIM/DMARC, no RBLs, no reverse lookups), makes
every message durable in its queue before the ``250`` as Postfix always does,
and then, by ``delivery``:

* ``"discard"`` -- "delivers" everything to the ``discard:`` transport;
* ``"maildir"`` -- delivers the benchmark domain through ``virtual(8)`` into
  one catch-all Maildir, :attr:`PostfixPeer.maildir` (``virtual_mailbox_base``
  under the temp dir, owned by ``nobody``), as the gateway's local default
  delivers into its catch-all Maildir.  Postfix's fsync behaviour is left at
  its default: the queue file and each Maildir file are fsynced.

Nothing can be relayed anywhere: every other transport is ``discard``.

Use it from Python::

    with PostfixPeer(port) as peer:    # set up, start, wait for the banner
        ...                            # drive 127.0.0.1:port
                                       # stopped and removed on exit, error or Ctrl-C

or from a shell (starts it, prints the address, runs until Ctrl-C/SIGTERM)::

    sudo .venv/bin/python benchmarks/postfix_peer.py [--port 2526] [--domain bench.test] [--delivery maildir]

Postfix's master must be started as root.  When ``postfix`` is not installed
(``apt-get install postfix``; choose "No configuration") or we are not root,
:func:`unavailable_reason` says why and the benchmark skips this peer.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from _scratch import scratch_folder

LOOPBACK = "127.0.0.1"
POSTFIX_CANDIDATES = ("/usr/sbin/postfix", "/usr/local/sbin/postfix")
INSTALL_HINT = "apt-get install postfix (debconf: 'No configuration'; the benchmark runs its own instance)"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
COMMAND_TIMEOUT = 60.0

MAIN_CF = """\
# Private benchmark instance -- written by benchmarks/postfix_peer.py, removed on exit.
compatibility_level = 3.6
config_directory = {config}
queue_directory = {queue}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.bench.test
mydomain = bench.test
myorigin = $myhostname
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
mydestination =
relay_recipient_maps =
local_recipient_maps =
alias_maps =
alias_database =
# Everything else goes to the discard transport: nothing ever leaves this host.
default_transport = discard:
relay_transport = discard:
local_transport = discard:
transport_maps =
{delivery}fast_flush_domains =
# Minimal restrictions, no checks: this is the "no checks at all" peer.
smtpd_client_restrictions =
smtpd_helo_restrictions =
smtpd_sender_restrictions =
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_recipient_restrictions = permit
smtpd_data_restrictions =
smtpd_peername_lookup = no
smtpd_milters =
non_smtpd_milters =
smtpd_tls_security_level = none
smtpd_banner = $myhostname ESMTP
message_size_limit = 67108864
biff = no
append_dot_mydomain = no
disable_dns_lookups = yes
# Postfix's default in_flow_delay (1s) makes smtpd pause when the queue manager
# lags behind arrivals: a deliberate throttle, seen as ~1 s p99 spikes and a lower
# accept rate under a benchmark burst.  0s measures smtpd at full speed (the
# stronger peer); pass in_flow_delay="1s" for Debian's stock behaviour.
in_flow_delay = {in_flow_delay}
smtp_dns_support_level = disabled
# Log to a file in the temp dir (there may be no syslog); read by diagnostics().
maillog_file = {log}
maillog_file_prefixes = {root}
"""

DISCARD_CF = """\
relay_domains = {domain}
virtual_transport = discard:
"""

MAILDIR_CF = """\
# The benchmark domain is a virtual mailbox domain: virtual(8) delivers every
# recipient (catch-all "@domain") into one Maildir (the trailing slash).
relay_domains =
virtual_mailbox_domains = {domain}
virtual_transport = virtual
virtual_mailbox_base = {mail}
virtual_mailbox_maps = texthash:{config}/virtual_mailboxes
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
virtual_minimum_uid = 100
# Per Maildir file; virtual(8) refuses to start if it is below message_size_limit.
virtual_mailbox_limit = $message_size_limit
"""

DELIVERIES = ("discard", "maildir")
MAILBOX_OWNER = "nobody"
"""The unprivileged user virtual(8) delivers as (it refuses uids below virtual_minimum_uid)."""

MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command
{listen} inet n       -       n       -       -       smtpd
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixError(Exception):
    """The private Postfix instance could not be set up, started or checked."""


def find_postfix() -> str | None:
    """Return the path of the ``postfix`` command, or None when Postfix is not installed."""
    found = shutil.which("postfix")
    if found:
        return found
    return next((path for path in POSTFIX_CANDIDATES if os.access(path, os.X_OK)), None)


def unavailable_reason() -> str:
    """Empty when a private instance can run here; otherwise one line saying why not and what to do."""
    if find_postfix() is None:
        return f"postfix is not installed -- install it with: {INSTALL_HINT}"
    if os.geteuid() != 0:
        return "postfix needs root to start its master daemon -- run the benchmark as root"
    return ""


def version() -> str:
    """The installed Postfix's ``mail_version`` (empty when Postfix is not installed)."""
    postfix = find_postfix()
    if postfix is None:
        return ""
    postconf = Path(postfix).with_name("postconf")
    try:
        done = subprocess.run([str(postconf), "-d", "-h", "mail_version"], capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def port_is_free(port: int) -> bool:
    """True when nothing listens on ``127.0.0.1:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def read_banner(port: int, timeout: float) -> bytes:
    """Connect to ``127.0.0.1:port``, read the first reply line, say QUIT; raise OSError on failure."""
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
        banner = sock.makefile("rb").readline()
        with contextlib.suppress(OSError):
            sock.sendall(b"QUIT\r\n")
    return banner


def pid_alive(pid: int) -> bool:
    """True when process ``pid`` exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class PostfixPeer:
    """One private Postfix instance: ``start()`` sets it up and waits for 220, ``stop()`` removes all of it.

    ``stop()`` is idempotent and safe in ``finally`` blocks; the context
    manager calls it on any exit, including ``KeyboardInterrupt``.
    """

    def __init__(self, port: int = 0, domain: str = "bench.test", in_flow_delay: str = "0s",
                 delivery: str = "discard") -> None:
        if delivery not in DELIVERIES:
            raise PostfixError(f"delivery must be one of {', '.join(DELIVERIES)}, not {delivery!r}")
        self.port = port or free_port()
        self.domain = domain
        self.in_flow_delay = in_flow_delay
        self.delivery = delivery
        self.postfix = find_postfix() or "postfix"
        self.root: Path | None = None
        self.master_pid: int | None = None

    # ---------------------------------------------------------------- layout

    @property
    def config_dir(self) -> Path:
        """``<root>/etc``: main.cf and master.cf."""
        return self._root() / "etc"

    @property
    def queue_dir(self) -> Path:
        """``<root>/queue``: the mail queue (owned by ``postfix``)."""
        return self._root() / "queue"

    @property
    def log_path(self) -> Path:
        """``<root>/postfix.log``: the instance's ``maillog_file``."""
        return self._root() / "postfix.log"

    @property
    def maildir(self) -> Path:
        """``<root>/mail/<domain>/``: the catch-all Maildir of ``delivery="maildir"``."""
        return self._root() / "mail" / self.domain

    def _root(self) -> Path:
        if self.root is None:
            raise PostfixError("instance not set up")
        return self.root

    # ---------------------------------------------------------------- lifecycle

    def setup(self) -> None:
        """Create the temp dir, write main.cf/master.cf, and let Postfix create and check its directories."""
        if reason := unavailable_reason():
            raise PostfixError(reason)
        if not port_is_free(self.port):
            raise PostfixError(f"{LOOPBACK}:{self.port} is already in use")
        self.root = scratch_folder("smtpbench-postfix-")
        self.root.chmod(0o755)  # postfix daemons (uid postfix) must traverse it
        self.config_dir.mkdir(mode=0o755)
        self.queue_dir.mkdir(mode=0o755)  # postfix chdirs here first; "check" creates the rest
        data_dir = self.root / "data"
        (self.config_dir / "main.cf").write_text(MAIN_CF.format(
            config=self.config_dir, queue=self.queue_dir, data=data_dir, domain=self.domain,
            log=self.log_path, root=self.root, in_flow_delay=self.in_flow_delay,
            delivery=self._delivery_cf(),
        ))
        (self.config_dir / "master.cf").write_text(MASTER_CF.format(listen=f"{LOOPBACK}:{self.port}".ljust(9)))
        # post-install creates the queue subdirectories and data dir, owned by postfix, per postfix-files.
        self._postfix("set-permissions")

    def _delivery_cf(self) -> str:
        """The main.cf lines of the delivery mode; for a Maildir, also its base dir and mailbox map."""
        if self.delivery == "discard":
            return DISCARD_CF.format(domain=self.domain)
        owner = pwd.getpwnam(MAILBOX_OWNER)
        base = self._root() / "mail"
        base.mkdir(mode=0o755)
        os.chown(base, owner.pw_uid, owner.pw_gid)  # virtual(8) creates the Maildir as that user
        (self.config_dir / "virtual_mailboxes").write_text(f"@{self.domain} {self.domain}/\n")
        return MAILDIR_CF.format(domain=self.domain, mail=base, config=self.config_dir,
                                 uid=owner.pw_uid, gid=owner.pw_gid)

    def start(self) -> None:
        """Set up (if needed), ``postfix -c DIR start``, and wait until smtpd greets with 220."""
        if self.root is None:
            self.setup()
        self._postfix("start")
        self.master_pid = self._read_master_pid()
        self._wait_for_banner(time.monotonic() + START_TIMEOUT)

    def stop(self) -> None:
        """``postfix -c DIR stop`` and make sure the master is gone (SIGKILL as a last resort); the temp dir goes when the run ends."""
        if self.root is None:
            return
        try:
            if self.master_pid is None:
                self.master_pid = self._read_master_pid()
            if self.master_pid is not None:
                with contextlib.suppress(PostfixError):
                    self._postfix("stop")
                self._wait_master_exit(STOP_TIMEOUT)
        finally:
            self.root = None
            self.master_pid = None

    def diagnostics(self) -> str:
        """The last lines of the instance's log, to explain a failure."""
        if self.root is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-25:])

    def __enter__(self) -> PostfixPeer:
        """Start the instance (tearing it down again if start-up fails)."""
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """Stop and remove the instance."""
        self.stop()

    # ---------------------------------------------------------------- internals

    def _postfix(self, *args: str) -> str:
        """Run ``postfix -c <config_dir> ARGS``; raise :class:`PostfixError` with its output on failure."""
        cmd = [self.postfix, "-c", str(self.config_dir), *args]
        env = {**os.environ, "MAIL_CONFIG": str(self.config_dir)}
        try:
            done = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=COMMAND_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PostfixError(f"{' '.join(cmd)}: {exc}") from None
        output = (done.stdout + done.stderr).strip()
        if done.returncode != 0:
            raise PostfixError(f"postfix {' '.join(args)} failed ({done.returncode}): {output[-800:]}")
        return output

    def _read_master_pid(self) -> int | None:
        """The master daemon's pid from ``queue/pid/master.pid`` (None when absent or unreadable)."""
        try:
            return int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _wait_for_banner(self, deadline: float) -> None:
        """Poll the port until it greets with 220; raise :class:`PostfixError` with the log tail if not."""
        last = "no attempt"
        while time.monotonic() < deadline:
            if self.master_pid is not None and not pid_alive(self.master_pid):
                break
            try:
                banner = read_banner(self.port, 2.0)
                if banner.startswith(b"220"):
                    return
                last = f"banner {banner[:60]!r}"
            except OSError as exc:
                last = f"connect: {exc}"
            time.sleep(0.1)
        raise PostfixError(f"postfix on {LOOPBACK}:{self.port} not ready ({last})\n{self.diagnostics()}")

    def _wait_master_exit(self, timeout: float) -> None:
        """Wait for the master to exit after ``postfix stop``; SIGKILL it (and its children) if it lingers."""
        pid = self.master_pid
        if pid is None:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(os.getpgid(pid), signal.SIGKILL)  # master runs in its own session
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    """Run a private instance until Ctrl-C or SIGTERM (or, with ``--check``, just prove it starts)."""
    parser = argparse.ArgumentParser(description="private Postfix that discards or stores all mail (127.0.0.1 only)")
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--domain", default="bench.test", help="recipient domain to accept (default bench.test)")
    parser.add_argument("--in-flow-delay", default="0s",
                        help="Postfix in_flow_delay (default 0s: no arrival throttle; Postfix's own default is 1s)")
    parser.add_argument("--delivery", choices=DELIVERIES, default="discard",
                        help="discard: the discard: transport (default); maildir: virtual(8) into one Maildir")
    parser.add_argument("--check", action="store_true", help="start, print the banner, stop, exit")
    args = parser.parse_args(argv)
    if reason := unavailable_reason():
        print(f"postfix_peer: {reason}", file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGINT):  # both unwind like Ctrl-C, through the with block
        signal.signal(sig, signal.default_int_handler)
    try:
        with PostfixPeer(args.port, args.domain, args.in_flow_delay, args.delivery) as peer:
            banner = read_banner(peer.port, 5.0).decode(errors="replace").strip()
            where = f"; mail in {peer.maildir}" if peer.delivery == "maildir" else ""
            print(f"postfix peer on {LOOPBACK}:{peer.port} ({peer.root}{where}): {banner}", flush=True)
            if not args.check:
                signal.pause()
    except PostfixError as exc:
        print(f"postfix_peer: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
