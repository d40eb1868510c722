"""The one failure table: Gmail API and OAuth errors, built as the client libraries raise them."""

from __future__ import annotations

import json

import httplib2
import pytest
from google.auth.exceptions import RefreshError, TransportError
from googleapiclient.errors import HttpError

from sesmail_gateway.errors import PermanentFailure, TemporaryFailure, TokenExpired, classify


def http_error(status: int, reason: str = "", headers: dict[str, str] | None = None) -> HttpError:
    response = httplib2.Response({"status": str(status), **(headers or {})})
    body = {"error": {"code": status, "message": f"{reason or 'error'} happened",
                      "errors": [{"reason": reason, "message": "x"}] if reason else []}}
    return HttpError(response, json.dumps(body).encode(), uri="https://gmail.googleapis.com/upload/x")


@pytest.mark.parametrize(("status", "reason", "kind"), [
    (429, "", TemporaryFailure),
    (500, "backendError", TemporaryFailure),
    (503, "", TemporaryFailure),
    (403, "rateLimitExceeded", TemporaryFailure),
    (403, "userRateLimitExceeded", TemporaryFailure),
    (401, "authError", TokenExpired),
    (403, "insufficientPermissions", TokenExpired),
    (400, "invalidArgument", PermanentFailure),
    (403, "forbidden", PermanentFailure),
    (404, "notFound", PermanentFailure),
    (413, "", PermanentFailure),
])
def test_gmail_statuses(status: int, reason: str, kind: type) -> None:
    error = classify(http_error(status, reason))
    assert type(error) is kind
    assert str(status) in str(error) and (reason in str(error))


def test_retry_after_is_honoured_in_seconds_and_as_a_date() -> None:
    assert classify(http_error(429, headers={"retry-after": "120"})).retry_after == 120.0
    dated = classify(http_error(503, headers={"retry-after": "Wed, 21 Oct 2099 07:28:00 GMT"}))
    assert dated.retry_after is not None and dated.retry_after > 86400


def test_oauth_failures() -> None:
    grant = {"error": "invalid_grant", "error_description": "Token has been expired or revoked."}
    dead = classify(RefreshError("invalid_grant: Token has been expired or revoked.", grant))
    assert isinstance(dead, TokenExpired) and "invalid_grant" in str(dead)
    client = classify(RefreshError("invalid_client: x", {"error": "invalid_client"}))
    assert type(client) is TemporaryFailure and "gmail.client_secrets" in str(client)
    assert type(classify(TransportError("connection reset"))) is TemporaryFailure
    assert type(classify(httplib2.ServerNotFoundError("no dns"))) is TemporaryFailure


def test_classified_text_never_carries_the_request() -> None:
    secret = "ya29.secret-access-token"
    response = httplib2.Response({"status": "400"})
    exc = HttpError(response, b"not json " + secret.encode(), uri=f"https://x/?access_token={secret}")
    assert secret not in str(classify(exc))
