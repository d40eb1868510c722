"""Routing rules: the records, the store protocol, and resolution.

A rule maps a recipient pattern to one or more actions. Stores (SQLite
locally, DynamoDB on AWS) hold the same records as the seed system's
DynamoDB table; ``RouteResolver`` finds the first enabled match for an
address and caches the answer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

KNOWN_ACTIONS = ("forward-to-gmail", "bounce", "store", "maildir")
SPAM_SETTINGS = ("label", "off")
LEVELS = ("exact", "plus-stripped", "domain", "catch-all")


class RouteStoreError(Exception):
    """The rule store cannot be reached or read: answer 451, never guess."""


@dataclass(frozen=True)
class Action:
    type: str
    target: str = ""

    @property
    def known(self) -> bool:
        return self.type in KNOWN_ACTIONS


@dataclass(frozen=True)
class Rule:
    pattern: str
    actions: tuple[Action, ...]
    enabled: bool = True
    description: str = ""
    created_at: str = ""
    updated_at: str = ""
    # Optional scan settings (DESIGN 3): spam "" (default) | "label" | "off"; sender lists.
    spam: str = ""
    allow_from: tuple[str, ...] = ()
    block_from: tuple[str, ...] = ()

    @property
    def unknown_actions(self) -> tuple[str, ...]:
        return tuple(a.type for a in self.actions if not a.known)


@dataclass(frozen=True)
class Candidate:
    """One key tried during resolution, and what was found there."""

    level: str
    pattern: str
    outcome: str  # "matched" | "disabled" | "absent"


@dataclass(frozen=True)
class Match:
    """The answer for one address: the rule (or None) and how it was found."""

    address: str
    rule: Rule | None
    level: str | None
    tried: tuple[Candidate, ...] = field(default=())


class RouteStore(Protocol):
    """Where rules live. Methods block; callers on the event loop use a thread.

    Every method raises RouteStoreError when the store cannot be used.
    """

    def get_many(self, patterns: Sequence[str]) -> dict[str, Rule]:
        """The rules stored under these patterns, in one round trip."""
        ...

    def get(self, pattern: str) -> Rule | None: ...

    def put(self, rule: Rule) -> Rule:
        """Create or replace; keeps the stored ``created_at``; returns what was written."""
        ...

    def delete(self, pattern: str) -> bool: ...

    def scan_items(self) -> list[dict[str, object]]:
        """Every raw record (plain Python values), routes and others, for export."""
        ...

    def get_item(self, key: Mapping[str, str]) -> dict[str, Any] | None:
        """One raw record (any entity type) by ``{"PK": …, "SK": …}``, or None."""
        ...

    def put_item(self, item: Mapping[str, object]) -> None:
        """Write one raw record as it is."""
        ...

    def delete_item(self, key: Mapping[str, str]) -> bool:
        """Remove one raw record; False when there was none."""
        ...

    def put_items(
        self, items: Sequence[dict[str, object]], progress: Callable[[int, int], None] | None = None
    ) -> int:
        """Write raw records (plain Python values) as they are, for import.

        ``progress(done, total)`` is called as batches are written.
        """
        ...

    # Declared after every annotation that says ``list[...]``: inside the
    # class body the name ``list`` means this method from here on.
    def list(self) -> list[Rule]: ...

    def close(self) -> None: ...
