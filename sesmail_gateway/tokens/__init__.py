"""Gmail OAuth tokens: what is stored, and the store protocol.

A token store keeps one refresh token per Gmail account (``file://`` here,
``ssm://`` on AWS) and, optionally, the OAuth client (``client_secret.json``).
Only ``compose.py`` and the CLI choose a store; delivery and the ``token``
commands see this protocol. Secrets never leave a ``StoredToken`` through
``repr`` or ``str``: a log line or a traceback that names one shows the
account, never the token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

# The one scope the seed system's consent used: tokens issued for it keep working.
GMAIL_SCOPE = "https://www.googleapis.com/auth/gmail.insert"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
GOOGLE_AUTH_URI = "https://accounts.google.com/o/oauth2/auth"


class TokenStoreError(Exception):
    """The token store cannot be read or written (never carries a secret)."""


@dataclass(frozen=True)
class ClientCredentials:
    """The OAuth client of ``client_secret.json`` (an "installed" or "web" client)."""

    client_id: str
    client_secret: str = field(repr=False)
    auth_uri: str = GOOGLE_AUTH_URI
    token_uri: str = GOOGLE_TOKEN_URI
    redirect_uris: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, data: Any) -> ClientCredentials:
        """Read Google's ``client_secret.json`` shape (``{"installed": {...}}`` or ``{"web": {...}}``).

        Raises ValueError naming what is missing, never quoting a secret.
        """
        if not isinstance(data, dict):
            raise ValueError("client secrets: expected a JSON object")
        inner = data.get("installed") or data.get("web") or data
        if not isinstance(inner, dict) or not inner.get("client_id") or not inner.get("client_secret"):
            raise ValueError("client secrets: expected client_id and client_secret "
                             "(the client_secret.json downloaded from the Google Cloud console)")
        return cls(
            client_id=str(inner["client_id"]),
            client_secret=str(inner["client_secret"]),
            auth_uri=str(inner.get("auth_uri") or GOOGLE_AUTH_URI),
            token_uri=str(inner.get("token_uri") or GOOGLE_TOKEN_URI),
            redirect_uris=tuple(str(u) for u in inner.get("redirect_uris", ()) or ()),
        )

    def to_json(self) -> dict[str, Any]:
        return {"installed": {
            "client_id": self.client_id, "client_secret": self.client_secret,
            "auth_uri": self.auth_uri, "token_uri": self.token_uri,
            "redirect_uris": list(self.redirect_uris),
        }}


@dataclass(frozen=True)
class StoredToken:
    """One account's refresh token and when it was issued (epoch seconds).

    ``client_id``/``client_secret`` are set when the token came with its own
    client (an authorized-user JSON); empty means the store's client.
    ``shared`` marks the seed layout's single token, used for every account
    that has none of its own.
    """

    account: str
    refresh_token: str = field(repr=False)
    issued_at: float
    client_id: str = ""
    client_secret: str = field(default="", repr=False)
    shared: bool = False

    def __str__(self) -> str:
        return f"token for {self.account} issued {self.issued_at:.0f}"


class TokenStore(Protocol):
    """Where refresh tokens live. Methods block; raise TokenStoreError when the store cannot be used."""

    def get(self, account: str) -> StoredToken | None:
        """The token to use for ``account``: its own, else a shared one, else None."""
        ...

    def put(self, token: StoredToken) -> None:
        """Store ``token`` for ``token.account``, replacing any older one (owner-only access)."""
        ...

    def delete(self, account: str) -> bool:
        """Remove the account's own token; True when there was one."""
        ...

    def accounts(self) -> list[str]:
        """Accounts with a token of their own, sorted."""
        ...

    def client_credentials(self) -> ClientCredentials | None:
        """The OAuth client kept in the store, if any."""
        ...

    def describe(self) -> str:
        """Where the store is (a path or ``ssm://PATH``), for messages; no secrets."""
        ...
