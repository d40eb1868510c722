"""The local rule store: the DynamoDB table's records in one SQLite file.

Records of every kind (routes, and SMTP users later) live in one generic
``items`` table keyed like the DynamoDB table (pk, sk). Each body is the
record's DynamoDB typed JSON, so string sets, binaries and exact numbers
survive an import → export round trip unchanged.

Every call opens its own connection: the resolver calls from worker
threads, and a fresh connection per call means a database file replaced
or damaged under us is noticed on the next call as RouteStoreError instead
of an answer from a stale handle.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sesmail_gateway.routes import RouteStoreError, Rule
from sesmail_gateway.routes.records import (
    ROUTE_PREFIX,
    RULE_SK,
    from_typed,
    item_to_rule,
    rule_to_item,
    stamped,
    to_typed,
    utc_now,
)

_SCHEMA = "CREATE TABLE IF NOT EXISTS items (pk TEXT NOT NULL, sk TEXT NOT NULL, body TEXT NOT NULL, " \
    "PRIMARY KEY (pk, sk))"
_UPSERT = "INSERT OR REPLACE INTO items (pk, sk, body) VALUES (?, ?, ?)"


class SqliteRouteStore:
    """RouteStore over an SQLite file (WAL mode, busy timeout); safe to call from any thread."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        create: bool = True,
        busy_timeout: float = 5.0,
        now: Callable[[], str] = utc_now,
    ) -> None:
        """Open the store; with ``create`` make the folder, file and schema when missing."""
        self.path = Path(path)
        # Fixed now, so a later chdir cannot point the store at another file.
        self._uri = self.path.absolute().as_uri()
        self._busy_timeout = busy_timeout
        self._now = now
        if create:
            self._create()

    def __repr__(self) -> str:
        return f"SqliteRouteStore({str(self.path)!r})"

    # --- routes -------------------------------------------------------------

    def get_many(self, patterns: Sequence[str]) -> dict[str, Rule]:
        """The enabled and disabled rules stored under these patterns, in one SELECT."""
        keys = [ROUTE_PREFIX + pattern for pattern in dict.fromkeys(patterns)]
        if not keys:
            return {}
        marks = ", ".join("?" * len(keys))
        with self._connection() as conn:
            rows = conn.execute(
                f"SELECT pk, sk, body FROM items WHERE sk = ? AND pk IN ({marks})", [RULE_SK, *keys]
            ).fetchall()
            rules = [self._rule(row) for row in rows]
        return {rule.pattern: rule for rule in rules}

    def get(self, pattern: str) -> Rule | None:
        """The rule stored under ``pattern``, or None."""
        return self.get_many([pattern]).get(pattern)

    def put(self, rule: Rule) -> Rule:
        """Create or replace; keeps the stored ``created_at``; returns what was written."""
        key = ROUTE_PREFIX + rule.pattern
        with self._connection() as conn, _transaction(conn):
            row = conn.execute("SELECT pk, sk, body FROM items WHERE pk = ? AND sk = ?", (key, RULE_SK)).fetchone()
            stored = self._item(row) if row else None
            created = stored.get("created_at") if stored else None
            written = stamped(rule, stored_created_at=created if isinstance(created, str) else None,
                              now=self._now())
            conn.execute(_UPSERT, (key, RULE_SK, json.dumps(to_typed(rule_to_item(written)))))
        return written

    def delete(self, pattern: str) -> bool:
        """Remove the rule; False when there was none."""
        with self._connection() as conn:
            cursor = conn.execute("DELETE FROM items WHERE pk = ? AND sk = ?", (ROUTE_PREFIX + pattern, RULE_SK))
            return cursor.rowcount > 0

    # --- raw records --------------------------------------------------------

    def scan_items(self) -> list[dict[str, object]]:
        """Every raw record (plain Python values), routes and others, for export."""
        with self._connection() as conn:
            rows = conn.execute("SELECT pk, sk, body FROM items ORDER BY pk, sk").fetchall()
            return [self._item(row) for row in rows]

    def get_item(self, key: Mapping[str, str]) -> dict[str, Any] | None:
        """One raw record by its PK and SK, or None."""
        with self._connection() as conn:
            row = conn.execute("SELECT pk, sk, body FROM items WHERE pk = ? AND sk = ?",
                               (key["PK"], key["SK"])).fetchone()
            return self._item(row) if row else None

    def put_item(self, item: Mapping[str, object]) -> None:
        """Write one raw record as it is."""
        with self._connection() as conn:
            conn.execute(_UPSERT, _row(item))

    def delete_item(self, key: Mapping[str, str]) -> bool:
        """Remove one raw record; False when there was none."""
        with self._connection() as conn:
            cursor = conn.execute("DELETE FROM items WHERE pk = ? AND sk = ?", (key["PK"], key["SK"]))
            return cursor.rowcount > 0

    def put_items(
        self, items: Sequence[Mapping[str, object]], progress: Callable[[int, int], None] | None = None
    ) -> int:
        """Write raw records as they are, all or none (one transaction); returns how many."""
        with self._connection() as conn:
            rows = [_row(item) for item in items]
            with _transaction(conn):
                conn.executemany(_UPSERT, rows)
        if progress is not None:
            progress(len(rows), len(rows))
        return len(rows)

    # After scan_items: in the class body ``list`` names this method from here on.
    def list(self) -> list[Rule]:
        """Every rule, by pattern."""
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT pk, sk, body FROM items WHERE sk = ? AND pk GLOB ? ORDER BY pk",
                (RULE_SK, ROUTE_PREFIX + "*"),
            ).fetchall()
            return [self._rule(row) for row in rows]

    def close(self) -> None:
        """Nothing to release: connections live for one call."""

    # --- plumbing -----------------------------------------------------------

    def _create(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RouteStoreError(f"rule store {self.path}: {exc.strerror or exc}") from exc
        with self._connection(mode="rwc") as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(_SCHEMA)

    @contextmanager
    def _connection(self, mode: str = "rw") -> Iterator[sqlite3.Connection]:
        """A connection for one call; every failure inside becomes RouteStoreError.

        ``mode=rw`` never creates a file: a deleted database must be an
        error, not an empty one that answers "no rule" for every address.
        """
        try:
            conn = sqlite3.connect(f"{self._uri}?mode={mode}", uri=True, timeout=self._busy_timeout, isolation_level=None)
        except (sqlite3.Error, ValueError) as exc:
            raise RouteStoreError(f"rule store {self.path}: {exc}") from exc
        try:
            yield conn
        except (sqlite3.Error, ValueError) as exc:
            raise RouteStoreError(f"rule store {self.path}: {exc}") from exc
        finally:
            conn.close()

    def _item(self, row: tuple[str, str, str]) -> dict[str, Any]:
        pk, sk, body = row
        try:
            return from_typed(json.loads(body), f"{pk} {sk}")
        except ValueError as exc:
            raise ValueError(f"unreadable record: {exc}") from None

    def _rule(self, row: tuple[str, str, str]) -> Rule:
        try:
            return item_to_rule(self._item(row))
        except ValueError as exc:
            raise ValueError(f"bad route record {row[0]}: {exc}") from None


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE … COMMIT, rolled back on any error, so writes are all or nothing."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _row(item: Mapping[str, object]) -> tuple[str, str, str]:
    pk, sk = item.get("PK"), item.get("SK")
    if not isinstance(pk, str) or not isinstance(sk, str) or not pk or not sk:
        raise ValueError(f"record without string PK and SK: {dict(item)!r}")
    return pk, sk, json.dumps(to_typed(item))
