"""``sesmail-gateway routes …``: manage routing rules and explain how an address routes."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeAlias

from sesmail_gateway import replies
from sesmail_gateway.cli.common import CliError, Handler, json_flag, load_config, print_json, print_table
from sesmail_gateway.config import Config
from sesmail_gateway.fsutil import atomic_write
from sesmail_gateway.routes import KNOWN_ACTIONS, SPAM_SETTINGS, Action, Match, RouteStore, Rule
from sesmail_gateway.routes.factory import open_route_store
from sesmail_gateway.routes.records import (
    Item,
    canonical_item,
    check_actions,
    is_route_item,
    normalise_pattern,
    parse_scan_document,
    public_fields,
    read_sender_list,
    scan_document,
)
from sesmail_gateway.routes.resolver import RouteResolver, normalise_address, rcpt_verdict

# A string: the class is not subscriptable at run time.
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    """Add ``routes`` and its leaf commands; every leaf takes ``--config``."""
    group = sub.add_parser(
        "routes", parents=[common], help="manage routing rules",
        description="Manage the routing rules in rules.url and explain how an address routes.",
    )
    leaves = group.add_subparsers(dest="routes_command", metavar="ACTION", required=True)
    _register_add(leaves, common)
    json_flag(_leaf(leaves, common, "list", cmd_list, "list every rule"))
    get = _leaf(leaves, common, "get", cmd_get, "show the rule for PATTERN")
    _pattern_argument(get)
    json_flag(get)
    for name, enabled in (("enable", True), ("disable", False)):
        switch = _leaf(leaves, common, name, cmd_switch, f"{name} the rule for PATTERN")
        _pattern_argument(switch)
        switch.set_defaults(enabled=enabled)
    _pattern_argument(_leaf(leaves, common, "delete", cmd_delete, "delete the rule for PATTERN"))
    export = _leaf(leaves, common, "export", cmd_export, "print every record as `aws dynamodb scan` does")
    export.add_argument("file", nargs="?", metavar="FILE", help="write here instead of standard output")
    imports = _leaf(leaves, common, "import", cmd_import, "load records from `aws dynamodb scan` JSON")
    imports.add_argument("file", metavar="FILE", help="the scan JSON; - reads standard input")
    test = _leaf(leaves, common, "test", cmd_test, "show which rule routes ADDRESS, and why")
    test.add_argument("address", metavar="ADDRESS")
    json_flag(test)


def _register_add(leaves: Subparsers, common: argparse.ArgumentParser) -> None:
    add = _leaf(leaves, common, "add", cmd_add, "create or replace the rule for PATTERN (keeps created_at)")
    _pattern_argument(add)
    add.add_argument("--action", dest="steps", action=_InOrder, const="action", metavar="ACTION",
                     help=f"one of {', '.join(KNOWN_ACTIONS)}; repeat for several actions")
    add.add_argument("--target", dest="steps", action=_InOrder, const="target", metavar="TARGET",
                     help="target of the --action before it: a Gmail address or a Maildir path")
    add.add_argument("--description", default="", help="free text shown by list and get")
    add.add_argument("--disabled", action="store_true", help="store the rule switched off")
    add.add_argument("--spam", choices=SPAM_SETTINGS, default="",
                     help="label: never reject for spam, only label it; off: no spam scanning")
    add.add_argument("--allow-from", dest="allow_from", action="append", default=[], metavar="SENDER",
                     help="user@domain, @domain or dmarc:domain whose mail skips spam handling (not virus "
                          "scanning); repeat for several")
    add.add_argument("--block-from", dest="block_from", action="append", default=[], metavar="SENDER",
                     help="user@domain, @domain or dmarc:domain whose mail is refused (550 5.7.1); repeat")


def _leaf(leaves: Subparsers, common: argparse.ArgumentParser, name: str, handler: Handler,
          text: str) -> argparse.ArgumentParser:
    parser = leaves.add_parser(name, parents=[common], help=text, description=text[:1].upper() + text[1:] + ".")
    parser.set_defaults(func=handler)
    return parser


def _pattern_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pattern", metavar="PATTERN", help="*, *@domain, user@domain or user+tag@domain")


class _InOrder(argparse.Action):
    """Collects --action and --target as (kind, value) in command-line order, so they pair as written."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: str | Sequence[Any] | None, option_string: str | None = None) -> None:
        steps = [*(getattr(namespace, self.dest, None) or []), (self.const, values)]
        setattr(namespace, self.dest, steps)


