"""The SSM token store against moto server: the seed layout, per-account tokens, no secret in errors."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sesmail_gateway.config import AwsConfig, Config, GmailConfig
from sesmail_gateway.deliver.gmail import GmailDeliverer
from sesmail_gateway.message import Delivery, QueueItem, RecipientRoute, StoredMessage
from sesmail_gateway.tokens import StoredToken, TokenStoreError
from sesmail_gateway.tokens.factory import open_token_store
from sesmail_gateway.tokens.ssm import SsmTokenStore, account_of, parameter_suffix
from tests.aws.motoserver import REGION, Moto
from tests.conftest import free_port
from tests.gmailserver import GmailTestServer

SEED_TOKEN = "1//seed-refresh-token-value"


@pytest.fixture
def path(unique: Callable[[str], str]) -> str:
    return f"/ses-mail/{unique('test')}/gmail-forwarder/oauth"


def seed(moto: Moto, path: str, token: str = SEED_TOKEN, client: dict[str, object] | None = None) -> None:
    """The seed system's parameters, written as its deployment wrote them."""
    ssm = moto.client("ssm")
    ssm.put_parameter(Name=f"{path}/refresh-token", Value=token, Type="SecureString")
    ssm.put_parameter(Name=f"{path}/client-credentials", Type="SecureString", Value=json.dumps(
        client or {"installed": {"client_id": "seed-client", "client_secret": "seed-secret"}}))


def test_account_names_map_to_ssm_names_and_back() -> None:
    for account in ("alice@gmail.com", "a.b+c_d%e@example.test"):
        suffix = parameter_suffix(account)
        assert "@" not in suffix and "+" not in suffix and "%" not in suffix
        assert account_of(suffix) == account
    assert parameter_suffix("Alice@Gmail.com") == "accounts/gmail.com/alice"


def test_seed_layout_gives_every_account_the_shared_token(moto: Moto, path: str) -> None:
    seed(moto, path)
    store = SsmTokenStore(path, aws_config=moto.aws_config)
    token = store.get("anyone@gmail.com")
    assert token is not None and token.shared and token.account == "anyone@gmail.com"
    assert token.refresh_token == SEED_TOKEN
    assert abs(token.issued_at - time.time()) < 300  # the parameter's last write
    client = store.client_credentials()
    assert client is not None and client.client_id == "seed-client"
    assert store.accounts() == []
    assert store.describe() == f"ssm://{path}"


def test_per_account_tokens_override_the_shared_one(moto: Moto, path: str) -> None:
    seed(moto, path)
    store = SsmTokenStore(path, aws_config=moto.aws_config)
    store.put(StoredToken(account="Alice@gmail.com", refresh_token="1//alice", issued_at=1700000000.0))
    store.put(StoredToken(account="bob+x@gmail.com", refresh_token="1//bob", issued_at=1700000100.0,
                          client_id="own-client", client_secret="own-secret"))
    alice = store.get("alice@gmail.com")
    assert alice is not None and not alice.shared and alice.refresh_token == "1//alice"
    assert alice.issued_at == 1700000000.0
    bob = store.get("bob+x@gmail.com")
    assert bob is not None and bob.client_id == "own-client" and bob.client_secret == "own-secret"
    assert store.accounts() == ["alice@gmail.com", "bob+x@gmail.com"]

    parameter = moto.client("ssm").get_parameter(Name=f"{path}/accounts/gmail.com/alice")["Parameter"]
    assert parameter["Type"] == "SecureString"

    assert store.delete("alice@gmail.com") and not store.delete("alice@gmail.com")
    fallback = store.get("alice@gmail.com")
    assert fallback is not None and fallback.shared  # back to the seed's token
    assert store.accounts() == ["bob+x@gmail.com"]


def test_empty_store_has_no_token_and_no_client(moto: Moto, path: str) -> None:
    store = SsmTokenStore(path, aws_config=moto.aws_config)
    assert store.get("alice@gmail.com") is None
    assert store.client_credentials() is None
    assert store.accounts() == []


def test_failures_name_the_parameter_never_the_value(moto: Moto, path: str) -> None:
    ssm = moto.client("ssm")
    ssm.put_parameter(Name=f"{path}/refresh-token", Value='{"refresh_token": ', Type="SecureString")
    ssm.put_parameter(Name=f"{path}/client-credentials", Value="secret-but-not-json", Type="SecureString")
    store = SsmTokenStore(path, aws_config=moto.aws_config)
    with pytest.raises(TokenStoreError) as broken:
        store.get("a@gmail.com")
    assert "refresh_token" not in str(broken.value) and path in str(broken.value)
    with pytest.raises(TokenStoreError) as client:
        store.client_credentials()
    assert "secret-but-not-json" not in str(client.value)

    closed = SsmTokenStore(path, aws_config=AwsConfig(region=REGION, endpoint_url=f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(TokenStoreError, match="EndpointConnectionError"):
        closed.put(StoredToken(account="a@gmail.com", refresh_token="1//never-shown", issued_at=0.0))


def test_factory_opens_ssm_from_gmail_tokens(moto: Moto, path: str, tmp_path: Path) -> None:
    seed(moto, path)
    config = Config(gmail=GmailConfig(tokens=f"ssm://{path}"), aws=moto.aws_config)
    store = open_token_store(config)
    assert store.describe() == f"ssm://{path}"
    token = store.get("x@gmail.com")
    assert token is not None and token.shared


def test_seed_layout_delivers_to_gmail_with_its_single_token(
    moto: Moto, path: str, gmail: GmailTestServer, tmp_path: Path
) -> None:
    # The old setup: one consent (for the team inbox), one token, every target imported with it.
    seed(moto, path, token=gmail.issue_refresh_token("team@gmail.test"), client=gmail.client_secret_json())
    store = SsmTokenStore(path, aws_config=moto.aws_config)
    deliverer = GmailDeliverer(store=store, client=store.client_credentials, api_endpoint=gmail.url,
                               token_uri=gmail.token_uri)
    spool_file = tmp_path / "message.eml"
    spool_file.write_bytes(b"From: a@sender.test\r\nSubject: via seed token\r\n\r\nhello\r\n")
    item = QueueItem(id="Qssm1", sender="a@sender.test", recipients=[RecipientRoute("info@example.test")])
    deliverer.deliver(item, Delivery("forward-to-gmail", "info-forward@gmail.test", ["info@example.test"]),
                      StoredMessage.at(spool_file))
    imported = gmail.imports_for("team@gmail.test")
    assert len(imported) == 1 and b"via seed token" in imported[0].raw
