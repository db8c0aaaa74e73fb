"""Which request carries a message: sendMail with MIME, sendMail with JSON, or a draft.

:func:`build` picks the route and builds its payload without any request (so
``QueuedEmailBackend`` runs it in the caller, and a bad message fails there); :func:`send`
makes the requests. Both backends and the outbox worker go through these two.

- ``"sendMail"``: the MIME, base64 (:mod:`msgraph_mail.mime`); Graph saves a copy to Sent Items.
- ``"sendMail-json"``: the JSON body with ``saveToSentItems: false``
  (:mod:`msgraph_mail.json_message`), for ``SAVE_TO_SENT_ITEMS = False`` or the header
  ``X-MSGraph-Save-To-Sent-Items: false``. What the JSON body cannot carry goes by MIME with a
  warning, or fails, as ``SENT_ITEMS_FALLBACK`` says.
- ``"draft"``: draft, attachments, upload sessions, send (``LARGE_MESSAGES``,
  :mod:`msgraph_mail.large`, :mod:`msgraph_mail.drafts`); also saved to Sent Items.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from django.core.mail import EmailMessage

from . import telemetry
from .conf import MSGraphMailSettings
from .drafts import send_draft
from .exceptions import InvalidMessage, MessageTooLarge, MSGraphMailError
from .graph import GraphClient, Response
from .json_message import NotExpressible, build_json
from .large import DraftPlan, beyond_send_mail, prepare
from .mime import SAVE_HEADER, build_mime, encode, message_id_of, save_override
from .values import Route

__all__ = ["Payload", "Route", "build", "saves_to_sent_items", "send"]

logger = logging.getLogger("msgraph_mail")


@dataclass(frozen=True)
class Payload:
    """A built message: ``body`` is the sendMail request body (base64 MIME or JSON); the
    draft route has its ``plan`` instead. ``message_id`` is the MIME's Message-ID (None for
    JSON: Exchange assigns one)."""

    route: Route
    body: bytes = b""
    message_id: str | None = None
    plan: DraftPlan | None = None


def saves_to_sent_items(message: EmailMessage, settings: MSGraphMailSettings) -> bool:
    """SAVE_TO_SENT_ITEMS, unless the message's X-MSGraph-Save-To-Sent-Items says otherwise."""
    override = save_override(message)
    return settings.save_to_sent_items if override is None else override


def build(message: EmailMessage, settings: MSGraphMailSettings) -> Payload:
    """The route and payload of one message; raises what makes it unsendable."""
    fallback: str | None = None
    if not saves_to_sent_items(message, settings):
        try:
            return Payload("sendMail-json", build_json(message))
        except NotExpressible as exc:
            if settings.sent_items_fallback == "fail":
                raise InvalidMessage(
                    f"The message cannot be sent without a copy in Sent Items: Graph's JSON "
                    f"body cannot carry {exc}. Remove that part, or send this message with "
                    f"'{SAVE_HEADER}: true' (or SENT_ITEMS_FALLBACK 'mime') to send it as MIME, "
                    "saved to Sent Items",
                    email_message=message,
                ) from None
            fallback = str(exc)
    payload = _mime_or_draft(message, settings)
    if fallback is not None:
        logger.warning(
            "Message %s is sent as MIME and saved to Sent Items, although "
            "SAVE_TO_SENT_ITEMS is off for it: Graph's JSON body cannot carry %s "
            "(SENT_ITEMS_FALLBACK 'mime'; 'fail' refuses such messages instead)",
            payload.message_id,
            fallback,
            extra=telemetry.log_extra(settings, route=payload.route),
        )
    return payload


def _mime_or_draft(message: EmailMessage, settings: MSGraphMailSettings) -> Payload:
    """sendMail's MIME; with LARGE_MESSAGES, the draft plan of a message too large for it."""
    if settings.large_messages and beyond_send_mail(message):
        return _draft(prepare(message))  # never builds the MIME with the large attachments
    raw = build_mime(message)
    try:
        return Payload("sendMail", encode(raw, message), message_id_of(raw))
    except MessageTooLarge:
        if not settings.large_messages:
            raise
    return _draft(prepare(message))


def _draft(plan: DraftPlan) -> Payload:
    return Payload("draft", message_id=plan.message_id, plan=plan)


def send(
    client: GraphClient,
    mailbox: str,
    payload: Payload,
    explain: Callable[[MSGraphMailError], MSGraphMailError],
    *,
    recipients: int,
) -> Response:
    """Make the payload's requests through ``mailbox`` (a user id or address); Graph's
    errors pass through ``explain`` (the mode's account of a refusal)."""
    if payload.plan is not None:
        return send_draft(client, mailbox, payload.plan, explain, recipients=recipients)
    try:
        if payload.route == "sendMail-json":
            return client.send_json(mailbox, payload.body, recipients=recipients)
        return client.send_mime(mailbox, payload.body, recipients=recipients)
    except MSGraphMailError as exc:
        raise explain(exc) from exc
