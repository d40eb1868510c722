"""``sesmail-gateway queue``: list, show, retry, delete and release spooled messages.

The CLI works on the spool folders directly, as Postfix's postsuper does;
the running daemon picks up what moved into ``incoming/`` within a second.
"""

from __future__ import annotations

import argparse
import datetime
from typing import Any

from sesmail_gateway import maillog
from sesmail_gateway.cli.common import CliError, json_flag, load_config, print_json, print_table
from sesmail_gateway.message import (
    ACTIVE,
    DEAD,
    DEFERRED,
    FAILED,
    HELD,
    INCOMING,
    PENDING,
    REJECTED,
    STATES,
    QueueItem,
)
from sesmail_gateway.spool import Spool, SpoolError

RETRYABLE = (DEFERRED, HELD, DEAD)


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
    return Spool(load_config(args).data_dir / "spool")


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
    return 0


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


def _requeue(spool: Spool, item: QueueItem, event: str) -> None:
    for delivery in item.deliveries:
        if delivery.status == FAILED:
            delivery.status = PENDING
    item.next_attempt = 0.0
    item.held_account = ""
    item.reason = ""
    spool.save(item)
    try:
        spool.move(item, INCOMING)
    except SpoolError as exc:
        raise CliError(str(exc)) from None
    maillog.event(event, item.id, by="operator")


def cmd_retry(args: argparse.Namespace) -> int:
    spool = _spool(args)
    if args.all:
        items = [item for state in RETRYABLE for item in spool.items(state)]
    else:
        items = [_find(spool, args.id)]
        if items[0].state not in RETRYABLE:
            raise CliError(f"message {args.id} is {items[0].state}; only {', '.join(RETRYABLE)} can be retried")
    for item in items:
        _requeue(spool, item, "retried")
    print(f"queued {len(items)} message(s) for delivery now")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    spool = _spool(args)
    item = _find(spool, args.id)
    if item.state == ACTIVE:
        raise CliError(f"message {item.id} is being delivered right now; try again in a moment")
    try:
        spool.remove(item)
    except FileNotFoundError:
        raise CliError(f"message {item.id} moved while deleting; try again") from None
    maillog.event("deleted", item.id, by="operator", state=item.state)
    print(f"deleted {item.id} ({item.state})")
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    spool = _spool(args)
    item = _find(spool, args.id)
    if item.state != REJECTED:
        raise CliError(f"message {item.id} is {item.state}; only rejected messages can be released")
    _requeue(spool, item, "released")
    print(f"released {item.id}: it will be delivered along its route")
    return 0
