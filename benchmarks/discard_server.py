"""A bare aiosmtpd server that accepts and discards every message: the benchmark's baseline.

Usage::

    python benchmarks/discard_server.py --port 2525 [--checks-dns 127.0.0.1:5353]

With ``--checks-dns`` it runs the gateway's checks (SPF at RCPT, then
DKIM, ARC, DMARC and the reverse name at DATA, through the gateway's own
``Inspector`` and that DNS server) on every message before discarding it,
and answers 550 when a check fails: what the checks alone cost, without
the gateway's spool, routing or delivery. It is the benchmark's measure of
the limit the checks set on this machine.

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
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

HOST = "127.0.0.1"


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


async def serve(port: int, hostname: str, checks_dns: str = "") -> None:
    """Serve until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    handler = CheckingHandler(checks_dns, hostname) if checks_dns else DiscardHandler()

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
    parser.add_argument("--processes", type=int, default=1,
                        help="server processes sharing the port (SO_REUSEPORT), one per gateway SMTP worker")
    args = parser.parse_args()
    if args.checks_dns:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    children = []
    for _ in range(args.processes - 1):
        pid = os.fork()
        if pid == 0:
            asyncio.run(serve(args.port, args.hostname, args.checks_dns))
            os._exit(0)
        children.append(pid)
    try:
        asyncio.run(serve(args.port, args.hostname, args.checks_dns))
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
