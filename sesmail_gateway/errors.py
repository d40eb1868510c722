"""Failure classes for delivery, and the one table that classifies them.

Every failure is temporary or permanent where it happens; the unknown is
temporary, so an unexpected error means a retry, never a lost message.
"""

from __future__ import annotations

import email.utils
import errno
import json
import time


class DeliveryError(Exception):
    """Base of the classified delivery failures."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TemporaryFailure(DeliveryError):
    """Try again later, with backoff."""


class PermanentFailure(DeliveryError):
    """Never going to work: dead-letter the recipient."""


class TokenExpired(DeliveryError):
    """The Gmail token is expired, revoked or missing: hold until a newer one arrives.

    ``issued_at`` is when the failing token was issued (0 when there was
    none), so only a token issued later releases the held messages.
    """

    def __init__(self, message: str, *, account: str = "", issued_at: float = 0.0) -> None:
        super().__init__(message)
        self.account = account
        self.issued_at = issued_at


# OS errors that no retry will cure.
_PERMANENT_ERRNOS = {errno.ENAMETOOLONG, errno.EINVAL}

# AWS error codes that no retry will cure (missing or forbidden resources, bad requests).
# Everything else from AWS (throttling, 5xx, network) is temporary.
_PERMANENT_AWS_CODES = {
    "AccessDenied", "AccessDeniedException", "NoSuchBucket", "InvalidBucketName", "InvalidArgument",
    "InvalidRequest", "ValidationException", "ValidationError", "InvalidParameterValue",
    "MessageRejected", "MailFromDomainNotVerifiedException", "NotFoundException",
    "KMS.NotFoundException", "KMS.DisabledException", "ResourceNotFoundException",
}


def _classify_aws(exc: BaseException) -> DeliveryError | None:
    """botocore's ClientError by error code; its connection and timeout errors are temporary."""
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        kind = PermanentFailure if code in _PERMANENT_AWS_CODES else TemporaryFailure
        return kind(str(exc))
    if isinstance(exc, BotoCoreError):
        return TemporaryFailure(f"{type(exc).__name__}: {exc}")
    return None


# Gmail answers 403 with these reasons when a quota, not a permission, is the problem.
_GMAIL_RATE_REASONS = {"rateLimitExceeded", "userRateLimitExceeded", "quotaExceeded", "concurrentLimitExceeded"}
# OAuth token-endpoint errors that mean the refresh token itself is dead.
_DEAD_GRANT = {"invalid_grant"}


def classify(exc: BaseException) -> DeliveryError:
    """Map any exception to a DeliveryError; unknown means temporary.

    The text of the result never carries a request body, a header or a
    token: it is built from status codes and the remote side's reason.
    """
    if isinstance(exc, DeliveryError):
        return exc
    aws_error = _classify_aws(exc)
    if aws_error is not None:
        return aws_error
    google = _classify_google(exc)
    if google is not None:
        return google
    if isinstance(exc, OSError) and exc.errno in _PERMANENT_ERRNOS:
        return PermanentFailure(f"{type(exc).__name__}: {exc}")
    return TemporaryFailure(f"{type(exc).__name__}: {exc}")


def _classify_google(exc: BaseException) -> DeliveryError | None:
    """Gmail API (googleapiclient HttpError) and OAuth (google-auth RefreshError) failures."""
    module = type(exc).__module__
    if module.startswith("googleapiclient") and type(exc).__name__ == "HttpError":
        return _classify_gmail_http(exc)
    if module.startswith("google.auth") and type(exc).__name__ == "RefreshError":
        error, description = _oauth_error(exc)
        text = f"Gmail token refresh failed: {error}" + (f" ({description})" if description else "")
        if error in _DEAD_GRANT:
            return TokenExpired(text)
        if error in ("invalid_client", "unauthorized_client"):
            # The OAuth client is wrong or deleted: an operator must fix it; keep the mail meanwhile.
            return TemporaryFailure(text + "; check the OAuth client (gmail.client_secrets)")
        return TemporaryFailure(text)
    if module.startswith("google.auth") and type(exc).__name__ == "TransportError":
        return TemporaryFailure("Gmail token refresh failed: network error")
    if module.startswith("httplib2"):
        return TemporaryFailure(f"Gmail API: network error ({type(exc).__name__})")
    return None


def _classify_gmail_http(exc: BaseException) -> DeliveryError:
    resp = getattr(exc, "resp", None)
    status = int(getattr(resp, "status", 0) or 0)
    reason, message = _gmail_reason(getattr(exc, "content", b""))
    text = f"Gmail API {status}" + (f" {reason}" if reason else "") + (f": {message}" if message else "")
    retry_after = _retry_after(resp)
    if status == 429 or status >= 500 or (status == 403 and reason in _GMAIL_RATE_REASONS):
        return TemporaryFailure(text, retry_after=retry_after)
    if status == 401 or (status == 403 and reason in ("insufficientPermissions", "ACCESS_TOKEN_SCOPE_INSUFFICIENT")):
        # The token does not (or no longer) grant gmail.insert: only a new consent helps.
        return TokenExpired(text)
    if 400 <= status < 500:
        return PermanentFailure(text)
    return TemporaryFailure(text, retry_after=retry_after)


def _gmail_reason(content: object) -> tuple[str, str]:
    """Google's error ``reason`` and ``message`` from a JSON error body (truncated, never raw bytes)."""
    try:
        data = json.loads(content.decode("utf-8", "replace") if isinstance(content, bytes) else str(content))
        error = data.get("error", {})
        message = str(error.get("message", ""))[:300]
        errors = error.get("errors") or []
        reason = str(errors[0].get("reason", "")) if errors else ""
        if not reason:
            for detail in error.get("details") or []:
                if isinstance(detail, dict) and detail.get("reason"):
                    reason = str(detail["reason"])
                    break
        return reason, message
    except (ValueError, AttributeError, TypeError, IndexError):
        return "", ""


def _oauth_error(exc: BaseException) -> tuple[str, str]:
    """``error`` and ``error_description`` of a token-endpoint failure."""
    for arg in getattr(exc, "args", ()):
        if isinstance(arg, dict) and "error" in arg:
            return str(arg.get("error", ""))[:100], str(arg.get("error_description", ""))[:200]
    first = str(exc.args[0]) if getattr(exc, "args", ()) else ""
    return first.partition(":")[0][:100] or "unknown error", ""


def _retry_after(resp: object) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    getter = getattr(resp, "get", None)
    value = getter("retry-after") if getter else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(str(value))
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
