"""``sesmail-gateway queue``: list, show, retry, delete and release spooled messages.

``list`` and ``show`` read the spool folders and create nothing. ``retry``,
``delete`` and ``release`` go through the running daemon's control socket,
so they never race a delivery; with no daemon, they act on the spool under
the data dir's lock.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
from typing import Any

from sesmail_gateway import control
from sesmail_gateway.cli.common import CliError, json_flag, load_config, print_json, print_table
from sesmail_gateway.config import ConfigError
from sesmail_gateway.message import STATES, QueueItem
from sesmail_gateway.queue_ops import RETRYABLE, QueueOpError, perform
from sesmail_gateway.runner import DESTINATIONS_FILE
from sesmail_gateway.spool import Spool, SpoolError


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    queue = sub.add_parser("queue", help="inspect and manage the spool", description="Inspect and manage the spool.")
    leaves = queue.add_subparsers(dest="queue_command", metavar="ACTION", required=True)

    p = leaves.add_parser("list", parents=[common], help="list queued messages")
    p.add_argument("--state", choices=STATES, help="only this state")
    json_flag(p)
    p.set_defaults(func=cmd_list)

    p = leaves.add_parser("show", parents=[common], help="show one message's record")
    p.add_argument("id")
    json_flag(p)
    p.set_defaults(func=cmd_show)

    p = leaves.add_parser("retry", parents=[common], help="deliver now: deferred, held or dead messages")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("id", nargs="?")
    target.add_argument("--all", action="store_true", help=f"every message in {', '.join(RETRYABLE)}")
    p.set_defaults(func=cmd_retry)

    p = leaves.add_parser("delete", parents=[common], help="delete a message from the spool")
    p.add_argument("id")
    p.set_defaults(func=cmd_delete)

    p = leaves.add_parser("release", parents=[common], help="deliver a message refused at DATA (operator override)")
    p.add_argument("id")
    p.set_defaults(func=cmd_release)


def _spool(args: argparse.Namespace) -> Spool:
    return Spool(load_config(args).data_dir / "spool", create=False)


def _find(spool: Spool, queue_id: str) -> QueueItem:
    try:
        return spool.find(queue_id)
    except SpoolError as exc:
        raise CliError(str(exc)) from None


def _when(epoch: float | None) -> str:
    if not epoch:
        return "-"
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def cmd_list(args: argparse.Namespace) -> int:
    spool = _spool(args)
    states = [args.state] if args.state else list(STATES)
    items = [item for state in states for item in spool.items(state)]
    if args.json:
        print_json([item.summary() for item in items])
        return 0
    rows = [
        (i.id, i.state, _when(i.created), i.size, i.sender or "<>", ",".join(i.recipient_addresses),
         i.attempts, _when(i.next_attempt), i.reason[:60])
        for i in items
    ]
    print_table(("ID", "STATE", "RECEIVED", "SIZE", "SENDER", "RECIPIENTS", "ATTEMPTS", "NEXT", "REASON"), rows)
    for down in _destinations_down(spool):
        print(f"destination {down['destination']} failing since {_when(down['since'])} ({down['reason']}): "
              f"{down['parked']} message(s) wait, next probe {_when(down['next_probe'])}")
    return 0


def _destinations_down(spool: Spool) -> list[dict[str, Any]]:
    """What the running daemon last wrote about failing destinations (nothing when none is down)."""
    try:
        data = json.loads((spool.root / DESTINATIONS_FILE).read_bytes())
    except (OSError, ValueError):
        return []
    return [d for d in data if isinstance(d, dict)] if isinstance(data, list) else []


def cmd_show(args: argparse.Namespace) -> int:
    spool = _spool(args)
    item = _find(spool, args.id)
    if args.json:
        record = item.to_dict()
        record["message_path"] = str(spool.message_path(item))
        print_json(record)
        return 0
    print(f"id:          {item.id}\nstate:       {item.state}\nreceived:    {_when(item.created)}")
    print(f"client:      {item.client.ip} helo={item.client.helo or '-'} tls={'yes' if item.client.tls else 'no'}")
    print(f"sender:      {item.sender or '<>'}\nsize:        {item.size} bytes")
    print(f"attempts:    {item.attempts}\nnext:        {_when(item.next_attempt)}")
    print(f"archived:    {item.archived or 'no'}\nreason:      {item.reason or '-'}")
    for route in item.recipients:
        actions = ", ".join(f"{a['type']}:{a['target']}" if a.get("target") else a["type"] for a in route.actions)
        print(f"recipient:   {route.address} via {route.pattern or '-'} ({route.level or '-'}) -> {actions}")
    for d in item.deliveries:
        print(f"delivery:    {d.key} [{d.status}] attempts={d.attempts} {d.last_error}".rstrip())
    for name, verdict in item.verdicts.items():
        print(f"verdict:     {name}={verdict}")
    print(f"message:     {spool.message_path(item)}")
    return 0


def _act(args: argparse.Namespace, action: str, queue_id: str = "", every: bool = False) -> int:
    """Through the running daemon when there is one; otherwise here, holding the data dir's lock."""
    config = load_config(args)
    try:
        answer = control.send(config.data_dir, "queue", action=action, id=queue_id, all=every)
    except OSError as exc:
        raise CliError(f"cannot reach the running daemon: {exc.strerror or exc}") from None
    if answer is not None:
        if not answer.get("ok"):
            raise CliError(str(answer.get("error", "the daemon refused")))
        print(answer["message"])
        return 0
    if not (config.data_dir / "spool").is_dir():
        raise CliError(f"no spool in {config.data_dir}: nothing to {action}")
    try:
        lock = control.lock_data_dir(config.data_dir)
    except ConfigError:
        raise CliError("a daemon holds the data dir but does not answer on its control socket; "
                       "try again in a moment") from None
    try:
        message, _ = perform(Spool(config.data_dir / "spool"), action, queue_id, every=every)
    except QueueOpError as exc:
        raise CliError(str(exc)) from None
    finally:
        os.close(lock)
    print(message)
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    return _act(args, "retry", args.id or "", every=args.all)


def cmd_delete(args: argparse.Namespace) -> int:
    return _act(args, "delete", args.id)


def cmd_release(args: argparse.Namespace) -> int:
    return _act(args, "release", args.id)
