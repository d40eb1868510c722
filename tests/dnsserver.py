"""A real DNS server on 127.0.0.1 (UDP and TCP, one free port) serving test zones.

Built on dnslib's ``DNSServer``. Zones are a plain dict, changeable while the
server runs::

    server = TestDNSServer({
        "example.test": {"TXT": ["v=spf1 ip4:192.0.2.1 -all"], "MX": [(10, "mx.example.test")]},
        "mx.example.test": {"A": ["192.0.2.1"], "AAAA": ["2001:db8::1"]},
    })
    server.start()            # server.address == "127.0.0.1:<port>"
    server.add("sel._domainkey.example.test", "TXT", "v=DKIM1; k=rsa; p=...", ttl=60)
    server.set_timeout("slow.example.test")    # never answers (client times out)
    server.set_servfail("broken.example.test") # answers SERVFAIL
    server.query_count("example.test", "TXT")  # queries that reached the server
    server.stop()

It behaves like the recursive resolver a gateway talks to: it follows CNAME
chains inside its zones (a loop ends the chain), answers NXDOMAIN for unknown
names and NOERROR/no data for known names without that type, both with an SOA
whose minimum is ``negative_ttl`` (RFC 2308). TXT values are ``str`` (UTF-8),
``bytes``, or a list of character-strings; a long value is split into
255-byte character-strings as DNS requires. UDP answers over 512 bytes are
truncated, so clients retry over TCP, as on the Internet.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from dnslib import AAAA, CNAME, MX, NS, PTR, QTYPE, RCODE, RR, SOA, TXT, A, DNSLabel, DNSRecord
from dnslib.dns import DNSError
from dnslib.server import DNSHandler, DNSLogger, DNSServer

Zones = Mapping[str, Mapping[str, Iterable[Any]]]


def _norm(name: str) -> str:
    return name.rstrip(".").lower()


def _label_text(label: DNSLabel) -> str:
    """A wire name as the zone dict spells it (no presentation escapes)."""
    return _norm(b".".join(label.label).decode("utf-8", "surrogateescape"))


def txt_chunks(value: str | bytes | list[str] | list[bytes] | tuple[Any, ...]) -> list[bytes]:
    """A TXT value as DNS character-strings (each at most 255 bytes). An empty
    list becomes one empty string: a TXT RDATA must hold at least one."""
    if isinstance(value, (list, tuple)):
        return [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in value] or [b""]
    data = value.encode("utf-8") if isinstance(value, str) else value
    return [data[i:i + 255] for i in range(0, len(data), 255)] or [b""]


def _rdata(rtype: str, value: Any) -> Any:
    if rtype == "A":
        return A(value)
    if rtype == "AAAA":
        return AAAA(value)
    if rtype == "MX":
        preference, exchange = value
        return MX(DNSLabel(exchange), int(preference))
    if rtype in ("TXT", "SPF"):
        return TXT(txt_chunks(value))
    if rtype == "PTR":
        return PTR(DNSLabel(value))
    if rtype == "CNAME":
        return CNAME(DNSLabel(value))
    if rtype == "NS":
        return NS(DNSLabel(value))
    raise ValueError(f"unsupported record type {rtype}")


class _Handler(DNSHandler):
    """Truncates UDP answers over 512 bytes to an empty TC=1 reply (RFC 1035), as
    dnslib's own truncation drops the question, which clients reject."""

    def get_reply(self, data: bytes) -> bytes:
        request = DNSRecord.parse(data)
        reply = self.server.resolver.resolve(request, self)
        packed: bytes = reply.pack()
        if self.protocol == "udp" and len(packed) > 512:
            truncated = request.reply()
            truncated.header.tc = 1
            packed = truncated.pack()
        return packed


class _ZoneResolver:
    """dnslib resolver over the server's zone dict."""

    def __init__(self, owner: TestDNSServer) -> None:
        self.owner = owner

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        return self.owner._answer(request)


