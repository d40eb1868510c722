"""rspamd over its HTTP protocol: ``POST /checkv2``.

The envelope goes in request headers, as rspamd's own proxy and milter
integrations send it (``From``, ``Rcpt`` once per recipient, ``IP``,
``Helo``, ``Hostname``, ``Queue-Id``). Our SPF, DKIM and DMARC verdicts go
in the ``SPF``, ``DKIM`` and ``DMARC`` headers that rspamd's
``http_headers`` module reads (when enabled there, rspamd skips its own
checks and scores ours), so a message is not authenticated twice.
"""

from __future__ import annotations

import http.client
import json
import time
from typing import Any
from urllib.parse import urlsplit

from sesmail_gateway.scan import CLEAN, Envelope, ScanError, ScanResult

# Our result words → the words rspamd's http_headers module understands.
_SPF = {"pass": "pass", "fail": "fail", "softfail": "softfail", "neutral": "neutral", "none": "na",
        "permerror": "permfail"}
_DKIM = {"pass": "pass", "fail": "fail", "temperror": "tempfail", "permerror": "permfail", "none": "na",
         "neutral": "fail", "policy": "fail"}
_DMARC_FAIL = {"reject": "reject", "quarantine": "quarantine", "none": "softfail"}
_DMARC = {"pass": "pass", "temperror": "tempfail", "permerror": "permfail", "none": "na"}


def auth_headers(auth: dict[str, Any]) -> dict[str, str]:
    """The ``SPF``/``DKIM``/``DMARC`` request headers for our verdicts (``Verdicts.to_dict`` shape).

    A temporary error is left out, so rspamd checks that method itself."""
    headers: dict[str, str] = {}
    spf = _SPF.get((auth.get("spf") or {}).get("result", ""))
    if spf:
        headers["SPF"] = json.dumps({"result": spf})
    dkim = [{"result": _DKIM[d["result"]], "domain": d.get("domain") or "unknown"}
            for d in auth.get("dkim") or () if d.get("result") in _DKIM]
    if dkim:
        headers["DKIM"] = json.dumps({"results": dkim})
    dmarc = auth.get("dmarc") or {}
    result = _DMARC_FAIL.get(dmarc.get("disposition", "none"), "softfail") if dmarc.get("result") == "fail" \
        else _DMARC.get(dmarc.get("result", ""))
    if result:
        headers["DMARC"] = json.dumps({"result": result})
    return headers


class RspamdScanner:
    name = "rspamd"
    kind = "spam"

    def __init__(self, url: str, *, timeout: float, hostname: str = "") -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected http://host:port, got {url!r}")
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.https else 11333)
        self.path = parts.path.rstrip("/") + "/checkv2"
        self.timeout = timeout
        self.hostname = hostname

    def scan(self, message: bytes, envelope: Envelope) -> ScanResult:
        started = time.monotonic()
        kind = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        connection = kind(self.host, self.port, timeout=self.timeout)
        try:
            connection.putrequest("POST", self.path, skip_accept_encoding=True)
            for name, value in self._headers(envelope, len(message)):
                connection.putheader(name, value)
            connection.endheaders(message)
            response = connection.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise ScanError(f"{type(exc).__name__}: {exc}") from None
        finally:
            connection.close()
        if response.status != 200:
            raise ScanError(f"HTTP {response.status}")
        return _result(body, time.monotonic() - started)

    def _headers(self, envelope: Envelope, length: int) -> list[tuple[str, str]]:
        headers = [("Content-Length", str(length)), ("Queue-Id", envelope.queue_id),
                   ("IP", envelope.client_ip), ("Helo", envelope.helo or "unknown"),
                   ("Hostname", envelope.client_name or "unknown"), ("From", envelope.sender or "<>")]
        headers += [("Rcpt", rcpt) for rcpt in envelope.recipients]
        if self.hostname:
            headers.append(("MTA-Name", self.hostname))
        headers += auth_headers(envelope.auth).items()
        # Header values go on the wire as they are: no CR or LF from a client may reach them.
        return [(name, value.replace("\r", "").replace("\n", "")) for name, value in headers if value]


def _result(body: bytes, seconds: float) -> ScanResult:
    try:
        reply = json.loads(body)
        score = float(reply["score"])
    except (ValueError, KeyError, TypeError):
        raise ScanError("reply is not a /checkv2 JSON object with a score") from None
    symbols = reply.get("symbols")
    names = tuple(sorted(symbols, key=lambda s: -abs(_score(symbols[s])))) if isinstance(symbols, dict) else ()
    return ScanResult("rspamd", CLEAN, score=round(score, 2), symbols=names, seconds=seconds)


def _score(symbol: object) -> float:
    value = symbol.get("score", 0.0) if isinstance(symbol, dict) else 0.0
    return float(value) if isinstance(value, (int, float)) else 0.0
