"""``file://tokens``: one JSON file per account in a folder only the owner can read.

``<root>/<account>.json`` holds the refresh token and when it was issued
(mode 0600, written atomically and fsynced); ``<root>/client_secret.json``
may hold the OAuth client. The folder is created mode 0700.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from sesmail_gateway.fsutil import atomic_write
from sesmail_gateway.tokens import ClientCredentials, StoredToken, TokenStoreError

CLIENT_FILE = "client_secret.json"
_SUFFIX = ".json"
# A Gmail address as a file name: no separators, no leading dot.
_ACCOUNT = re.compile(r"^[a-z0-9._%+\-]+@[a-z0-9.\-]+$")


def account_key(account: str) -> str:
    """The normalised account name (lower case); ValueError for something that is not an address."""
    key = account.strip().lower()
    if not _ACCOUNT.match(key) or key.startswith("."):
        raise ValueError(f"not a Gmail address: {account!r}")
    return key


class FileTokenStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def describe(self) -> str:
        return str(self.root)

    def _path(self, account: str) -> Path:
        try:
            return self.root / (account_key(account) + _SUFFIX)
        except ValueError as exc:
            raise TokenStoreError(str(exc)) from None

    def get(self, account: str) -> StoredToken | None:
        path = self._path(account)
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            # The message names the file and the problem, never its contents.
            raise TokenStoreError(f"{path}: unreadable token file ({type(exc).__name__})") from None
        if not isinstance(data, dict) or not isinstance(data.get("refresh_token"), str):
            raise TokenStoreError(f"{path}: not a token file (no refresh_token)")
        return StoredToken(
            account=account_key(account),
            refresh_token=data["refresh_token"],
            issued_at=float(data.get("issued_at") or 0.0),
            client_id=str(data.get("client_id") or ""),
            client_secret=str(data.get("client_secret") or ""),
        )

    def put(self, token: StoredToken) -> None:
        path = self._path(token.account)
        record = {"account": account_key(token.account), "refresh_token": token.refresh_token,
                  "issued_at": token.issued_at}
        if token.client_id:
            record.update(client_id=token.client_id, client_secret=token.client_secret)
        try:
            self._ensure_root()
            atomic_write(path, json.dumps(record).encode(), mode=0o600)
        except OSError as exc:
            raise TokenStoreError(f"{path}: cannot write token ({exc.strerror})") from None

    def delete(self, account: str) -> bool:
        path = self._path(account)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise TokenStoreError(f"{path}: cannot delete token ({exc.strerror})") from None
        return True

    def accounts(self) -> list[str]:
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise TokenStoreError(f"{self.root}: cannot list tokens ({exc.strerror})") from None
        return sorted(n[: -len(_SUFFIX)] for n in names
                      if n.endswith(_SUFFIX) and n != CLIENT_FILE and "@" in n)

    def client_credentials(self) -> ClientCredentials | None:
        path = self.root / CLIENT_FILE
        try:
            return ClientCredentials.from_json(json.loads(path.read_bytes()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise TokenStoreError(f"{path}: {exc if isinstance(exc, ValueError) else exc.strerror}") from None

    def _ensure_root(self) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.root.stat().st_mode & 0o077:
            os.chmod(self.root, 0o700)