class TestDNSServer:
    """See the module docstring. Thread-safe: tests may edit zones while clients query."""

    __test__ = False  # not a pytest test class

    def __init__(self, zones: Zones | None = None, *, default_ttl: int = 300, negative_ttl: int = 60) -> None:
        self.default_ttl = default_ttl
        self.negative_ttl = negative_ttl
        self._lock = threading.Lock()
        self._records: dict[str, list[tuple[str, Any, int]]] = {}
        self._timeouts: dict[str, frozenset[str] | None] = {}
        self._servfails: set[str] = set()
        self.queries: list[tuple[str, str]] = []
        self._servers: list[DNSServer] = []
        self.port = 0
        for name, by_type in (zones or {}).items():
            for rtype, values in by_type.items():
                for value in values:
                    self.add(name, rtype, value)

    # -- zone editing ---------------------------------------------------------
    def add(self, name: str, rtype: str, value: Any, ttl: int | None = None) -> None:
        with self._lock:
            self._records.setdefault(_norm(name), []).append((rtype.upper(), value, ttl or self.default_ttl))

    def remove(self, name: str, rtype: str | None = None) -> None:
        with self._lock:
            kept = [r for r in self._records.get(_norm(name), []) if rtype and r[0] != rtype.upper()]
            self._records[_norm(name)] = kept
            if not kept:
                del self._records[_norm(name)]

    def clear(self) -> None:
        with self._lock:
            self._records.clear()
            self._timeouts.clear()
            self._servfails.clear()
            self.queries.clear()

    def set_timeout(self, name: str, on: bool = True, rtypes: Iterable[str] | None = None) -> None:
        """Make queries for ``name`` go unanswered (only for ``rtypes`` if given)."""
        with self._lock:
            if on:
                self._timeouts[_norm(name)] = None if rtypes is None else frozenset(t.upper() for t in rtypes)
            else:
                self._timeouts.pop(_norm(name), None)

    def _times_out(self, name: str, qtype: str) -> bool:
        if name not in self._timeouts:
            return False
        rtypes = self._timeouts[name]
        return rtypes is None or qtype in rtypes

    def set_servfail(self, name: str, on: bool = True) -> None:
        with self._lock:
            (self._servfails.add if on else self._servfails.discard)(_norm(name))

    def query_count(self, name: str | None = None, rtype: str | None = None) -> int:
        with self._lock:
            return sum(1 for n, t in self.queries
                       if (name is None or n == _norm(name)) and (rtype is None or t == rtype.upper()))

    # -- lifecycle ------------------------------------------------------------
    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> TestDNSServer:
        logger = DNSLogger(log="-request,-reply,-truncated,-error", prefix=False, logf=lambda _: None)
        resolver = _ZoneResolver(self)
        for _attempt in range(20):
            udp = DNSServer(resolver, address="127.0.0.1", port=0, logger=logger, handler=_Handler)
            port = udp.server.server_address[1]
            try:
                tcp = DNSServer(resolver, address="127.0.0.1", port=port, tcp=True, logger=logger,
                                handler=_Handler)
            except OSError:
                udp.server.server_close()
                continue
            self.port = port
            self._servers = [udp, tcp]
            for server in self._servers:
                # a short poll interval keeps stop() quick (socketserver's default is 0.5 s)
                threading.Thread(target=server.server.serve_forever, kwargs={"poll_interval": 0.02},
                                 daemon=True).start()
            return self
        raise RuntimeError("no free port for the test DNS server")

    def stop(self) -> None:
        for server in self._servers:
            server.server.shutdown()
            server.server.server_close()
        self._servers = []

    def __enter__(self) -> TestDNSServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- answering ------------------------------------------------------------
    def _answer(self, request: DNSRecord) -> DNSRecord:
        qname = request.q.qname
        qtype = QTYPE[request.q.qtype]
        name = _label_text(qname)
        with self._lock:
            self.queries.append((name, qtype))
            if self._times_out(name, qtype):
                raise DNSError("simulated timeout: no answer")  # dnslib's handler then sends nothing
            reply = request.reply()
            if name in self._servfails:
                reply.header.rcode = RCODE.SERVFAIL
                return reply
            self._fill(reply, qname, qtype)
        return reply

    def _fill(self, reply: DNSRecord, qname: DNSLabel, qtype: str) -> None:
        seen: set[str] = set()
        current = qname
        while _label_text(current) not in seen:
            name = _label_text(current)
            seen.add(name)
            if self._times_out(name, qtype):
                raise DNSError("simulated timeout while following a CNAME")
            records = self._records.get(name)
            if records is None:
                self._negative(reply, name, RCODE.NXDOMAIN)
                return
            matches = [r for r in records if r[0] == qtype]
            if matches:
                for rtype, value, ttl in matches:
                    reply.add_answer(RR(current, getattr(QTYPE, rtype), rdata=_rdata(rtype, value), ttl=ttl))
                return
            cname = next((r for r in records if r[0] == "CNAME"), None)
            if cname is None or qtype == "CNAME":
                self._negative(reply, name, RCODE.NOERROR)
                return
            reply.add_answer(RR(current, QTYPE.CNAME, rdata=_rdata("CNAME", cname[1]), ttl=cname[2]))
            current = DNSLabel(str(cname[1]))
        # a CNAME loop: the answer holds the chain and ends there

    def _negative(self, reply: DNSRecord, name: str, rcode: int) -> None:
        apex = ".".join(name.split(".")[-2:]) or "."
        soa = SOA(f"ns.{apex}", f"hostmaster.{apex}", (1, 3600, 600, 86400, self.negative_ttl))
        reply.add_auth(RR(apex, QTYPE.SOA, rdata=soa, ttl=self.negative_ttl))
        if rcode != RCODE.NOERROR:
            reply.header.rcode = rcode


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 with nothing listening (for dead-DNS tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
