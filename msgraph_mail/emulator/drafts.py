"""Drafts, attachments and upload sessions: Graph's route for messages above 4 MB.

GRAPH_NOTES A.3: a draft is created from base64 MIME (``POST /users/{id}/messages``, needs
``Mail.ReadWrite``), attachments under 3 MB are posted as ``fileAttachment`` JSON, larger ones
go through ``createUploadSession`` and are PUT in ordered chunks of at most 4 MB to a
pre-authenticated upload URL that must not carry an ``Authorization`` header, then the draft is
sent (``POST .../send`` with ``Content-Length: 0``, needs ``Mail.Send``). Uploaded chunks are
reassembled, so a test can compare the delivered attachment's sha256 with what it sent.

Where Graph's documentation is silent the emulator picks an answer and says so: the upload URL
lives on the emulator's own host under ``/upload/{session}?authtoken=...``; a PUT with an
``Authorization`` header is refused with 401 ``InvalidAudience``; a chunk that does not start
at the next expected byte is refused with 416 ``InvalidRange``. Intermediate chunk answers use
Outlook's PascalCase keys (``NextExpectedRanges``), as the upload-session page shows them. A
``GET`` on the upload URL answers the session's status, as OneDrive's sessions document it
(for Outlook's: unconfirmed). Sessions open from 3 MB, read as 3,000,000 bytes (Microsoft's
"3 MB"; a field report saw them open from 2 MiB). Attachment POSTs are limited only by the
4 MB request. The mailbox's message list answers ``$filter=internetMessageId eq '...'``
with its drafts (the emulator keeps no other folder).
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import re
import secrets
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any
from urllib.parse import quote

from .directory import Tenant, User
from .entra import IssuedToken
from .errors import (
    GraphError,
    access_denied,
    body_read_error,
    item_not_found,
    method_not_allowed,
    send_as_denied,
)
from .http import Request, Response, graph_time, json_response
from .mail import (
    NO_RECIPIENTS,
    Attachment,
    SentMessage,
    decode_base64_mime,
    from_mime,
    json_attachment,
)
from .query import message_list_query
from .store import part_headers

#: Graph refuses an upload session for an attachment smaller than this ("3 MB").
MIN_UPLOAD_SESSION_BYTES = 3_000_000
#: Exchange's largest message, and so the largest attachment of an upload session (150 MB).
MAX_ATTACHMENT_BYTES = 150 * 1024 * 1024
#: Where upload URLs live on the emulator's host (Graph's are on outlook.office.com).
UPLOAD_PREFIX = "/upload/"
#: How long an upload session stays valid, as advertised in ``expirationDateTime``.
SESSION_LIFETIME = timedelta(minutes=15)
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")
_MESSAGE_FIELDS = {"id": "id", "isdraft": "isDraft", "internetmessageid": "internetMessageId"}


@dataclass
class Draft:
    """A draft in a mailbox's Drafts folder: its MIME and the attachments added since."""

    id: str
    mailbox: User
    raw: bytes = field(repr=False)
    subject: str
    attachments: list[Attachment] = field(default_factory=list)
    created: float = field(default_factory=time.time)
    message_id: str | None = None  # the MIME's Message-ID: Graph's internetMessageId


@dataclass
class UploadSession:
    """An attachment being uploaded to a draft, chunk by chunk, in order."""

    id: str
    token: str
    draft: Draft
    size: int
    attachment: Callable[[bytes], Attachment]  # the uploaded bytes as the item described them
    expires: datetime
    data: bytearray = field(default_factory=bytearray, repr=False)
    app_id: str = ""  # the application that created it: its chunk PUTs spend that app's budgets


def upload_kind(method: str) -> str:
    return {"PUT": "upload_chunk", "DELETE": "upload_cancel", "GET": "upload_status"}.get(
        method, "other"
    )


