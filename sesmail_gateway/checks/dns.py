"""The daemon's one DNS resolver: dnspython underneath, a shared TTL cache on top.

Every check (SPF, DKIM, ARC, DMARC) resolves through one :class:`Resolver`, so
``checks.dns_servers`` / ``checks.dns_timeout`` and the cache apply to all of
them, and tests can point everything at a DNS server on 127.0.0.1.

Contract of :meth:`Resolver.query`: it never raises for a DNS problem. It
answers a :class:`DnsResult` whose status tells the four outcomes apart:

* ``ok``       -- records found (``records`` non-empty);
* ``nxdomain`` -- the name does not exist (permanent);
* ``nodata``   -- the name exists but has no record of that type (permanent;
  also a CNAME loop or an unusable name);
* ``tempfail`` -- timeout, SERVFAIL, refused, no servers: try again later.

Records are normalised: TXT/SPF -> ``bytes`` (the character-strings of one
record joined, as RFC 7208 and RFC 6376 both require); A/AAAA -> address text;
MX -> ``"<preference> <exchange>"``; PTR/CNAME/NS -> target name; anything
else -> dnspython's presentation text. Names are returned without the final dot.

Positive answers are cached for their TTL, negative ones (nxdomain, nodata)
for the SOA minimum (RFC 2308) or a short default; temporary failures are
remembered for ``FAILURE_TTL`` seconds only (RFC 2308 7.1). The cache is bounded (least recently used entries go first) and
safe to share between threads: the daemon runs checks in a thread pool.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum

import dkim
import dns.exception
import dns.inet
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import dns.reversename

from sesmail_gateway.config import parse_hostport

__all__ = ["BUDGET_EXHAUSTED", "CacheOnly", "DkimTxtLookup", "DnsResult", "DnsStatus", "Resolver", "ascii_domain"]


FAILURE_TTL = 5  # seconds a temporary failure is remembered
#: The error of a key lookup never sent because the message's time budget was spent:
#: not a DNS failure of that name, so never a reason for ``temperror``.
BUDGET_EXHAUSTED = "time budget for key lookups exhausted"
NOT_CACHED = "not in the cache (answered from the cache alone)"


class CacheOnly:
    """What a stretch of cache-only answering found: ``missed`` once a query needed DNS."""

    __slots__ = ("missed",)

    def __init__(self) -> None:
        self.missed = False


class DnsStatus(StrEnum):
    OK = "ok"
    NXDOMAIN = "nxdomain"
    NODATA = "nodata"
    TEMPFAIL = "tempfail"


@dataclass(frozen=True)
class DnsResult:
    """One answer. ``ttl`` is the seconds left to cache it (0 for tempfail)."""

    status: DnsStatus
    records: tuple[str | bytes, ...] = ()
    ttl: int = 0
    error: str = ""

    @property
    def texts(self) -> list[str]:
        """The records as text (TXT records decoded as UTF-8, lossily)."""
        return [r.decode("utf-8", "replace") if isinstance(r, bytes) else r for r in self.records]

    @property
    def blobs(self) -> list[bytes]:
        """The records as bytes (TXT records as received, others UTF-8 encoded)."""
        return [r if isinstance(r, bytes) else r.encode("utf-8") for r in self.records]


_TEXT_TYPES = frozenset({"TXT", "SPF"})
_NAME_TYPES = frozenset({"PTR", "CNAME", "NS", "DNAME"})


def ascii_domain(name: str) -> str:
    """``name`` lower-cased, final dot removed, IDNs as A-labels; "" if unusable."""
    name = _strip_dot(name.strip()).lower()
    if name.isascii():
        return name
    try:
        return name.encode("idna").decode("ascii")
    except UnicodeError:
        return ""


def _strip_dot(text: str) -> str:
    return text[:-1] if text.endswith(".") else text


def _record(rdtype: str, rdata: object) -> str | bytes:
    if rdtype in _TEXT_TYPES:
        return b"".join(rdata.strings)  # type: ignore[attr-defined]
    if rdtype in ("A", "AAAA"):
        return str(rdata.address)  # type: ignore[attr-defined]
    if rdtype == "MX":
        return f"{rdata.preference} {_strip_dot(rdata.exchange.to_text())}"  # type: ignore[attr-defined]
    if rdtype in _NAME_TYPES:
        return _strip_dot(rdata.target.to_text())  # type: ignore[attr-defined]
    return str(rdata.to_text())  # type: ignore[attr-defined]


@functools.lru_cache(maxsize=4096)
def _pointer_name(ip: str) -> str:
    """The PTR query name of an address (``4.3.2.1.in-addr.arpa.``), "" for no address; remembered per address."""
    try:
        return str(dns.reversename.from_address(ip).to_text())
    except (ValueError, dns.exception.SyntaxError):
        return ""


def confirmed_reverse_name(resolver: Resolver, ip: str) -> str:
    """The client's forward-confirmed reverse DNS name (FCrDNS), or "" when there is none.

    A PTR name counts only when it resolves back to ``ip``: anyone can publish
    any PTR for their own addresses. Used for the Received header.
    """
    pointer = _pointer_name(ip)
    if not pointer:
        return ""
    answer = resolver.query(pointer, "PTR")
    if answer.status is not DnsStatus.OK:
        return ""
    rdtype = "AAAA" if ":" in ip else "A"
    for name in answer.texts[:3]:
        forward = resolver.query(name, rdtype)
        if forward.status is DnsStatus.OK and ip in forward.texts:
            return name
    return ""


class _Cache:
    """A bounded LRU map of (name, type) -> (expires_at, DnsResult); thread-safe."""

    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple[str, str], tuple[float, DnsResult]] = OrderedDict()

    def get(self, key: tuple[str, str], now: float) -> DnsResult | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            expires, result = item
            if expires <= now:
                del self._items[key]
                return None
            self._items.move_to_end(key)
        return DnsResult(result.status, result.records, max(0, int(expires - now)), result.error)

    def put(self, key: tuple[str, str], result: DnsResult, now: float) -> None:
        if result.ttl <= 0 or self._max <= 0:
            return
        with self._lock:
            self._items[key] = (now + result.ttl, result)
            self._items.move_to_end(key)
            while len(self._items) > self._max:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


def _nameserver(server: str) -> dns.nameserver.Do53Nameserver:
    host, port = parse_hostport(server, default_port=53)
    if not dns.inet.is_address(host):
        raise ValueError(f"DNS server must be an IP address: {server!r}")
    return dns.nameserver.Do53Nameserver(host, port)


class Resolver:
    """A caching stub resolver. ``servers`` are ``"host:port"`` strings with IP
    hosts (``"[::1]:53"`` for IPv6; ValueError otherwise); empty means the
    system's resolv.conf. ``timeout`` bounds one whole query (all servers, all
    retries). ``clock`` is injectable for cache tests."""

    def __init__(
        self,
        servers: Sequence[str] = (),
        timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_entries: int = 10_000,
        max_ttl: int = 86_400,
        negative_ttl: int = 60,
        max_negative_ttl: int = 3_600,
    ) -> None:
        self.timeout = timeout
        self._clock = clock
        self._max_ttl = max_ttl
        self._negative_ttl = negative_ttl
        self._max_negative_ttl = max_negative_ttl
        self._cache = _Cache(max_entries)
        self._lock = threading.Lock()
        self._cache_only = threading.local()
        self.queries_sent = 0
        self._resolver = self._make_resolver(servers, timeout)

    @contextlib.contextmanager
    def cache_only(self) -> Iterator[CacheOnly]:
        """Answer this thread's queries from the cache alone while the block runs.

        A query the cache cannot answer is neither sent nor cached: it answers
        ``tempfail`` and sets ``missed``, and the caller throws away whatever
        it computed and does it again where waiting for DNS is allowed. This
        lets the checks run on the event loop when every answer is at hand.
        """
        probe = CacheOnly()
        self._cache_only.probe = probe
        try:
            yield probe
        finally:
            self._cache_only.probe = None

    @staticmethod
    def _make_resolver(servers: Sequence[str], timeout: float) -> dns.resolver.Resolver:
        if servers:
            resolver = dns.resolver.Resolver(configure=False)
            resolver.nameservers = [_nameserver(server) for server in servers]
        else:
            try:
                resolver = dns.resolver.Resolver(configure=True)
            except dns.resolver.NoResolverConfiguration:
                # No resolv.conf: every query answers tempfail rather than crashing start-up.
                resolver = dns.resolver.Resolver(configure=False)
                resolver.nameservers = []
        resolver.timeout = timeout
        resolver.lifetime = timeout
        resolver.cache = None  # our cache, with our clock
        return resolver

    def query(self, name: str, rdtype: str) -> DnsResult:
        """Resolve ``name`` (absolute; a final dot is optional) for ``rdtype``."""
        rdtype = rdtype.upper()
        key = (_strip_dot(name).lower(), rdtype)
        now = self._clock()
        cached = self._cache.get(key, now)
        if cached is not None:
            return cached
        probe: CacheOnly | None = getattr(self._cache_only, "probe", None)
        if probe is not None:
            probe.missed = True
            return DnsResult(DnsStatus.TEMPFAIL, error=NOT_CACHED)
        result = self._lookup(key[0], rdtype)
        if result.status is DnsStatus.TEMPFAIL:
            # RFC 2308 7.1: remember a server failure briefly, so a dead server is not
            # asked again (and waited for) by every message in the next seconds.
            result = dataclasses.replace(result, ttl=FAILURE_TTL)
        self._cache.put(key, result, now)
        return result

    def txt(self, name: str) -> DnsResult:
        """TXT records of ``name`` (each one ``bytes``, character-strings joined)."""
        return self.query(name, "TXT")

    def clear_cache(self) -> None:
        self._cache.clear()

    def cache_size(self) -> int:
        return len(self._cache)

    def _lookup(self, name: str, rdtype: str) -> DnsResult:
        try:
            qname = dns.name.from_text(name or ".")
        except dns.exception.DNSException as exc:  # empty or over-long label
            return DnsResult(DnsStatus.NXDOMAIN, error=f"invalid name: {exc}")
        with self._lock:
            self.queries_sent += 1
        try:
            answer = self._resolver.resolve(qname, rdtype, search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN as exc:
            responses: dict[dns.name.Name, dns.message.Message] = exc.kwargs.get("responses", {})
            return DnsResult(DnsStatus.NXDOMAIN, ttl=self._negative(responses.get(qname)))
        except dns.message.ChainTooLong:
            return self._cname_loop()
        except dns.resolver.NoNameservers as exc:
            if any(isinstance(err[3], dns.message.ChainTooLong) for err in exc.kwargs.get("errors", ())):
                return self._cname_loop()
            return DnsResult(DnsStatus.TEMPFAIL, error=f"NoNameservers: {exc}")
        except dns.exception.Timeout as exc:
            return DnsResult(DnsStatus.TEMPFAIL, error=f"timeout: {exc}")
        except Exception as exc:  # socket errors, malformed answers, the unknown: all temporary
            return DnsResult(DnsStatus.TEMPFAIL, error=f"{type(exc).__name__}: {exc}")
        if answer.rrset is None:
            return DnsResult(DnsStatus.NODATA, ttl=self._negative(answer.response))
        records = tuple(_record(rdtype, rdata) for rdata in answer.rrset)
        ttl = min(answer.chaining_result.minimum_ttl, self._max_ttl)
        return DnsResult(DnsStatus.OK, records, ttl)

    def _cname_loop(self) -> DnsResult:
        """A CNAME loop is a permanent fault of the data, not a reason to retry."""
        return DnsResult(DnsStatus.NODATA, ttl=self._negative_ttl, error="CNAME chain too long")

    def _negative(self, response: dns.message.Message | None) -> int:
        """RFC 2308: the SOA's TTL and minimum bound a negative answer's life."""
        if not isinstance(response, dns.message.QueryMessage):
            return self._negative_ttl
        try:
            chain = response.resolve_chaining()
        except dns.exception.DNSException:
            return self._negative_ttl
        has_soa = any(rrset.rdtype == dns.rdatatype.SOA for rrset in response.authority)
        ttl = chain.minimum_ttl if has_soa else self._negative_ttl
        return max(0, min(ttl, self._max_negative_ttl))


class DkimTxtLookup:
    """A ``dnsfunc`` for dkimpy (``dkim.DKIM.verify`` / ``dkim.arc_verify``).

    dkimpy turns every key-lookup problem into a bare ``False``; this adapter
    remembers what DNS said for each name so the caller can tell a missing key
    (permerror), a DNS failure (temperror) and a bad signature (fail) apart.
    A temporary failure raises ``dkim.DnsTimeoutError`` as dkimpy expects.

    One instance serves one message: each name is asked once, and after
    ``lifetime`` seconds every further lookup fails at once, so a message
    carrying many signatures whose keys time out cannot hold a worker for
    minutes.
    """

    def __init__(self, resolver: Resolver, lifetime: float = 20.0) -> None:
        self._resolver = resolver
        self._deadline = time.monotonic() + lifetime
        self.results: dict[str, DnsResult] = {}

    def __call__(self, name: bytes | str, timeout: float = 5.0) -> bytes | None:
        text = _strip_dot(name.decode("ascii", "replace") if isinstance(name, bytes) else name).lower()
        result = self.results.get(text)
        if result is None:
            if time.monotonic() > self._deadline:
                result = DnsResult(DnsStatus.TEMPFAIL, error=BUDGET_EXHAUSTED)
            else:
                result = self._resolver.txt(text)
            self.results[text] = result
        if result.status is DnsStatus.TEMPFAIL:
            raise dkim.DnsTimeoutError(result.error or "DNS temporary failure")
        return result.blobs[0] if result.blobs else None

    def result_for(self, name: str) -> DnsResult | None:
        return self.results.get(_strip_dot(name).lower())
