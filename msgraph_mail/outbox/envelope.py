"""What a queued message is: plain JSON data, built in the caller, read by the worker.

An :class:`Envelope` holds the MIME exactly as the synchronous backend posts it (Bcc written
in, ``X-MSGraph-Mailbox`` removed, base64), the Message-ID minted once at enqueue and reused
by every attempt, and what the worker needs to pick the mailbox and the settings again: the
From address, the mailbox override and the mailer's alias. Never a pickled ``EmailMessage``,
never a secret: the worker reads the credential from its own settings.

A message too large for sendMail (``LARGE_MESSAGES``) carries its draft plan instead of the
MIME: ``draft`` holds the draft's MIME (base64, without the large attachments) and each part
taken out of it (name, content type, inline, Content-ID, content as base64); the worker
rebuilds the :class:`~msgraph_mail.large.DraftPlan` (:func:`draft_plan`) and sends it through
the draft route, as the synchronous backend does. ``draft`` is None for every other message.

``trace_context`` carries the OpenTelemetry trace of the request that queued the message (W3C
``traceparent``/``tracestate``), so the worker's span continues it; it is None when there was
no span, and in envelopes queued before it existed.

A message sent without a copy in Sent Items (``SAVE_TO_SENT_ITEMS`` off) carries its JSON
sendMail body in ``json_body`` instead of the MIME; its ``message_id`` is then the outbox's
own key (Exchange assigns the delivered message's Message-ID).

With ``OUTBOX_ENCRYPTION_KEYS`` the stores keep ``mime``, ``json_body`` and ``draft`` sealed
(:mod:`msgraph_mail.outbox.sealing`). An envelope that no configured key opens is read with
its content blank and the token in ``sealed``; :func:`payload_of` refuses it with
:class:`~msgraph_mail.exceptions.OutboxDecryptionError`, so it is never sent empty.
"""

from __future__ import annotations

import base64
import dataclasses
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from email import policy
from email.parser import BytesParser
from email.utils import getaddresses, make_msgid
from typing import Any

from django.core.mail import EmailMessage
from django.core.mail.utils import DNS_NAME

from .. import routes
from ..conf import MSGraphMailSettings
from ..exceptions import InvalidMessage, MessageTooLarge, OutboxDecryptionError
from ..large import DraftPlan, Part
from ..mime import header, mailbox_override, sender_address
from ..tracking.outgoing import tracking_id_of

__all__ = ["Envelope", "build_envelope", "draft_plan", "payload_of", "undecryptable"]


