"""What every subcommand shares: config loading, errors, tables, JSON."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from sesmail_gateway.config import Config, load

Handler = Callable[[argparse.Namespace], int]


class CliError(Exception):
    """A user-facing failure, printed as one line; exit status 1."""


def os_error_line(exc: OSError) -> str:
    """An OSError as one line: the path (or paths) and the system's words, no traceback."""
    words = exc.strerror or str(exc) or type(exc).__name__
    if exc.filename is None:
        return words
    paths = f"{exc.filename} -> {exc.filename2}" if exc.filename2 is not None else str(exc.filename)
    return f"{paths}: {words}"


def common_parser() -> argparse.ArgumentParser:
    """Options every leaf command accepts (``--config`` after the subcommand too)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--config", metavar="FILE", default=argparse.SUPPRESS,
        help="config file (default: $SESMAIL_GATEWAY_CONFIG)",
    )
    return parent


def json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON document")


def load_config(args: argparse.Namespace) -> Config:
    return load(getattr(args, "config", None))


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain, aligned table; an empty listing says so."""
    if not rows:
        print("(none)")
        return
    cells = [[str(c) for c in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for index, row in enumerate(cells):
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if index == 0:
            print("  ".join("-" * w for w in widths))
