"""A tiny authoritative DNS stub on 127.0.0.1 for the accept benchmark.

It answers UDP queries from a fixed table of TXT records (the benchmark's
SPF, DKIM and DMARC records) and says NXDOMAIN to every other name, so the
gateway's checks never leave the host and a warm cache is cheap to reach.
Negative answers carry an SOA (TTL and minimum :data:`TTL`) so resolvers may
cache them per RFC 2308.  Long TXT values are split into 255-byte
character-strings, as RFC 1035 requires.

Only what the benchmark needs: one question per query, class IN, no EDNS
(an OPT record in the query is ignored), no TCP -- the records it serves fit
in a 512-byte UDP reply (:meth:`DnsStub.start` checks that).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

LOOPBACK = "127.0.0.1"
TTL = 3600
UDP_LIMIT = 512
TYPE_TXT, TYPE_SOA, TYPE_ANY = 16, 6, 255
CLASS_IN = 1
RCODE_NOERROR, RCODE_NXDOMAIN = 0, 3
_QUESTION_POINTER = b"\xc0\x0c"  # compression pointer to the name in the question (offset 12)

TxtRecords = Mapping[str, Sequence[str | bytes]]
"""Owner name (any case, trailing dot optional) -> TXT record values."""


@dataclass(frozen=True)
class Question:
    """The parts of a query the stub needs."""

    qid: int
    flags: int
    name: str
    qtype: int
    end: int
    """Offset just past the first question (header + QNAME + QTYPE + QCLASS)."""


def normalise(name: str) -> str:
    """Lower-case a domain name and drop its trailing dot."""
    return name.rstrip(".").lower()


def parse_question(query: bytes) -> Question | None:
    """Parse the header and first question of ``query`` (None if malformed or not a query)."""
    if len(query) < 12:
        return None
    qid, flags, qdcount = struct.unpack("!HHH", query[:6])
    if qdcount < 1 or flags & 0x8000:
        return None
    labels: list[str] = []
    pos = 12
    while pos < len(query) and (length := query[pos]) != 0:
        if length > 63:  # no compression in questions we accept
            return None
        labels.append(query[pos + 1:pos + 1 + length].decode("ascii", "replace"))
        pos += 1 + length
    end = pos + 5  # root label + QTYPE + QCLASS
    if end > len(query):
        return None
    qtype = struct.unpack("!H", query[pos + 1:pos + 3])[0]
    return Question(qid, flags, normalise(".".join(labels)), qtype, end)


def txt_rdata(value: str | bytes) -> bytes:
    """Encode one TXT record value as <character-string>s of at most 255 bytes each."""
    data = value.encode("utf-8") if isinstance(value, str) else value
    chunks = [data[i:i + 255] for i in range(0, len(data), 255)] or [b""]
    return b"".join(bytes([len(chunk)]) + chunk for chunk in chunks)


def resource_record(owner: bytes, rtype: int, rdata: bytes, ttl: int = TTL) -> bytes:
    """Encode one resource record (``owner`` already in wire form)."""
    return owner + struct.pack("!HHIH", rtype, CLASS_IN, ttl, len(rdata)) + rdata


def soa_record() -> bytes:
    """A root-owned SOA whose TTL and minimum let resolvers cache negative answers for :data:`TTL`."""
    mname = b"\x02ns\x05bench\x04test\x00"
    rname = b"\x0ahostmaster\x05bench\x04test\x00"
    rdata = mname + rname + struct.pack("!IIIII", 1, TTL, TTL, TTL, TTL)
    return resource_record(b"\x00", TYPE_SOA, rdata)


def build_reply(query: bytes, records: Mapping[str, Sequence[bytes]]) -> bytes | None:
    """Answer ``query`` from ``records`` (normalised name -> TXT rdatas); None if the query is malformed."""
    question = parse_question(query)
    if question is None:
        return None
    rdatas = records.get(question.name)
    answers: list[bytes] = []
    authority: list[bytes] = []
    if rdatas is None:
        rcode = RCODE_NXDOMAIN
        authority.append(soa_record())
    else:
        rcode = RCODE_NOERROR
        if question.qtype in (TYPE_TXT, TYPE_ANY):
            answers = [resource_record(_QUESTION_POINTER, TYPE_TXT, rdata) for rdata in rdatas]
        else:
            authority.append(soa_record())  # NODATA: the name exists, not with this type
    # QR + AA + RA, opcode and RD copied from the query.
    flags = 0x8000 | 0x0400 | (question.flags & 0x7900) | 0x0080 | rcode
    header = struct.pack("!HHHHHH", question.qid, flags, 1, len(answers), len(authority), 0)
    return b"".join((header, query[12:question.end], *answers, *authority))


class _StubProtocol(asyncio.DatagramProtocol):
    """Reply to each datagram from the record table."""

    def __init__(self, records: Mapping[str, Sequence[bytes]], stub: DnsStub) -> None:
        self.records = records
        self.stub = stub
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport to reply on."""
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        """Answer one query (malformed ones are dropped)."""
        self.stub.queries += 1
        reply = build_reply(data, self.records)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


def compile_records(records: TxtRecords) -> dict[str, list[bytes]]:
    """Normalise owner names and pre-encode every TXT value."""
    return {normalise(name): [txt_rdata(value) for value in values] for name, values in records.items()}


class DnsStub:
    """A UDP DNS server on 127.0.0.1 serving ``records`` (TXT) and NXDOMAIN for everything else."""

    def __init__(self, records: TxtRecords | None = None) -> None:
        self.records = compile_records(records or {})
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0
        self.queries = 0
        """Datagrams received so far (the benchmark reports how many a measurement needed)."""

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` once started."""
        return LOOPBACK, self.port

    async def start(self) -> str:
        """Start listening; return ``"127.0.0.1:PORT"`` for ``checks.dns_servers``."""
        self.check_sizes()
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _StubProtocol(self.records, self),
                                                           local_addr=(LOOPBACK, 0))
        self.transport = transport
        self.port = int(transport.get_extra_info("sockname")[1])
        return f"{LOOPBACK}:{self.port}"

    def check_sizes(self) -> None:
        """Raise ValueError if some answer would not fit in a plain 512-byte UDP reply (no TCP here)."""
        for name, rdatas in self.records.items():
            qname = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\x00"
            size = 12 + len(qname) + 4 + sum(len(resource_record(_QUESTION_POINTER, TYPE_TXT, r)) for r in rdatas)
            if size > UDP_LIMIT:
                raise ValueError(f"DNS stub: the answer for {name} is {size} bytes, over {UDP_LIMIT}")

    def stop(self) -> None:
        """Close the socket."""
        if self.transport is not None:
            self.transport.close()
            self.transport = None
