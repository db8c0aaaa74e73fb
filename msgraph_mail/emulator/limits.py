"""Outlook's per-mailbox concurrency limit, and the in-flight peaks a benchmark asserts on.

Graph lets one app have 4 requests in flight per mailbox; a 5th is refused at once with 429
``ApplicationThrottled`` and other mailboxes are not affected (GRAPH_NOTES B.1). A sender that
fans out must therefore cap itself per mailbox; the recorded peaks prove it did.
"""

from __future__ import annotations

import threading

#: Graph's limit: concurrent requests per app ID + mailbox.
MAILBOX_CONCURRENCY = 4
#: Retry-After the emulator advertises with ``ApplicationThrottled`` (seconds).
CONCURRENCY_RETRY_AFTER = 0.05


class MailboxGate:
    """Counts admitted in-flight requests per mailbox key and remembers each peak."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_flight: dict[str, int] = {}
        self._peaks: dict[str, int] = {}

    def enter(self, key: str, limit: int | None) -> bool:
        """Admit one more request for ``key`` unless ``limit`` are already in flight."""
        with self._lock:
            current = self._in_flight.get(key, 0)
            if limit is not None and current >= limit:
                return False
            self._in_flight[key] = current + 1
            self._peaks[key] = max(self._peaks.get(key, 0), current + 1)
            return True

    def leave(self, key: str) -> None:
        with self._lock:
            remaining = self._in_flight.get(key, 0) - 1
            if remaining > 0:
                self._in_flight[key] = remaining
            else:
                self._in_flight.pop(key, None)

    def peak(self, key: str | None) -> int:
        """The highest in-flight count seen for ``key``, or over all keys when None."""
        with self._lock:
            if key is None:
                return max(self._peaks.values(), default=0)
            return self._peaks.get(key, 0)

    def forget_peaks(self) -> None:
        """Start a new measurement; requests still in flight keep counting from now."""
        with self._lock:
            self._peaks = dict(self._in_flight)
