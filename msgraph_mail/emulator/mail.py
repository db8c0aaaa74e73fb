"""What Graph received: a ``SentMessage`` record built from a MIME or a JSON ``sendMail`` body.

Exchange parses the MIME into properties, a recipient table and an attachment table; the
record mirrors that, so tests can assert on what recipients would really get. Recipients come
from the To/Cc/Bcc headers only: Graph has no SMTP envelope.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email import policy
from email.header import decode_header, make_header
from email.headerregistry import Address
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.utils import getaddresses
from typing import Any

from .directory import User
from .errors import GraphError, body_read_error

_ADDRESS = re.compile(r"^[^\s@<>(),;:\\\[\]]+@[^\s@<>(),;:\\\[\]\"]+$")
NO_RECIPIENTS = (
    "At least one recipient is not valid., "
    "A message can't be sent because it contains no recipients."
)


@dataclass(frozen=True)
class Attachment:
    """One entry of the attachment table; ``sha256`` is of the decoded bytes."""

    filename: str | None
    content_type: str
    size: int
    sha256: str
    content_id: str | None
    inline: bool
    content: bytes = field(repr=False)

    @classmethod
    def of(
        cls,
        content: bytes,
        *,
        filename: str | None,
        content_type: str,
        content_id: str | None,
        inline: bool,
    ) -> Attachment:
        return cls(
            filename=filename,
            content_type=content_type,
            size=len(content),
            sha256=hashlib.sha256(content).hexdigest(),
            content_id=content_id,
            inline=inline,
            content=content,
        )


@dataclass
class SentMessage:
    """A message Graph accepted (202) for delivery through ``mailbox``."""

    mailbox: User
    from_: str
    from_header: str
    to: list[str]
    cc: list[str]
    bcc: list[str]
    reply_to: list[str]
    subject: str
    text: str | None
    html: str | None
    attachments: list[Attachment]
    headers: list[tuple[str, str]]
    raw: bytes = field(repr=False)
    format: str
    request_id: str
    save_to_sent_items: bool = True
    importance: str = "normal"  # Graph's low / normal / high
    draft_id: str | None = None  # the draft it was sent from (the draft route)
    # For the dev inbox (``inbox.py``): a stable handle for URLs and the capture time.
    id: str = field(default_factory=lambda: uuid.uuid4().hex, compare=False)
    received_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc), compare=False)

    def header(self, name: str) -> str | None:
        """First top-level header called ``name`` (case-insensitive), decoded."""
        return _first_header(self.headers, name)

    @property
    def recipients(self) -> list[str]:
        return [*self.to, *self.cc, *self.bcc]


def invalid_recipient(address: str) -> GraphError:
    return GraphError(
        400,
        "ErrorInvalidRecipients",
        f"At least one recipient is not valid., Recipient '{address}' is not resolved. "
        "All recipients must be resolved before a message can be submitted.",
    )


def valid_address(address: str) -> bool:
    """Syntax only (Exchange resolves the rest at transport time, by NDR)."""
    if not _ADDRESS.match(address):
        return False
    domain = address.rpartition("@")[2]
    return all(domain.split("."))


def mime_invalid() -> GraphError:
    return GraphError(400, "ErrorMimeContentInvalid", "Invalid MIME content.")


# MIME ----------------------------------------------------------------------------------------


def decode_base64_mime(body: bytes) -> bytes:
    """Graph's MIME body: base64 with or without line breaks; anything else is refused."""
    compact = b"".join(body.split())
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise GraphError(
            400, "ErrorMimeContentInvalidBase64String", "Invalid base64 string for MIME content."
        ) from None


@dataclass
class Screened:
    """A MIME submission checked the way Exchange checks it before answering 202.

    Only the address headers are parsed on the request path; the bodies and the attachment
    table are parsed when the record is first read (``complete``). Parsing a whole message
    costs the emulator ten times more CPU than checking it, and would make the emulator,
    not the backend, the bottleneck of a throughput benchmark.
    """

    mailbox: User
    raw: bytes = field(repr=False)
    request_id: str
    from_: str
    recipients: list[str]
    message_id: str | None = None  # the MIME's Message-ID header: Graph's internetMessageId
    subject: str = ""  # decoded: what the Sent Items copy lists
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    received_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    def complete(self) -> SentMessage:
        message = from_mime(self.raw, self.mailbox, self.request_id)
        message.id, message.received_at = self.id, self.received_at
        return message


