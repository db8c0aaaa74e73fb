"""What a queued message is: plain JSON data, built in the caller, read by the worker.

An :class:`Envelope` holds the MIME exactly as the synchronous backend posts it (Bcc written
in, ``X-MSGraph-Mailbox`` removed, base64), the Message-ID minted once at enqueue and reused
by every attempt, and what the worker needs to pick the mailbox and the settings again: the
From address, the mailbox override and the mailer's alias. Never a pickled ``EmailMessage``,
never a secret: the worker reads the credential from its own settings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from email.utils import make_msgid
from typing import Any

from django.core.mail import EmailMessage
from django.core.mail.utils import DNS_NAME

from ..conf import MSGraphMailSettings
from ..exceptions import InvalidMessage, MessageTooLarge
from ..large import beyond_send_mail
from ..mime import build_mime, encode, header, mailbox_override, sender_address

__all__ = ["Envelope", "build_envelope"]


@dataclass(frozen=True)
class Envelope:
    """One queued message, as plain data (``to_dict()`` is JSON-serialisable)."""

    message_id: str
    mime: str  # base64 of the MIME bytes: the sendMail request body
    from_address: str
    mailbox_override: str | None
    recipients: int  # To + Cc + Bcc, spent from the mailbox's daily budget
    alias: str | None  # Django 6.1 MAILERS alias; None for EMAIL_BACKEND / MSGRAPH_MAIL
    priority: str  # "normal" | "bulk"
    enqueued_at: str  # ISO 8601, aware UTC

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Envelope:
        values: dict[str, Any] = {name: data.get(name) for name in cls.__dataclass_fields__}
        return cls(**values)

    @property
    def enqueued(self) -> datetime:
        return datetime.fromisoformat(self.enqueued_at)


def build_envelope(
    message: EmailMessage, settings: MSGraphMailSettings, alias: str | None = None
) -> Envelope:
    """Validate and build a message in the caller; raise what the synchronous backend would.

    The Message-ID is set in the message's headers when it has none, so the envelope, the
    MIME and ``message.msgraph_status`` name the same id on every attempt.
    """
    if not message.recipients():
        raise InvalidMessage("The message has no recipients", email_message=message)
    if settings.large_messages and beyond_send_mail(message):
        raise _too_large(message, None)
    override = mailbox_override(message)
    from_address = sender_address(message)
    message_id = header(message, "Message-ID")
    if message_id is None:
        message_id = make_msgid(domain=str(DNS_NAME))
        message.extra_headers["Message-ID"] = message_id
    raw = build_mime(message)
    try:
        body = encode(raw, message)
    except MessageTooLarge as exc:
        raise _too_large(message, exc) from exc
    return Envelope(
        message_id=str(message_id).strip(),
        mime=body.decode("ascii"),
        from_address=from_address,
        mailbox_override=override,
        recipients=len(message.recipients()),
        alias=alias,
        priority=settings.priority,
        enqueued_at=datetime.now(timezone.utc).isoformat(),
    )


def _too_large(message: EmailMessage, exc: MessageTooLarge | None) -> MessageTooLarge:
    """Queued sending carries sendMail's MIME only: larger messages go synchronously."""
    size = f" ({exc.size:,} bytes once base64-encoded)" if exc and exc.size else ""
    return MessageTooLarge(
        f"The message is too large for one sendMail request{size}: QueuedEmailBackend carries "
        "messages up to Graph's 4 MB request limit only. Send larger messages with the "
        "synchronous msgraph_mail.backend.EmailBackend (with LARGE_MESSAGES), or send large "
        "files as links",
        size=exc.size if exc else None,
        limit=exc.limit if exc else None,
        email_message=message,
    )
