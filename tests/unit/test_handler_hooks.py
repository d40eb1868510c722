"""The aiosmtpd hooks are found by name: pin the names, and the small pure helpers of the handler.

aiosmtpd builds ``SMTP._handle_hooks`` from the handler's ``handle_*``
attributes and silently ignores any other name, so a misspelt hook would
turn policy off without an error. These tests check both sides: the
handler has the hooks, and aiosmtpd (through our GatewaySMTP) calls them.
"""

from __future__ import annotations

import asyncio
import email
import inspect
import re
from pathlib import Path

import aiosmtpd.smtp
import pytest

from sesmail_gateway import replies
from sesmail_gateway.checks.inspector import Inspector
from sesmail_gateway.config import Config, load_mapping
from sesmail_gateway.message import INCOMING, Client, QueueItem, RecipientRoute
from sesmail_gateway.metrics import Metrics
from sesmail_gateway.routes import Action, Rule
from sesmail_gateway.routes.resolver import RouteResolver
from sesmail_gateway.routes.sqlite import SqliteRouteStore
from sesmail_gateway.smtp.handler import GatewayHandler, received_header, split_address
from sesmail_gateway.smtp.limits import LocalLimits
from sesmail_gateway.smtp.server import SMTPServer, bind_socket
from sesmail_gateway.smtp.session import Gate, GatewaySMTP
from sesmail_gateway.spool import Spool
from tests.dnsserver import TestDNSServer

HOOKS = ("EHLO", "MAIL", "RCPT", "DATA")


# --- a handler wired to real local stores -----------------------------------------


def make_config(tmp_path: Path, dns: str = "127.0.0.1:9") -> Config:
    return load_mapping({
        "gateway": {"hostname": "mx.test", "domains": ["example.test"], "data_dir": str(tmp_path)},
        "rules": {"cache_seconds": 0},
        "checks": {"dns_servers": [dns], "dns_timeout": 0.5, "dmarc": "monitor"},
    })


@pytest.fixture
def ready() -> list[str]:
    """Queue ids the spool reported as written to their folders (what the runner is told)."""
    return []


@pytest.fixture
def spool(tmp_path: Path, ready: list[str]) -> Spool:
    return Spool(tmp_path / "spool", on_ready=ready.append)


@pytest.fixture
def handler(tmp_path: Path, spool: Spool, dns_server: TestDNSServer) -> GatewayHandler:
    config = make_config(tmp_path, dns_server.address)
    store = SqliteRouteStore(tmp_path / "rules.db")
    store.put(Rule(pattern="*@example.test", actions=(Action("maildir", "mail"),)))
    return GatewayHandler(config=config, resolver=RouteResolver(store, cache_seconds=0), spool=spool,
                          metrics=Metrics(), inspector=Inspector(config=config.checks, hostname="mx.test"))


@pytest.fixture
async def smtp(handler: GatewayHandler) -> GatewaySMTP:
    """A session object as the server builds it, with session and envelope but no socket."""
    session = GatewaySMTP(
        handler, gate=Gate(LocalLimits(max_connections=10, max_per_ip=10)), data_timeout=10, junk_limit=10,
        data_size_limit=1000, enable_SMTPUTF8=True, decode_data=False, hostname="mx.test",
        loop=asyncio.get_running_loop(),
    )
    session.session = session._create_session()
    session.session.peer = ("192.0.2.7", 40000)
    session.session.host_name = "client.test"
    session.session.extended_smtp = True
    session.envelope = session._create_envelope()
    return session


# --- hook names ---------------------------------------------------------------


@pytest.mark.parametrize("name", [f"handle_{hook}" for hook in HOOKS] + ["handle_exception"])
def test_handler_defines_the_hook_as_a_coroutine_function(name: str) -> None:
    hook = getattr(GatewayHandler, name, None)
    assert hook is not None, f"GatewayHandler.{name} is missing"
    assert inspect.iscoroutinefunction(hook)


def test_handler_has_no_misspelt_hooks() -> None:
    # Anything starting with handle_ is taken as a hook by aiosmtpd; anything close to a hook
    # name but not exactly one (handle_rcpt, handle_Data, handleRCPT) is silently ignored.
    known = {f"handle_{h}" for h in (*HOOKS, "exception", "HELO", "NOOP", "QUIT", "RSET", "VRFY", "PROXY",
                                     "STARTTLS", "AUTH")}
    for name in dir(GatewayHandler):
        if re.fullmatch(r"handle_?\w+", name, re.IGNORECASE):
            assert name in known, f"{name} looks like a hook but aiosmtpd would never call it"


