"""Gmail delivery: ``users.messages.import`` into the target account's mailbox.

Each account has its own session: the refresh token from the token store,
one access token shared by every delivery to that account (refreshed before
it expires, under a lock), a token bucket that keeps the account under
Gmail's per-user quota, a bound on concurrent uploads, and the label ids
its label names resolved to.

The message goes up as the gateway stored it (our Received and
Authentication-Results on top, every other byte as received): small ones
in one multipart request, large ones by resumable upload in chunks streamed
from the spool file, so a 40 MiB message is never held in memory whole.
``internalDateSource=receivedTime``: a forged Date header cannot reorder the
inbox. A dead refresh token (``invalid_grant``) raises TokenExpired and the
account stays marked until the token store holds a newer token, so held
mail does not hammer Google's token endpoint.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sesmail_gateway.errors import PermanentFailure, TemporaryFailure, TokenExpired, classify
from sesmail_gateway.message import Delivery, QueueItem, StoredMessage
from sesmail_gateway.tokens import ClientCredentials, StoredToken, TokenStore
from sesmail_gateway.tokens.oauth import refresh_access_token

log = logging.getLogger(__name__)

# Gmail's system labels, used by id as they are; anything else is a label name.
SYSTEM_LABELS = frozenset({
    "INBOX", "SPAM", "TRASH", "UNREAD", "STARRED", "IMPORTANT", "SENT", "DRAFT", "CHAT",
    "CATEGORY_PERSONAL", "CATEGORY_SOCIAL", "CATEGORY_PROMOTIONS", "CATEGORY_UPDATES", "CATEGORY_FORUMS",
})

# Up to this size a message goes in one multipart request; above it, resumable upload.
SIMPLE_UPLOAD_MAX = 5 * 1024 * 1024
# Resumable chunks must be multiples of 256 KiB.
UPLOAD_CHUNK = 8 * 1024 * 1024
# Gmail's per-user quota is 250 units per second; an import costs 25.
QUOTA_UNITS_PER_SECOND = 250.0
IMPORT_COST = 25.0
PER_ACCOUNT_CONCURRENCY = 4
# Refresh the access token this long before Google says it expires.
REFRESH_MARGIN = 300.0


RFC822 = "message/rfc822"


def _as_multipart(request: Any, metadata: dict[str, Any], raw: bytes) -> None:
    """Turn a prepared resumable import into one multipart/related request, bytes untouched.

    The client library's own multipart encoder runs the message through the
    email package, which cannot carry 8-bit bytes; this writes the two
    parts (JSON metadata, the raw message) as they are. The request's URI,
    query parameters and response handling stay the library's.
    """
    boundary = "===============" + secrets.token_hex(16) + "=="
    while boundary.encode() in raw:
        boundary = "===============" + secrets.token_hex(16) + "=="
    head = (f"--{boundary}\r\ncontent-type: application/json; charset=UTF-8\r\n\r\n"
            f"{json.dumps(metadata)}\r\n--{boundary}\r\ncontent-type: {RFC822}\r\n"
            "content-transfer-encoding: binary\r\n\r\n").encode()
    body = b"".join((head, raw, f"\r\n--{boundary}--\r\n".encode()))
    request.uri = request.uri.replace("uploadType=resumable", "uploadType=multipart")
    request.resumable = None
    request.body = body
    request.body_size = len(body)
    request.headers["content-type"] = f'multipart/related; boundary="{boundary}"'
    request.headers["content-length"] = str(len(body))


class TokenBucket:
    """``rate`` tokens a second, at most ``capacity`` saved up; ``take`` blocks until one is there."""

    def __init__(self, rate: float, capacity: float, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate = rate
        self.capacity = capacity
        self.clock = clock
        self.sleep = sleep
        self._tokens = capacity
        self._stamp = clock()
        self._lock = threading.Lock()

    def take(self, cost: float = 1.0) -> float:
        """Spend ``cost``; returns the seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                now = self.clock()
                self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
                self._stamp = now
                if self._tokens >= cost - 1e-9:  # float refill may land a hair short
                    self._tokens -= cost
                    return waited
                pause = (cost - self._tokens) / self.rate
            self.sleep(pause)
            waited += pause


