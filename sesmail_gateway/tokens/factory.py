"""Choose the token store named by ``gmail.tokens``: one place for the CLI and the daemon."""

from __future__ import annotations

import json
from pathlib import Path

from sesmail_gateway.config import Config, ConfigError
from sesmail_gateway.tokens import ClientCredentials, TokenStore, TokenStoreError
from sesmail_gateway.tokens.file import FileTokenStore
from sesmail_gateway.tokens.ssm import SsmTokenStore


def open_token_store(config: Config) -> TokenStore:
    """``file://PATH`` (relative to data_dir) or ``ssm://PATH``."""
    scheme, _, rest = config.gmail.tokens.partition("://")
    if scheme == "file":
        return FileTokenStore(config.data_path(rest or "tokens"))
    if scheme == "ssm":
        if not rest.strip("/"):
            raise ConfigError(f"gmail.tokens: expected ssm://PATH, got {config.gmail.tokens!r}")
        return SsmTokenStore(rest, aws_config=config.aws)
    raise ConfigError(f"gmail.tokens: the {scheme}:// token store is not available in this version")


def load_client(config: Config, store: TokenStore) -> ClientCredentials | None:
    """The OAuth client: ``gmail.client_secrets`` when set, else the one in the token store.

    ``gmail.token_uri`` overrides the client's token endpoint (tests, emulators).
    """
    client: ClientCredentials | None
    if config.gmail.client_secrets:
        path = config.data_path(config.gmail.client_secrets)
        try:
            client = ClientCredentials.from_json(json.loads(Path(path).read_bytes()))
        except FileNotFoundError:
            raise TokenStoreError(f"gmail.client_secrets: no such file: {path}") from None
        except (OSError, ValueError) as exc:
            why = exc if isinstance(exc, ValueError) else exc.strerror
            raise TokenStoreError(f"gmail.client_secrets: {path}: {why}") from None
    else:
        client = store.client_credentials()
    if client is not None and config.gmail.token_uri:
        client = ClientCredentials(client_id=client.client_id, client_secret=client.client_secret,
                                   auth_uri=client.auth_uri, token_uri=config.gmail.token_uri,
                                   redirect_uris=client.redirect_uris)
    return client
