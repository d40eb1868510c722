"""A bare aiosmtpd server that accepts and discards every message: the benchmark's baseline.

Usage::

    python benchmarks/discard_server.py --port 2525

It listens on 127.0.0.1 only, runs aiosmtpd's ``SMTP`` protocol directly on the
main event loop (no ``Controller`` thread), and stops cleanly on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

HOST = "127.0.0.1"


class DiscardHandler:
    """aiosmtpd handler: every recipient is accepted (default) and every message is dropped."""

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Accept the message and throw it away."""
        return "250 OK"


async def serve(port: int, hostname: str) -> None:
    """Serve until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    handler = DiscardHandler()

    def factory() -> Any:
        return SMTP(handler, hostname=hostname, ident="discard-server", data_size_limit=64 * 1024 * 1024)

    server = await loop.create_server(factory, HOST, port, reuse_address=True)
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
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.hostname))


if __name__ == "__main__":
    main()
