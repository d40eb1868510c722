"""The listening side: sockets, TLS, session factory, start and drain.

With several SMTP workers, the daemon binds each listening socket once and
every worker accepts from it. Which worker takes a connection is decided
here, not by the kernel's hash of the client's address and port (as with
SO_REUSEPORT, which left 16 of 20 concurrent sessions on one worker and
the other half idle): every worker is woken by a new connection and takes
one at a time, and a worker holding more sessions than the least busy one
first waits ``DEFER`` seconds, in which that one takes it. A worker too
busy to take it within that time does not hold the connection up.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from collections.abc import Callable

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


DEFER = 0.002
"""Seconds a busier worker leaves a new connection to the least busy one."""
RETRY_AFTER_FD_SHORTAGE = 1.0
"""Seconds accepting pauses when the process is out of file descriptors or memory."""


def bind_socket(address: str) -> socket.socket:
    """A listening socket (the SMTP workers share it: the daemon binds it and hands it to each)."""
    host, port = parse_hostport(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, exc.strerror, f"smtp.listen {address}") from None  # name the key
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class Acceptor:
    """Takes connections from one listening socket into sessions, one per wake-up, leaving a new
    connection for ``DEFER`` seconds to a less busy worker when ``surplus()`` says there is one."""

    def __init__(self, sock: socket.socket, start_session: Callable[[socket.socket], None],
                 surplus: Callable[[], int]) -> None:
        self.sock = sock
        self._start_session = start_session
        self._surplus = surplus
        self._loop = asyncio.get_running_loop()
        self._watching = False
        self._timer: asyncio.TimerHandle | None = None
        self.serving = False

    def start(self) -> None:
        self.serving = True
        self._watch()

    def close(self) -> None:
        self.serving = False
        self._unwatch()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _watch(self) -> None:
        if self.serving and not self._watching:
            self._loop.add_reader(self.sock.fileno(), self._ready)
            self._watching = True

    def _unwatch(self) -> None:
        if self._watching:
            self._loop.remove_reader(self.sock.fileno())
            self._watching = False

    def _pause(self, seconds: float, then: Callable[[], None]) -> None:
        self._unwatch()  # the socket stays readable: watching it meanwhile would spin
        self._timer = self._loop.call_later(seconds, then)

    def _ready(self) -> None:
        if self._surplus() > 0:
            self._pause(DEFER, self._after_deferring)
            return
        self._accept()

    def _after_deferring(self) -> None:
        self._timer = None
        self._watch()
        self._accept()  # still there: the others are busy too, so take it

    def _accept(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return  # another worker took it, or the client gave up
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                raise
            log.error("smtp: cannot accept connections (%s); trying again in %.0f s",
                      exc.strerror, RETRY_AFTER_FD_SHORTAGE)
            self._pause(RETRY_AFTER_FD_SHORTAGE, self._after_shortage)
            return
        conn.setblocking(False)
        self._start_session(conn)

    def _after_shortage(self) -> None:
        self._timer = None
        self._watch()


class SMTPServer:
    def __init__(self, config: Config, handler: GatewayHandler, limits: Limits | None = None) -> None:
        self.config = config
        self.handler = handler
        self.gate = Gate(limits or LocalLimits(
            max_connections=config.smtp.max_connections,
            max_per_ip=config.smtp.max_connections_per_ip,
        ))
        self.tls = tls_context(config.smtp.tls_cert, config.smtp.tls_key)
        self._acceptors: list[Acceptor] = []
        self._starting: set[asyncio.Task[object]] = set()

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

    async def start(self, sockets: list[socket.socket]) -> list[tuple[str, int]]:
        """Accept sessions from listening ``sockets`` (``bind_socket``; the daemon owns and closes them);
        returns their addresses."""
        bound: list[tuple[str, int]] = []
        for sock in sockets:
            acceptor = Acceptor(sock, self._start_session, self.gate.limits.surplus)
            acceptor.start()
            self._acceptors.append(acceptor)
            name = sock.getsockname()
            bound.append((str(name[0]), int(name[1])))
        log.info("smtp: listening on %s", ", ".join(f"{h}:{p}" for h, p in bound))
        return bound

    def _start_session(self, conn: socket.socket) -> None:
        task = asyncio.ensure_future(self._connect(conn))
        self._starting.add(task)
        task.add_done_callback(self._starting.discard)

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await asyncio.get_running_loop().connect_accepted_socket(self._session, conn)
        except OSError as exc:  # the client went away before its session started
            log.debug("smtp: connection lost before its session started: %s", exc)
            conn.close()

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
        for acceptor in self._acceptors:
            acceptor.close()
        self._acceptors.clear()
        if self._starting:
            await asyncio.gather(*self._starting, return_exceptions=True)
        for session in list(self.gate.sessions):
            if session.transport is not None:
                session.transport.close()
        await asyncio.sleep(0)  # let the transports' connection_lost callbacks run

    @property
    def listening(self) -> bool:
        return any(a.serving for a in self._acceptors)