@dataclass(frozen=True)
class Envelope:
    """One queued message, as plain data (``to_dict()`` is JSON-serialisable)."""

    message_id: str
    mime: str  # base64 of the MIME bytes: the sendMail request body ("" with ``draft``)
    from_address: str
    mailbox_override: str | None
    recipients: int  # To + Cc + Bcc, spent from the mailbox's daily budget
    alias: str | None  # Django 6.1 MAILERS alias; None for EMAIL_BACKEND / MSGRAPH_MAIL
    priority: str  # "normal" | "bulk"
    enqueued_at: str  # ISO 8601, aware UTC
    draft: dict[str, Any] | None = None  # LARGE_MESSAGES: the draft plan (see the module)
    json_body: str | None = None  # SAVE_TO_SENT_ITEMS off: the JSON sendMail body
    sealed: str | None = None  # OUTBOX_ENCRYPTION_KEYS: the content no configured key opened
    subject: str | None = None  # what msgraph_outbox lists, beside the Message-ID
    first_recipient: str | None = None  # the first of To + Cc + Bcc, as listed
    tracking_id: str | None = None  # DELIVERY_TRACKING: X-MSGraph-Tracking-Id's value
    recipient_addresses: list[str] | None = None  # what the trace matches, the admin searches
    # OpenTelemetry: the W3C trace context (traceparent, tracestate) of the request that
    # queued it, continued by the worker's span; None without a span (or an older envelope).
    trace_context: dict[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Envelope:
        values: dict[str, Any] = {name: data.get(name) for name in cls.__dataclass_fields__}
        return cls(**values)

    @property
    def route(self) -> routes.Route:
        """The request that carries it: ``draft``, ``sendMail-json`` or ``sendMail``."""
        if self.draft is not None:
            return "draft"
        return "sendMail-json" if self.json_body is not None else "sendMail"

    @property
    def enqueued(self) -> datetime:
        return datetime.fromisoformat(self.enqueued_at)

    def without_content(self) -> Envelope:
        """The envelope once sent (OUTBOX_KEEP_CONTENT off): what the listing shows, not the
        message itself (its MIME, JSON body or draft plan)."""
        return dataclasses.replace(self, mime="", json_body=None, draft=None, sealed=None)

    def described(self) -> tuple[str, str]:
        """(subject, first recipient) for listings; read from the MIME's headers for an
        envelope queued before both were recorded."""
        if self.subject is not None or not self.mime:
            return self.subject or "", self.first_recipient or ""
        headers = BytesParser(policy=policy.default).parsebytes(
            base64.b64decode(self.mime), headersonly=True
        )
        fields = [str(headers[name]) for name in ("To", "Cc", "Bcc") if headers[name]]
        first = getaddresses(fields)
        return str(headers.get("Subject", "")), next((a for _, a in first if a), "")


def build_envelope(
    message: EmailMessage, settings: MSGraphMailSettings, alias: str | None = None
) -> Envelope:
    """Validate and build a message in the caller; raise what the synchronous backend would.

    The Message-ID is set in the message's headers when it has none, so the envelope, the
    MIME and ``message.msgraph_status`` name the same id on every attempt.
    """
    if not message.recipients():
        raise InvalidMessage("The message has no recipients", email_message=message)
    override = mailbox_override(message)
    from_address = sender_address(message)
    if header(message, "Message-ID") is None and routes.saves_to_sent_items(message, settings):
        message.extra_headers["Message-ID"] = make_msgid(domain=str(DNS_NAME))
    try:
        payload = routes.build(message, settings)
    except MessageTooLarge as exc:
        if settings.large_messages:
            raise
        raise _too_large(message, exc) from exc
    message_id = payload.message_id or make_msgid(domain=str(DNS_NAME))
    return Envelope(
        message_id=str(message_id).strip(),
        mime=payload.body.decode("ascii") if payload.route == "sendMail" else "",
        from_address=from_address,
        mailbox_override=override,
        recipients=len(message.recipients()),
        alias=alias,
        priority=settings.priority,
        enqueued_at=datetime.now(timezone.utc).isoformat(),
        draft=_plan_data(payload.plan) if payload.plan is not None else None,
        json_body=payload.body.decode("utf-8") if payload.route == "sendMail-json" else None,
        subject=str(message.subject or ""),
        first_recipient=str(message.recipients()[0]),
        tracking_id=tracking_id_of(message) if settings.delivery_tracking else None,
        recipient_addresses=list(message.recipients()),
    )


def payload_of(envelope: Envelope) -> routes.Payload:
    """What the worker sends: the envelope's payload, as the synchronous backend built it;
    OutboxDecryptionError when its content is still sealed (nothing to send)."""
    if envelope.sealed is not None:
        raise OutboxDecryptionError(undecryptable(envelope.message_id))
    plan = draft_plan(envelope)
    if plan is not None:
        return routes.Payload("draft", message_id=envelope.message_id, plan=plan)
    if envelope.json_body is not None:
        return routes.Payload("sendMail-json", envelope.json_body.encode("utf-8"))
    return routes.Payload("sendMail", envelope.mime.encode("ascii"), envelope.message_id)


def undecryptable(message_id: str) -> str:
    """Why a sealed message cannot be sent, and what brings it back."""
    return (
        f"Message {message_id} was not sent: no key in OUTBOX_ENCRYPTION_KEYS decrypts its "
        "stored content (it was encrypted with a key that is no longer in the list). Add the "
        "key it was encrypted with (the old key) back to OUTBOX_ENCRYPTION_KEYS, after the "
        f"current one, then resend it with `manage.py msgraph_outbox --resend {message_id}`"
    )


def draft_plan(envelope: Envelope) -> DraftPlan | None:
    """The draft plan an envelope carries (LARGE_MESSAGES), None for a sendMail message."""
    data = envelope.draft
    if data is None:
        return None
    return DraftPlan(
        mime_base64=str(data["mime"]).encode("ascii"),
        mime_size=int(data["mime_size"]),
        message_id=data.get("message_id"),
        uploads=[_part(part) for part in data.get("uploads") or []],
        posts=[_part(part) for part in data.get("posts") or []],
    )


def _plan_data(plan: DraftPlan) -> dict[str, Any]:
    return {
        "mime": plan.mime_base64.decode("ascii"),
        "mime_size": plan.mime_size,
        "message_id": plan.message_id,
        "uploads": [_part_data(part) for part in plan.uploads],
        "posts": [_part_data(part) for part in plan.posts],
    }


def _part_data(part: Part) -> dict[str, Any]:
    return {
        "name": part.name,
        "content_type": part.content_type,
        "inline": part.inline,
        "content_id": part.content_id,
        "content": base64.b64encode(part.content).decode("ascii"),
    }


def _part(data: dict[str, Any]) -> Part:
    return Part(
        name=str(data["name"]),
        content_type=str(data["content_type"]),
        content=base64.b64decode(data["content"]),
        inline=bool(data.get("inline")),
        content_id=data.get("content_id"),
    )


def _too_large(message: EmailMessage, exc: MessageTooLarge | None) -> MessageTooLarge:
    """Without LARGE_MESSAGES, what sendMail cannot take fails in the caller."""
    size = f" ({exc.size:,} bytes once base64-encoded)" if exc and exc.size else ""
    return MessageTooLarge(
        f"The message is too large for one sendMail request{size}: Graph accepts at most "
        "4 MB per request. Turn LARGE_MESSAGES on (it needs Mail.ReadWrite) to queue larger "
        "messages and send them through a draft, or send large files as links",
        size=exc.size if exc else None,
        limit=exc.limit if exc else None,
        email_message=message,
    )
