"""The header fields that carry the scan verdicts: X-Spam-Status, X-Spam-Score, X-Virus-Status.

SpamAssassin's familiar shape (``Yes, score=15 ... tests=GTUBE``), ASCII
only: scanner-supplied names are reduced to token characters, so nothing a
scanner (or a message that steers it) returns can start a new header line.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from sesmail_gateway.config import ScanConfig
from sesmail_gateway.scan import ERROR, VIRUS, Scanner, ScanResult

_UNSAFE = re.compile(r"[^A-Za-z0-9_.:+-]")
MAX_TESTS = 20


def _token(text: str) -> str:
    return _UNSAFE.sub("_", text)[:80]


def scan_headers(results: Sequence[ScanResult], config: ScanConfig, ran: Sequence[Scanner]) -> bytes:
    """The fields for these results, CRLF-terminated; empty when nothing ran."""
    kinds = {s.name: s.kind for s in ran}
    spam = [r for r in results if kinds.get(r.scanner) == "spam"]
    virus = [r for r in results if kinds.get(r.scanner) == "virus"]
    lines = [*_spam_lines(spam, config), *_virus_lines(virus)]
    return "".join(f"{line}\r\n" for line in lines).encode("ascii")


def _spam_lines(results: Sequence[ScanResult], config: ScanConfig) -> list[str]:
    scored = [r for r in results if r.result != ERROR and r.score is not None]
    if not results:
        return []
    if not scored:
        failed = " ".join(_token(r.scanner) for r in results)
        return [f"X-Spam-Status: Unknown, scan failed scanner={failed}"]
    top = max(scored, key=lambda r: r.score or 0.0)
    score = top.score or 0.0
    flag = "Yes" if score >= config.label_score else "No"
    tests = ",".join(_token(s) for s in top.symbols[:MAX_TESTS]) or "none"
    return [
        f"X-Spam-Status: {flag}, score={score:g} label={config.label_score:g} reject={config.reject_score:g}"
        f"\r\n\tscanner={_token(top.scanner)} tests={tests}",
        f"X-Spam-Score: {score:g}",
    ]


def _virus_lines(results: Sequence[ScanResult]) -> list[str]:
    if not results:
        return []
    found = [r for r in results if r.result == VIRUS]
    if found:
        return [f"X-Virus-Status: Infected ({_token(found[0].virus)}) scanner={_token(found[0].scanner)}"]
    if all(r.result == ERROR for r in results):
        return ["X-Virus-Status: Unknown, scan failed"]
    return ["X-Virus-Status: Clean"]
