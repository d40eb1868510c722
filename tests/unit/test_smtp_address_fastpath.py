"""The session's fast path for plain <local@domain> paths gives what aiosmtpd's header parser gives."""

from __future__ import annotations

import random
from types import SimpleNamespace

from aiosmtpd.smtp import SMTP

from sesmail_gateway.smtp import session


def test_the_fast_path_agrees_with_the_header_parser_wherever_it_applies() -> None:
    rng = random.Random(5)
    pieces = ["a", "Z", "0", "x.y", ".", "..", "@", "@@", "-", "+tag", "=", "'", "`", "{", "~", "é", '"q"',
              "(c)", "[1.2.3.4]", " ", "\\", "<", ">", ",", ";", ":"]
    parser = SimpleNamespace(local_part_limit=0)
    taken = 0
    for _ in range(30000):
        if rng.random() < 0.5:  # mostly well-formed local@domain, with now and then a piece that is not
            local = "".join(rng.choice(pieces[:15] + pieces[:5]) for _ in range(rng.randint(1, 4)))
            domain = ".".join(rng.choice(["example", "test", "a-b", "x1", "", "-", "é", "[1.2.3.4]"])
                              for _ in range(rng.randint(1, 3)))
            inner = f"{local}@{domain}"
        else:
            inner = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 8)))
        arg = f"<{inner}>" + rng.choice(["", " SIZE=100", "  BODY=8BITMIME ", "x", " ", "\t", " (c) SIZE=1", "(c)"])
        fast = session.simple_path(arg, 0)
        if fast is not None:
            taken += 1
            assert fast == SMTP._getaddr(parser, arg), arg  # type: ignore[arg-type]
    assert taken > 1000


def test_the_local_part_limit_still_applies() -> None:
    assert session.simple_path("<abcd@example.test>", 4) == ("abcd@example.test", "")
    assert session.simple_path("<abcde@example.test> SIZE=1", 4) is None  # to the parser, which refuses it
