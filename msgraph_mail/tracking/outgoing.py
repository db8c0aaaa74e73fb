"""The send line's two stops for delivery tracking, where the recipients are known.

:func:`prepare` runs before any request, in both backends (for ``QueuedEmailBackend`` in the
caller): recipients on the suppression list are left out, and the message gets our
correlation header ``X-MSGraph-Tracking-Id`` (NDRs return the original headers; the JSON
route has no Message-ID of ours, and a tenant may rewrite it). :func:`record` runs once Graph
took the message (or may have): it keeps what the tracker correlates reports with.

Neither costs anything when ``DELIVERY_TRACKING`` is empty and ``SUPPRESS_BOUNCED`` off.
"""

from __future__ import annotations

import copy
import logging
import uuid
from collections.abc import Sequence
from datetime import datetime, timezone
from email.utils import parseaddr
from typing import Any

from django.core.mail import EmailMessage

from .. import telemetry
from ..conf import MSGraphMailSettings
from ..exceptions import RecipientsSuppressed
from ..mime import header, sender_address
from .ndr import TRACKING_HEADER
from .store import Tracked, store_for

__all__ = ["TRACKING_HEADER", "prepare", "record", "record_all", "suppressed_in", "tracking_id_of"]

logger = logging.getLogger("msgraph_mail")


def active(settings: MSGraphMailSettings) -> bool:
    """Whether the send line has anything to do for tracking or suppression."""
    return bool(settings.delivery_tracking or settings.suppress_bounced)


def suppressed_in(
    messages: Sequence[EmailMessage], settings: MSGraphMailSettings
) -> frozenset[str]:
    """Which recipients of a batch are on the suppression list: one look-up for all."""
    if not settings.suppress_bounced:
        return frozenset()
    wanted = {_address(r) for message in messages for r in message.recipients()}
    return frozenset(store_for(settings).suppressed(wanted)) if wanted else frozenset()


def prepare(
    message: EmailMessage, settings: MSGraphMailSettings, suppressed: frozenset[str]
) -> tuple[EmailMessage, list[str]]:
    """(the message to send, the recipients left out because they are ``suppressed``).

    The message returned is a shallow copy when recipients were left out, so the caller's
    own lists stay as given; headers are shared, so the tracking header added here is on
    the caller's message too (as ``QueuedEmailBackend``'s Message-ID is). Raises
    :class:`RecipientsSuppressed` when no recipient is left.
    """
    if not active(settings):
        return message, []
    dropped: list[str] = []
    if suppressed:
        found = {_address(r) for r in message.recipients()} & suppressed
        if found:
            message, dropped = _without(message, found)
            if not message.recipients():
                raise RecipientsSuppressed(
                    f"Every recipient of the message is suppressed after an earlier hard "
                    f"bounce ({', '.join(dropped)}): nothing was sent. Fix the address, then "
                    "take it off the list with `manage.py msgraph_suppressions --remove "
                    "ADDRESS`",
                    suppressed=dropped,
                    email_message=message,
                )
            logger.warning(
                "Message %r is sent without %s: suppressed after an earlier hard bounce",
                message.subject,
                ", ".join(dropped),
                extra=telemetry.log_extra(settings),
            )
    if settings.delivery_tracking and header(message, TRACKING_HEADER) is None:
        message.extra_headers[TRACKING_HEADER] = uuid.uuid4().hex
    return message, dropped


def tracking_id_of(message: EmailMessage) -> str | None:
    value = header(message, TRACKING_HEADER)
    return str(value).strip() if value else None


def record_all(
    settings: MSGraphMailSettings, messages: Sequence[EmailMessage], statuses: Sequence[Any]
) -> None:
    """Keep each message of a batch that Graph took (or may have) for the tracker."""
    if not settings.delivery_tracking:
        return
    for message, status in zip(messages, statuses, strict=True):
        if status.status not in ("sent", "unknown"):
            continue
        left_out = set(status.suppressed)
        record(
            settings,
            tracking_id=tracking_id_of(message),
            message_id=status.message_id,
            sender=sender_address(message),
            mailbox=status.mailbox,
            recipients=[r for r in message.recipients() if _address(r) not in left_out],
        )


def record(
    settings: MSGraphMailSettings,
    *,
    tracking_id: str | None,
    message_id: str | None,
    sender: str,
    mailbox: str | None,
    recipients: Sequence[str],
    outbox_id: str | None = None,
) -> None:
    """Keep a sent (or maybe sent) message for the tracker; a failure here is logged, never
    raised: the mail went out, and losing its tracking must not make it look unsent."""
    if not settings.delivery_tracking or not tracking_id:
        return
    tracked = Tracked(
        tracking_id=tracking_id,
        message_id=message_id,
        sender=sender,
        mailbox=mailbox,
        recipients=tuple(_address(r) for r in recipients),
        sent_at=datetime.now(timezone.utc),
        outbox_id=outbox_id,
    )
    try:
        store_for(settings).track(tracked)
    except Exception as exc:  # the database or Redis: the message is sent regardless
        logger.error(
            "Message %s was sent but is not tracked (%s: %s): its delivery will not be reported",
            message_id or tracking_id,
            type(exc).__name__,
            exc,
            extra=telemetry.log_extra(settings, mailbox=mailbox),
        )


def _without(message: EmailMessage, suppressed: set[str]) -> tuple[EmailMessage, list[str]]:
    kept = copy.copy(message)
    dropped: list[str] = []
    for name in ("to", "cc", "bcc"):
        entries = list(getattr(message, name) or [])
        setattr(kept, name, [e for e in entries if _address(e) not in suppressed])
        dropped += [_address(e) for e in entries if _address(e) in suppressed]
    return kept, list(dict.fromkeys(dropped))


def _address(entry: str) -> str:
    return parseaddr(str(entry))[1].strip().lower()
