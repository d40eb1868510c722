"""How long a message waits before its next attempt."""

from __future__ import annotations

import random
from collections.abc import Callable


def backoff_delay(
    attempt: int, *, base: float, cap: float, retry_after: float | None = None,
    rng: Callable[[], float] = random.random,
) -> float:
    """Seconds before attempt ``attempt + 1``: base doubling per attempt, capped, with jitter.

    The jitter keeps between half and all of the step so a burst of failures
    spreads out; a longer Retry-After from the remote side wins.
    """
    step = min(cap, base * 2.0 ** max(0, attempt - 1))
    delay = step * (0.5 + 0.5 * rng())
    if retry_after is not None and retry_after > delay:
        delay = retry_after
    return delay
