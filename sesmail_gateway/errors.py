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


def classify(exc: BaseException) -> DeliveryError:
    """Map any exception to a DeliveryError; unknown means temporary."""
    if isinstance(exc, DeliveryError):
        return exc
    if isinstance(exc, OSError) and exc.errno in _PERMANENT_ERRNOS:
        return PermanentFailure(f"{type(exc).__name__}: {exc}")
    return TemporaryFailure(f"{type(exc).__name__}: {exc}")
