"""RouteResolver against a real SqliteRouteStore: hierarchy, one round trip, cache, failures."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest

from sesmail_gateway import replies
from sesmail_gateway.routes import Action, Candidate, Match, RouteStoreError, Rule
from sesmail_gateway.routes.resolver import RouteResolver, candidates, rcpt_verdict
from sesmail_gateway.routes.sqlite import SqliteRouteStore
from tests.helpers import Clock

STORE = Action("store")
ADDRESS = "alice+news@example.test"
LEVEL_PATTERNS = {
    "exact": "alice+news@example.test",
    "plus-stripped": "alice@example.test",
    "domain": "*@example.test",
    "catch-all": "*",
}


class CountingStore(SqliteRouteStore):
    """The real store, counting round trips and failing on request."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, now=lambda: "2024-05-01T00:00:00Z")
        self.calls: list[list[str]] = []
        self.fail_next = False

    def get_many(self, patterns: Sequence[str]) -> dict[str, Rule]:
        self.calls.append(list(patterns))
        if self.fail_next:
            self.fail_next = False
            raise RouteStoreError("store down")
        return super().get_many(patterns)


@pytest.fixture
def store(tmp_path: Path) -> CountingStore:
    return CountingStore(tmp_path / "rules.db")


def put(store: SqliteRouteStore, pattern: str, *, enabled: bool = True) -> Rule:
    return store.put(Rule(pattern, (Action("maildir", pattern),), enabled=enabled))


# --- hierarchy --------------------------------------------------------------


@pytest.mark.parametrize("present", [list(LEVEL_PATTERNS)[i:] for i in range(4)])
def test_most_specific_present_level_wins(store: CountingStore, present: list[str]) -> None:
    for level in present:
        put(store, LEVEL_PATTERNS[level])
    match = RouteResolver(store, cache_seconds=0).resolve_sync(ADDRESS)
    assert match.level == present[0]
    assert match.rule is not None and match.rule.pattern == LEVEL_PATTERNS[present[0]]


def test_lookup_is_case_insensitive(store: CountingStore) -> None:
    put(store, "alice@example.test")
    match = RouteResolver(store, cache_seconds=0).resolve_sync("  ALICE+News@Example.TEST. ")
    assert match.address == ADDRESS
    assert match.level == "plus-stripped"


def test_disabled_rule_is_skipped_and_explained(store: CountingStore) -> None:
    put(store, "alice+news@example.test", enabled=False)
    put(store, "*@example.test")
    match = RouteResolver(store, cache_seconds=0).resolve_sync(ADDRESS)
    assert match.level == "domain"
    assert match.tried == (
        Candidate("exact", "alice+news@example.test", "disabled"),
        Candidate("plus-stripped", "alice@example.test", "absent"),
        Candidate("domain", "*@example.test", "matched"),
    )


def test_no_rule_lists_every_candidate_absent(store: CountingStore) -> None:
    put(store, "*@other.test")
    match = RouteResolver(store, cache_seconds=0).resolve_sync(ADDRESS)
    assert match.rule is None and match.level is None
    assert [c.outcome for c in match.tried] == ["absent"] * 4


def test_address_without_tag_skips_the_plus_level() -> None:
    assert candidates("bob@example.test") == [
        ("exact", "bob@example.test"), ("domain", "*@example.test"), ("catch-all", "*")]


def test_all_candidates_are_fetched_in_one_round_trip(store: CountingStore) -> None:
    put(store, "*")
    RouteResolver(store, cache_seconds=0).resolve_sync(ADDRESS)
    assert store.calls == [list(LEVEL_PATTERNS.values())]


async def test_async_resolve_gives_the_same_answer(store: CountingStore) -> None:
    put(store, "*@example.test")
    match = await RouteResolver(store, cache_seconds=0).resolve(ADDRESS)
    assert match.level == "domain" and len(store.calls) == 1


# --- cache ------------------------------------------------------------------


