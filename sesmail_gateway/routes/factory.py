"""Choose the rule store named by ``rules.url``: one place for the CLI and the daemon."""

from __future__ import annotations

from sesmail_gateway.config import Config
from sesmail_gateway.routes import RouteStore, RouteStoreError
from sesmail_gateway.routes.dynamodb import DynamoRouteStore
from sesmail_gateway.routes.sqlite import SqliteRouteStore


def open_route_store(config: Config) -> RouteStore:
    """The store for ``config.rules.url``: ``sqlite://PATH`` (relative to data_dir) or ``dynamodb://TABLE``.

    Raises RouteStoreError when the store cannot be opened.
    """
    scheme, _, rest = config.rules.url.partition("://")
    if scheme == "sqlite":
        if not rest:
            raise RouteStoreError(f"rules.url: no database path in {config.rules.url!r}")
        return SqliteRouteStore(config.data_path(rest))
    if scheme == "dynamodb":
        if not rest or "/" in rest:
            raise RouteStoreError(f"rules.url: expected dynamodb://TABLE, got {config.rules.url!r}")
        return DynamoRouteStore(rest, aws_config=config.aws)
    # config.load() already refuses other schemes; this guards hand-built configs.
    raise RouteStoreError(f"rules.url: unsupported store {config.rules.url!r}")
