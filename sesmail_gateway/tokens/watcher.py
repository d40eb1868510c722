"""The daemon's eye on the token store: release held mail when a newer token arrives, warn before expiry.

Every ``gmail.token_poll_seconds`` (and at once on SIGHUP or when a
``token`` command says so through the control socket) the watcher reads
the token of every account that has one, or has held messages, or whose
token Gmail refused. A token issued after the one an account's messages
were held on releases them, oldest first. Google "Testing" apps' refresh
tokens die ``gmail.refresh_token_lifetime`` after issue: the time left is
a metric, and a warning is logged 24 h and 6 h before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from sesmail_gateway.config import GmailConfig
from sesmail_gateway.deliver.gmail import GmailDeliverer
from sesmail_gateway.metrics import Metrics
from sesmail_gateway.runner import Runner
from sesmail_gateway.tokens import StoredToken, TokenStore, TokenStoreError

log = logging.getLogger(__name__)

WARN_BEFORE = (24 * 3600.0, 6 * 3600.0)


def seconds_left(token: StoredToken, lifetime: float, now: float) -> float:
    """Seconds until the token is assumed dead; +inf when tokens do not expire (lifetime 0)."""
    if lifetime <= 0:
        return math.inf
    return token.issued_at + lifetime - now


@dataclass
class _Snapshot:
    tokens: dict[str, StoredToken]
    held: dict[str, tuple[int, float]]


class TokenWatcher:
    def __init__(self, *, store: TokenStore, deliverer: GmailDeliverer, runner: Runner, config: GmailConfig,
                 metrics: Metrics, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.deliverer = deliverer
        self.runner = runner
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self._wake = asyncio.Event()
        self._seen: dict[str, float] = {}        # account -> issued_at last seen
        self._warned: set[tuple[str, float, float]] = set()

    def wake(self) -> None:
        """Re-read the token store now (SIGHUP, `token import`, `token refresh`)."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.check()
            except TokenStoreError as exc:
                log.error("tokens: cannot read the token store: %s", exc)
            except Exception as exc:  # the watcher must outlive any one failure
                log.error("tokens: check failed: %s: %s", type(exc).__name__, exc)
            with contextlib.suppress(TimeoutError):  # asyncio.timeout never swallows a cancellation
                async with asyncio.timeout(self.config.token_poll_seconds):
                    await self._wake.wait()

    async def check(self) -> int:
        """One pass; returns how many held messages it released."""
        loop = asyncio.get_running_loop()
        snapshot = await loop.run_in_executor(None, self._read)
        now = self.clock()
        for account, token in snapshot.tokens.items():
            if self._seen.get(account, token.issued_at) != token.issued_at:
                self.deliverer.token_changed(account)
                log.info("tokens: new token for %s (issued %.0f)", account, token.issued_at)
            self._seen[account] = token.issued_at
            self._expiry(account, token, now)
        for account in set(self._seen) - set(snapshot.tokens):
            del self._seen[account]
            with contextlib.suppress(KeyError):
                self.metrics.gmail_token_seconds_left.remove(account)
        released = 0
        for account, (count, held_on) in sorted(snapshot.held.items()):
            newer = snapshot.tokens.get(account)
            if newer is None or newer.issued_at <= held_on:
                continue
            self.deliverer.token_changed(account)
            done = await self.runner.release_held(account, issued_after=newer.issued_at)
            log.info("tokens: newer token for %s: released %d of %d held message(s)", account, done, count)
            released += done
        return released

    def _read(self) -> _Snapshot:
        held = self.runner.held_accounts()
        accounts = set(self.store.accounts()) | set(held) | set(self.deliverer.dead_accounts())
        tokens: dict[str, StoredToken] = {}
        for account in sorted(accounts):
            if not account:
                continue
            token = self.store.get(account)
            if token is not None:
                tokens[account] = token
        return _Snapshot(tokens, held)

    def _expiry(self, account: str, token: StoredToken, now: float) -> None:
        left = seconds_left(token, self.config.refresh_token_lifetime, now)
        self.metrics.gmail_token_seconds_left.labels(account=account).set(left)
        for threshold in (0.0, *sorted(WARN_BEFORE)):  # the nearest threshold crossed, once
            if left > threshold:
                continue
            key = (account, token.issued_at, threshold)
            if key not in self._warned:
                self._warned.add(key)
                if threshold:
                    log.warning("tokens: Gmail token for %s expires in %.1f h (issued %s); run `sesmail-gateway "
                                "token refresh --account %s` before then", account, max(left, 0) / 3600,
                                _iso(token.issued_at), account)
                else:
                    log.warning("tokens: Gmail token for %s is past its assumed lifetime; new mail for it will "
                                "be held until `token refresh --account %s`", account, account)
            break


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