class DraftStore:
    """Every mailbox's drafts and open upload sessions; thread-safe (handler threads)."""

    def __init__(
        self,
        tenant: Tenant,
        base_url: Callable[[], str],
        deliver: Callable[[SentMessage], None],
    ) -> None:
        self.tenant = tenant
        self.base_url = base_url
        self.deliver = deliver
        self._lock = threading.Lock()
        self._drafts: dict[str, Draft] = {}
        self._sessions: dict[str, UploadSession] = {}
        #: How many bytes of each of the next chunk PUTs to store (see ``store_partial``).
        self._partial: deque[int] = deque()
        #: Called as a draft is sent, with the mailbox and the number of recipients; raises
        #: the refusal when the mailbox is over its recipient rate limit.
        self.before_send: Callable[[User, int], None] = lambda mailbox, count: None

    # state --------------------------------------------------------------------------------

    @property
    def drafts(self) -> list[Draft]:
        with self._lock:
            return list(self._drafts.values())

    def clear(self) -> None:
        with self._lock:
            self._drafts.clear()
            self._sessions.clear()
            self._partial.clear()

    def store_partial(self, *keep: int) -> None:
        """The next chunk PUTs store only the first ``keep[i]`` bytes of their body and answer
        for those: with ``fail_next("reset_after", on="upload_chunk")``, a connection that
        broke with part of a chunk stored."""
        if any(n < 0 for n in keep):
            raise ValueError("keep counts bytes: >= 0")
        with self._lock:
            self._partial.extend(keep)

    # /v1.0/users/{id}/messages... ---------------------------------------------------------

    def create(self, request: Request, mailbox: User) -> Response:
        media_type = request.media_type()
        if media_type != "text/plain":
            raise body_read_error(
                f"The content type '{media_type or 'none'}' is not supported here; the "
                "emulator creates drafts from base64 MIME ('text/plain') only."
            )
        raw = decode_base64_mime(request.body)
        parsed = from_mime(raw, mailbox, request.request_id)
        draft = Draft(
            id=_message_id(),
            mailbox=mailbox,
            raw=raw,
            subject=parsed.subject,
            message_id=parsed.header("Message-ID"),
        )
        with self._lock:
            self._drafts[draft.id] = draft
        return json_response(201, self._message_json(draft, parsed))

    def add_attachment(self, request: Request, draft: Draft) -> Response:
        attachment = json_attachment(request.json())
        attachment_id = _attachment_id()
        with self._lock:
            if draft.id not in self._drafts:
                raise item_not_found()
            draft.attachments.append(attachment)
        body = {
            "@odata.type": "#microsoft.graph.fileAttachment",
            "id": attachment_id,
            "name": attachment.filename,
            "contentType": attachment.content_type,
            "size": attachment.size,
            "isInline": attachment.inline,
            "contentId": attachment.content_id,
        }
        return json_response(201, body)

    def list_messages(self, request: Request, mailbox: User) -> Response:
        """``GET /users/{id}/messages``: the mailbox's drafts, all of them or those whose
        ``internetMessageId`` is the one of ``$filter=internetMessageId eq '<id>'``."""
        wanted, selected = message_list_query(request.query, _MESSAGE_FIELDS)
        fields = selected or list(_MESSAGE_FIELDS.values())
        with self._lock:
            drafts = [d for d in self._drafts.values() if d.mailbox.id == mailbox.id]
        found = [d for d in drafts if wanted is None or d.message_id == wanted]
        found.sort(key=lambda d: d.created)
        values = [
            {
                field: {"id": d.id, "isDraft": True, "internetMessageId": d.message_id}[field]
                for field in fields
            }
            for d in found
        ]
        context = f"{self.base_url()}/v1.0/$metadata#users('{quote(mailbox.id)}')/messages"
        return json_response(200, {"@odata.context": context, "value": values})

    def create_upload_session(self, request: Request, draft: Draft, app_id: str = "") -> Response:
        size, attachment = _attachment_item(request)
        if size < MIN_UPLOAD_SESSION_BYTES:
            raise GraphError(
                400,
                "ErrorAttachmentSizeShouldNotBeLessThanMinimumSize",
                "Attachment size must be greater than the minimum size.",
            )
        if size > MAX_ATTACHMENT_BYTES:
            raise GraphError(
                400, "ErrorMessageSizeExceeded", "The message exceeds the maximum supported size."
            )
        session = UploadSession(
            id=uuid.uuid4().hex,
            token=secrets.token_urlsafe(24),
            draft=draft,
            size=size,
            attachment=attachment,
            expires=datetime.now(timezone.utc) + SESSION_LIFETIME,
            app_id=app_id,
        )
        with self._lock:
            if draft.id not in self._drafts:
                raise item_not_found()
            self._sessions[session.id] = session
        body = {
            "@odata.context": f"{self.base_url()}/v1.0/$metadata#microsoft.graph.uploadSession",
            "uploadUrl": f"{self.base_url()}{UPLOAD_PREFIX}{session.id}?authtoken={session.token}",
            "expirationDateTime": graph_time(session.expires, ".%f0"),
            "nextExpectedRanges": ["0-"],
        }
        return json_response(201, body)

    def send(self, request: Request, mailbox: User, draft_id: str, token: IssuedToken) -> Response:
        """Deliver the draft with every attachment, then remove it from Drafts."""
        if request.header("Content-Length") is None:
            raise GraphError(411, "LengthRequired", "Length Required: send Content-Length: 0.")
        if request.body:
            raise body_read_error("The send action takes no request body.")
        if not self.tenant.may_send_from(mailbox, token.roles):
            raise access_denied()
        draft = self.find(mailbox, draft_id)
        parsed = from_mime(draft.raw, mailbox, request.request_id)
        if not self.tenant.may_send_as(mailbox, parsed.from_):
            raise send_as_denied()
        if not parsed.recipients:
            raise GraphError(400, "ErrorInvalidRecipients", NO_RECIPIENTS)
        with self._lock:
            if draft.id not in self._drafts:
                raise item_not_found()
            self.before_send(mailbox, len(parsed.recipients))
            self._forget(draft)
            added = list(draft.attachments)
        self.deliver(
            dataclasses.replace(
                parsed,
                attachments=[*parsed.attachments, *added],
                raw=assemble_mime(draft.raw, added),
                format="draft",
                draft_id=draft.id,
            )
        )
        return Response(202)

    def delete(self, draft: Draft) -> Response:
        with self._lock:
            self._forget(draft)
        return Response(204)

    def _forget(self, draft: Draft) -> None:
        """Remove ``draft`` and its upload sessions (the lock held)."""
        self._drafts.pop(draft.id, None)
        self._sessions = {k: s for k, s in self._sessions.items() if s.draft is not draft}

    # the upload URL -----------------------------------------------------------------------

    def _session(self, path: str) -> UploadSession | None:
        with self._lock:
            return self._sessions.get(path[len(UPLOAD_PREFIX) :].strip("/"))

    def session_draft(self, path: str) -> str | None:
        """The id of the draft whose upload session is at ``path``, if it is open."""
        session = self._session(path) if path.startswith(UPLOAD_PREFIX) else None
        return session.draft.id if session is not None else None

    def session_owner(self, path: str) -> tuple[str, str] | None:
        """(application id, mailbox id) of the upload session at ``path``, if it is open."""
        session = self._session(path)
        return (session.app_id, session.draft.mailbox.id) if session is not None else None

    def upload(self, request: Request) -> Response:
        """``PUT`` a chunk to, or ``DELETE``, an upload session (pre-authenticated URL)."""
        if request.header("Authorization") is not None:
            raise GraphError(
                401,
                "InvalidAudience",
                "The upload URL is pre-authenticated: send the request without an "
                "Authorization header.",
            )
        session = self._session(request.path)
        token = dict(request.query).get("authtoken")
        if session is None:
            raise item_not_found()
        if token is None or not secrets.compare_digest(token, session.token):
            raise GraphError(
                401, "InvalidAuthenticationToken", "The upload URL's authtoken is not valid."
            )
        if request.method == "DELETE":
            with self._lock:
                self._sessions.pop(session.id, None)
            return Response(204)
        if request.method == "GET":
            with self._lock:
                expected = len(session.data)
            return json_response(200, self._session_status(session, expected))
        if request.method != "PUT":
            raise method_not_allowed()
        return self._chunk(request, session)

    def _chunk(self, request: Request, session: UploadSession) -> Response:
        start, end, total = _content_range(request.header("Content-Range"))
        if total != session.size:
            raise _bad_range(f"total {total} is not the session's size {session.size}.")
        if end - start + 1 != len(request.body):
            raise _bad_range(
                f"covers {end - start + 1} bytes but the body has {len(request.body)}."
            )
        if end >= total:
            raise _bad_range("ends past the total.")
        with self._lock:
            if session.id not in self._sessions:
                raise item_not_found()
            expected = len(session.data)
            if start != expected:
                raise GraphError(
                    416,
                    "InvalidRange",
                    f"Bytes must be sent in order: the next expected range is {expected}-.",
                )
            stored = self._partial.popleft() if self._partial else len(request.body)
            stored = min(stored, len(request.body))
            session.data += request.body[:stored]
            done = len(session.data) == session.size
            if done:
                del self._sessions[session.id]
                attachment_id = _attachment_id()
                session.draft.attachments.append(session.attachment(bytes(session.data)))
                session.data = bytearray()
        if done:
            draft = session.draft
            location = (
                f"{self.base_url()}/api/v2.0/Users('{draft.mailbox.id}')/Messages('{draft.id}')"
                f"/Attachments('{attachment_id}')"
            )
            return Response(201, b"", {"Location": location})
        return json_response(200, self._session_status(session, expected + stored))

    def _session_status(self, session: UploadSession, expected: int) -> dict[str, Any]:
        return {
            "@odata.context": (
                f"{self.base_url()}/api/v2.0/$metadata#Users('{session.draft.mailbox.id}')"
                f"/Messages('{session.draft.id}')/AttachmentSessions/$entity"
            ),
            "ExpirationDateTime": graph_time(session.expires, ".%f0"),
            "NextExpectedRanges": [str(expected)],
        }

    # helpers ------------------------------------------------------------------------------

    def find(self, mailbox: User, draft_id: str) -> Draft:
        with self._lock:
            draft = self._drafts.get(draft_id)
        if draft is None or draft.mailbox.id != mailbox.id:
            raise item_not_found()
        return draft

    def _message_json(self, draft: Draft, parsed: SentMessage) -> dict[str, Any]:
        def recipients(addresses: list[str]) -> list[dict[str, Any]]:
            return [{"emailAddress": {"address": a}} for a in addresses]

        return {
            "@odata.context": (
                f"{self.base_url()}/v1.0/$metadata#users('{quote(draft.mailbox.id)}')"
                "/messages/$entity"
            ),
            "id": draft.id,
            "isDraft": True,
            "subject": parsed.subject,
            "internetMessageId": parsed.header("Message-ID"),
            "hasAttachments": bool(parsed.attachments),
            "from": {"emailAddress": {"address": parsed.from_}},
            "toRecipients": recipients(parsed.to),
            "ccRecipients": recipients(parsed.cc),
            "bccRecipients": recipients(parsed.bcc),
        }


