"""Graph's per-mailbox concurrency limit: kept for callers of ``mailbox_slots``.

The slots now live in :mod:`msgraph_mail.limits` with the other per-mailbox budgets (in this
process, or shared through REDIS_URL); ``mailbox_slots.hold(settings, mailbox)`` is
``limits_for(settings).hold(mailbox)``.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

from .conf import MSGraphMailSettings
from .limits import limits_for

#: Concurrent requests Graph allows per application and mailbox (MAILBOX_LIMITS'
#: CONCURRENT_REQUESTS defaults to it).
MAILBOX_CONCURRENCY = 4


class MailboxSlots:
    """The CONCURRENT_REQUESTS slots of each (application, mailbox), by settings."""

    def hold(self, settings: MSGraphMailSettings, mailbox: str) -> AbstractContextManager[None]:
        """Occupy one of the mailbox's slots while the block runs."""
        return limits_for(settings).hold(mailbox)


#: The slots of the process.
mailbox_slots = MailboxSlots()
