"""What the admin's detail page shows of a queued message, read from its envelope.

The envelope holds the message as it is posted (MIME, the JSON sendMail body, or the draft
plan of a large message); this module reads each back into one shape: headers, recipients
by field, attachments (name, type, size) and the bodies. It never sends and never writes.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import getaddresses
from typing import Any
from urllib.parse import unquote

from .envelope import Envelope

__all__ = ["Attachment", "Details", "details", "preview_document"]

_CID = re.compile(r"cid:([^\"'\s)>]+)", re.IGNORECASE)


@dataclass(frozen=True)
class Attachment:
    name: str
    content_type: str
    size: int
    inline: bool = False
    content_id: str | None = None
    content: bytes = field(default=b"", repr=False)


@dataclass(frozen=True)
class Details:
    """The message as the admin shows it; ``kept`` False once its content was dropped
    (OUTBOX_KEEP_CONTENT off), ``problem`` set when it could not be read."""

    kept: bool
    headers: list[tuple[str, str]] = field(default_factory=list)
    recipients: dict[str, list[str]] = field(default_factory=dict)
    attachments: list[Attachment] = field(default_factory=list)
    html: str | None = None
    text: str | None = None
    problem: str | None = None


def details(envelope: Envelope) -> Details:
    """The envelope's message read back; a damaged one gives ``problem``, never an error."""
    if envelope.sealed is not None:
        return Details(
            kept=True,
            problem="The message is encrypted with a key that is not in OUTBOX_ENCRYPTION_KEYS: "
            "add the key it was encrypted with back to the list (after the current one) to "
            "see or resend it.",
        )
    try:
        if envelope.json_body is not None:
            return _from_json(json.loads(envelope.json_body))
        if envelope.draft is not None:
            return _from_draft(envelope.draft)
        if envelope.mime:
            return _from_mime(base64.b64decode(envelope.mime))
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        return Details(kept=True, problem=f"The stored message cannot be read: {exc}")
    return Details(kept=False)


def preview_document(found: Details) -> str:
    """The HTML body with ``cid:`` images made ``data:`` URIs (nothing else is loaded)."""
    by_cid = {
        a.content_id.strip("<>").lower(): a for a in found.attachments if a.content_id and a.inline
    }

    def replace(match: re.Match[str]) -> str:
        image = by_cid.get(unquote(match.group(1)).lower())
        if image is None:
            return match.group(0)
        return f"data:{image.content_type};base64,{base64.b64encode(image.content).decode()}"

    return _CID.sub(replace, found.html or "")


def _from_mime(raw: bytes, extra: list[Attachment] | None = None) -> Details:
    message = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    headers = [(name, str(value)) for name, value in message.items()]
    recipients = {
        name: [a for _, a in getaddresses([str(message[name])]) if a]
        for name in ("To", "Cc", "Bcc")
        if message[name]
    }
    attachments = [_mime_part(part) for part in message.walk() if _is_attachment(part)]
    return Details(
        kept=True,
        headers=headers,
        recipients=recipients,
        attachments=attachments + (extra or []),
        html=_body(message, "html"),
        text=_body(message, "plain"),
    )


def _is_attachment(part: Any) -> bool:
    if part.is_multipart():
        return False
    return bool(
        part.is_attachment() or (part["Content-ID"] and part.get_content_maintype() != "text")
    )


def _mime_part(part: Any) -> Attachment:
    content = part.get_payload(decode=True) or b""
    content_id = str(part["Content-ID"]).strip() if part["Content-ID"] else None
    return Attachment(
        name=part.get_filename() or "(no name)",
        content_type=part.get_content_type(),
        size=len(content),
        inline=part.get_content_disposition() == "inline" or bool(content_id),
        content_id=content_id,
        content=content,
    )


def _body(message: EmailMessage, subtype: str) -> str | None:
    part = message.get_body(preferencelist=(subtype,))
    if part is None or part.get_content_type() != f"text/{subtype}":
        return None
    return str(part.get_content())


def _from_draft(plan: dict[str, Any]) -> Details:
    """A large message: the draft's MIME, and the parts uploaded or posted beside it."""
    parts = [*(plan.get("uploads") or []), *(plan.get("posts") or [])]
    extra = []
    for part in parts:
        content = base64.b64decode(part["content"])
        extra.append(
            Attachment(
                name=str(part["name"]),
                content_type=str(part["content_type"]),
                size=len(content),
                inline=bool(part.get("inline")),
                content_id=part.get("content_id"),
                content=content,
            )
        )
    return _from_mime(base64.b64decode(plan["mime"]), extra)


def _from_json(body: dict[str, Any]) -> Details:
    """The JSON sendMail body (SAVE_TO_SENT_ITEMS off)."""
    message = body["message"]
    headers = [("Subject", str(message.get("subject") or ""))]
    sender = (message.get("from") or {}).get("emailAddress") or {}
    if sender.get("address"):
        headers.insert(0, ("From", str(sender["address"])))
    recipients = {}
    for name, key in (("To", "toRecipients"), ("Cc", "ccRecipients"), ("Bcc", "bccRecipients")):
        found = [str(r["emailAddress"]["address"]) for r in message.get(key) or []]
        if found:
            recipients[name] = found
            headers.append((name, ", ".join(found)))
    headers += [
        (str(h["name"]), str(h["value"])) for h in message.get("internetMessageHeaders") or []
    ]
    attachments = []
    for item in message.get("attachments") or []:
        content = base64.b64decode(item.get("contentBytes") or "")
        attachments.append(
            Attachment(
                name=str(item.get("name") or "(no name)"),
                content_type=str(item.get("contentType") or "application/octet-stream"),
                size=len(content),
                inline=bool(item.get("isInline")),
                content_id=item.get("contentId"),
                content=content,
            )
        )
    body_part = message.get("body") or {}
    text = str(body_part.get("content") or "")
    is_html = str(body_part.get("contentType", "")).lower() == "html"
    return Details(
        kept=True,
        headers=headers,
        recipients=recipients,
        attachments=attachments,
        html=text if is_html else None,
        text=None if is_html else text,
    )
