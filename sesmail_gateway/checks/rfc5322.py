"""Linear, non-recursive readers for the RFC 5322 header syntax the checks need.

Header values come from the sender, so every reader here walks its input
once, left to right, with an explicit depth counter for nested comments:
no recursion (the standard library's address parser recurses once per
nested comment and raises ``RecursionError`` on a few thousand), no
backtracking regular expressions, no slicing in a loop.
"""

from __future__ import annotations

__all__ = ["Unparseable", "authserv_id", "mailbox_addresses", "skip_cfws"]

_WSP = " \t\r\n"


class Unparseable(ValueError):
    """The value does not follow the grammar (an unclosed comment, quote or bracket)."""


def skip_cfws(text: str, pos: int = 0) -> int:
    """The index of the first character at or after ``pos`` that is not folding
    white space or part of a (nested) comment. A quoted-pair inside a comment
    (``\\)``) does not close it. Raises :class:`Unparseable` on an unclosed comment."""
    size = len(text)
    while pos < size:
        char = text[pos]
        if char in _WSP:
            pos += 1
        elif char == "(":
            pos = _comment_end(text, pos)
        else:
            break
    return pos


def _comment_end(text: str, pos: int) -> int:
    """``text[pos]`` is "("; the index just after its matching ")"."""
    depth = 0
    size = len(text)
    while pos < size:
        char = text[pos]
        if char == "\\":
            pos += 2
            continue
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return pos + 1
        pos += 1
    raise Unparseable("unclosed comment")


def _quoted_end(text: str, pos: int) -> int:
    """``text[pos]`` is '"'; the index just after the closing quote."""
    pos += 1
    size = len(text)
    while pos < size:
        char = text[pos]
        if char == "\\":
            pos += 2
        elif char == '"':
            return pos + 1
        else:
            pos += 1
    raise Unparseable("unclosed quoted-string")


def _unquote(quoted: str) -> str:
    """The content of a quoted-string (quotes included in ``quoted``), quoted-pairs undone."""
    out: list[str] = []
    escaped = False
    for char in quoted[1:-1]:
        if escaped:
            out.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        else:
            out.append(char)
    return "".join(out)


def authserv_id(value: str) -> str:
    """The authserv-id of an Authentication-Results value (RFC 8601 2.2: a
    ``value``, i.e. a token or a quoted-string, after optional CFWS).
    Raises :class:`Unparseable` when there is none."""
    pos = skip_cfws(value)
    if pos >= len(value):
        raise Unparseable("no authserv-id")
    if value[pos] == '"':
        return _unquote(value[pos:_quoted_end(value, pos)])
    end = pos
    while end < len(value) and value[end] not in ' \t\r\n;()"':
        end += 1
    if end == pos:
        raise Unparseable("no authserv-id")
    return value[pos:end]


def mailbox_addresses(value: str) -> list[str]:
    """The addr-spec of every mailbox in an address-list value (RFC 5322 3.4),
    groups flattened, comments and display names dropped; quoted local parts
    keep their quotes. An empty group gives nothing. Raises
    :class:`Unparseable` on an unclosed comment, quoted-string, angle bracket
    or domain literal."""
    addresses: list[str] = []
    plain: list[str] = []  # the current mailbox's text outside comments
    angle: list[str] | None = None  # inside <...>: the angle-addr so far
    last_angle: str | None = None  # the last complete angle-addr of this mailbox
    pos, size = 0, len(value)

    def finish() -> None:
        nonlocal last_angle
        spec = last_angle if last_angle is not None else "".join(plain).strip(_WSP)
        if spec:
            addresses.append(_without_route(spec))
        plain.clear()
        last_angle = None

    while pos < size:
        char = value[pos]
        if char == "(":
            pos = _comment_end(value, pos)
            continue
        if char == '"':
            end = _quoted_end(value, pos)
            (angle if angle is not None else plain).append(value[pos:end])
            pos = end
            continue
        if char == "[":
            end = value.find("]", pos)
            if end < 0:
                raise Unparseable("unclosed domain literal")
            (angle if angle is not None else plain).append(value[pos:end + 1])
            pos = end + 1
            continue
        if angle is not None:
            if char == ">":
                last_angle, angle = "".join(angle).strip(_WSP), None
            elif char == "<":
                raise Unparseable("nested angle bracket")
            elif char not in _WSP:
                angle.append(char)
        elif char == "<":
            angle = []
        elif char in ",;":
            finish()
        elif char == ":":
            plain.clear()  # a group's display name: the mailboxes follow
        else:
            plain.append(char)
        pos += 1
    if angle is not None:
        raise Unparseable("unclosed angle bracket")
    finish()
    return addresses


def _without_route(spec: str) -> str:
    """An obsolete source route (``@a,@b:user@host``, RFC 5322 4.4) removed."""
    if spec.startswith("@") and ":" in spec:
        return spec.partition(":")[2]
    return spec