def screen_mime(raw: bytes, mailbox: User, request_id: str) -> Screened:
    """Refuse what Graph refuses (no headers, malformed addresses); parse nothing else."""
    headers = BytesParser(policy=policy.compat32).parsebytes(raw, headersonly=True)
    if not headers.keys():
        raise mime_invalid()
    sender = _screen_addresses(headers, "From")
    recipients = [a for name in ("To", "Cc", "Bcc") for a in _screen_addresses(headers, name)]
    _screen_addresses(headers, "Reply-To")
    return Screened(
        mailbox=mailbox,
        raw=raw,
        request_id=request_id,
        from_=sender[0].lower() if sender else mailbox.mail.lower(),
        recipients=recipients,
        message_id=str(headers["Message-ID"]).strip() if headers["Message-ID"] else None,
        subject=_decoded(headers["Subject"]),
    )


def _decoded(value: Any) -> str:
    """An RFC 2047 header value as text; "" when absent or undecodable."""
    if value is None:
        return ""
    try:
        return str(make_header(decode_header(str(value)))).replace("\r\n", "").replace("\n", "")
    except (LookupError, UnicodeError, ValueError):
        return str(value)


def _screen_addresses(headers: Message, field: str) -> list[str]:
    """Bare addresses of every raw ``field`` header; a malformed one refuses the message."""
    found = []
    for name, address in getaddresses([str(value) for value in headers.get_all(field, [])]):
        if not valid_address(address):
            raise invalid_recipient(address or name)
        found.append(address)
    return found


def from_mime(raw: bytes, mailbox: User, request_id: str) -> SentMessage:
    """Parse MIME like Exchange does: properties, recipient table, attachment table."""
    message = BytesParser(policy=policy.default).parsebytes(raw)
    if not isinstance(message, EmailMessage) or not message.keys():
        raise mime_invalid()
    headers = _headers(message)
    sender = _addresses(message, "From")
    text, html, attachments = body_parts(message)
    return SentMessage(
        mailbox=mailbox,
        from_=sender[0].lower() if sender else mailbox.mail.lower(),
        from_header=_first_header(headers, "From") or mailbox.mail,
        to=_addresses(message, "To"),
        cc=_addresses(message, "Cc"),
        bcc=_addresses(message, "Bcc"),
        reply_to=_addresses(message, "Reply-To"),
        subject=_first_header(headers, "Subject") or "",
        text=text,
        html=html,
        attachments=attachments,
        headers=headers,
        raw=raw,
        format="mime",
        request_id=request_id,
        importance=_mime_importance(headers),
    )


def _mime_importance(headers: list[tuple[str, str]]) -> str:
    """What Exchange reads as the importance: Importance, else X-Priority (1-2 high, 4-5 low)."""
    value = (_first_header(headers, "Importance") or "").strip().lower()
    if value in IMPORTANCES:
        return value
    priority = (_first_header(headers, "X-Priority") or "").strip()[:1]
    return {"1": "high", "2": "high", "4": "low", "5": "low"}.get(priority, "normal")


def _headers(message: EmailMessage) -> list[tuple[str, str]]:
    result: list[tuple[str, str]] = []
    for name, value in message.raw_items():
        try:
            decoded = str(message.policy.header_fetch_parse(name, value))
        except Exception:
            decoded = str(value)
        result.append((name, decoded))
    return result


def _first_header(headers: list[tuple[str, str]], name: str) -> str | None:
    return next((value for key, value in headers if key.lower() == name.lower()), None)


def _addresses(message: EmailMessage, name: str) -> list[str]:
    """Bare addresses from every ``name`` header; a malformed one refuses the message."""
    found: list[str] = []
    for value in message.get_all(name, []):
        try:
            addresses: tuple[Address, ...] = value.addresses
        except Exception:
            raise invalid_recipient(str(value)) from None
        for address in addresses:
            if not valid_address(address.addr_spec):
                raise invalid_recipient(address.addr_spec or str(value))
            found.append(address.addr_spec)
    return found


def _leaves(part: EmailMessage) -> list[EmailMessage]:
    """Non-multipart parts in order; an attached message/rfc822 counts as one leaf."""
    if part.get_content_maintype() != "multipart":
        return [part]
    leaves: list[EmailMessage] = []
    for sub in part.iter_parts():
        if isinstance(sub, EmailMessage):
            leaves += _leaves(sub)
    return leaves


def body_parts(message: EmailMessage) -> tuple[str | None, str | None, list[Attachment]]:
    """Pick the text and HTML bodies; everything attachment-like goes to the table."""
    text: str | None = None
    html: str | None = None
    attachments: list[Attachment] = []
    for leaf in _leaves(message):
        disposition = leaf.get_content_disposition()
        filename = leaf.get_filename()
        content_type = leaf.get_content_type()
        if disposition != "attachment" and filename is None:
            if content_type == "text/plain" and text is None:
                text = _text(leaf)
                continue
            if content_type == "text/html" and html is None:
                html = _text(leaf)
                continue
        content_id = _content_id(leaf)
        if disposition == "attachment" or filename is not None or content_id is not None:
            attachments.append(
                Attachment.of(
                    _payload(leaf),
                    filename=filename,
                    content_type=content_type,
                    content_id=content_id,
                    inline=disposition == "inline" or (disposition is None and bool(content_id)),
                )
            )
    return text, html, attachments


