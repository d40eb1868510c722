"""aiosmtpd hooks: check, decide, enqueue, reply. Nothing here blocks the loop.

aiosmtpd finds hooks by name and silently ignores a misspelt one, so a
test pins the names (``handle_EHLO``, ``handle_MAIL``, ``handle_RCPT``,
``handle_DATA``, ``handle_exception``).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import logging
import re
import time
from typing import Any

from sesmail_gateway import maillog, replies
from sesmail_gateway.checks.inspector import Inspector
from sesmail_gateway.config import Config
from sesmail_gateway.message import REJECTED, Client, QueueItem, RecipientRoute, plan_deliveries
from sesmail_gateway.metrics import SessionMetrics
from sesmail_gateway.replies import Reply
from sesmail_gateway.routes import RouteStoreError
from sesmail_gateway.routes.resolver import RouteResolver, rcpt_verdict
from sesmail_gateway.scan.service import Scanning, route_scan_settings, scan_envelope
from sesmail_gateway.spool import Spool, new_queue_id

log = logging.getLogger(__name__)

NULL_SENDER = "<>"
# Client-supplied text in a header: a bare CR or LF (which aiosmtpd lets through) would start a forged header.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def split_address(address: str) -> tuple[str, str] | None:
    """(local, domain) in lower case, or None when the address has no usable domain."""
    local, at, domain = address.rpartition("@")
    # Not printable: control characters, or bytes that were not UTF-8 (kept as surrogates).
    if not at or not local or not domain or " " in address or not address.isprintable():
        return None
    return local, domain.lower().rstrip(".")


@functools.lru_cache(maxsize=4)
def _rfc5322_date(second: int) -> str:
    """The date of a Received field (to the second, as RFC 5322 writes it), formatted once per second."""
    return email.utils.formatdate(second, localtime=False)


def _printable(text: str) -> str:
    """``text`` with every control character replaced by ``?`` (only searched for when there is one)."""
    return text if text.isprintable() else _CONTROL.sub("?", text)


def received_header(*, item: QueueItem, hostname: str, esmtp: bool) -> bytes:
    """RFC 5321 trace header; ``for`` only with one recipient, so Bcc lists do not leak."""
    protocol = ("ESMTPS" if item.client.tls else "ESMTP") if esmtp else "SMTP"
    helo = _printable(item.client.helo or "unknown")
    reverse = _printable(item.client.reverse_name or "unknown")
    lines = [
        f"Received: from {helo} ({reverse} [{item.client.ip}])",
        f"\tby {hostname} (sesmail-gateway) with {protocol} id {item.id}",
    ]
    when = _rfc5322_date(int(item.created))
    if len(item.recipients) == 1:
        lines.append(f"\tfor <{_printable(item.recipients[0].address)}>; {when}")
    else:
        lines[-1] += ";"
        lines.append(f"\t{when}")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "surrogateescape")


class GatewayHandler:
    def __init__(
        self,
        *,
        config: Config,
        resolver: RouteResolver,
        spool: Spool,
        metrics: SessionMetrics,
        inspector: Inspector,
        scanning: Scanning | None = None,
    ) -> None:
        self.config = config
        self.resolver = resolver
        self.spool = spool
        self.metrics = metrics
        self.inspector = inspector
        self.scanning = scanning
        self.domains = {d.lower().rstrip(".") for d in config.gateway.domains}

    # -- hooks -------------------------------------------------------------

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        # No AUTH on an inbound MX; PIPELINING is safe because replies are sent in order.
        kept = [r for r in responses if not r[4:].upper().startswith("AUTH")]
        kept.insert(len(kept) - 1, "250-PIPELINING")
        return kept

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        # aiosmtpd hands the null reverse-path of bounces and DSNs over as the literal "<>".
        if address and address != NULL_SENDER and split_address(address) is None:
            maillog.event("rejected", None, stage="mail", session=getattr(server, "session_id", None),
                          client=_peer_ip(session), sender=address, reply=str(replies.BAD_SENDER))
            _logged(server)
            return str(replies.BAD_SENDER)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        envelope.routes = []
        envelope.spf = None  # started at the first accepted RCPT
        return str(replies.SENDER_OK)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        reply, route = await self._recipient_policy(envelope, address)
        if route is None:
            self.metrics.refused(_reason(reply))
            maillog.event("rejected", None, stage="rcpt", session=getattr(server, "session_id", None),
                          client=_peer_ip(session), sender=envelope.mail_from, recipient=address, reply=str(reply))
            _logged(server)
            return str(reply)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        envelope.routes.append(route)
        if getattr(envelope, "spf", None) is None:
            # SPF needs only the envelope: start it at the first recipient we take (mail for unknown
            # users and foreign domains costs no DNS), so its look-ups overlap the rest of the transfer.
            envelope.spf = asyncio.ensure_future(self.inspector.check_sender(
                ip=_peer_ip(session), helo=session.host_name or "", mail_from=_sender(envelope.mail_from)))
        return str(reply)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        item = self._new_item(server, session, envelope)
        maillog.event("received", item.id, session=getattr(server, "session_id", None), client=item.client.ip, helo=item.client.helo, sender=item.sender,
                      recipients=item.recipient_addresses, size=len(envelope.content))
        inspection = await self.inspector.inspect(
            envelope.content, ip=item.client.ip, helo=item.client.helo, mail_from=item.sender,
            spf=await envelope.spf if getattr(envelope, "spf", None) else None)
        item.size = len(inspection.content)
        item.client.reverse_name = inspection.reverse_name
        item.verdicts = inspection.verdicts.to_dict()
        for method, result in inspection.verdicts.results_by_method().items():
            self.metrics.auth_result(method, result)
        decision, scan_header = inspection.decision, b""
        if self.scanning is not None:
            scan = await self.scanning.scan(inspection.content, envelope=scan_envelope(item), routes=[
                r.scan for r in item.recipients], auth_decision=inspection.decision)
            decision, scan_header, item.verdicts["scan"] = scan.decision, scan.header, scan.verdict
            if decision.action == "tempfail":
                self.metrics.refused("scan-tempfail")
                maillog.event("rejected", item.id, stage="data", reply=str(replies.SCAN_TEMPFAIL),
                              reason=decision.reason)
                _logged(server)
                return str(replies.SCAN_TEMPFAIL)
        item.quarantine = decision.action == "quarantine"
        refusal = REFUSALS.get(decision.reply_key or "") if decision.action == "reject" else None
        if refusal is not None:
            item.state, item.reason = REJECTED, decision.reason
        header = inspection.header + scan_header + received_header(
            item=item, hostname=self.config.gateway.hostname, esmtp=session.extended_smtp)
        try:
            await self.spool.enqueue(item, header, inspection.content)
        except OSError as exc:
            log.error("spool: cannot queue %s: %s", item.id, exc)
            if refusal is None:
                self.metrics.refused("spool-error")
                maillog.event("rejected", item.id, stage="data", reply=str(replies.SPOOL_ERROR), error=str(exc))
                _logged(server)
                return str(replies.SPOOL_ERROR)
        if refusal is not None:
            # Refused, but kept in rejected/ for review; `queue release` delivers it after all.
            self.metrics.refused(f"{decision.reply_key}-policy")
            maillog.event("rejected", item.id, stage="data", sender=item.sender, reply=str(refusal),
                          reason=item.reason, verdicts=item.verdicts)
            _logged(server)
            return str(refusal)
        self.metrics.message_accepted(item.size)
        maillog.event("queued", item.id, sender=item.sender, recipients=item.recipient_addresses,
                      deliveries=[d.key for d in item.deliveries], quarantine=item.quarantine or None,
                      auth=inspection.verdicts.results_by_method(), decision=decision.reason,
                      scan=item.verdicts.get("scan"))
        return str(replies.queued(item.id))

    async def handle_exception(self, error: Exception) -> str:
        # aiosmtpd's default is a 500 that leaks the exception text; say 451 and log the detail.
        log.error("smtp: session error: %s: %s", type(error).__name__, error, exc_info=error)
        return str(replies.LOCAL_ERROR)

    # -- called by the session for refusals it makes itself -----------------

    def connection_refused(self, reply: Reply) -> None:
        self.metrics.connection_refused(_reason(reply))

    def size_refused(self, server: Any, stage: str, size: int) -> None:
        """552 at MAIL (``SIZE=`` declared) or at the end of DATA (``size`` message bytes)."""
        self.metrics.refused("size")
        maillog.event("rejected", None, stage=stage, session=getattr(server, "session_id", None),
                      client=_peer_ip(server.session), reply=str(replies.MESSAGE_TOO_BIG),
                      reason=f"message size {size} over the limit {self.config.smtp.max_message_size}")
        _logged(server)

    # -- policy ------------------------------------------------------------

    async def _recipient_policy(self, envelope: Any, address: str) -> tuple[Reply, RecipientRoute | None]:
        if len(envelope.rcpt_tos) >= self.config.smtp.max_recipients:
            return replies.TOO_MANY_RECIPIENTS, None
        parts = split_address(address)
        if parts is None:
            return replies.BAD_ADDRESS, None
        if parts[1] not in self.domains:
            return replies.RELAY_DENIED, None
        try:
            match = await self.resolver.resolve(address)
        except RouteStoreError as exc:
            log.error("routes: lookup for %s failed: %s", address, exc)
            return replies.RULES_UNAVAILABLE, None
        # The same verdict `routes test` prints, so the two can never disagree.
        reply, why = rcpt_verdict(match, bounce_mode=self.config.bounce.mode)
        if match.rule is None or reply != replies.RECIPIENT_OK:
            if reply == replies.RULES_UNAVAILABLE:
                log.error("routes: %s: %s", address, why)
            return reply, None
        actions = [{"type": a.type, "target": a.target} for a in match.rule.actions]
        return reply, RecipientRoute(address, match.rule.pattern, match.level or "", actions,
                                     scan=route_scan_settings(match.rule))

    def _new_item(self, server: Any, session: Any, envelope: Any) -> QueueItem:
        peer = session.peer if isinstance(session.peer, tuple) else ("", 0)
        client = Client(ip=str(peer[0]), port=int(peer[1]), helo=session.host_name or "", tls=session.ssl is not None)
        recipients: list[RecipientRoute] = list(envelope.routes)
        return QueueItem(
            id=new_queue_id(), sender=_sender(envelope.mail_from or ""), recipients=recipients, client=client,
            created=time.time(), deliveries=plan_deliveries(recipients),
        )


# Why a message is refused at the end of DATA (the policy's reply_key) → the reply.
REFUSALS = {"dmarc": replies.DMARC_REJECT, "spf": replies.SPF_REJECT, "from": replies.FROM_REJECT,
            "virus": replies.VIRUS_REJECT, "spam": replies.SPAM_REJECT, "sender": replies.SENDER_BLOCKED}


def _logged(server: Any) -> None:
    """The refusal about to be sent has its log line: the session does not log it again."""
    with contextlib.suppress(AttributeError):
        server.refusal_logged = True


def _sender(address: str) -> str:
    return "" if address in ("", NULL_SENDER) else address


def _peer_ip(session: Any) -> str:
    peer = session.peer
    return str(peer[0]) if isinstance(peer, tuple) else ""


def _reason(reply: Reply) -> str:
    """A short metric label for a refusal."""
    return {
        replies.RELAY_DENIED: "relay-denied",
        replies.NO_SUCH_USER: "no-route",
        replies.RULES_UNAVAILABLE: "rules-unavailable",
        replies.TOO_MANY_RECIPIENTS: "too-many-recipients",
        replies.BAD_ADDRESS: "bad-address",
        replies.TOO_MANY_CONNECTIONS: "too-many-connections",
        replies.TOO_MANY_FROM_IP: "too-many-from-ip",
        replies.SHUTTING_DOWN: "shutting-down",
    }.get(reply, f"{reply.code}")
