"""Failure classes for delivery, and the one table that classifies them.

Every failure is temporary or permanent where it happens; the unknown is
temporary, so an unexpected error means a retry, never a lost message.
"""

from __future__ import annotations

import errno


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
    """The Gmail token is expired or revoked: hold until a new one arrives."""


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


def classify(exc: BaseException) -> DeliveryError:
    """Map any exception to a DeliveryError; unknown means temporary."""
    if isinstance(exc, DeliveryError):
        return exc
    aws_error = _classify_aws(exc)
    if aws_error is not None:
        return aws_error
    if isinstance(exc, OSError) and exc.errno in _PERMANENT_ERRNOS:
        return PermanentFailure(f"{type(exc).__name__}: {exc}")
    return TemporaryFailure(f"{type(exc).__name__}: {exc}")