def test_positive_answers_are_cached_until_they_expire(store: CountingStore) -> None:
    clock = Clock()
    resolver = RouteResolver(store, cache_seconds=60, clock=clock)
    put(store, "*")
    first = resolver.resolve_sync(ADDRESS)
    store.delete("*")
    clock.now += 59
    assert resolver.resolve_sync(ADDRESS.upper()) is first
    assert len(store.calls) == 1
    clock.now += 1
    assert resolver.resolve_sync(ADDRESS).rule is None
    assert len(store.calls) == 2


def test_negative_answers_are_cached_too(store: CountingStore) -> None:
    clock = Clock()
    resolver = RouteResolver(store, cache_seconds=60, clock=clock)
    assert resolver.resolve_sync(ADDRESS).rule is None
    put(store, "*")
    assert resolver.resolve_sync(ADDRESS).rule is None
    clock.now += 61
    assert resolver.resolve_sync(ADDRESS).level == "catch-all"
    assert len(store.calls) == 2


def test_zero_seconds_means_no_cache(store: CountingStore) -> None:
    resolver = RouteResolver(store, cache_seconds=0, clock=Clock())
    resolver.resolve_sync(ADDRESS)
    resolver.resolve_sync(ADDRESS)
    assert len(store.calls) == 2


def test_invalidate_forgets_cached_answers(store: CountingStore) -> None:
    resolver = RouteResolver(store, cache_seconds=60, clock=Clock())
    resolver.resolve_sync(ADDRESS)
    put(store, "*")
    resolver.invalidate()
    assert resolver.resolve_sync(ADDRESS).level == "catch-all"


def test_lookup_racing_invalidate_is_not_cached(store: CountingStore) -> None:
    resolver = RouteResolver(store, cache_seconds=60, clock=Clock())
    fetch = store.get_many

    def fetch_then_reload(patterns: Sequence[str]) -> dict[str, Rule]:
        rules = fetch(patterns)
        resolver.invalidate()  # SIGHUP arrives while this lookup is in flight
        return rules

    store.get_many = fetch_then_reload  # type: ignore[method-assign]
    resolver.resolve_sync(ADDRESS)
    store.get_many = fetch  # type: ignore[method-assign]
    resolver.resolve_sync(ADDRESS)
    assert len(store.calls) == 2


def test_cache_stays_bounded(store: CountingStore) -> None:
    resolver = RouteResolver(store, cache_seconds=60, clock=Clock(), max_entries=2)
    for name in ("a", "b", "c"):
        resolver.resolve_sync(f"{name}@example.test")
    resolver.resolve_sync("c@example.test")
    resolver.resolve_sync("a@example.test")
    assert len(store.calls) == 4  # "a" was evicted, "c" was still cached


# --- failures ---------------------------------------------------------------


def test_store_errors_propagate_and_are_not_cached(store: CountingStore) -> None:
    put(store, "*")
    resolver = RouteResolver(store, cache_seconds=60, clock=Clock())
    store.fail_next = True
    with pytest.raises(RouteStoreError):
        resolver.resolve_sync(ADDRESS)
    assert resolver.resolve_sync(ADDRESS).level == "catch-all"


async def test_store_errors_propagate_from_async_resolve(store: CountingStore) -> None:
    store.fail_next = True
    with pytest.raises(RouteStoreError):
        await RouteResolver(store, cache_seconds=60).resolve(ADDRESS)


def test_database_replaced_by_garbage_is_an_error_not_no_rule(tmp_path: Path) -> None:
    store = SqliteRouteStore(tmp_path / "rules.db")
    put(store, "*")
    for name in ("rules.db-wal", "rules.db-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    (tmp_path / "rules.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(RouteStoreError, match="not a database"):
        RouteResolver(store, cache_seconds=0).resolve_sync(ADDRESS)


def test_missing_table_is_an_error(tmp_path: Path) -> None:
    store = SqliteRouteStore(tmp_path / "rules.db")
    with sqlite3.connect(tmp_path / "rules.db") as conn:
        conn.execute("DROP TABLE items")
    with pytest.raises(RouteStoreError, match="no such table"):
        RouteResolver(store, cache_seconds=0).resolve_sync(ADDRESS)


def test_deleted_database_is_an_error_not_an_empty_one(tmp_path: Path) -> None:
    store = SqliteRouteStore(tmp_path / "rules.db")
    (tmp_path / "rules.db").unlink()
    with pytest.raises(RouteStoreError):
        store.get_many(["*"])
    assert not (tmp_path / "rules.db").exists()


def test_garbage_file_at_open_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "rules.db").write_bytes(b"\x00garbage" * 1000)
    with pytest.raises(RouteStoreError):
        SqliteRouteStore(tmp_path / "rules.db")


