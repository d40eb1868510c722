"""The AWS rule store: the seed system's DynamoDB table, used as it is.

Routes are PK ``ROUTE#<pattern>`` / SK ``RULE#v1`` (layout in
``records.py``); other entity types in the same table (SMTP users, …) are
read and written only as raw records. A look-up fetches every candidate
key of an address in one ``BatchGetItem``; keys DynamoDB leaves
unprocessed (throttling) are asked again with backoff. Anything that keeps
the table from answering — throttling that outlasts the retries, an
unreachable endpoint, a missing table, no credentials — is a
RouteStoreError, which RCPT answers with 451 4.3.0.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from sesmail_gateway import aws
from sesmail_gateway.config import AwsConfig
from sesmail_gateway.routes import RouteStoreError, Rule
from sesmail_gateway.routes.records import (
    ENTITY_TYPE,
    Item,
    from_wire,
    is_route_item,
    item_to_rule,
    route_key,
    rule_to_item,
    stamped,
    to_wire,
    utc_now,
)

BATCH_GET_LIMIT = 100  # keys per BatchGetItem
BATCH_WRITE_LIMIT = 25  # requests per BatchWriteItem
Progress = Callable[[int, int], None]


class DynamoRouteStore:
    """RouteStore over a DynamoDB table with string keys PK and SK; safe to call from any thread."""

    def __init__(
        self,
        table: str,
        *,
        aws_config: AwsConfig,
        retries: int = 5,
        backoff: float = 0.05,
        page_size: int | None = None,
        now: Callable[[], str] = utc_now,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """``retries``/``backoff``: how often and how patiently unprocessed keys are asked again;
        ``page_size``: items per scan page (None = DynamoDB's 1 MB pages)."""
        self.table = table
        self._aws_config = aws_config
        self._retries = retries
        self._backoff = backoff
        self._page_size = page_size
        self._now = now
        self._sleep = sleep
        with self._errors():
            self.client = aws.client(aws_config, "dynamodb")

    def __repr__(self) -> str:
        return f"DynamoRouteStore({self.table!r})"

    # --- routes -------------------------------------------------------------

    def get_many(self, patterns: Sequence[str]) -> dict[str, Rule]:
        """The enabled and disabled rules stored under these patterns, in one BatchGetItem."""
        keys = [route_key(pattern) for pattern in dict.fromkeys(patterns)]
        rules = [self._rule(item) for item in self.get_items(keys)]
        return {rule.pattern: rule for rule in rules}

    def get(self, pattern: str) -> Rule | None:
        """The rule stored under ``pattern``, or None."""
        return self.get_many([pattern]).get(pattern)

    def put(self, rule: Rule) -> Rule:
        """Create or replace; keeps the stored ``created_at``; returns what was written."""
        stored = self.get_item(route_key(rule.pattern))
        created = stored.get("created_at") if stored else None
        written = stamped(rule, stored_created_at=created if isinstance(created, str) else None, now=self._now())
        self.put_item(rule_to_item(written))
        return written

    def delete(self, pattern: str) -> bool:
        """Remove the rule; False when there was none."""
        return self.delete_item(route_key(pattern))

    def close(self) -> None:
        """Nothing to release: the client is shared."""

    # --- raw records --------------------------------------------------------

    def scan_items(self) -> list[dict[str, object]]:
        """Every raw record (plain Python values), routes and others, for export."""
        items = self._scan({})
        return sorted(items, key=lambda item: (str(item.get("PK")), str(item.get("SK"))))

    def put_items(self, items: Sequence[Mapping[str, object]], progress: Progress | None = None) -> int:
        """Write raw records in batches of 25, retrying unprocessed ones; ``progress(done, total)``
        after each batch. Not atomic: a failure names how many were written before it."""
        # One batch may not name a key twice: the last record for a key wins, as a replay would.
        unique = list({(item.get("PK"), item.get("SK")): item for item in items}.values())
        written = 0
        for start in range(0, len(unique), BATCH_WRITE_LIMIT):
            batch = unique[start:start + BATCH_WRITE_LIMIT]
            requests = [{"PutRequest": {"Item": self._wire(item)}} for item in batch]
            try:
                self._write_batch(requests)
            except RouteStoreError as exc:
                raise RouteStoreError(f"{exc} (after {written} of {len(unique)} records were written)") from exc
            written += len(batch)
            if progress is not None:
                progress(written, len(unique))
        return written

    def get_items(self, keys: Sequence[Mapping[str, str]]) -> list[Item]:
        """The records stored under these keys (absent ones are left out), one BatchGetItem per 100."""
        found: list[Item] = []
        for start in range(0, len(keys), BATCH_GET_LIMIT):
            wanted = [{"PK": {"S": key["PK"]}, "SK": {"S": key["SK"]}} for key in keys[start:start + BATCH_GET_LIMIT]]
            found += self._get_batch(wanted)
        return found

    def get_item(self, key: Mapping[str, str]) -> Item | None:
        """One record, read consistently (for read-modify-write), or None."""
        with self._errors():
            response = self.client.get_item(
                TableName=self.table, Key={name: {"S": value} for name, value in key.items()}, ConsistentRead=True
            )
        item = response.get("Item")
        return from_wire(item) if item else None

    def put_item(self, item: Mapping[str, object]) -> None:
        """Write one record as it is."""
        with self._errors():
            self.client.put_item(TableName=self.table, Item=self._wire(item))

    def delete_item(self, key: Mapping[str, str]) -> bool:
        """Remove one record; False when there was none."""
        with self._errors():
            response = self.client.delete_item(
                TableName=self.table, Key={name: {"S": value} for name, value in key.items()}, ReturnValues="ALL_OLD"
            )
        return bool(response.get("Attributes"))

    # --- plumbing -----------------------------------------------------------

    def _get_batch(self, keys: list[dict[str, Any]]) -> list[Item]:
        found: list[Item] = []
        request: dict[str, Any] = {self.table: {"Keys": keys}}
        for attempt in range(self._retries + 1):
            with self._errors():
                response = self.client.batch_get_item(RequestItems=request)
            found += [from_wire(item) for item in response.get("Responses", {}).get(self.table, [])]
            request = response.get("UnprocessedKeys") or {}
            if not request:
                return found
            if attempt < self._retries:
                self._sleep(self._backoff * 2**attempt)
        raise RouteStoreError(f"rule table {self.table}: keys still unprocessed after {self._retries} retries "
                              "(throttled)")

    def _write_batch(self, requests: list[dict[str, Any]]) -> None:
        pending: dict[str, Any] = {self.table: requests}
        for attempt in range(self._retries + 1):
            with self._errors():
                response = self.client.batch_write_item(RequestItems=pending)
            pending = response.get("UnprocessedItems") or {}
            if not pending:
                return
            if attempt < self._retries:
                self._sleep(self._backoff * 2**attempt)
        raise RouteStoreError(f"rule table {self.table}: writes still unprocessed after {self._retries} retries "
                              "(throttled)")

    def _scan(self, arguments: dict[str, Any]) -> list[Item]:
        items: list[Item] = []
        if self._page_size:
            arguments = {**arguments, "PaginationConfig": {"PageSize": self._page_size}}
        with self._errors():
            for page in self.client.get_paginator("scan").paginate(TableName=self.table, **arguments):
                items += [from_wire(item) for item in page.get("Items", [])]
        return items

    def _wire(self, item: Mapping[str, object]) -> dict[str, Any]:
        try:
            return to_wire(item)
        except ValueError as exc:
            raise RouteStoreError(f"rule table {self.table}: {exc}") from None

    def _rule(self, item: Item) -> Rule:
        try:
            return item_to_rule(item)
        except ValueError as exc:
            raise RouteStoreError(f"rule table {self.table}: bad route record {item.get('PK')}: {exc}") from None

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Every SDK failure becomes RouteStoreError naming the table and the AWS error code."""
        try:
            yield
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise RouteStoreError(
                f"rule table {self.table}: {error.get('Code', 'error')}: {error.get('Message', '')}".rstrip(": ")
            ) from exc
        except BotoCoreError as exc:
            raise RouteStoreError(f"rule table {self.table}: {exc}") from exc

    # Last: in the class body ``list`` names this method from here on.
    def list(self) -> list[Rule]:
        """Every rule, by pattern: a paged scan filtered on ``entity_type``."""
        items = self._scan({"FilterExpression": "entity_type = :route",
                            "ExpressionAttributeValues": {":route": {"S": ENTITY_TYPE}}})
        rules = [self._rule(item) for item in items if is_route_item(item)]
        return sorted(rules, key=lambda rule: rule.pattern)
