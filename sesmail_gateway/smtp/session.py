"""One SMTP session: aiosmtpd's protocol with the gateway's limits.

The aiosmtpd ``SMTP`` class runs the command loop; this subclass adds what
an MX needs and aiosmtpd leaves out: connection admission (global and per
client IP, and refusal while draining), a timeout that says 421 before it
hangs up, a whole-DATA deadline, a junk-command budget, our own 552 at MAIL
for ``SIZE=``, no AUTH on an inbound MX, and the chunked DATA reader.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, AnyStr

from aiosmtpd.smtp import SMTP

from sesmail_gateway import maillog, replies
from sesmail_gateway.replies import Reply
from sesmail_gateway.smtp.data import read_data
from sesmail_gateway.smtp.limits import Limits

log = logging.getLogger(__name__)

_SIZE_PARAM = re.compile(r"\bSIZE=(\d+)", re.IGNORECASE)
# <dot-atom@ldh.domain>: what nearly every MTA sends; the header parser gives the same for it, at a
# twentieth of the cost. Anything else (quotes, comments, literals, UTF-8, <>) goes to the parser.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_SIMPLE_PATH = re.compile(rf"<({_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>")


def simple_path(arg: str, local_part_limit: int) -> tuple[str, str] | None:
    """(address, the rest) for a plain ``<local@domain>`` path within the limit; None: ask the parser."""
    simple = _SIMPLE_PATH.match(arg)
    if simple is None:
        return None
    address, rest = simple.group(1), arg[simple.end():].lstrip(" \t")  # the parser drops the blanks
    if rest.startswith("(") or (local_part_limit and len(address.rpartition("@")[0]) > local_part_limit):
        return None
    return address, rest


class _CommandTable(dict[str, Any]):
    """aiosmtpd's command table, answering unknown commands with one handler.

    aiosmtpd hangs up after five unknown commands with its own 502; routed
    here they count against ``junk_command_limit`` like NOOP and RSET.
    """

    def __init__(self, methods: dict[str, Any], unknown: Callable[[str, str | None], Awaitable[None]],
                 on_command: Callable[[str], None]) -> None:
        super().__init__(methods)
        self.unknown = unknown
        self.on_command = on_command

    def get(self, command: str, default: Any = None) -> Any:
        method = super().get(command)
        self.on_command(command if method is not None else "unknown")  # names the stage of log lines
        return method if method is not None else functools.partial(self.unknown, command)


class Gate:
    """Admission for new sessions: connection limits and drain."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.sessions: set[GatewaySMTP] = set()
        self.draining = False
        self.idle = asyncio.Event()
        self.idle.set()

    def admit(self, session: GatewaySMTP) -> Reply | None:
        """None to admit, or the reply that refuses the connection."""
        if self.draining:
            return replies.SHUTTING_DOWN
        refusal = self.limits.acquire(session.client_ip)
        if refusal is not None:
            return refusal
        self.sessions.add(session)
        self.idle.clear()
        return None

    def release(self, session: GatewaySMTP) -> None:
        if session not in self.sessions:
            return
        self.sessions.discard(session)
        self.limits.release(session.client_ip)
        if not self.sessions:
            self.idle.set()


