"""Which rule routes an address: the lookup hierarchy, one store round trip, a cache.

Lookup order, first enabled match wins: the exact address
(``user+tag@dom``), the address with its plus tag removed (``user@dom``),
the domain wildcard (``*@dom``), the catch-all (``*``). A disabled rule is
skipped and the next level tried.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

from sesmail_gateway import replies
from sesmail_gateway.replies import Reply
from sesmail_gateway.routes import Candidate, Match, RouteStore, Rule

MATCHED, DISABLED, ABSENT = "matched", "disabled", "absent"


def normalise_address(address: str) -> str:
    """Addresses compare case-insensitively, ignoring surrounding blanks and a root dot (``dom.``)."""
    return address.strip().lower().rstrip(".")


def candidates(address: str) -> list[tuple[str, str]]:
    """(level, pattern) pairs to try for a normalised address, in order.

    The plus-stripped level is left out when the address has no tag, so
    ``routes test`` never shows the same key twice.
    """
    local, at, domain = address.rpartition("@")
    if not at:
        return [("exact", address), ("catch-all", "*")]
    found = [("exact", address)]
    user, plus, _tag = local.partition("+")
    if plus and user:
        found.append(("plus-stripped", f"{user}@{domain}"))
    found += [("domain", f"*@{domain}"), ("catch-all", "*")]
    return found


def decide(address: str, tried: list[tuple[str, str]], rules: Mapping[str, Rule]) -> Match:
    """Walk the candidates in order against the rules found; stop at the first enabled one."""
    seen: list[Candidate] = []
    for level, pattern in tried:
        rule = rules.get(pattern)
        if rule is None:
            seen.append(Candidate(level, pattern, ABSENT))
        elif not rule.enabled:
            seen.append(Candidate(level, pattern, DISABLED))
        else:
            seen.append(Candidate(level, pattern, MATCHED))
            return Match(address, rule, level, tuple(seen))
    return Match(address, None, None, tuple(seen))


def rcpt_verdict(match: Match, *, bounce_mode: str) -> tuple[Reply, str]:
    """What RCPT answers for an address in an accepted domain, and why (for the log).

    No rule → 550 5.1.1. An action this gateway does not know → 451 4.3.0,
    never a silent drop. A bounce under ``bounce.mode = "reject"`` is the
    550 itself: the message never arrives, so no other action could run.
    """
    rule = match.rule
    if rule is None:
        return replies.NO_SUCH_USER, "no enabled rule"
    if rule.unknown_actions:
        return replies.RULES_UNAVAILABLE, f"rule {rule.pattern} has unknown action(s) " + ", ".join(
            rule.unknown_actions
        )
    if bounce_mode == "reject" and any(action.type == "bounce" for action in rule.actions):
        return replies.NO_SUCH_USER, f"rule {rule.pattern} bounces and bounce.mode is reject"
    return replies.RECIPIENT_OK, f"routed by rule {rule.pattern} ({match.level})"


class RouteResolver:
    """Resolves addresses through a RouteStore, caching answers for ``cache_seconds``.

    Positive and negative answers are cached per normalised address
    (0 = no cache). A RouteStoreError is never cached: it propagates, and
    the next call asks the store again.
    """

    def __init__(
        self,
        store: RouteStore,
        *,
        cache_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = 10_000,
    ) -> None:
        self.store = store
        self._ttl = cache_seconds
        self._clock = clock
        # Bounded, because every RCPT to a random address adds an entry.
        self._max_entries = max_entries
        self._cache: dict[str, tuple[float, Match]] = {}
        self._generation = 0

    async def resolve(self, address: str) -> Match:
        """The route for ``address``; the store is asked in a worker thread."""
        key = normalise_address(address)
        cached = self._cached(key)
        if cached is not None:
            return cached
        # Arguments are evaluated in order: the generation is read before the lookup starts.
        return self._remember(key, self._generation, await asyncio.to_thread(self._lookup, key))

    def resolve_sync(self, address: str) -> Match:
        """The route for ``address``, blocking (for the CLI and tests)."""
        key = normalise_address(address)
        cached = self._cached(key)
        if cached is not None:
            return cached
        return self._remember(key, self._generation, self._lookup(key))

    def invalidate(self) -> None:
        """Forget every cached answer (SIGHUP)."""
        self._generation += 1
        self._cache.clear()

    def _lookup(self, address: str) -> Match:
        tried = candidates(address)
        rules = self.store.get_many([pattern for _level, pattern in tried])
        return decide(address, tried, rules)

    def _cached(self, key: str) -> Match | None:
        entry = self._cache.get(key)
        if entry is None:
            return None
        expires, match = entry
        if self._clock() < expires:
            return match
        self._cache.pop(key, None)
        return None

    def _remember(self, key: str, generation: int, match: Match) -> Match:
        # A lookup that started before invalidate() may carry the old rules: not cached.
        if self._ttl > 0 and generation == self._generation:
            if len(self._cache) >= self._max_entries:
                self._evict()
            self._cache[key] = (self._clock() + self._ttl, match)
        return match

    def _evict(self) -> None:
        """Drop expired entries; if none had expired, the oldest one."""
        now = self._clock()
        for key in [key for key, (expires, _match) in self._cache.items() if expires <= now]:
            del self._cache[key]
        if len(self._cache) >= self._max_entries:
            del self._cache[next(iter(self._cache))]
