"""A manual resend, the same from ``msgraph_outbox --resend`` and from the admin.

Only a ``failed`` message is resent on request; an ``unknown`` one may already have been
delivered (its request reached Graph and no answer came back), so it needs ``force``, which
the command spells ``--force`` and the admin a confirmation page.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone

from ..conf import MSGraphMailSettings
from .engines import engine_for
from .store import ClaimStore

__all__ = ["UNKNOWN_WARNING", "ResendRefused", "resend"]

#: Why resending an unknown message may deliver it twice (the command and the admin say it).
UNKNOWN_WARNING = (
    "its request reached Graph and no answer came back, so it may have been delivered, and "
    "resending could deliver it twice. Look for this Message-ID in the Sent Items of the "
    "sending mailbox first"
)


class ResendRefused(Exception):
    """The message cannot be resent as asked: the text says why and what to do;
    ``unknown`` True when it is unknown and would be resent with ``force``."""

    def __init__(self, text: str, *, unknown: bool = False) -> None:
        super().__init__(text)
        self.unknown = unknown


def resend(
    settings: MSGraphMailSettings,
    store: ClaimStore,
    message_id: str,
    *,
    force: bool = False,
    by: str | None = None,
) -> str:
    """Queue a failed (with ``force``, also an unknown) message again; the status it had.

    The envelope gets a new ``enqueued_at``, so QUEUE_MAX_AGE counts from the resend.
    """
    stored = store.get(message_id)
    if stored is None:
        raise ResendRefused(f"The outbox has no message {message_id}.")
    status = "deferred" if stored.deferred else stored.status
    if status == "unknown" and not force:
        raise ResendRefused(f"{message_id} is unknown: {UNKNOWN_WARNING}", unknown=True)
    if status not in ("failed", "unknown"):
        raise ResendRefused(
            f"{message_id} is {status}: only a failed message (or, confirmed, an unknown one) "
            "can be resent."
        )
    envelope = dataclasses.replace(
        stored.envelope, enqueued_at=datetime.now(timezone.utc).isoformat()
    )
    if not store.requeue(message_id, force=force, envelope=envelope, by=by):
        raise ResendRefused(f"{message_id} changed meanwhile; look at the outbox again.")
    engine_for(settings).enqueue(envelope)
    return status
