"""``sesmail-gateway serve``: run the daemon."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from sesmail_gateway import maillog
from sesmail_gateway.cli.common import load_config


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "serve", parents=[common], help="run the gateway daemon",
        description="Run the gateway: SMTP on smtp.listen, the delivery runner, and /metrics.",
    )
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(args)
    maillog.configure(getattr(logging, args.log_level.upper()))
    from sesmail_gateway.app import serve

    return serve(config)
