"""Django message -> the JSON body of sendMail, for mail that must not be saved to Sent Items.

Only the JSON body carries ``saveToSentItems`` (GRAPH_NOTES A.1, A.2). It is built from the
MIME that :func:`~msgraph_mail.mime.build_mime` makes (Django's ``message()``, Bcc written,
our own headers removed), read back with the standard library's parser: the addresses,
subject, body and attachments are then exactly those the MIME route would send, on every
Django version, whatever form the attachments were given in.

The JSON body holds less than MIME can. What it cannot carry raises :class:`NotExpressible`
naming the part, so the caller can fall back to MIME or refuse the message
(``SENT_ITEMS_FALLBACK``); nothing is left out silently, except the text alternative of an
HTML message: the JSON body has one body, and like every JSON-based Graph mailer we send the
HTML (documented in docs/sent-items.md).
"""

from __future__ import annotations

import json
import mimetypes
from email import policy
from email.header import decode_header, make_header
from email.headerregistry import Address
from email.message import EmailMessage as MIMEMessage
from email.message import Message
from email.parser import BytesParser
from typing import Any

from django.core.mail import EmailMessage

from .large import Part, beyond_send_mail
from .mime import MAX_REQUEST_BYTES, OWN_HEADERS, build_mime

__all__ = ["NotExpressible", "build_json"]

#: Graph takes at most five internetMessageHeaders, each named x-... (GRAPH_NOTES A.2).
MAX_CUSTOM_HEADERS = 5
#: Headers the message resource has a property for; the JSON keeps them.
MAPPED_HEADERS = frozenset({"from", "to", "cc", "reply-to", "sender", "importance", "x-priority"})
#: X-Priority's values (1 highest, 5 lowest) as Graph's importance.
PRIORITIES = {"1": "high", "2": "high", "3": "normal", "4": "low", "5": "low"}
IMPORTANCES = frozenset({"low", "normal", "high"})
#: Multiparts whose structure is their meaning: the JSON body has no place for them.
OPAQUE_MULTIPARTS = frozenset({"multipart/signed", "multipart/encrypted"})


class NotExpressible(Exception):
    """The JSON body cannot carry this part of the message; ``str()`` names it."""


def build_json(message: EmailMessage) -> bytes:
    """The sendMail request body with ``"saveToSentItems": false``, UTF-8 JSON.

    Raises :class:`NotExpressible` for what the JSON body would lose, and for a message
    whose JSON would exceed Graph's 4 MB request limit.
    """
    if beyond_send_mail(message):
        raise NotExpressible("its attachments exceed Graph's 4 MB request limit")
    raw = build_mime(message)
    # The top-level headers through the header registry (decoded names and addresses); the
    # parts with the older, string-based API: ten times cheaper than the registry per part.
    mime = BytesParser(policy=policy.default).parsebytes(raw, headersonly=True)
    assert isinstance(mime, MIMEMessage)  # policy.default makes email.message.EmailMessage
    resource: dict[str, Any] = {"subject": str(mime.get("Subject") or "")}
    resource["body"], attachments = _body_and_attachments(
        BytesParser(policy=policy.compat32).parsebytes(raw)
    )
    for key, name in (
        ("toRecipients", "To"),
        ("ccRecipients", "Cc"),
        ("bccRecipients", "Bcc"),
        ("replyTo", "Reply-To"),
    ):
        if mime.get(name) is not None:
            resource[key] = [_recipient(address) for address in _addresses(mime, name)]
    resource["from"] = _recipient(_addresses(mime, "From")[0])
    resource.update(_headers(message, mime))
    if attachments:
        resource["attachments"] = [part.file_attachment() for part in attachments]
    body = json.dumps({"message": resource, "saveToSentItems": False}, ensure_ascii=False).encode(
        "utf-8"
    )
    if len(body) > MAX_REQUEST_BYTES:
        raise NotExpressible(
            f"its JSON body is {len(body):,} bytes, over Graph's 4 MB request limit"
        )
    return body


