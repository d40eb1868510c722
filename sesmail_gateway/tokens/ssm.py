"""``ssm://PATH``: OAuth tokens as SecureString parameters in SSM Parameter Store.

The seed system's layout is read as it is::

    PATH/client-credentials     client_secret.json (the OAuth client)
    PATH/refresh-token          the single refresh token of the old setup

With only the seed's token present, every account gets that token, marked
``shared`` (the old system imported every forward-to-gmail target with it).
Per-account tokens, written by ``token import``/``token refresh``, live at
``PATH/accounts/<domain>/<local part>`` (SSM names allow no ``@``) as JSON
with the token, its issue time and, optionally, its own OAuth client. A
token without a recorded issue time (the seed's bare value) is taken as
issued when its parameter was last written.

No value ever reaches an exception message or a log line: errors name the
parameter and the AWS error code only, since some AWS validation messages
quote the value they refused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

from sesmail_gateway import aws
from sesmail_gateway.config import AwsConfig
from sesmail_gateway.tokens import ClientCredentials, StoredToken, TokenStoreError
from sesmail_gateway.tokens.file import account_key

CLIENT_PARAMETER = "client-credentials"
SHARED_PARAMETER = "refresh-token"
ACCOUNTS = "accounts"
# Characters of a Gmail local part that SSM names do not allow, and their escapes.
_ESCAPES = {"_": "_5F", "+": "_2B", "%": "_25"}
_UNESCAPE = re.compile("|".join(_ESCAPES.values()))


def parameter_suffix(account: str) -> str:
    """``alice+x@gmail.com`` → ``accounts/gmail.com/alice_2Bx`` (reversible; ValueError if not an address)."""
    local, _, domain = account_key(account).rpartition("@")
    escaped = "".join(_ESCAPES.get(char, char) for char in local)
    return f"{ACCOUNTS}/{domain}/{escaped}"


def account_of(suffix: str) -> str:
    """The inverse of :func:`parameter_suffix`."""
    _, domain, escaped = suffix.split("/", 2)
    reverse = {code: char for char, code in _ESCAPES.items()}
    return _UNESCAPE.sub(lambda match: reverse[match.group(0)], escaped) + "@" + domain


class SsmTokenStore:
    """TokenStore over SSM parameters under ``path``; safe to call from any thread."""

    def __init__(self, path: str, *, aws_config: AwsConfig, kms_key_id: str = "") -> None:
        """``kms_key_id``: the key for new SecureStrings (empty = the account's ``aws/ssm`` key)."""
        self.path = "/" + path.strip("/")
        self.kms_key_id = kms_key_id
        with self._errors(self.path):
            self.client = aws.client(aws_config, "ssm")

    def describe(self) -> str:
        return f"ssm://{self.path}"

    def get(self, account: str) -> StoredToken | None:
        """The account's own token, else the seed's shared one (``shared=True``), else None: one call."""
        own, shared = self._name(self._suffix(account)), self._name(SHARED_PARAMETER)
        with self._errors(own):
            found = self.client.get_parameters(Names=[own, shared], WithDecryption=True)
        by_name = {parameter["Name"]: parameter for parameter in found.get("Parameters", [])}
        if own in by_name:
            return self._token(account_key(account), by_name[own], shared=False)
        if shared in by_name:
            return self._token(account_key(account), by_name[shared], shared=True)
        return None

    def put(self, token: StoredToken) -> None:
        """Write the account's own token as a SecureString (replacing an older one)."""
        name = self._name(self._suffix(token.account))
        record: dict[str, Any] = {"account": account_key(token.account), "refresh_token": token.refresh_token,
                                  "issued_at": token.issued_at}
        if token.client_id:
            record.update(client_id=token.client_id, client_secret=token.client_secret)
        arguments: dict[str, Any] = {"Name": name, "Value": json.dumps(record), "Type": "SecureString",
                                     "Overwrite": True, "Description": f"Gmail refresh token for {record['account']}"}
        if self.kms_key_id:
            arguments["KeyId"] = self.kms_key_id
        with self._errors(name):
            self.client.put_parameter(**arguments)

    def delete(self, account: str) -> bool:
        """Remove the account's own token (never the seed's shared one); True when there was one."""
        name = self._name(self._suffix(account))
        try:
            with self._errors(name):
                self.client.delete_parameter(Name=name)
        except _NotFound:
            return False
        return True

    def accounts(self) -> list[str]:
        """Accounts with a token of their own, sorted (names only; nothing is decrypted)."""
        root = self._name(ACCOUNTS)
        names: list[str] = []
        with self._errors(root):
            pages = self.client.get_paginator("get_parameters_by_path").paginate(
                Path=root, Recursive=True, WithDecryption=False)
            for page in pages:
                names += [parameter["Name"] for parameter in page.get("Parameters", [])]
        found = []
        for name in names:
            try:
                found.append(account_key(account_of(name[len(self.path) + 1:])))
            except ValueError:
                continue  # not one of ours: left alone
        return sorted(found)

    def client_credentials(self) -> ClientCredentials | None:
        """The OAuth client at ``PATH/client-credentials`` (client_secret.json), or None."""
        name = self._name(CLIENT_PARAMETER)
        try:
            with self._errors(name):
                value = self.client.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
        except _NotFound:
            return None
        try:
            return ClientCredentials.from_json(json.loads(value))
        except ValueError as exc:  # from_json's messages never quote a secret; json's are replaced
            why = str(exc) if not isinstance(exc, json.JSONDecodeError) else "not JSON"
            raise TokenStoreError(f"{name}: {why}") from None

    # --- plumbing -----------------------------------------------------------

    def _name(self, suffix: str) -> str:
        return f"{self.path}/{suffix}"

    def _suffix(self, account: str) -> str:
        try:
            return parameter_suffix(account)
        except ValueError as exc:
            raise TokenStoreError(str(exc)) from None

    def _token(self, account: str, parameter: dict[str, Any], *, shared: bool) -> StoredToken:
        """A parameter's value as a token: JSON with ``refresh_token``, or the bare token (seed)."""
        value = str(parameter.get("Value", ""))
        written = parameter.get("LastModifiedDate")
        issued = written.timestamp() if written is not None else 0.0
        record: Any = None
        if value.lstrip().startswith("{"):
            try:
                record = json.loads(value)
            except ValueError:
                raise TokenStoreError(f"{parameter.get('Name')}: not a token (unreadable JSON)") from None
        if isinstance(record, dict):
            if not isinstance(record.get("refresh_token"), str) or not record["refresh_token"]:
                raise TokenStoreError(f"{parameter.get('Name')}: not a token (no refresh_token)")
            return StoredToken(account=account, refresh_token=record["refresh_token"],
                               issued_at=float(record.get("issued_at") or issued),
                               client_id=str(record.get("client_id") or ""),
                               client_secret=str(record.get("client_secret") or ""), shared=shared)
        if not value.strip():
            raise TokenStoreError(f"{parameter.get('Name')}: empty token")
        return StoredToken(account=account, refresh_token=value.strip(), issued_at=issued, shared=shared)

    @contextmanager
    def _errors(self, name: str) -> Iterator[None]:
        """SDK failures as TokenStoreError naming the parameter and the AWS code, never a value."""
        try:
            yield
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", "error"))
            if code == "ParameterNotFound":
                raise _NotFound(name) from None
            raise TokenStoreError(f"ssm parameter {name}: {code}") from None
        except ParamValidationError as exc:  # its text quotes the values it refused
            raise TokenStoreError(f"ssm parameter {name}: {type(exc).__name__}") from None
        except BotoCoreError as exc:
            raise TokenStoreError(f"ssm parameter {name}: {type(exc).__name__}: {exc}") from None


class _NotFound(TokenStoreError):
    """A parameter that does not exist (an answer, not a failure, where callers catch it)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"ssm parameter {name}: not found")
