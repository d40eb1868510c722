"""A bare aiosmtpd server that accepts and discards every message: the benchmark's baseline.

Usage::

    python benchmarks/discard_server.py --port 2525 [--checks-dns 127.0.0.1:5353]

With ``--checks-dns`` it runs the gateway's checks (SPF at RCPT, then
DKIM, ARC, DMARC and the reverse name at DATA, through the gateway's own
``Inspector`` and that DNS server) on every message before discarding it,
and answers 550 when a check fails: what the checks alone cost, without
the gateway's spool, routing or delivery. It is the benchmark's measure of
the limit the checks set on this machine.

With ``--durable DIR`` as well it does, after the checks, the least durable
work the gateway's local default must do for each message, and nothing
else: the message is appended to this process's journal and fdatasynced
(one append and one fdatasync for every message that arrived meanwhile)
before the 250; then the event loop writes it into a dated archive folder
and links that file into a Maildir (``DIR/mail/PID/new``), as the gateway
does, each process in folders of its own; every second a thread fsyncs
the files written since, then both folders (the gateway's checkpoint). No
metadata, no logs, no metrics, no routing, no inter-process hand-off, no
journal deletion: the floor under any design of that work on this machine
(the ``bare+durable`` row).

It listens on 127.0.0.1 only, runs aiosmtpd's ``SMTP`` protocol directly on the
main event loop (no ``Controller`` thread), and stops cleanly on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

HOST = "127.0.0.1"
CHECKPOINT_SECONDS = 1.0  # as the gateway's spool checkpoint


class DiscardHandler:
    """aiosmtpd handler: every recipient is accepted (default) and every message is dropped."""

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Accept the message and throw it away."""
        return "250 OK"


class CheckingHandler:
    """The gateway's checks on every message, then the message is dropped (550 when a check fails)."""

    def __init__(self, dns: str, hostname: str) -> None:
        from sesmail_gateway.checks.inspector import Inspector
        from sesmail_gateway.config import ChecksConfig

        self.inspector = Inspector(config=ChecksConfig(dns_servers=(dns,), dns_timeout=2.0, dmarc="enforce"),
                                   hostname=hostname)

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          options: list[str]) -> str:
        if not envelope.rcpt_tos:  # SPF once per transaction, while the client sends the rest
            envelope.spf = asyncio.ensure_future(self.inspector.check_sender(
                ip=session.peer[0], helo=session.host_name or "", mail_from=envelope.mail_from or ""))
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        spf = await envelope.spf
        inspection = await self.inspector.inspect(envelope.original_content, ip=session.peer[0],
                                                  helo=session.host_name or "", mail_from=envelope.mail_from or "",
                                                  spf=spf)
        return "250 OK" if inspection.decision.action == "accept" else "550 5.7.1 checks failed"