def _headers(message: EmailMessage, mime: MIMEMessage) -> dict[str, Any]:
    """The headers set in ``extra_headers``: mapped to properties, or x- custom headers."""
    own = {name.lower() for name in OWN_HEADERS}
    properties: dict[str, Any] = {}
    custom: list[dict[str, str]] = []
    for raw_name in message.extra_headers:
        name = str(raw_name)
        lowered = name.lower()
        value = str(mime.get(name) or "")
        if lowered in own or lowered in ("to", "cc", "from", "reply-to"):
            continue
        if lowered == "sender":
            properties["sender"] = _recipient(_addresses(mime, "Sender")[0])
        elif lowered == "importance" and value.strip().lower() in IMPORTANCES:
            properties.setdefault("importance", value.strip().lower())
        elif lowered == "x-priority" and value.strip()[:1] in PRIORITIES:
            properties["importance"] = PRIORITIES[value.strip()[:1]]
        elif lowered.startswith("x-"):
            custom.append({"name": name, "value": value})
        elif lowered == "importance":
            raise NotExpressible(f"the header Importance: {value[:40]!r} (not low, normal or high)")
        else:
            raise NotExpressible(f"the header {name} (the JSON body takes only X- headers)")
    if len(custom) > MAX_CUSTOM_HEADERS:
        raise NotExpressible(
            f"{len(custom)} X- headers (the JSON body takes at most {MAX_CUSTOM_HEADERS})"
        )
    if custom:
        properties["internetMessageHeaders"] = custom
    return properties


def _body_and_attachments(mime: Message) -> tuple[dict[str, str], list[Part]]:
    """The one body the JSON holds (the HTML, when there is an HTML alternative) and the
    attachments; NotExpressible for structures it cannot hold."""
    bodies: list[tuple[str, str, str]] = []  # (content type, text, parent's content type)
    attachments: list[Part] = []
    _collect(mime, "", bodies, attachments)
    kinds = sorted(kind for kind, _, _ in bodies)
    if not bodies:
        return {"contentType": "text", "content": ""}, attachments
    if len(bodies) == 1:
        kind, text, _ = bodies[0]
    elif kinds == ["text/html", "text/plain"] and any(
        kind == "text/plain" and parent == "multipart/alternative" for kind, _, parent in bodies
    ):
        kind, text, _ = next(body for body in bodies if body[0] == "text/html")
    else:
        raise NotExpressible(
            f"{len(bodies)} body parts ({', '.join(kinds)}): the JSON body holds one"
        )
    return {"contentType": "html" if kind == "text/html" else "text", "content": text}, attachments


def _collect(
    part: Message, parent: str, bodies: list[tuple[str, str, str]], attachments: list[Part]
) -> None:
    kind = part.get_content_type()
    if part.get_content_maintype() == "message":
        raise NotExpressible(f"an attached message ({kind})")
    if kind in OPAQUE_MULTIPARTS:
        raise NotExpressible(f"a {kind} part (signed or encrypted mail needs MIME)")
    if part.is_multipart():
        for child in part.get_payload():
            if isinstance(child, Message):
                _collect(child, kind, bodies, attachments)
        return
    disposition = part.get_content_disposition()
    content_id = str(part.get("Content-ID") or "").strip().strip("<>") or None
    filename = _decoded(part.get_filename())
    decoded = part.get_payload(decode=True)
    payload = decoded if isinstance(decoded, bytes) else b""
    if disposition is None and filename is None and content_id is None:
        if kind in ("text/plain", "text/html"):
            text = payload.decode(part.get_content_charset() or "utf-8", "replace")
            bodies.append((kind, text.replace("\r\n", "\n"), parent))
            return
        if parent == "multipart/alternative":
            raise NotExpressible(
                f"an alternative of type {kind} (the JSON body takes HTML or text)"
            )
    attachments.append(
        Part(
            name=filename or f"{content_id or 'attachment'}{_extension(kind)}",
            content_type=kind,
            content=payload,
            inline=disposition == "inline" or (disposition is None and content_id is not None),
            content_id=content_id,
        )
    )


def _decoded(filename: str | None) -> str | None:
    """A file name as written: RFC 2231 is decoded by the parser, RFC 2047 words here."""
    if filename is None or "=?" not in filename:
        return filename
    return str(make_header(decode_header(filename)))


def _extension(kind: str) -> str:
    return mimetypes.guess_extension(kind) or ""


def _addresses(mime: MIMEMessage, name: str) -> tuple[Address, ...]:
    header = mime[name]
    return tuple(header.addresses) if header is not None else ()


def _recipient(address: Address) -> dict[str, Any]:
    """Graph's recipient: ``{"emailAddress": {"address", "name"?}}``."""
    email: dict[str, str] = {"address": address.addr_spec}
    if address.display_name:
        email["name"] = address.display_name
    return {"emailAddress": email}
