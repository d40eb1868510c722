"""The ``sesmail-gateway`` command: a thin admin CLI over the same modules the daemon uses."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from sesmail_gateway import __version__, maillog
from sesmail_gateway.cli import dns, outbound, queue, routes, serve, smtp_users, token
from sesmail_gateway.cli.common import CliError, common_parser, os_error_line
from sesmail_gateway.config import ConfigError
from sesmail_gateway.routes import RouteStoreError
from sesmail_gateway.spool import SpoolError
from sesmail_gateway.tokens import TokenStoreError

PROG = "sesmail-gateway"


def build_parser() -> argparse.ArgumentParser:
    common = common_parser()
    parser = argparse.ArgumentParser(
        prog=PROG, parents=[common],
        description="Self-hosted inbound SMTP gateway: SPF/DKIM/DMARC, durable spool, routing, delivery.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    serve.register(sub, common)
    routes.register(sub, common)
    queue.register(sub, common)
    token.register(sub, common)
    smtp_users.register(sub, common)
    dns.register(sub, common)
    outbound.register(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Operator actions (retry, delete, release) are mail events too: they go to stderr as JSON.
    maillog.configure(logging.WARNING)
    logging.getLogger("sesmail.mail").setLevel(logging.INFO)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"{PROG}: config: {exc}", file=sys.stderr)
        return 2
    except (CliError, RouteStoreError, TokenStoreError, SpoolError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a folder that cannot be read, a disk that is full: one line, no traceback
        print(f"{PROG}: {os_error_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
