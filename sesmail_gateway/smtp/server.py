"""The listening side: sockets, TLS, session factory, start and drain."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl

from sesmail_gateway.config import Config, parse_hostport
from sesmail_gateway.smtp.handler import GatewayHandler
from sesmail_gateway.smtp.limits import Limits, LocalLimits
from sesmail_gateway.smtp.session import Gate, GatewaySMTP

log = logging.getLogger(__name__)


def tls_context(cert: str, key: str) -> ssl.SSLContext | None:
    if not cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def bind_socket(address: str, *, reuse_port: bool) -> socket.socket:
    """A listening socket; with ``reuse_port`` several worker processes share the port."""
    host, port = parse_hostport(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port and hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, exc.strerror, f"smtp.listen {address}") from None  # name the key
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class SMTPServer:
    def __init__(self, config: Config, handler: GatewayHandler, limits: Limits | None = None) -> None:
        self.config = config
        self.handler = handler
        self.gate = Gate(limits or LocalLimits(
            max_connections=config.smtp.max_connections,
            max_per_ip=config.smtp.max_connections_per_ip,
        ))
        self.tls = tls_context(config.smtp.tls_cert, config.smtp.tls_key)
        self._servers: list[asyncio.Server] = []

    def _session(self) -> GatewaySMTP:
        smtp = self.config.smtp
        return GatewaySMTP(
            self.handler,
            gate=self.gate,
            data_timeout=smtp.data_timeout,
            junk_limit=smtp.junk_command_limit,
            data_size_limit=smtp.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=self.config.gateway.hostname,
            ident="ESMTP sesmail-gateway",
            tls_context=self.tls,
            timeout=smtp.command_timeout,
            loop=asyncio.get_running_loop(),
        )

    async def start(self, sockets: list[socket.socket] | None = None) -> list[tuple[str, int]]:
        """Listen on ``smtp.listen`` (or on sockets handed in); returns the bound addresses."""
        loop = asyncio.get_running_loop()
        if sockets is None:
            reuse = self.config.smtp.workers != 1
            sockets = [bind_socket(a, reuse_port=reuse) for a in self.config.smtp.listen]
        bound: list[tuple[str, int]] = []
        for sock in sockets:
            server = await loop.create_server(self._session, sock=sock)
            self._servers.append(server)
            name = sock.getsockname()
            bound.append((str(name[0]), int(name[1])))
        log.info("smtp: listening on %s", ", ".join(f"{h}:{p}" for h, p in bound))
        return bound

    async def drain(self, timeout: float) -> None:
        """Refuse new sessions and new transactions (421 4.3.2), close sessions with no
        transaction under way, let a transaction already past MAIL FROM finish (its DATA is
        accepted and queued), then stop. ``timeout`` bounds the wait."""
        self.gate.draining = True
        for session in list(self.gate.sessions):
            if not session.in_transaction:
                session.close_for_shutdown()
        try:
            async with asyncio.timeout(timeout):
                await self.gate.idle.wait()
        except TimeoutError:
            log.warning("smtp: %d session(s) still open after %.0fs; closing", len(self.gate.sessions), timeout)
        await self.close()

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for session in list(self.gate.sessions):
            if session.transport is not None:
                session.transport.close()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()

    @property
    def listening(self) -> bool:
        return any(s.is_serving() for s in self._servers)