def pair_actions(steps: Sequence[tuple[str, str]]) -> list[Action]:
    """Pair each --target with the --action before it; a target is optional."""
    pairs: list[tuple[str, str | None]] = []
    for kind, value in steps:
        if kind == "action":
            pairs.append((value, None))
        elif not pairs or pairs[-1][1] is not None:
            raise CliError(f"--target {value}: each --target must follow its own --action")
        else:
            pairs[-1] = (pairs[-1][0], value)
    return [Action(kind, target or "") for kind, target in pairs]


# --- handlers ---------------------------------------------------------------


def cmd_add(args: argparse.Namespace) -> int:
    """routes add: create or replace a rule."""
    pattern = _pattern(args.pattern)
    actions = pair_actions(args.steps or [])
    try:
        check_actions(actions)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    try:
        allow_from = read_sender_list("--allow-from", args.allow_from)
        block_from = read_sender_list("--block-from", args.block_from)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    rule = Rule(pattern, tuple(actions), enabled=not args.disabled, description=args.description,
                spam=args.spam, allow_from=allow_from, block_from=block_from)
    with _store(load_config(args)) as store:
        existed = store.get(pattern) is not None
        written = store.put(rule)
    state = "" if written.enabled else " (disabled)"
    print(f"{'replaced' if existed else 'added'} route {pattern}: {_actions_text(written)}{state}")
    for line in _scan_lines(written):
        print(f"  {line}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """routes list: every rule, as a table or JSON."""
    with _store(load_config(args)) as store:
        rules = store.list()
    if args.json:
        print_json([public_fields(rule) for rule in rules])
        return 0
    rows = [(r.pattern, _yes_no(r.enabled), _actions_text(r), r.description, r.updated_at) for r in rules]
    print_table(("PATTERN", "ENABLED", "ACTIONS", "DESCRIPTION", "UPDATED"), rows)
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    """routes get: one rule."""
    pattern = _pattern(args.pattern)
    with _store(load_config(args)) as store:
        rule = _existing(store, pattern)
    if args.json:
        print_json(public_fields(rule))
        return 0
    fields = public_fields(rule) | {"enabled": _yes_no(rule.enabled), "actions": _actions_text(rule)}
    _print_fields(fields)
    return 0


def cmd_switch(args: argparse.Namespace) -> int:
    """routes enable / routes disable."""
    pattern, word = _pattern(args.pattern), "enabled" if args.enabled else "disabled"
    with _store(load_config(args)) as store:
        rule = _existing(store, pattern)
        if rule.enabled == args.enabled:
            print(f"route {pattern} is already {word}")
            return 0
        store.put(replace(rule, enabled=args.enabled))
    print(f"{word} route {pattern}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    """routes delete: remove a rule."""
    pattern = _pattern(args.pattern)
    with _store(load_config(args)) as store:
        if not store.delete(pattern):
            raise CliError(f"no route for {pattern}")
    print(f"deleted route {pattern}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """routes export: every record of the store, in `aws dynamodb scan` JSON."""
    with _store(load_config(args)) as store:
        items = store.scan_items()
    text = json.dumps(scan_document(items), indent=4, ensure_ascii=False) + "\n"
    if not args.file:
        sys.stdout.write(text)
        return 0
    try:
        atomic_write(Path(args.file), text.encode("utf-8"))
    except OSError as exc:
        raise CliError(f"{args.file}: cannot write: {exc.strerror or exc}") from None
    print(f"exported {_summary(items)} to {args.file}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """routes import: records from `aws dynamodb scan` JSON, all or none."""
    config = load_config(args)
    items = read_scan_file(args.file)
    with _store(config) as store:
        store.put_items(items, progress=_import_progress(len(items)))
    print(f"imported {_summary(items)}")
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    """routes test: which rule routes ADDRESS, at which level, and what RCPT would answer."""
    config = load_config(args)
    address = normalise_address(args.address)
    if "@" not in address:
        raise CliError(f"not an address: {args.address!r}")
    with _store(config) as store:
        match = RouteResolver(store, cache_seconds=0).resolve_sync(address)
    reply, reason = _verdict(config, match)
    if args.json:
        print_json(_match_fields(match) | {"reply": str(reply), "reason": reason})
        return 0
    _print_match(match)
    if match.rule is None and reply == replies.NO_SUCH_USER:
        print(f"no route: mail to {address} would be refused with {reply.code} {reply.enhanced}")
    else:
        print(f"answer:   {reply}")
        if reply.code >= 400:
            print(f"because:  {reason}")
    return 0


# --- helpers ----------------------------------------------------------------


def read_scan_file(file: str) -> list[Item]:
    """The records of a scan JSON file, validated and ready to store; CliError names the problem."""
    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"{file}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise CliError(f"{file}: not UTF-8 text: {exc}") from None
    try:
        document = json.loads(text)
        items = parse_scan_document(document)
    except json.JSONDecodeError as exc:
        raise CliError(f"{file}: not valid JSON: {exc}") from None
    except RecursionError:
        raise CliError(f"{file}: JSON nested too deeply to be a scan document") from None
    except ValueError as exc:
        raise CliError(f"{file}: {exc}") from None
    ready = []
    for index, item in enumerate(items):
        try:
            ready.append(canonical_item(item))
        except ValueError as exc:
            raise CliError(f"{file}: Items[{index}] ({item['PK']}): {exc}") from None
    return ready


PROGRESS_EVERY = 250  # records between progress lines of a large import


def _import_progress(total: int) -> Callable[[int, int], None] | None:
    """Progress lines on stderr for a large import (stdout keeps the one summary line)."""
    if total < PROGRESS_EVERY:
        return None
    shown = [0]

    def report(done: int, total: int) -> None:
        if done - shown[0] >= PROGRESS_EVERY or done == total:
            shown[0] = done
            print(f"  {done}/{total} records written", file=sys.stderr, flush=True)

    return report


def _store(config: Config) -> closing[RouteStore]:
    return closing(open_route_store(config))


def _pattern(text: str) -> str:
    try:
        return normalise_pattern(text)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def _existing(store: RouteStore, pattern: str) -> Rule:
    rule = store.get(pattern)
    if rule is None:
        raise CliError(f"no route for {pattern}")
    return rule


def _verdict(config: Config, match: Match) -> tuple[replies.Reply, str]:
    """The RCPT answer, checking the domain first as the daemon does."""
    domain = match.address.rpartition("@")[2]
    if domain not in {d.lower() for d in config.gateway.domains}:
        return replies.RELAY_DENIED, f"{domain} is not in gateway.domains"
    return rcpt_verdict(match, bounce_mode=config.bounce.mode)


def _actions_text(rule: Rule) -> str:
    return ", ".join(f"{a.type} -> {a.target}" if a.target else a.type for a in rule.actions)


def _scan_lines(rule: Rule) -> list[str]:
    """The rule's scan settings, one ``name: value`` line each, only those set."""
    lines = [f"spam:     {rule.spam}"] if rule.spam else []
    for name, entries in (("allow_from", rule.allow_from), ("block_from", rule.block_from)):
        if entries:
            lines.append(f"{name}: {', '.join(entries)}")
    return lines


def _yes_no(value: bool) -> str:
    return "yes" if value else "no"


def _summary(items: Sequence[Item]) -> str:
    routes = sum(1 for item in items if is_route_item(item))
    return f"{len(items)} item{'' if len(items) == 1 else 's'} ({routes} route{'' if routes == 1 else 's'})"


def _print_fields(fields: dict[str, Any]) -> None:
    width = max(len(key) for key in fields)
    for key, value in fields.items():
        print(f"{key.ljust(width)}  {value}")


def _match_fields(match: Match) -> dict[str, Any]:
    return {
        "address": match.address,
        "pattern": match.rule.pattern if match.rule else None,
        "level": match.level,
        "rule": public_fields(match.rule) if match.rule else None,
        "tried": [{"level": c.level, "pattern": c.pattern, "outcome": c.outcome} for c in match.tried],
    }


def _print_match(match: Match) -> None:
    print(f"address:  {match.address}")
    if match.rule is not None:
        print(f"route:    {match.rule.pattern} (level {match.level})")
        print(f"actions:  {_actions_text(match.rule)}")
        for line in _scan_lines(match.rule):
            print(line)
    print("tried:")
    width = max(len(c.pattern) for c in match.tried)
    for candidate in match.tried:
        print(f"  {candidate.level.ljust(13)}  {candidate.pattern.ljust(width)}  {candidate.outcome}")