def assemble_mime(raw: bytes, attachments: list[Attachment]) -> bytes:
    """The draft's MIME with the added attachments as parts: what transport would send.

    Built by hand around ``base64.encodebytes`` (the email package's generator takes seconds
    for a 40 MB attachment): the new parts go into the top-level multipart/mixed, or the
    message is wrapped in one.
    """
    if not attachments:
        return raw
    boundary = f"=_emulator_{uuid.uuid4().hex}"
    top = BytesParser(policy=policy.SMTP).parsebytes(raw, headersonly=True)
    existing = top.get_boundary() if top.get_content_type() == "multipart/mixed" else None
    if existing:
        close = f"--{existing}--".encode()
        at = raw.rfind(close)
        if at != -1:
            parts = b"".join(_part(a, existing) for a in attachments)
            return raw[:at] + parts + raw[at:]
    head, body = _split_head(raw)
    fields = _fields(head)
    outer = [f for name, f in fields if not name.startswith("content-") and name != "mime-version"]
    inner = [f for name, f in fields if name.startswith("content-")]
    return b"".join(
        [
            *outer,
            b"MIME-Version: 1.0\r\n",
            f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'.encode(),
            f"--{boundary}\r\n".encode(),
            *inner,
            b"\r\n",
            body,
            b"" if body.endswith(b"\n") else b"\r\n",
            *(_part(a, boundary) for a in attachments),
            f"--{boundary}--\r\n".encode(),
        ]
    )


