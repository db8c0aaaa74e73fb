"""Messages above Graph's 4 MB request limit: the plan, made before any request.

Opt-in with ``LARGE_MESSAGES``, since drafts need the application permission Mail.ReadWrite
(GRAPH_NOTES A.3). :func:`prepare` splits a message: its MIME, without the attachments too
large for one attachment request, becomes a draft (headers, bodies, inline parts and every
recipient, Bcc included, are kept); each of those is uploaded through an upload session
(:mod:`msgraph_mail.uploads`); the rest are posted one by one when the draft's MIME would
still be too large. :mod:`msgraph_mail.drafts` carries the plan out: draft, attachments,
send. What Graph could not take is refused here, before any request.

Memory: an attachment's bytes are never base64-encoded as a whole nor copied per chunk; a
:class:`Part` holds the bytes Django already holds.
"""

from __future__ import annotations

import base64
import copy
import mimetypes
from dataclasses import dataclass
from email.message import Message
from typing import Any

from django.core.mail import EmailMessage

from .exceptions import MessageTooLarge
from .mime import MAX_REQUEST_BYTES, build_mime, message_id_of

#: What a fileAttachment JSON adds to the base64 of the content, generously.
_JSON_OVERHEAD = 4096
#: The largest attachment one attachment POST can carry: its base64 and JSON within 4 MB.
#: Anything larger goes through an upload session (3,142,657 bytes and up).
MAX_POSTED_BYTES = (MAX_REQUEST_BYTES - _JSON_OVERHEAD) // 4 * 3
#: Graph's documented floor for upload sessions: "3 MB" (read as 3,000,000 bytes; a field
#: report saw sessions open from 2 MiB). Attachments from MAX_POSTED_BYTES up are above it.
UPLOAD_SESSION_MIN_BYTES = 3_000_000
#: One PUT to the upload URL: 10 x 320 KiB, a multiple of 320 KiB below 4 MB.
CHUNK_BYTES = 10 * 320 * 1024
#: Exchange's largest message (the administrator's maximum; the default is 35 MB).
MAX_MESSAGE_BYTES = 150 * 1024 * 1024


@dataclass(frozen=True)
class Part:
    """An attachment taken out of the MIME, sent on its own; ``content`` is not copied."""

    name: str
    content_type: str
    content: bytes | bytearray | memoryview
    inline: bool
    content_id: str | None

    @property
    def size(self) -> int:
        return memoryview(self.content).nbytes

    def file_attachment(self) -> dict[str, Any]:
        """The ``fileAttachment`` JSON of a plain attachment POST (small parts only)."""
        body: dict[str, Any] = {
            "@odata.type": "#microsoft.graph.fileAttachment",
            "name": self.name,
            "contentType": self.content_type,
            "contentBytes": base64.b64encode(self.content).decode("ascii"),
            "isInline": self.inline,
        }
        if self.content_id:
            body["contentId"] = self.content_id
        return body

    def attachment_item(self) -> dict[str, Any]:
        """The ``AttachmentItem`` of ``createUploadSession``."""
        item: dict[str, Any] = {
            "attachmentType": "file",
            "name": self.name,
            "size": self.size,
            "contentType": self.content_type,
            "isInline": self.inline,
        }
        if self.content_id:
            item["contentId"] = self.content_id
        return item


@dataclass(frozen=True)
class DraftPlan:
    """What the draft route sends: the draft's base64 MIME, then the parts taken out of it."""

    mime_base64: bytes
    mime_size: int
    message_id: str | None
    uploads: list[Part]
    posts: list[Part]

    @property
    def size(self) -> int:
        return self.mime_size + sum(part.size for part in (*self.uploads, *self.posts))


def beyond_send_mail(message: EmailMessage) -> bool:
    """Whether sendMail certainly cannot take the message, judged without building its MIME.

    The attachments are base64-encoded twice on the way (into the MIME, then the MIME into
    the request), so each of their bytes becomes at least 16/9 bytes of request body.
    """
    attached = sum(_approx_size(attachment) for attachment in message.attachments)
    return attached * 16 // 9 > MAX_REQUEST_BYTES