def _text(part: EmailMessage) -> str:
    """Decoded body text with ``\n`` line ends, whether the MIME used CRLF or LF."""
    try:
        content = part.get_content()
    except (LookupError, UnicodeError):  # unknown charset: decode leniently like Exchange
        content = None
    if not isinstance(content, str):
        content = _payload(part).decode("utf-8", "replace")
    return content.replace("\r\n", "\n")


def _payload(part: EmailMessage) -> bytes:
    if part.get_content_maintype() == "message":
        inner = part.get_payload()
        if isinstance(inner, list) and inner and isinstance(inner[0], EmailMessage):
            return inner[0].as_bytes(policy=policy.default)
    payload = part.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else b""


def _content_id(part: EmailMessage) -> str | None:
    value = part.get("Content-ID")
    if value is None:
        return None
    return str(value).strip().strip("<>") or None


# JSON ----------------------------------------------------------------------------------------

_SEND_MAIL_PARAMETERS = frozenset({"message", "saveToSentItems"})
FILE_ATTACHMENT = "#microsoft.graph.fileAttachment"
#: The properties and relationships of Graph's message resource (v1.0); others are refused.
MESSAGE_PROPERTIES = frozenset(
    {
        "@odata.type",
        "attachments",
        "bccRecipients",
        "body",
        "bodyPreview",
        "categories",
        "ccRecipients",
        "changeKey",
        "conversationId",
        "conversationIndex",
        "createdDateTime",
        "extensions",
        "flag",
        "from",
        "hasAttachments",
        "id",
        "importance",
        "inferenceClassification",
        "internetMessageHeaders",
        "internetMessageId",
        "isDeliveryReceiptRequested",
        "isDraft",
        "isRead",
        "isReadReceiptRequested",
        "lastModifiedDateTime",
        "multiValueExtendedProperties",
        "parentFolderId",
        "receivedDateTime",
        "replyTo",
        "sender",
        "sentDateTime",
        "singleValueExtendedProperties",
        "subject",
        "toRecipients",
        "uniqueBody",
        "webLink",
    }
)
#: The properties of Graph's fileAttachment resource.
FILE_ATTACHMENT_PROPERTIES = frozenset(
    {
        "@odata.type",
        "contentBytes",
        "contentId",
        "contentLocation",
        "contentType",
        "id",
        "isInline",
        "lastModifiedDateTime",
        "name",
        "size",
    }
)
IMPORTANCES = ("low", "normal", "high")


def from_json(payload: Any, raw: bytes, mailbox: User, request_id: str) -> SentMessage:
    """Build the record from ``{"message": {...}, "saveToSentItems": ...}`` (notes A.2)."""
    if not isinstance(payload, dict):
        raise body_read_error("Empty Payload. JSON content expected.")
    for key in payload:
        if key not in _SEND_MAIL_PARAMETERS:
            raise body_read_error(
                f"The parameter '{key}' in the request payload is not a valid parameter for "
                "the operation 'sendMail'."
            )
    message = payload.get("message")
    if not isinstance(message, dict) or not message:
        raise GraphError(
            400, "ErrorInvalidParameter", "The value of the parameter 'Message' is empty."
        )
    _known_properties(message, MESSAGE_PROPERTIES, "microsoft.graph.message")
    save = payload.get("saveToSentItems", True)
    if not isinstance(save, bool):
        raise body_read_error("Cannot convert the literal to the expected type 'Edm.Boolean'.")
    subject = _optional_str(message, "subject") or ""
    text, html = _json_body(message.get("body"))
    sender = _recipients(message, "from", single=True)
    on_behalf = _recipients(message, "sender", single=True)
    importance = _optional_str(message, "importance") or "normal"
    if importance.lower() not in IMPORTANCES:
        raise body_read_error(f"Requested value '{importance}' was not found.")
    headers = _json_headers(message.get("internetMessageHeaders"))
    to, cc, bcc, reply_to = (
        _recipients(message, key)
        for key in ("toRecipients", "ccRecipients", "bccRecipients", "replyTo")
    )
    from_address = sender[0][0] if sender else mailbox.mail
    from_header = _format(*sender[0]) if sender else mailbox.mail
    summary = [
        ("From", from_header),
        *(
            (name, ", ".join(_format(a, n) for a, n in value))
            for name, value in (
                ("Sender", on_behalf),
                ("To", to),
                ("Cc", cc),
                ("Reply-To", reply_to),
            )
            if value
        ),
        ("Subject", subject),
    ]
    return SentMessage(
        mailbox=mailbox,
        from_=from_address.lower(),
        from_header=from_header,
        to=[a for a, _ in to],
        cc=[a for a, _ in cc],
        bcc=[a for a, _ in bcc],
        reply_to=[a for a, _ in reply_to],
        subject=subject,
        text=text,
        html=html,
        attachments=_json_attachments(message.get("attachments")),
        headers=summary + headers,
        raw=raw,
        format="json",
        request_id=request_id,
        save_to_sent_items=save,
        importance=importance.lower(),
    )