def _split_head(raw: bytes) -> tuple[bytes, bytes]:
    for separator in (b"\r\n\r\n", b"\n\n"):
        head, found, body = raw.partition(separator)
        if found:
            return head + separator[: len(separator) // 2], body
    return raw, b""


def _fields(head: bytes) -> list[tuple[str, bytes]]:
    """Header fields with their folded continuation lines, and their lower-case names."""
    fields: list[tuple[str, bytes]] = []
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + line)
        elif line.strip():
            name = line.split(b":", 1)[0].decode("ascii", "replace").strip().lower()
            fields.append((name, line if line.endswith(b"\n") else line + b"\r\n"))
    return fields


def _part(attachment: Attachment, boundary: str) -> bytes:
    """One base64 body part; the email package writes the headers, we write the body."""
    headers = EmailMessage(policy=policy.SMTP)
    headers.set_content(b"", **part_headers(attachment))
    head = headers.as_bytes().split(b"\r\n\r\n", 1)[0]
    encoded = base64.encodebytes(attachment.content).replace(b"\n", b"\r\n")
    return f"--{boundary}\r\n".encode() + head + b"\r\n\r\n" + encoded


def _attachment_item(request: Request) -> tuple[int, Callable[[bytes], Attachment]]:
    """``{"AttachmentItem": {...}}`` checked as Graph would (name, size, attachmentType): the
    size, and what makes the attachment of the uploaded bytes."""
    payload = request.json()
    item = payload.get("AttachmentItem") if isinstance(payload, dict) else None
    if not isinstance(item, dict):
        raise GraphError(
            400, "ErrorInvalidParameter", "The value of the parameter 'AttachmentItem' is empty."
        )
    if item.get("attachmentType") != "file":
        raise body_read_error("The attachmentType of an upload session must be 'file'.")
    name, size = item.get("name"), item.get("size")
    if not isinstance(name, str) or not name:
        raise GraphError(400, "ErrorInvalidParameter", "The attachment name is required.")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise body_read_error("Cannot convert the literal to the expected type 'Edm.Int64'.")
    inline = item.get("isInline", False)
    content_id = item.get("contentId")
    content_type = item.get("contentType") or "application/octet-stream"
    if not isinstance(inline, bool):
        raise body_read_error("Cannot convert the literal to the expected type 'Edm.Boolean'.")
    if content_id is not None and not isinstance(content_id, str):
        raise body_read_error("Cannot convert a value to type 'Edm.String' for 'contentId'.")
    if not isinstance(content_type, str):
        raise body_read_error("Cannot convert a value to type 'Edm.String' for 'contentType'.")
    return size, functools.partial(
        Attachment.of,
        filename=name,
        content_type=content_type,
        content_id=content_id,
        inline=inline,
    )


def _content_range(value: str | None) -> tuple[int, int, int]:
    match = _CONTENT_RANGE.match((value or "").strip())
    if match is None:
        raise _bad_range("header 'bytes {start}-{end}/{total}' is required.", "A")
    start, end, total = (int(group) for group in match.groups())
    if end < start:
        raise _bad_range("ends before it starts.")
    return start, end, total


def _bad_range(problem: str, article: str = "The") -> GraphError:
    return GraphError(400, "InvalidContentRange", f"{article} Content-Range {problem}")


def _message_id() -> str:
    """An opaque id shaped like Exchange's (base64, ``=`` padding, ``-`` and ``_``)."""
    return "AAMkAG" + base64.urlsafe_b64encode(uuid.uuid4().bytes + b"\x00draft").decode()


def _attachment_id() -> str:
    return "AAMkAGAtt" + base64.urlsafe_b64encode(uuid.uuid4().bytes).decode()
