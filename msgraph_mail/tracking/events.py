"""One event type for every source, and how an SMTP enhanced status code is read.

Each source (the message trace, an NDR in the sending mailbox) turns what it read into
:class:`DeliveryEvent`, per recipient; the tracker records each once and sends the
``delivery_event`` signal with it.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal

EventType = Literal[
    "delivered", "bounced", "deferred", "quarantined", "filtered_as_spam", "pending"
]
Source = Literal["trace", "ndr"]

#: Final events: once recorded, a later event of another type for the same recipient of the
#: same message is not reported (a trace row still "pending" after the NDR said "bounced").
FINAL = frozenset({"delivered", "bounced", "quarantined", "filtered_as_spam"})

#: Enhanced status codes (RFC 3463) that say the *sender* is at fault, not the address:
#: such a bounce is logged as an error with its fix and never suppresses the recipient.
#: Sources: Microsoft Learn "Email non-delivery reports and SMTP errors in Exchange Online".
SENDER_PROBLEMS: dict[str, str] = {
    "5.1.8": "The sending mailbox is blocked for sending spam (outbound spam). An "
    "administrator releases it in the Microsoft Defender portal (Restricted entities) after "
    "securing the account.",
    "5.1.90": "The sending mailbox reached its daily recipient limit. Wait for the 24-hour "
    "window to free, or spread mail over more mailboxes (MAILBOX_LIMITS).",
    "5.2.121": "The sending mailbox exceeded its hourly or daily message limit. Wait, then "
    "send again more slowly (MAILBOX_LIMITS).",
    "5.2.122": "The sending mailbox exceeded its hourly or daily message limit. Wait, then "
    "send again more slowly (MAILBOX_LIMITS).",
    "5.7.233": "The tenant reached its external recipient rate limit (TERRL). Wait, or ask "
    "Microsoft support; the recipient's address is not at fault.",
    "5.7.501": "The sending mailbox is blocked for sending spam. Secure the account, then an "
    "administrator releases it in the Microsoft Defender portal.",
    "5.7.502": "The sending mailbox is blocked for sending spam. Secure the account, then an "
    "administrator releases it in the Microsoft Defender portal.",
    "5.7.503": "The sending mailbox is blocked for sending spam. Secure the account, then an "
    "administrator releases it in the Microsoft Defender portal.",
    "5.7.57": "The sender is not allowed to send through this route (client not "
    "authenticated). Check the mailbox's permissions (msgraph_diagnose).",
    "5.7.60": "The application may not send as this From address. Grant Send As on the "
    "mailbox, or send from the mailbox's own address.",
    "5.7.703": "The tenant is blocked from sending: its outbound mail exceeded a threshold. "
    "An administrator contacts Microsoft support.",
    "5.7.705": "The tenant is blocked from sending for suspicious outbound volume. An "
    "administrator contacts Microsoft support.",
    "5.7.708": "Mail from the tenant's IP range is blocked for reputation (often a new or "
    "trial tenant). Send from a verified domain of your own; contact Microsoft support.",
    "5.7.750": "The tenant sends from unregistered domains. Add and verify the sending "
    "domain in the Microsoft 365 admin center.",
}

_CODE = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")


@dataclass(frozen=True)
class DeliveryEvent:
    """What happened to one message for one recipient, as a source reported it.

    ``event_type``: delivered, bounced (5.x.x: permanent), deferred (4.x.x, or a delayed
    DSN: Exchange still tries), quarantined, filtered_as_spam, pending. ``status_code`` and
    ``reason`` are the enhanced status code and diagnostic text when the source gives them;
    ``sender_problem`` is True for a bounce the sender caused (:data:`SENDER_PROBLEMS`).
    ``message_id`` is the Message-ID as sent, ``tracking_id`` our own correlation header's
    value when the source returned it, ``mailbox`` the sending mailbox.
    """

    event_type: EventType
    recipient: str
    timestamp: datetime
    source: Source
    message_id: str | None = None
    tracking_id: str | None = None
    mailbox: str | None = None
    status_code: str | None = None
    reason: str | None = None
    sender_problem: bool = False
    details: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def final(self) -> bool:
        return self.event_type in FINAL

    @property
    def fix(self) -> str | None:
        """What to do about a sender problem, None otherwise."""
        return SENDER_PROBLEMS.get(self.status_code or "") if self.sender_problem else None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["timestamp"] = self.timestamp.isoformat()
        return data


def status_code(text: str | None) -> str | None:
    """The first enhanced status code (``5.1.1``) in ``text``, or None."""
    found = _CODE.search(text or "")
    return ".".join(found.groups()) if found else None


def classify(code: str | None, *, delayed: bool = False) -> tuple[EventType, bool]:
    """(event type, sender problem) of a failure report's status code.

    4.x.x, or an ``Action: delayed`` report, is deferred; 5.x.x bounced; a bounce with a
    code of :data:`SENDER_PROBLEMS` is the sender's problem, never the address's.
    """
    if delayed or (code or "").startswith("4."):
        return "deferred", False
    if (code or "").startswith("2."):
        return "delivered", False
    return "bounced", code in SENDER_PROBLEMS