def _known_properties(obj: dict[str, Any], known: frozenset[str], type_name: str) -> None:
    """Graph refuses a property its type does not define (OData, not an open type)."""
    for key in obj:
        if key not in known:
            raise body_read_error(
                f"The property '{key}' does not exist on type '{type_name}'. Make sure to only "
                "use property names that are defined by the type or mark the type as open type."
            )


def _format(address: str, name: str | None) -> str:
    return str(Address(display_name=name or "", addr_spec=address)) if name else address


def _optional_str(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise body_read_error(f"Cannot convert a value to type 'Edm.String' for '{key}'.")
    return value


def _json_body(body: Any) -> tuple[str | None, str | None]:
    if body is None:
        return None, None
    if not isinstance(body, dict):
        raise body_read_error("Invalid value for property 'body'.")
    kind = body.get("contentType", "text")
    content = _optional_str(body, "content") or ""
    if not isinstance(kind, str) or kind.lower() not in ("text", "html"):
        raise body_read_error(f"Requested value '{kind}' was not found.")
    return (content, None) if kind.lower() == "text" else (None, content)


def _recipients(
    message: dict[str, Any], key: str, *, single: bool = False
) -> list[tuple[str, str | None]]:
    """``[{"emailAddress": {"address", "name"?}}]`` as (address, name) pairs."""
    value = message.get(key)
    if value is None:
        return []
    items = [value] if single else value
    if not isinstance(items, list):
        raise body_read_error(f"Invalid value for property '{key}'.")
    result: list[tuple[str, str | None]] = []
    for item in items:
        email = item.get("emailAddress") if isinstance(item, dict) else None
        if not isinstance(email, dict):
            raise body_read_error(f"Invalid value for property '{key}'.")
        address = _optional_str(email, "address")
        name = _optional_str(email, "name")
        if not address or not valid_address(address):
            raise invalid_recipient(address or "")
        result.append((address, name))
    return result


def _json_headers(value: Any) -> list[tuple[str, str]]:
    """``internetMessageHeaders``: at most five, every name ``x-``/``X-`` prefixed."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise body_read_error("Invalid value for property 'internetMessageHeaders'.")
    if len(value) > 5:
        raise GraphError(
            400,
            "InvalidInternetMessageHeaderCollection",
            "Maximum number of headers in one message should be less than or equal to 5.",
        )
    headers: list[tuple[str, str]] = []
    for item in value:
        if not isinstance(item, dict):
            raise body_read_error("Invalid value for property 'internetMessageHeaders'.")
        name = _optional_str(item, "name") or ""
        if not name.lower().startswith("x-"):
            raise GraphError(
                400,
                "InvalidInternetMessageHeader",
                f"The internet message header name '{name}' should start with 'x-' or 'X-'.",
            )
        headers.append((name, _optional_str(item, "value") or ""))
    return headers


def _json_attachments(value: Any) -> list[Attachment]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise body_read_error("Invalid value for property 'attachments'.")
    return [json_attachment(item) for item in value]


def json_attachment(item: Any) -> Attachment:
    if not isinstance(item, dict) or item.get("@odata.type") != FILE_ATTACHMENT:
        raise body_read_error(
            "A type named for the attachment is missing or is not "
            f"'{FILE_ATTACHMENT}' (the only kind the emulator supports)."
        )
    _known_properties(item, FILE_ATTACHMENT_PROPERTIES, "microsoft.graph.fileAttachment")
    encoded = _optional_str(item, "contentBytes") or ""
    try:
        content = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise body_read_error(
            "Cannot convert the literal to the expected type 'Edm.Binary'."
        ) from None
    inline = item.get("isInline", False)
    if not isinstance(inline, bool):
        raise body_read_error("Cannot convert the literal to the expected type 'Edm.Boolean'.")
    return Attachment.of(
        content,
        filename=_optional_str(item, "name"),
        content_type=_optional_str(item, "contentType") or "application/octet-stream",
        content_id=_optional_str(item, "contentId"),
        inline=inline,
    )