@pytest.mark.parametrize("hook", HOOKS)
def test_aiosmtpd_calls_the_hook_by_this_name(hook: str) -> None:
    """The name is what aiosmtpd (or our smtp_DATA) passes to _call_handler_hook."""
    calls = re.compile(rf"""_call_handler_hook\(\s*['"]{hook}['"]""")
    sources = inspect.getsource(aiosmtpd.smtp.SMTP) + inspect.getsource(GatewaySMTP)
    assert calls.search(sources), f"nothing calls the {hook} hook"
    # And _handle_hooks is keyed by the name with "handle_" removed.
    assert 'm.replace("handle_", "")' in inspect.getsource(aiosmtpd.smtp.SMTP.__init__)


async def test_session_registers_every_hook_of_the_handler(smtp: GatewaySMTP, handler: GatewayHandler) -> None:
    for hook in HOOKS:
        assert smtp._handle_hooks[hook] == getattr(handler, f"handle_{hook}")
    # The 5-argument EHLO hook: aiosmtpd hands it the reply lines and sends what it returns.
    assert smtp._ehlo_hook_ver == "new"


async def test_our_data_command_goes_through_the_data_hook() -> None:
    source = inspect.getsource(GatewaySMTP.smtp_DATA)
    assert '_call_handler_hook("DATA")' in source


async def test_mail_and_rcpt_hooks_answer_through_aiosmtpd_dispatch(smtp: GatewaySMTP) -> None:
    assert await smtp._call_handler_hook("MAIL", "sender@elsewhere.test", []) == str(replies.SENDER_OK)
    assert smtp.envelope.mail_from == "sender@elsewhere.test"
    assert await smtp._call_handler_hook("RCPT", "user@other.test", []) == "550 5.7.1 " + replies.RELAY_DENIED.text
    assert await smtp._call_handler_hook("RCPT", "User@Example.TEST", []) == "250 2.1.5 Recipient ok"
    assert smtp.envelope.rcpt_tos == ["User@Example.TEST"]


async def test_null_sender_is_accepted_and_queued_as_empty_sender(
    smtp: GatewaySMTP, spool: Spool, ready: list[str]
) -> None:
    # Bounces and DSNs use MAIL FROM:<>; aiosmtpd passes the literal "<>".
    assert await smtp._call_handler_hook("MAIL", "<>", []) == "250 2.1.0 Sender ok"
    assert await smtp._call_handler_hook("RCPT", "postmaster@example.test", []) == "250 2.1.5 Recipient ok"
    smtp.envelope.content = b"Subject: bounce\r\n\r\nbody\r\n"
    status = await smtp._call_handler_hook("DATA")
    assert re.fullmatch(r"250 2\.0\.0 Ok: queued as [0-9A-F]+", status)
    queue_id = status.rsplit(" ", 1)[1]
    await spool.close()  # waits for the folder write that follows the durable journal append
    assert ready == [queue_id]
    item = spool.load(INCOMING, queue_id)
    assert item.sender == ""
    assert item.recipient_addresses == ["postmaster@example.test"]


async def test_malformed_sender_is_refused(smtp: GatewaySMTP) -> None:
    assert await smtp._call_handler_hook("MAIL", "no-domain", []) == "501 5.1.7 Bad sender address syntax"


async def test_ehlo_hook_removes_auth_and_adds_pipelining(smtp: GatewaySMTP) -> None:
    offered = ["250-mx.test", "250-SIZE 1000", "250-8BITMIME", "250-AUTH LOGIN PLAIN", "250 HELP"]
    lines = await smtp._call_handler_hook("EHLO", "client.test", list(offered))
    assert lines == ["250-mx.test", "250-SIZE 1000", "250-8BITMIME", "250-PIPELINING", "250 HELP"]
    assert smtp.session.host_name == "client.test"


async def test_exception_hook_answers_451_without_leaking_the_error(smtp: GatewaySMTP) -> None:
    # aiosmtpd's SMTP.handle_exception defers to the handler's hook when it has one.
    status = await smtp.handle_exception(RuntimeError("secret internal detail"))
    assert status == str(replies.LOCAL_ERROR)
    assert status.startswith("451 4.3.0 ")
    assert "secret" not in status


