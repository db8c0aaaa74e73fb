"""Graph's per-mailbox concurrency limit, kept for the whole process.

Graph lets an application have 4 requests in flight per mailbox (GRAPH_NOTES B.1); the 5th
is answered 429 ApplicationThrottled. Graph counts per app and mailbox, not per connection,
so the slots are shared by every backend object and thread of the process. (Several
processes -- gunicorn workers, Celery -- each have their own slots; the retry rules absorb
the rare 429 that follows.)
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from .conf import MSGraphMailSettings

#: Concurrent requests Graph allows per application and mailbox.
MAILBOX_CONCURRENCY = 4


class MailboxSlots:
    """One bounded semaphore per (application, mailbox)."""

    def __init__(self, limit: int = MAILBOX_CONCURRENCY) -> None:
        self.limit = limit
        self._semaphores: dict[tuple[str, ...], threading.BoundedSemaphore] = {}
        self._guard = threading.Lock()

    @contextmanager
    def hold(self, settings: MSGraphMailSettings, mailbox: str) -> Iterator[None]:
        """Occupy one of the mailbox's slots while the block runs."""
        semaphore = self._semaphore(
            (settings.graph_url, settings.tenant_id, settings.client_id, mailbox.lower())
        )
        with semaphore:
            yield

    def _semaphore(self, key: tuple[str, ...]) -> threading.BoundedSemaphore:
        with self._guard:
            return self._semaphores.setdefault(key, threading.BoundedSemaphore(self.limit))


#: The slots of the process.
mailbox_slots = MailboxSlots()
