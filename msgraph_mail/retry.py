"""When to try a request again, and how long to wait first.

Graph and Entra say when to come back (``Retry-After``, in seconds, possibly fractional:
GRAPH_NOTES B.3); without it we back off exponentially with jitter. Every message has a
budget: ``MAX_RETRY_WAIT`` seconds of waiting in all, and at most ``MAX_RETRIES`` retries for
failures (503, broken connections). Throttling (429) is always retried within the wait
budget -- it is Graph pacing us, not failing -- so a throttled batch slows down but never
hangs and never drops a message.
"""

from __future__ import annotations

import random
import time
from email.utils import parsedate_to_datetime

#: First backoff step in seconds when the server gives no Retry-After (doubled each retry).
BACKOFF_BASE = 1.0
#: A hard stop for throttling retries, in case a server says "Retry-After: 0" forever.
MAX_THROTTLED_RETRIES = 100


class RetryBudget:
    """The retries one message may still spend: a count and a total wait."""

    def __init__(self, max_retries: int, max_wait: float) -> None:
        self.max_retries = max_retries
        self.max_wait = max_wait
        self.retries = 0
        self.throttled = 0
        self.waited = 0.0

    def next_wait(self, retry_after: float | None, *, throttled: bool = False) -> float | None:
        """Seconds to wait before the next try, or None when the budget is spent.

        ``throttled`` (a 429): not limited by MAX_RETRIES, only by the wait budget.
        """
        if throttled:
            if self.throttled >= MAX_THROTTLED_RETRIES:
                return None
        elif self.retries >= self.max_retries:
            return None
        wait = retry_after if retry_after is not None else backoff(self.retries + self.throttled)
        if self.waited + wait > self.max_wait:
            return None
        if throttled:
            self.throttled += 1
        else:
            self.retries += 1
        self.waited += wait
        return wait

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def backoff(retry: int) -> float:
    """Exponential backoff with jitter: about BACKOFF_BASE * 2**retry, +/- 50 %."""
    return float(BACKOFF_BASE * (2**retry) * (0.5 + random.random()))  # noqa: S311


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: a (fractional) number or an HTTP date; None if absent or bad."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return max(0.0, min(seconds, 3600.0))