async def test_drain_lets_a_message_being_spooled_get_its_250(
    tmp_path: Path, handler: GatewayHandler, spool: Spool, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGTERM while the DATA hook writes the spool: the client still gets its 250, then 421."""
    writing, release = asyncio.Event(), asyncio.Event()
    enqueue = spool.enqueue

    async def slow_enqueue(item: QueueItem, *chunks: bytes) -> None:
        writing.set()
        await release.wait()
        await enqueue(item, *chunks)

    monkeypatch.setattr(spool, "enqueue", slow_enqueue)
    server = SMTPServer(make_config(tmp_path), handler)
    sock = bind_socket("127.0.0.1:0")
    await server.start([sock])
    reader, writer = await asyncio.open_connection(*sock.getsockname()[:2])
    try:
        writer.write(b"EHLO client.test\r\nMAIL FROM:<s@elsewhere.test>\r\nRCPT TO:<a@example.test>\r\n"
                     b"DATA\r\nSubject: x\r\n\r\nbody\r\n.\r\n")
        await asyncio.wait_for(writing.wait(), 5)
        drain = asyncio.create_task(server.drain(timeout=5))
        while not server.gate.draining:  # the drain task has run its first step: every session looked at
            await asyncio.sleep(0)
        release.set()
        lines = (await asyncio.wait_for(reader.read(), 5)).decode().split("\r\n")
        await asyncio.wait_for(drain, 5)
    finally:
        writer.close()
    assert lines[-4].startswith("354 ")
    queue_id = lines[-3].removeprefix("250 2.0.0 Ok: queued as ")
    await spool.close()
    assert spool.load(INCOMING, queue_id).recipient_addresses == ["a@example.test"]
    assert lines[-2].startswith("421 4.3.2 ")
    assert lines[-1] == ""


# --- received_header ------------------------------------------------------------


def item(*recipients: str, helo: str = "client.test", tls: bool = False) -> QueueItem:
    return QueueItem(
        id="ABC123", sender="s@elsewhere.test", recipients=[RecipientRoute(r) for r in recipients],
        client=Client(ip="192.0.2.7", port=1234, helo=helo, tls=tls), created=1_700_000_000.0,
    )


def test_received_header_for_one_recipient() -> None:
    header = received_header(item=item("alice@example.test"), hostname="mx.test", esmtp=True)
    assert header == (
        b"Received: from client.test (unknown [192.0.2.7])\r\n"
        b"\tby mx.test (sesmail-gateway) with ESMTP id ABC123\r\n"
        b"\tfor <alice@example.test>; Tue, 14 Nov 2023 22:13:20 -0000\r\n"
    )


def test_received_header_hides_recipients_when_there_are_several() -> None:
    header = received_header(item=item("a@example.test", "b@example.test"), hostname="mx.test", esmtp=True)
    assert b"for <" not in header
    assert b"a@example.test" not in header
    assert header.endswith(b"with ESMTP id ABC123;\r\n\tTue, 14 Nov 2023 22:13:20 -0000\r\n")


@pytest.mark.parametrize(("esmtp", "tls", "protocol"), [
    (True, False, b"ESMTP"), (True, True, b"ESMTPS"), (False, False, b"SMTP"),
])
def test_received_header_names_the_protocol(esmtp: bool, tls: bool, protocol: bytes) -> None:
    header = received_header(item=item("a@example.test", tls=tls), hostname="mx.test", esmtp=esmtp)
    assert b" with " + protocol + b" id ABC123" in header


def test_received_header_parses_as_one_header_field() -> None:
    header = received_header(item=item("a@example.test", helo=""), hostname="mx.test", esmtp=True)
    message = email.message_from_bytes(header + b"Subject: x\r\n\r\nbody\r\n")
    assert message.keys() == ["Received", "Subject"]
    assert message["Received"].startswith("from unknown (unknown [192.0.2.7])")
    assert b"\n" not in header.replace(b"\r\n", b"")


def test_received_header_keeps_the_helo_bytes_as_received() -> None:
    # aiosmtpd decodes arguments with surrogateescape; the header gives the raw bytes back.
    helo = b"h\xe9llo.test".decode("utf-8", "surrogateescape")
    header = received_header(item=item("a@example.test", helo=helo), hostname="mx.test", esmtp=True)
    assert header.startswith(b"Received: from h\xe9llo.test (")


@pytest.mark.parametrize("helo", ["evil\rX-Injected: yes", "evil\nX-Injected: yes", "evil\r\nX-Injected: yes"])
def test_received_header_cannot_be_split_by_client_text(helo: str) -> None:
    # aiosmtpd lets a bare CR (and the quoted local part any control byte) through to the hooks.
    forged = item('"a\rX-Also: 1"@example.test', helo=helo)
    header = received_header(item=forged, hostname="mx.test", esmtp=True)
    message = email.message_from_bytes(header + b"Subject: x\r\n\r\nbody\r\n")
    assert message.keys() == ["Received", "Subject"]
    assert header.count(b"\r") == header.count(b"\r\n") == 3
    assert header.count(b"\n") == 3


# --- split_address ----------------------------------------------------------------


@pytest.mark.parametrize(("address", "expected"), [
    ("alice@example.test", ("alice", "example.test")),
    ("Alice@Example.TEST", ("Alice", "example.test")),
    ("alice@example.test.", ("alice", "example.test")),
    ("user+tag@example.test", ("user+tag", "example.test")),
    ('"a@b"@example.test', ('"a@b"', "example.test")),
])
def test_split_address(address: str, expected: tuple[str, str]) -> None:
    assert split_address(address) == expected


@pytest.mark.parametrize("address", ["", "alice", "@example.test", "alice@", "al ice@example.test", "<>"])
def test_split_address_refuses_what_has_no_usable_domain(address: str) -> None:
    assert split_address(address) is None