def prepare(message: EmailMessage) -> DraftPlan:
    """Split the message: the draft's MIME, the attachments to upload and those to POST.

    Attachments too large for one attachment request (over MAX_POSTED_BYTES) are uploaded.
    The rest stay in the draft's MIME, unless that is then still too large for one request:
    then they are posted one by one. Refuses, before any request, what Graph could not take
    (a draft body over 4 MB, a message over 150 MB).
    """
    parts = [(attachment, _part(attachment)) for attachment in message.attachments]
    uploads = [p for _, p in parts if p is not None and p.size > MAX_POSTED_BYTES]
    small = [(a, p) for a, p in parts if p is None or p.size <= MAX_POSTED_BYTES]
    posts: list[Part] = []
    raw = build_mime(_with_attachments(message, [a for a, _ in small]))
    payload = base64.b64encode(raw)
    if len(payload) > MAX_REQUEST_BYTES:
        posts = [p for _, p in small if p is not None]
        raw = build_mime(_with_attachments(message, [a for a, p in small if p is None]))
        payload = base64.b64encode(raw)
    if len(payload) > MAX_REQUEST_BYTES:
        raise MessageTooLarge(
            f"Even without its file attachments the message is {len(raw):,} bytes of MIME, "
            f"{len(payload):,} bytes once base64-encoded; the draft request accepts at most "
            f"{MAX_REQUEST_BYTES:,} bytes. Shorten the bodies or attach the large parts as files",
            size=len(payload),
            limit=MAX_REQUEST_BYTES,
            email_message=message,
        )
    plan = DraftPlan(payload, len(raw), message_id_of(raw), uploads, posts)
    if plan.size > MAX_MESSAGE_BYTES:
        raise MessageTooLarge(
            f"The message is {plan.size:,} bytes; Exchange accepts messages of at most "
            f"{MAX_MESSAGE_BYTES:,} bytes (150 MB, if the administrator raised the mailbox's "
            "limit from the default 35 MB). Send large files as links",
            size=plan.size,
            limit=MAX_MESSAGE_BYTES,
            email_message=message,
        )
    return plan


def _approx_size(attachment: Any) -> int:
    """An attachment's size in bytes, without decoding or encoding anything."""
    if isinstance(attachment, Message):
        payload = attachment.get_payload()
        if not isinstance(payload, (str, bytes)):
            return 0
        if str(attachment.get("Content-Transfer-Encoding", "")).lower() == "base64":
            return len(payload) * 3 // 4
        return len(payload)
    content = attachment[1] if isinstance(attachment, tuple) and len(attachment) > 1 else None
    if isinstance(content, (str, bytes, bytearray)):
        return len(content)
    if isinstance(content, memoryview):
        return content.nbytes
    return 0


def _part(attachment: Any) -> Part | None:
    """The attachment as a part to send on its own; None if it must stay in the MIME."""
    if isinstance(attachment, Message):
        if attachment.is_multipart() or attachment.get_content_maintype() == "message":
            return None
        content = attachment.get_payload(decode=True)
        if not isinstance(content, bytes):
            return None
        content_id = str(attachment.get("Content-ID") or "").strip().strip("<>") or None
        disposition = attachment.get_content_disposition()
        return Part(
            name=attachment.get_filename() or content_id or "attachment",
            content_type=attachment.get_content_type(),
            content=content,
            inline=disposition == "inline" or (disposition is None and content_id is not None),
            content_id=content_id,
        )
    if not isinstance(attachment, tuple) or len(attachment) != 3:
        return None
    filename, content, mimetype = attachment
    mimetype = mimetype or mimetypes.guess_type(str(filename or ""))[0]
    mimetype = mimetype or "application/octet-stream"
    if mimetype.split("/")[0] == "message":
        return None
    if isinstance(content, str):
        content = content.encode("utf-8")
    if not isinstance(content, (bytes, bytearray, memoryview)):
        return None
    return Part(str(filename or "attachment"), mimetype, content, False, None)


def _with_attachments(message: EmailMessage, attachments: list[Any]) -> EmailMessage:
    clone = copy.copy(message)
    clone.attachments = attachments
    return clone
