"""The raw header block of a message, as byte ranges.

The gateway never re-serialises a message, so header work (reading From,
removing forged Authentication-Results) is done on the bytes received:
each field is located by offsets, including its folded continuation lines
and its line ending, and everything else is left exactly as it came.
Lines may end in CRLF or bare LF; the block ends at the first empty line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["RawField", "header_fields", "unfold"]

_FOLD = re.compile(rb"\r?\n(?=[ \t])")


@dataclass(frozen=True)
class RawField:
    """One header field: ``message[start:end] == raw`` (line ending included)."""

    name: bytes
    start: int
    end: int
    raw: bytes
    key: str
    """The name in lower case, for comparisons."""

    @property
    def value(self) -> bytes:
        """Everything after the colon, folding kept, final line ending removed."""
        _, _, value = self.raw.partition(b":")
        return value.rstrip(b"\r\n")

    def is_named(self, name: str) -> bool:
        """Whether the field has this name (``name`` in lower case)."""
        return self.key == name


def unfold(value: bytes) -> str:
    """A field value unfolded (RFC 5322 2.2.3), decoded as UTF-8 (RFC 6532), lossily."""
    return _FOLD.sub(b"", value).decode("utf-8", "replace").strip()


def header_fields(message: bytes) -> list[RawField]:
    """Every field of the header block, in order. A line without a colon is a
    field with an empty name (kept so offsets stay exact)."""
    fields: list[tuple[bytes, int, int]] = []
    pos = 0
    size = len(message)
    while pos < size:
        newline = message.find(b"\n", pos)
        end = size if newline < 0 else newline + 1
        line = message[pos:end]
        if line in (b"\r\n", b"\n"):
            break
        if line[:1] in (b" ", b"\t") and fields:
            name, start, _ = fields[-1]
            fields[-1] = (name, start, end)
        else:
            colon = line.find(b":")
            name = line[:colon].rstrip(b" \t") if colon > 0 else b""
            fields.append((name, pos, end))
        pos = end
    return [RawField(name, start, end, message[start:end], name.decode("ascii", "replace").lower())
            for name, start, end in fields]
