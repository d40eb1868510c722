"""``sesmail-gateway token``: Gmail OAuth refresh tokens — refresh (consent), import, status, delete.

After a change the command tells the running daemon through its control
socket, which re-reads the token store at once and releases the account's
held messages; with no daemon running, the next start picks the token up.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import time
from pathlib import Path
from typing import Any

from sesmail_gateway import control
from sesmail_gateway.cli.common import CliError, json_flag, load_config, print_json, print_table
from sesmail_gateway.config import Config
from sesmail_gateway.deliver.gmail import SYSTEM_LABELS
from sesmail_gateway.errors import TokenExpired, classify
from sesmail_gateway.message import DEFERRED, HELD, QueueItem
from sesmail_gateway.spool import Spool
from sesmail_gateway.tokens import StoredToken, TokenStore
from sesmail_gateway.tokens.factory import load_client, open_token_store
from sesmail_gateway.tokens.file import account_key
from sesmail_gateway.tokens.oauth import ConsentError, refresh_access_token, run_consent, scopes_for
from sesmail_gateway.tokens.watcher import seconds_left


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    token = sub.add_parser("token", help="Gmail OAuth tokens", description="Manage Gmail OAuth refresh tokens.")
    leaves = token.add_subparsers(dest="token_command", metavar="ACTION", required=True)

    p = leaves.add_parser("refresh", parents=[common], help="consent in a browser and store a new token")
    p.add_argument("--account", required=True, help="the Gmail address to consent as")
    p.add_argument("--port", type=int, default=8080, help="local port for Google's redirect (default 8080)")
    p.add_argument("--no-browser", action="store_true",
                   help="do not open a browser: print the address, accept the pasted redirect or the port")
    p.add_argument("--timeout", type=float, default=600.0, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_refresh)

    p = leaves.add_parser("import", parents=[common], help="store a refresh token obtained elsewhere")
    p.add_argument("--account", required=True)
    p.add_argument("--refresh-token-file", required=True, metavar="F",
                   help="a bare refresh token, or an authorized-user JSON (refresh_token, client_id, client_secret)")
    p.add_argument("--no-verify", action="store_true", help="store without asking Google whether the token works")
    p.set_defaults(func=cmd_import)

    p = leaves.add_parser("status", parents=[common], help="every account's token, expiry and held mail")
    json_flag(p)
    p.set_defaults(func=cmd_status)

    p = leaves.add_parser("delete", parents=[common], help="delete an account's token")
    p.add_argument("--account", required=True)
    p.set_defaults(func=cmd_delete)


def _account(value: str) -> str:
    try:
        return account_key(value)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def _store(config: Config) -> TokenStore:
    return open_token_store(config)


def _tell_daemon(config: Config, account: str) -> None:
    try:
        answer = control.send(config.data_dir, "reload-tokens", account=account)
    except OSError as exc:
        print(f"could not reach the running daemon ({exc.strerror}); it re-reads tokens every "
              f"{config.gmail.token_poll_seconds:.0f} s")
        return
    if answer is None:
        print("no daemon running here: the token is picked up when it starts")
    else:
        print(f"the running daemon re-read its tokens: {answer.get('released', 0)} held message(s) released")


def cmd_refresh(args: argparse.Namespace) -> int:
    config = load_config(args)
    account = _account(args.account)
    store = _store(config)
    client = load_client(config, store)
    if client is None:
        raise CliError("no OAuth client: download client_secret.json (a \"Desktop app\" OAuth client, Google Cloud "
                       "console → APIs & Services → Credentials) and set gmail.client_secrets to its path")
    scopes = scopes_for(config.gmail.label_ids, SYSTEM_LABELS)
    try:
        refresh_token = run_consent(client, account=account, scopes=scopes, port=args.port,
                                    open_browser=not args.no_browser, timeout=args.timeout)
    except ConsentError as exc:
        raise CliError(str(exc)) from None
    store.put(StoredToken(account=account, refresh_token=refresh_token, issued_at=time.time()))
    print(f"stored a new refresh token for {account} in {store.describe()}")
    _tell_daemon(config, account)
    return 0


def read_token_file(path: Path) -> tuple[str, str, str]:
    """(refresh token, client id, client secret) from a bare token or an authorized-user JSON."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise CliError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or type(exc).__name__})") from None
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            raise CliError(f"{path}: looks like JSON but does not parse") from None
        token = data.get("refresh_token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            raise CliError(f"{path}: the JSON has no refresh_token")
        return token, str(data.get("client_id") or ""), str(data.get("client_secret") or "")
    if not text or any(ch.isspace() for ch in text):
        raise CliError(f"{path}: expected one refresh token (or an authorized-user JSON)")
    return text, "", ""


def cmd_import(args: argparse.Namespace) -> int:
    config = load_config(args)
    account = _account(args.account)
    store = _store(config)
    refresh_token, client_id, client_secret = read_token_file(Path(args.refresh_token_file))
    token = StoredToken(account=account, refresh_token=refresh_token, issued_at=time.time(),
                        client_id=client_id, client_secret=client_secret)
    if not args.no_verify:
        try:
            refresh_access_token(token, load_client(config, store), token_uri=config.gmail.token_uri)
        except Exception as exc:
            error = classify(exc)
            if isinstance(error, TokenExpired):
                raise CliError(f"Google refused the token ({error}); nothing stored") from None
            raise CliError(f"could not check the token with Google ({error}); nothing stored "
                           "(--no-verify stores it unchecked)") from None
    store.put(token)
    print(f"stored the refresh token for {account} in {store.describe()}")
    _tell_daemon(config, account)
    return 0


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "never"
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _held_and_errors(config: Config) -> tuple[dict[str, int], dict[str, str]]:
    """Held messages per account, and each account's most recent delivery error, from the spool."""
    spool = Spool(config.data_dir / "spool", create=False)
    held: dict[str, int] = {}
    errors: dict[str, tuple[float, str]] = {}

    def note(item: QueueItem) -> None:
        for delivery in item.deliveries:
            if delivery.action == "forward-to-gmail" and delivery.last_error:
                account = delivery.target.lower()
                if item.created >= errors.get(account, (0.0, ""))[0]:
                    errors[account] = (item.created, delivery.last_error)

    for item in spool.items(HELD):
        held[item.held_account] = held.get(item.held_account, 0) + 1
        note(item)
    for item in spool.items(DEFERRED):
        note(item)
    return held, {account: error for account, (_, error) in errors.items()}


def cmd_status(args: argparse.Namespace) -> int:
    config = load_config(args)
    store = _store(config)
    held, errors = _held_and_errors(config)
    now = time.time()
    lifetime = config.gmail.refresh_token_lifetime
    rows: list[dict[str, Any]] = []
    for account in sorted(set(store.accounts()) | set(held)):
        token = store.get(account)
        left = seconds_left(token, lifetime, now) if token else None
        rows.append({
            "account": account,
            "issued": _when(token.issued_at) if token else None,
            "expires": (_when(token.issued_at + lifetime) if lifetime > 0 else "never") if token else None,
            "seconds_left": None if left is None or math.isinf(left) else int(left),
            "held": held.get(account, 0),
            "last_error": errors.get(account, "") or ("no token" if token is None else ""),
            "shared": bool(token and token.shared),
        })
    if args.json:
        print_json(rows)
        return 0
    print_table(
        ("ACCOUNT", "ISSUED", "EXPIRES", "LEFT", "HELD", "LAST ERROR"),
        [(r["account"] + (" (shared token)" if r["shared"] else ""), r["issued"] or "-", r["expires"] or "-",
          _left(r["seconds_left"], r["expires"]), r["held"], r["last_error"] or "-") for r in rows],
    )
    return 0


def _left(seconds: int | None, expires: str | None) -> str:
    if expires in (None, "never"):
        return "-"
    if seconds is None or seconds <= 0:
        return "EXPIRED"
    hours = seconds / 3600
    return f"{hours / 24:.1f}d" if hours >= 48 else f"{hours:.1f}h"


def cmd_delete(args: argparse.Namespace) -> int:
    config = load_config(args)
    account = _account(args.account)
    store = _store(config)
    if not store.delete(account):
        raise CliError(f"no token stored for {account} in {store.describe()}")
    print(f"deleted the token for {account}; new mail for it will be held until a new token is stored")
    return 0