@dataclass
class _Account:
    """One Gmail account's shared state. Fields change under ``lock``."""

    name: str
    bucket: TokenBucket
    slots: threading.BoundedSemaphore
    lock: threading.Lock = field(default_factory=threading.Lock)
    token: StoredToken | None = None
    access_token: str = field(default="", repr=False)
    access_expiry: float = 0.0
    # Set when the stored token was refused: (why, when that token was issued).
    dead: tuple[str, float] | None = None
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Resources:
    messages: Any
    labels: Any


class _BearerHttp:
    """An httplib2.Http that adds the account's access token to every request (chunks included)."""

    def __init__(self, http: Any, access_token: str) -> None:
        self.http = http
        self._authorization = f"Bearer {access_token}"

    def request(self, uri: str, method: str = "GET", body: Any = None, headers: dict[str, str] | None = None,
                **kwargs: Any) -> Any:
        headers = dict(headers or {})
        headers["authorization"] = self._authorization
        return self.http.request(uri, method, body=body, headers=headers, **kwargs)


class GmailDeliverer:
    """The ``forward-to-gmail`` action. Blocking; the runner calls it from worker threads."""

    def __init__(
        self,
        *,
        store: TokenStore,
        client: Callable[[], ClientCredentials | None],
        label_ids: Iterable[str] = ("INBOX", "UNREAD"),
        api_endpoint: str = "",
        token_uri: str = "",
        clock: Callable[[], float] = time.time,
        on_import: Callable[[str, float], None] | None = None,
    ) -> None:
        self.store = store
        self._client_loader = client
        self.label_ids = tuple(label_ids)
        self.api_endpoint = api_endpoint
        self.token_uri = token_uri
        self.clock = clock
        self.on_import = on_import
        self._accounts: dict[str, _Account] = {}
        self._accounts_lock = threading.Lock()
        self._local = threading.local()
        self._service: _Resources | None = None
        self._service_lock = threading.Lock()

    # -- the Deliverer protocol ----------------------------------------------

    def deliver(self, item: QueueItem, delivery: Delivery, message: StoredMessage) -> None:
        account = self._account(delivery.target)
        try:
            labels = self._labels_for(account, item)
            with account.slots:
                account.bucket.take(IMPORT_COST)
                started = time.monotonic()
                self._with_token(account, lambda http: self._import(http, labels, message))
        except Exception as exc:
            error = classify(exc)
            if isinstance(error, TokenExpired):
                self._mark_dead(account, str(error))
                error = TokenExpired(str(error), account=account.name,
                                     issued_at=account.token.issued_at if account.token else 0.0)
            raise error from None
        if self.on_import is not None:
            self.on_import(account.name, time.monotonic() - started)

    # -- token life cycle (the daemon's token watcher calls these) ----------

    def token_changed(self, account: str) -> None:
        """Forget the account's cached token (and a refusal of it): the next delivery reads the store."""
        state = self._accounts.get(account.lower())
        if state is None:
            return
        with state.lock:
            state.token = None
            state.access_token = ""
            state.access_expiry = 0.0
            state.dead = None

    def dead_accounts(self) -> dict[str, tuple[str, float]]:
        """Accounts whose token was refused: why, and when that token was issued."""
        return {name: state.dead for name, state in list(self._accounts.items()) if state.dead is not None}

    # -- internals -------------------------------------------------------------

    def _account(self, target: str) -> _Account:
        name = target.strip().lower()
        if "@" not in name:
            raise PermanentFailure(f"forward-to-gmail target {target!r} is not a Gmail address")
        with self._accounts_lock:
            state = self._accounts.get(name)
            if state is None:
                rate = QUOTA_UNITS_PER_SECOND
                state = _Account(name=name, bucket=TokenBucket(rate, rate),
                                 slots=threading.BoundedSemaphore(PER_ACCOUNT_CONCURRENCY))
                self._accounts[name] = state
            return state

    def _mark_dead(self, account: _Account, why: str) -> None:
        with account.lock:
            account.dead = (why, account.token.issued_at if account.token else 0.0)
            account.access_token = ""

    def _access_token(self, account: _Account, *, force: bool = False) -> str:
        """A valid access token for the account, refreshed when close to expiry (or ``force``)."""
        with account.lock:
            if account.dead is not None:
                why, issued = account.dead
                raise TokenExpired(why, account=account.name, issued_at=issued)
            if not force and account.access_token and self.clock() < account.access_expiry - REFRESH_MARGIN:
                return account.access_token
            if account.token is None:
                account.token = self.store.get(account.name)
            if account.token is None:
                raise TokenExpired(f"no Gmail token for {account.name}: run `sesmail-gateway token refresh "
                                   f"--account {account.name}`", account=account.name)
            account.access_token, account.access_expiry = self._refresh(account.token)
            return account.access_token

    def _refresh(self, token: StoredToken) -> tuple[str, float]:
        return refresh_access_token(token, self._client_loader(), token_uri=self.token_uri,
                                    session=self._session(), now=self.clock)

    def _with_token(self, account: _Account, call: Callable[[Any], Any]) -> Any:
        """Run ``call`` with an authorised http; on a 401, refresh the access token once and retry."""
        from googleapiclient.errors import HttpError

        http = self._http()
        try:
            return call(_BearerHttp(http, self._access_token(account)))
        except HttpError as exc:
            if exc.resp.status != 401:
                raise
        return call(_BearerHttp(http, self._access_token(account, force=True)))

    def _import(self, http: Any, labels: list[str], message: StoredMessage) -> None:
        from googleapiclient.http import MediaIoBaseUpload

        metadata = {"labelIds": labels}
        with message.open() as stream:
            media = MediaIoBaseUpload(stream, mimetype=RFC822, chunksize=UPLOAD_CHUNK, resumable=True)
            request = self._gmail().messages.import_(
                userId="me", body=metadata, media_body=media,
                internalDateSource="receivedTime", neverMarkSpam=False, processForCalendar=False,
            )
            if message.size <= SIMPLE_UPLOAD_MAX:
                stream.seek(0)  # the upload object measured the file by seeking to its end
                _as_multipart(request, metadata, stream.read())
            request.execute(http=http, num_retries=0)

    def _labels_for(self, account: _Account, item: QueueItem) -> list[str]:
        """Label ids for this message: the configured ones, SPAM instead of INBOX when quarantined."""
        wanted = list(self.label_ids)
        if item.quarantine:
            wanted = [label for label in wanted if label != "INBOX"]
            if "SPAM" not in wanted:
                wanted.append("SPAM")
        names = [label for label in wanted if label not in SYSTEM_LABELS]
        if not names:
            return wanted
        missing = [name for name in names if name not in account.labels]
        if missing:
            try:
                self._with_token(account, lambda http: self._resolve_labels(http, account, missing))
            except Exception as exc:
                error = classify(exc)
                if isinstance(error, TokenExpired):
                    raise
                raise TemporaryFailure(f"cannot resolve Gmail labels {', '.join(missing)}: {error}; label "
                                       "names need the gmail.labels scope (run `token refresh` again) "
                                       "or use system label ids") from None
        return [account.labels.get(label, label) for label in wanted]

    def _resolve_labels(self, http: Any, account: _Account, names: list[str]) -> None:
        labels = self._gmail().labels
        existing = labels.list(userId="me").execute(http=http, num_retries=0).get("labels", [])
        by_name = {str(entry.get("name", "")).lower(): str(entry["id"]) for entry in existing if "id" in entry}
        for name in names:
            label_id = by_name.get(name.lower())
            if label_id is None:
                created = labels.create(userId="me", body={
                    "name": name, "labelListVisibility": "labelShow", "messageListVisibility": "show",
                }).execute(http=http, num_retries=0)
                label_id = str(created["id"])
                log.info("gmail: created label %r in %s", name, account.name)
            account.labels[name] = label_id

    def _gmail(self) -> _Resources:
        """The Gmail API resources, built once from the discovery document shipped with the library.

        Building a resource object walks the whole method table (about 5 ms
        of CPU); the objects only create requests, so threads share them.
        """
        with self._service_lock:
            if self._service is None:
                from googleapiclient.discovery import build

                options = {"api_endpoint": self.api_endpoint} if self.api_endpoint else None
                service = build("gmail", "v1", http=self._http(), static_discovery=True,
                                client_options=options, cache_discovery=False)
                users = service.users()
                self._service = _Resources(messages=users.messages(), labels=users.labels())
            return self._service

    def _http(self) -> Any:
        """One httplib2 connection pool per thread (httplib2 is not thread-safe)."""
        http = getattr(self._local, "http", None)
        if http is None:
            from googleapiclient.http import build_http

            http = self._local.http = build_http()
        return http

    def _session(self) -> Any:
        session = getattr(self._local, "session", None)
        if session is None:
            import requests

            session = self._local.session = requests.Session()
        return session