def test_malformed_record_is_an_error(tmp_path: Path) -> None:
    store = SqliteRouteStore(tmp_path / "rules.db")
    store.put_items([{"PK": "ROUTE#*", "SK": "RULE#v1", "enabled": True}])  # no action at all
    with pytest.raises(RouteStoreError, match="bad route record ROUTE#\\*: no actions"):
        RouteResolver(store, cache_seconds=0).resolve_sync(ADDRESS)


# --- the store beneath ------------------------------------------------------


def test_put_keeps_created_at_and_stamps_updated_at(tmp_path: Path) -> None:
    times = iter(["2024-01-01T00:00:00Z", "2024-02-01T00:00:00Z"])
    store = SqliteRouteStore(tmp_path / "nested" / "dir" / "rules.db", now=lambda: next(times))
    put(store, "*")
    second = store.put(Rule("*", (STORE,), description="again"))
    assert (second.created_at, second.updated_at) == ("2024-01-01T00:00:00Z", "2024-02-01T00:00:00Z")
    assert store.get("*") == second
    assert store.list() == [second]


def test_raw_items_of_other_kinds_share_the_table(tmp_path: Path) -> None:
    store = SqliteRouteStore(tmp_path / "rules.db")
    user = {"PK": "SMTP_USER#app", "SK": "CREDENTIALS#v1", "allowed_senders": {"a@example.test"}}
    assert store.put_items([user]) == 1
    put(store, "*")
    assert [item["PK"] for item in store.scan_items()] == ["ROUTE#*", "SMTP_USER#app"]
    assert store.scan_items()[1] == user
    assert [rule.pattern for rule in store.list()] == ["*"]
    assert store.delete("*") and not store.delete("*")


def test_put_items_refuses_records_without_keys_before_writing(tmp_path: Path) -> None:
    store = SqliteRouteStore(tmp_path / "rules.db")
    with pytest.raises(RouteStoreError):
        store.put_items([{"PK": "ROUTE#*", "SK": "RULE#v1", "action": "store"}, {"PK": "no-sk"}])
    assert store.scan_items() == []


def test_put_items_failing_half_way_writes_nothing(tmp_path: Path) -> None:
    store = SqliteRouteStore(tmp_path / "rules.db")
    with sqlite3.connect(tmp_path / "rules.db") as conn:  # a write that fails inside the database
        conn.execute("CREATE TRIGGER boom BEFORE INSERT ON items WHEN NEW.pk = 'BOOM' "
                     "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END")
    with pytest.raises(RouteStoreError, match="disk on fire"):
        store.put_items([{"PK": "ROUTE#*", "SK": "RULE#v1", "action": "store"}, {"PK": "BOOM", "SK": "x"}])
    assert store.scan_items() == []


# --- what RCPT answers ------------------------------------------------------


@pytest.mark.parametrize(
    ("actions", "mode", "reply"),
    [
        (None, "reject", replies.NO_SUCH_USER),
        ((Action("teleport"),), "reject", replies.RULES_UNAVAILABLE),
        ((Action("bounce"),), "reject", replies.NO_SUCH_USER),
        ((Action("bounce"),), "dsn", replies.RECIPIENT_OK),
        ((STORE,), "reject", replies.RECIPIENT_OK),
    ],
)
def test_rcpt_verdict(actions: tuple[Action, ...] | None, mode: str, reply: replies.Reply) -> None:
    rule = Rule("*", actions) if actions else None
    match = Match(ADDRESS, rule, "catch-all" if rule else None)
    assert rcpt_verdict(match, bounce_mode=mode)[0] == reply
