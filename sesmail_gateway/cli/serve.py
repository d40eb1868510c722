"""``sesmail-gateway serve``: run the daemon."""

from __future__ import annotations

import argparse
import errno
import logging
import ssl
from typing import Any

from sesmail_gateway import maillog
from sesmail_gateway.cli.common import load_config, os_error_line
from sesmail_gateway.config import ConfigError


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "serve", parents=[common], help="run the gateway daemon",
        description="Run the gateway: SMTP on smtp.listen, the delivery runner, and /metrics.",
    )
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    parser.set_defaults(func=run)


# OSErrors that a restart cannot cure: the configuration names something unusable (a data_dir
# that is a file or read-only, an address not on this host, a port it may not bind).
SETUP_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST,
                          errno.EROFS, errno.EADDRNOTAVAIL})


def run(args: argparse.Namespace) -> int:
    """Exit status 2 for anything the configuration must fix (systemd does not restart on 2)."""
    config = load_config(args)
    maillog.configure(getattr(logging, args.log_level.upper()), daemon=True)
    from sesmail_gateway.app import serve
    from sesmail_gateway.smtp.server import tls_context

    try:
        # Before any worker starts: a certificate that does not load would fail in each of them.
        tls_context(config.smtp.tls_cert, config.smtp.tls_key)
        return serve(config)
    except ssl.SSLError as exc:
        raise ConfigError(f"smtp.tls_cert: cannot load {config.smtp.tls_cert}: {exc.reason or exc}") from None
    except OSError as exc:
        if exc.errno in SETUP_ERRNOS:
            raise ConfigError(os_error_line(exc)) from None
        raise