class DurableHandler(CheckingHandler):
    """The checks, then the message journaled (fdatasync before the 250) and delivered to a Maildir and an archive."""

    def __init__(self, dns: str, hostname: str, root: Path) -> None:
        super().__init__(dns, hostname)
        # Folders of this process's own: processes creating files in one folder wait for each other
        # on the folder's lock (the gateway creates all its files from one thread).
        self.maildir = root / "mail" / str(os.getpid())
        self.archive = root / "archive" / time.strftime("%Y-%m-%d") / str(os.getpid())
        for folder in (self.maildir / "tmp", self.maildir / "new", self.maildir / "cur", self.archive, root / "journal"):
            folder.mkdir(parents=True, exist_ok=True)
        self.journal = os.open(root / "journal" / f"{os.getpid()}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.waiting: list[tuple[bytes, asyncio.Future[None]]] = []
        self.flushing = False
        self.serial = 0
        self.written: list[Path] = []
        self.checkpoints: asyncio.Task[None] | None = None

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        reply = await super().handle_DATA(server, session, envelope)
        if not reply.startswith("250"):
            return reply
        if self.checkpoints is None:
            self.checkpoints = asyncio.ensure_future(self._checkpoints())
        future = asyncio.get_running_loop().create_future()
        self.waiting.append((envelope.original_content, future))
        if not self.flushing:
            self.flushing = True
            asyncio.ensure_future(self._flush())
        await future
        return reply

    async def _flush(self) -> None:
        """Group commit: whoever arrives while a flush runs joins the next one."""
        while self.waiting:
            batch, self.waiting = self.waiting, []
            await asyncio.to_thread(self._append, [data for data, _ in batch])
            for _, future in batch:
                future.set_result(None)
            for data, _ in batch:
                self._deliver(data)
        self.flushing = False

    def _append(self, messages: list[bytes]) -> None:
        os.writev(self.journal, [b"".join(len(m).to_bytes(4, "big") + m for m in messages)])
        os.fdatasync(self.journal)

    def _deliver(self, data: bytes) -> None:
        """Write the message once into the archive and link it into the Maildir, on the loop (no hand-off);
        the journal holds it until the next checkpoint has fsynced its file."""
        self.serial += 1
        name = f"{os.getpid()}.{self.serial}"
        path = self.archive / f"{name}.eml"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        os.write(fd, data)
        os.close(fd)
        os.link(path, self.maildir / "new" / name)
        self.written.append(path)

    async def _checkpoints(self) -> None:
        """Every second, in a thread: fsync the files written since, then both folders (fsyncing a batch of
        new files costs about half the CPU of fsyncing each as it is written)."""
        while True:
            await asyncio.sleep(CHECKPOINT_SECONDS)
            written, self.written = self.written, []
            if written:
                await asyncio.to_thread(self._sync, written)

    def _sync(self, written: list[Path]) -> None:
        for path in written:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            os.fsync(fd)
            os.close(fd)
        for folder in (self.archive, self.maildir / "new"):
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            os.fsync(fd)
            os.close(fd)
        # Every message journaled before these files is durable in them now; a real journal would
        # drop its segment here (the floor needs no recovery, so it only truncates).
        os.ftruncate(self.journal, 0)


async def serve(port: int, hostname: str, checks_dns: str = "", durable: Path | None = None) -> None:
    """Serve until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    handler: Any = (DurableHandler(checks_dns, hostname, durable) if durable is not None
                    else CheckingHandler(checks_dns, hostname) if checks_dns else DiscardHandler())

    def factory() -> Any:
        return SMTP(handler, hostname=hostname, ident="discard-server", data_size_limit=64 * 1024 * 1024)

    server = await loop.create_server(factory, HOST, port, reuse_address=True, reuse_port=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    """Parse ``--port`` / ``--hostname`` and run the server."""
    parser = argparse.ArgumentParser(description="aiosmtpd server that discards every message (127.0.0.1 only)")
    parser.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1")
    parser.add_argument("--hostname", default="bare.bench.test", help="name in the banner and EHLO reply")
    parser.add_argument("--checks-dns", default="", metavar="HOST:PORT",
                        help="run the gateway's checks on every message, resolving through this DNS server")
    parser.add_argument("--durable", type=Path, metavar="DIR",
                        help="with --checks-dns: journal each message (fdatasync) before the 250, then write it "
                             "into DIR/archive and link it into DIR/mail, the files fsynced once a second")
    parser.add_argument("--processes", type=int, default=1,
                        help="server processes sharing the port (SO_REUSEPORT), one per gateway SMTP worker")
    args = parser.parse_args()
    if args.durable is not None and not args.checks_dns:
        parser.error("--durable needs --checks-dns")
    if args.checks_dns:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    children = []
    for _ in range(args.processes - 1):
        pid = os.fork()
        if pid == 0:
            asyncio.run(serve(args.port, args.hostname, args.checks_dns, args.durable))
            os._exit(0)
        children.append(pid)
    try:
        asyncio.run(serve(args.port, args.hostname, args.checks_dns, args.durable))
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