class GatewaySMTP(SMTP):  # type: ignore[misc]
    def __init__(self, handler: Any, *, gate: Gate, data_timeout: float, junk_limit: int, **kwargs: Any) -> None:
        # aiosmtpd's own per-command limit is off (None): the junk budget below replaces it,
        # so a session may carry any number of real transactions.
        super().__init__(handler, command_call_limit=None, **kwargs)
        self.gate = gate
        self.data_timeout = data_timeout
        self.junk_limit = junk_limit
        self.junk_used = 0
        self.in_data = False
        self.stage = "connect"  # the command being handled, for log lines
        self.session_id = secrets.token_hex(6)
        self.refusal_logged = False  # the next 4xx/5xx reply has its log line already
        self._deadline = 0.0  # loop time at which the session times out (see _reset_timeout)
        self._smtp_methods = _CommandTable(self._smtp_methods, self._unknown_command, self._on_command)

    def _on_command(self, command: str) -> None:
        self.stage = command.lower()

    def log_refusal(self, reply: str | None = None, **fields: Any) -> None:
        """The one log line of a refusal (the reply that follows is not logged again)."""
        maillog.event("rejected", None, stage=self.stage, session=self.session_id, client=self.client_ip,
                      reply=reply, **fields)
        self.refusal_logged = True

    async def push(self, status: AnyStr) -> None:
        """Every 4xx/5xx reply is one rejected log line: ours say more and log it themselves;
        aiosmtpd's own refusals (503 out of sequence, 501 syntax, 500 line too long) are logged here."""
        if isinstance(status, str) and status[:1] in ("4", "5") and not self.refusal_logged:
            self.log_refusal(status)
        self.refusal_logged = False
        await super().push(status)

    @property
    def client_ip(self) -> str:
        peer = self.session.peer if self.session else None
        return str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"

    # -- admission and teardown ---------------------------------------------

    async def _handle_client(self) -> None:
        refusal = self.gate.admit(self)
        if refusal is not None:
            self.event_handler.connection_refused(refusal)
            await self.push(str(refusal))
            if self.transport is not None:
                self.transport.close()
            return
        log.info("smtp: session %s: connect from %s", self.session_id, self.client_ip)
        await super()._handle_client()

    def connection_lost(self, error: Exception | None) -> None:
        if self in self.gate.sessions:
            log.info("smtp: session %s: closed", self.session_id)
        self.gate.release(self)
        super().connection_lost(error)

    def _say_and_close(self, reply: Reply) -> None:
        """Write a last reply and hang up, from outside the command loop (timers, drain)."""
        transport = self.transport
        if isinstance(transport, asyncio.WriteTransport) and not transport.is_closing():
            transport.write(f"{reply}\r\n".encode())
            transport.close()

    def _reset_timeout(self, duration: float | None = None) -> None:
        """Move the session's deadline: ``duration`` seconds (the command timeout by default) from now.

        aiosmtpd cancels its timer and makes a new one at every command, five
        times per message. Here the deadline moves and one timer, when it
        fires before the deadline, is set again for the time left; it is
        replaced only when the new deadline comes earlier than the timer.
        """
        self._deadline = deadline = self.loop.time() + (duration or self._timeout_duration)
        timer = self._timeout_handle
        if timer is None or timer.cancelled() or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self._timeout_handle = self.loop.call_at(deadline, self._at_deadline)

    def _at_deadline(self) -> None:
        if self.loop.time() < self._deadline:
            self._timeout_handle = self.loop.call_at(self._deadline, self._at_deadline)
            return
        self._timeout_cb()

    def _timeout_cb(self) -> None:
        # aiosmtpd hangs up silently; RFC 5321 wants a 421 first.
        self._say_and_close(replies.DATA_TIMEOUT if self.in_data else replies.TIMEOUT)

    def close_for_shutdown(self) -> None:
        """Say 421 4.3.2 and hang up; used for sessions with no transaction under way when draining."""
        self._say_and_close(replies.SHUTTING_DOWN)

    # -- commands ------------------------------------------------------------

    async def _junk(self, command: str) -> bool:
        """Count a junk command; True (after 421 and hang-up) when over budget."""
        self.junk_used += 1
        if self.junk_used <= self.junk_limit:
            return False
        self.log_refusal(str(replies.TOO_MANY_JUNK), reason=f"over the junk command limit ({command})")
        await self.push(str(replies.TOO_MANY_JUNK))
        if self.transport is not None:
            self.transport.close()
        return True

    async def _unknown_command(self, command: str, arg: str | None) -> None:
        if not await self._junk(command):
            await self.push("500 5.5.2 Error: command not recognized")

    async def smtp_NOOP(self, arg: str | None) -> None:
        if not await self._junk("NOOP"):
            await super().smtp_NOOP(arg)

    async def smtp_RSET(self, arg: str | None) -> None:
        if self.gate.draining:
            await self._refuse_while_draining("rset")  # the transaction it ends was the last
        elif not await self._junk("RSET"):
            await super().smtp_RSET(arg)

    async def smtp_VRFY(self, arg: str | None) -> None:
        # Our own, so no client text is ever echoed back (aiosmtpd's 502 repeats the argument).
        if await self._junk("VRFY"):
            return
        self.stage = "vrfy"
        if not arg:
            await self.push(str(replies.VRFY_SYNTAX))
        elif self._getaddr(arg)[0] is None:
            await self.push(str(replies.BAD_VRFY_ADDRESS))
        else:
            await self.push(str(replies.CANNOT_VRFY))

    async def smtp_HELP(self, arg: str | None) -> None:
        if not await self._junk("HELP"):
            await super().smtp_HELP(arg)

    async def smtp_AUTH(self, arg: str | None) -> None:
        await self.push("502 5.5.1 AUTH is not offered on this server")

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's address parser made total, and every refusal logged once.

        aiosmtpd hands the address to the standard library's header parser,
        which raises IndexError on ``<`` and RecursionError on nested comments:
        both became a 451 and a traceback, so the client retried a syntax error
        forever. An argument that is not UTF-8 (aiosmtpd keeps the bytes as
        surrogates) can name no mailbox either. All of these are ``(None, None)``,
        which every caller answers with a 5xx.
        """
        simple = simple_path(arg, self.local_part_limit)
        if simple is not None:
            return simple
        why = ""
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            why = "address is not UTF-8"
        if arg.lstrip().startswith("<") and ">" not in arg:
            why = "unclosed angle bracket"  # the header parser would accept it
        if not why:
            try:
                address, rest = super()._getaddr(arg)
            except Exception as exc:  # the header parser's IndexError, RecursionError, ...
                why = f"address does not parse ({type(exc).__name__})"
            else:
                if address is not None:
                    return address, rest
                why = "address does not parse"
        self.log_refusal(reason=why)
        return None, None

    async def smtp_RCPT(self, arg: str | None) -> None:
        self.stage = "rcpt"
        await super().smtp_RCPT(arg)

    async def smtp_MAIL(self, arg: str | None) -> None:
        self.stage = "mail"
        if self.gate.draining:
            await self._refuse_while_draining("mail")
            return
        match = _SIZE_PARAM.search(arg or "")
        if match and self.data_size_limit and int(match.group(1)) > self.data_size_limit:
            self.event_handler.size_refused(self, "mail", int(match.group(1)))
            await self.push(str(replies.MESSAGE_TOO_BIG))
            return
        await super().smtp_MAIL(arg)

    async def _refuse_while_draining(self, stage: str) -> None:
        """A new transaction during a drain: 421 4.3.2 and hang up."""
        self.stage = stage
        self.log_refusal(str(replies.SHUTTING_DOWN), reason="shutting down")
        await self.push(str(replies.SHUTTING_DOWN))
        if self.transport is not None:
            self.transport.close()

    @property
    def in_transaction(self) -> bool:
        """Past MAIL FROM and not yet answered at the end of DATA (aiosmtpd keeps "<>" for a null sender)."""
        return self.in_data or bool(self.envelope is not None and self.envelope.mail_from)

    async def smtp_DATA(self, arg: str | None) -> None:
        if await self.check_helo_needed():
            return
        envelope = self.envelope
        assert envelope is not None  # aiosmtpd creates one per transaction
        if not envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        # In DATA until the reply is known: a drain lets the spool write finish and the 250 go out.
        self.in_data = True
        self._reset_timeout(self.data_timeout)
        try:
            result = await read_data(self._reader, self.data_size_limit)
            # Bytes after the terminator are pipelined commands: hand them back to the reader.
            if result.leftover:
                _unread(self._reader, result.leftover)
            if result.content is None:
                self.event_handler.size_refused(self, "data", result.message_bytes)
                status = str(replies.MESSAGE_TOO_BIG)
            else:
                envelope.content = envelope.original_content = result.content
                status = await self._call_handler_hook("DATA")
                if status.startswith("250"):
                    self.junk_used = 0
        finally:
            self.in_data = False
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        self._reset_timeout()
        await self.push(status)
        if self.gate.draining:
            self.close_for_shutdown()


def _inherit_help(cls: type[SMTP]) -> None:
    """Give each overriding ``smtp_*`` method the HELP syntax of the method it overrides.

    aiosmtpd's HELP lists only methods carrying its ``@syntax`` attributes; an
    override loses them, and HELP then listed four commands and refused
    ``HELP MAIL``. AUTH stays out: it is not offered on this server.
    """
    for name, method in vars(cls).items():
        base = getattr(SMTP, name, None)
        if not name.startswith("smtp_") or name == "smtp_AUTH" or base is None:
            continue
        for attribute in _SYNTAX_ATTRIBUTES:
            if hasattr(base, attribute) and not hasattr(method, attribute):
                setattr(method, attribute, getattr(base, attribute))


_SYNTAX_ATTRIBUTES = ("__smtp_syntax__", "__smtp_syntax_extended__", "__smtp_syntax_when__")
_inherit_help(GatewaySMTP)


def _unread(reader: asyncio.StreamReader, data: bytes) -> None:
    """Put bytes back at the front of a StreamReader's buffer.

    asyncio has no public unread; aiosmtpd itself reaches into ``_buffer``
    (for STARTTLS). A test pins this: pipelined commands after the data
    terminator must still be answered.
    """
    buffer: bytearray = reader._buffer  # type: ignore[attr-defined]
    buffer[0:0] = data
