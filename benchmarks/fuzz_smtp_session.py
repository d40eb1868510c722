"""Coverage-guided fuzzing of the SMTP session: raw client bytes into a real gateway session.

One process holds a real ``SMTPServer`` on 127.0.0.1 (the gateway's session,
handler, SQLite rule store, journaled spool and checks, DNS answered by the
test DNS server) and an asyncio loop. Each input is one TCP connection: the
bytes are written as sent (CR, LF, dots, NULs, 8-bit and all), then the
client half-closes and reads every reply until the server hangs up.

A crash is any of: an exception reaching aiosmtpd's ``handle_exception``
(the client would see ``451 4.3.0 Local error``), an exception the event
loop reports, a reply that is not a well-formed SMTP reply line, or a session
that does not end within ``SESSION_DEADLINE`` seconds of the client's EOF (a
hang). The gateway is instrumented (``sesmail_gateway``, ``aiosmtpd``), so
libFuzzer steers towards new code.

    python benchmarks/fuzz_smtp_session.py -max_total_time=600 [CORPUS_DIR]

libFuzzer's own flags apply (``-runs=N``, ``-max_len=N``, ``-timeout=S``).
Every ``ANSWER_EVERY`` inputs a plain session must still be served. At the
end libFuzzer prints ``Done N runs in T second(s)``; on the first crash it
stops, exits non-zero and saves the input as ``crash-*``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

with atheris.instrument_imports(include=["sesmail_gateway", "aiosmtpd"]):
    from sesmail_gateway.checks.inspector import Inspector
    from sesmail_gateway.config import load_mapping
    from sesmail_gateway.metrics import Metrics
    from sesmail_gateway.routes import Action, Rule
    from sesmail_gateway.routes.resolver import RouteResolver
    from sesmail_gateway.routes.sqlite import SqliteRouteStore
    from sesmail_gateway.smtp.handler import GatewayHandler
    from sesmail_gateway.smtp.server import SMTPServer, bind_socket
    from sesmail_gateway.spool import Spool

from tests.dnsserver import TestDNSServer  # noqa: E402

SESSION_DEADLINE = 10.0
ANSWER_EVERY = 500  # inputs between checks that a plain session is still served
REPLY = re.compile(rb"^[2-5]\d\d[ -][^\r\n]*$")

# Inputs that reach every command: libFuzzer mutates from these.
SEEDS = [
    b"EHLO client.test\r\nMAIL FROM:<a@elsewhere.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
    b"From: a@elsewhere.test\r\nSubject: x\r\n\r\n..dot\r\nbody\r\n.\r\nQUIT\r\n",
    b"HELO c\r\nMAIL FROM:<> SIZE=10\r\nRCPT TO:<bob@example.test>\r\nRSET\r\nNOOP\r\nVRFY x\r\nHELP MAIL\r\n",
    b"EHLO c\r\nMAIL FROM:<a@b.test> BODY=8BITMIME SMTPUTF8\r\nRCPT TO:<\xc3\xa9@example.test>\r\nDATA\r\n"
    b"Authentication-Results: mx.test; dkim=pass\r\nFrom: (c (d)) <x@example.org>\r\n\r\n\r\n.\r\n",
    b"EHLO c\r\nSTARTTLS\r\nAUTH PLAIN AGFAYg==\r\nEXPN x\r\nBDAT 10\r\n",
]


class Target:
    """The gateway's SMTP server in this process, and what went wrong so far."""

    def __init__(self, folder: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.dns = TestDNSServer()
        self.dns.start()
        config = load_mapping({
            "gateway": {"hostname": "mx.test", "domains": ["example.test"], "data_dir": str(folder)},
            "smtp": {"max_message_size": 65536, "command_timeout": 5, "data_timeout": 5,
                     "junk_command_limit": 20},
            "rules": {"cache_seconds": 0},
            "checks": {"dns_servers": [self.dns.address], "dns_timeout": 0.2, "dmarc": "enforce"},
        })
        store = SqliteRouteStore(folder / "rules.db")
        store.put(Rule(pattern="*@example.test", actions=(Action("maildir", "mail"),)))
        self.problems: list[str] = []
        self.inputs = 0
        self.loop.set_exception_handler(lambda _loop, context: self.problems.append(
            f"event loop: {context.get('message')}: {context.get('exception')!r}"))
        self.loop.run_until_complete(self._start(config, store, folder))

    async def _start(self, config: Any, store: SqliteRouteStore, folder: Path) -> None:
        self.spool = Spool(folder / "spool")
        handler = GatewayHandler(config=config, resolver=RouteResolver(store, cache_seconds=0), spool=self.spool,
                                 metrics=Metrics(), inspector=Inspector(config=config.checks, hostname="mx.test"))
        original = handler.handle_exception

        async def handle_exception(error: Exception) -> str:
            self.problems.append(f"session exception: {type(error).__name__}: {error}")
            return await original(error)

        handler.handle_exception = handle_exception  # type: ignore[method-assign]
        self.server = SMTPServer(config, handler)
        sock = bind_socket("127.0.0.1:0")
        self.port = (await self.server.start([sock]))[0][1]

    async def _session(self, data: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(data)
            writer.write_eof()
            async with asyncio.timeout(SESSION_DEADLINE):
                return await reader.read()
        finally:
            writer.close()

    def run_one(self, data: bytes) -> None:
        self.inputs += 1
        try:
            replies = self.loop.run_until_complete(self._session(data))
        except TimeoutError:
            self.problems.append(f"hang: no end of session {SESSION_DEADLINE}s after the client's EOF")
            replies = b""
        except ConnectionError:
            replies = b""  # the server hung up first (junk limit, 421): fine
        lines = replies.split(b"\r\n")
        if lines and lines[-1] == b"":
            lines.pop()
        bad = [line for line in lines if not REPLY.match(line)]
        if bad:
            self.problems.append(f"malformed reply line {bad[0]!r}")
        if any(line.startswith(b"451 4.3.0 Local error") for line in lines):
            self.problems.append("451 Local error: an exception inside the session")
        if self.inputs % ANSWER_EVERY == 0 and not self.answers():
            self.problems.append(f"the server stopped answering after {self.inputs} inputs")
        if self.problems:
            raise RuntimeError("; ".join(self.problems))

    def answers(self) -> bool:
        """The server still answers a plain session after everything it was fed."""
        replies = self.loop.run_until_complete(self._session(b"EHLO c\r\nNOOP\r\nQUIT\r\n"))
        return replies.startswith(b"220 ") and b"\r\n221 " in replies


def main() -> None:
    logging.disable(logging.CRITICAL)  # the gateway logs every refusal; the fuzzer's output is the report
    folder = Path(tempfile.mkdtemp(prefix="fuzz-smtp-"))
    target = Target(folder)
    args = list(sys.argv)
    corpus = [a for a in args[1:] if not a.startswith("-")]
    for directory in corpus:
        seeds = Path(directory)
        seeds.mkdir(parents=True, exist_ok=True)
        for index, seed in enumerate(SEEDS):
            (seeds / f"seed-{index}").write_bytes(seed)
    if not any(a.startswith("-max_len") for a in args):
        args.append("-max_len=4096")
    atheris.Setup(args, target.run_one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
