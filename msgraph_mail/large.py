"""Messages above Graph's 4 MB request limit: a draft, upload sessions, then send.

Opt-in with ``LARGE_MESSAGES``, since drafts need the application permission Mail.ReadWrite
(GRAPH_NOTES A.3). The message's MIME, without the attachments too large for one attachment
request, becomes a draft (headers, bodies, inline parts and every recipient, Bcc included, are
kept); each of those is uploaded through ``createUploadSession`` in ordered chunks of
3,276,800 bytes (10 x 320 KiB, under the 4 MB limit), to a pre-authenticated URL that gets no
Authorization header; then the draft is sent. Should the route fail before the send, the
draft is deleted -- also one whose creation went unanswered, found by its Message-ID. A chunk
whose connection broke after it left is sent again, from where the session says it stands.

Memory: an attachment's bytes are never base64-encoded as a whole nor copied per chunk; each
chunk is a ``memoryview`` slice of the bytes Django already holds, written to the socket as
it is.
"""

from __future__ import annotations

import base64
import copy
import logging
import mimetypes
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from typing import Any, cast
from urllib.parse import quote, urlsplit

import requests
from django.core.mail import EmailMessage

from . import retry, telemetry
from .conf import is_loopback
from .exceptions import (
    DeliveryUnknown,
    GraphAPIError,
    GraphConnectionError,
    MailboxOutOfScope,
    MessageTooLarge,
    MSGraphMailError,
)
from .graph import (
    RETRIED_STATUSES,
    GraphClient,
    Response,
    before_sending,
    graph_error,
    mailbox_of,
    user_path,
)
from .mime import MAX_REQUEST_BYTES, build_mime, message_id_of
from .retry import RetryBudget, parse_retry_after

logger = logging.getLogger("msgraph_mail")

#: An upload session's URL in telemetry: never the URL itself, which is its key.
UPLOAD_TEMPLATE = "/upload-session"
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
#: How long to look for a draft whose creation went unanswered, in units of the backoff
#: base (1 s): it may take a moment to be listed. Bounded by MAX_RETRY_WAIT too.
ORPHAN_SEARCH_WAITS = (0.25, 0.5, 1.0, 2.0)

_FIX = (
    "LARGE_MESSAGES needs the application permission Mail.ReadWrite with admin consent, or "
    "(MODE rbac) the Exchange role 'Application Mail.ReadWrite' assigned to the app in the "
    "same management scope as 'Application Mail.Send'"
)


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


def send_draft(
    client: GraphClient,
    mailbox: str,
    plan: DraftPlan,
    explain: Callable[[MSGraphMailError], MSGraphMailError],
    recipients: int = 0,
) -> Response:
    """Create the draft, attach and upload, send; delete the draft if anything fails first.

    ``explain`` turns Graph's refusals of the mailbox (the draft creation and the send) into
    the resolver's typed errors. Before the send nothing can have been sent, so a gateway
    timeout there is a plain failure; only the send itself can leave the outcome unknown.
    A draft created without an answer is looked up by the message's Message-ID and deleted.
    """
    messages = f"{user_path(mailbox)}/messages"
    draft: str | None = None
    step = "creating the draft"
    try:
        try:
            with telemetry.span("msgraph_mail draft create"):
                created = client.request(
                    "POST", messages, data=plan.mime_base64, headers={"Content-Type": "text/plain"}
                )
        except MSGraphMailError as exc:
            explained = _explain_create(exc, mailbox, explain)
            if explained is exc:
                raise
            raise explained from exc
        draft = _draft_id(created)
        path = f"{messages}/{quote(draft, safe='=')}"
        for part in plan.posts:
            step = f"attaching {part.name!r}"
            with telemetry.span("msgraph_mail draft attach") as span:
                _sized(span, part)
                client.request("POST", f"{path}/attachments", json=part.file_attachment())
        for part in plan.uploads:
            step = f"uploading {part.name!r} ({part.size:,} bytes)"
            with telemetry.span("msgraph_mail draft upload") as span:
                _sized(span, part)
                upload(client, path, part)
    except MSGraphMailError as exc:
        if draft is None and isinstance(exc, DeliveryUnknown):
            note = _delete_unanswered(client, messages, mailbox, plan.message_id)
        else:
            note = _delete(client, messages, draft)
        failed = _failed(exc, step, note)
        if failed is exc:
            raise
        raise failed from exc
    except BaseException:
        _delete(client, messages, draft)
        raise
    try:
        with telemetry.span("msgraph_mail draft send"):
            response = client.request(
                "POST", f"{path}/send", recipients=recipients, headers={"Content-Length": "0"}
            )
    except DeliveryUnknown as exc:
        exc.message += (
            f"; the draft was kept: if it is still in the Drafts folder of {mailbox}, the "
            "message was not sent"
        )
        exc.args = (exc.message,)
        raise
    except MSGraphMailError as exc:
        note = _delete(client, messages, draft)
        error = explain(exc)
        error.message += f" (sending the draft; {note})"
        error.args = (error.message,)
        if error is exc:
            raise
        raise error from exc
    logger.info(
        "Sent message %s through a draft in %s: %d attachment(s) uploaded, %d posted, "
        "%s bytes in all",
        plan.message_id,
        mailbox,
        len(plan.uploads),
        len(plan.posts),
        f"{plan.size:,}",
        extra=_log_extra(client, mailbox, response.request_id, "sent"),
    )
    return response


def _sized(span: Any, part: Part) -> None:
    """An attachment's size on its step's span (never its name: a file name may be personal)."""
    if span.is_recording():
        span.set_attribute("msgraph_mail.attachment.size", part.size)


def _log_extra(
    client: GraphClient,
    mailbox: str | None,
    request_id: str | None = None,
    status: str | None = None,
) -> dict[str, Any]:
    return telemetry.log_extra(
        client.settings, request_id=request_id, mailbox=mailbox, status=status, route="draft"
    )


def upload(client: GraphClient, message_path: str, part: Part) -> None:
    """One attachment through an upload session, chunk by chunk, in order.

    Each chunk starts where Graph's ``nextExpectedRanges`` says; 429 and 503 are retried after
    Retry-After (MAX_RETRIES, MAX_RETRY_WAIT per chunk). A chunk whose connection broke or
    timed out after it left is resumed rather than failing the message (at most MAX_RETRIES
    times per attachment): the same chunk is sent again, as the bytes of a broken request are
    dropped; if the session already holds them (416), its status (``GET`` on the upload URL)
    says where to go on.
    """
    try:
        session = client.request(
            "POST",
            f"{message_path}/attachments/createUploadSession",
            json={"AttachmentItem": part.attachment_item()},
        ).body
    except MSGraphMailError as exc:
        if exc.code == "ErrorAttachmentSizeShouldNotBeLessThanMinimumSize":
            exc.message += (
                f" (the attachment is {part.size:,} bytes: too large for one attachment "
                f"request, which takes at most {MAX_POSTED_BYTES:,}, and under this "
                "service's minimum for an upload session, which Microsoft documents as 3 MB)"
            )
            exc.args = (exc.message,)
        raise
    url = str(session.get("uploadUrl") or "") if isinstance(session, dict) else ""
    _check_upload_url(url)
    mailbox = mailbox_of(message_path)
    view = memoryview(part.content).cast("B")
    size = view.nbytes
    offset = _next_offset(session, 0)
    stalls = 0
    resumes = RetryBudget(client.settings.max_retries, client.settings.max_retry_wait)
    while True:
        end = min(offset + CHUNK_BYTES, size)
        response = _put_chunk(client, mailbox, url, view[offset:end], offset, size)
        if response is not None and response.status_code == 404:
            raise _refusal(
                response,
                " (the upload session is gone; after a chunk that broke off, the attachment "
                "may have been complete, but that cannot be known)"
                if resumes.retries
                else "",
            )
        if response is not None and response.status_code == 416 and not resumes.retries:
            raise _refusal(response)  # not after a broken chunk: a plain refusal
        if response is None or response.status_code == 416:
            wait = resumes.next_wait(None)
            if wait is None:
                raise GraphConnectionError(
                    f"The upload of bytes {offset}-{end - 1}/{size} broke off and could not be "
                    f"resumed ({resumes.retries} tries: MAX_RETRIES / MAX_RETRY_WAIT)"
                )
            if response is not None:  # the session has more than we thought: ask where
                offset = _session_offset(client, mailbox, url, _json(response), size)
            else:
                _pause(
                    wait, f"chunk {offset}-{end - 1}: broken off after it was sent", client, mailbox
                )
            continue
        if response.status_code == 201:
            return
        if end >= size:
            raise GraphAPIError(
                f"Graph answered HTTP {response.status_code} to the last chunk instead of 201: "
                "the upload did not complete",
                status=response.status_code,
                request_id=response.headers.get("request-id"),
            )
        following = _next_offset(_json(response), end)
        stalls = stalls + 1 if following <= offset else 0
        if stalls > client.settings.max_retries:
            raise GraphAPIError("The upload session does not advance (nextExpectedRanges)")
        offset = following


def _put_chunk(
    client: GraphClient, mailbox: str | None, url: str, chunk: memoryview, start: int, size: int
) -> requests.Response | None:
    """PUT one chunk (a memoryview: sent without a copy), with no Authorization header.

    None: the connection broke or timed out after the chunk left (the caller resumes).
    """
    end = start + chunk.nbytes - 1
    return _upload_request(
        client,
        mailbox,
        "PUT",
        url,
        f"chunk {start}-{end}",
        data=cast(Any, chunk),  # a memoryview: urllib3 writes it without a copy
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Range": f"bytes {start}-{end}/{size}",
        },
    )


def _session_offset(
    client: GraphClient, mailbox: str | None, url: str, refusal: Any, size: int
) -> int:
    """Where the session stands after a 416: from the refusal if it says, else from a GET on
    the upload URL (documented for OneDrive's sessions; for Outlook's: UNCONFIRMED)."""
    offset = _next_offset(refusal, -1)
    if offset < 0:
        response = None
        while response is None:  # a GET may be repeated: it changes nothing
            response = _upload_request(client, mailbox, "GET", url, "session status")
        if response.status_code >= 400:
            raise _refusal(response, " (asking the upload session where it stands)")
        offset = _next_offset(_json(response), -1)
    if not 0 <= offset < size:
        raise GraphAPIError(
            "After a broken chunk, the upload session's status gives no byte to go on from "
            f"(nextExpectedRanges: {offset if offset >= 0 else 'none'} of {size:,})"
        )
    return offset


def _upload_request(
    client: GraphClient,
    mailbox: str | None,
    method: str,
    url: str,
    what: str,
    **kwargs: Any,
) -> requests.Response | None:
    """One request to the upload URL, with no Authorization header; None when the
    connection broke or timed out after it was sent.

    The request goes to the upload URL, not to Graph's host, but Graph counts it against the
    mailbox's upload volume and requests all the same. Connections that failed before the
    request left, 429 and 503 are retried (MAX_RETRIES, MAX_RETRY_WAIT); other answers of 400
    and up raise, but 404 and 416, which the caller reads.
    """
    settings = client.settings
    budget = RetryBudget(settings.max_retries, settings.max_retry_wait)
    data = kwargs.get("data")
    sent_bytes = memoryview(data).nbytes if data is not None else 0
    while True:
        request_id = str(uuid.uuid4())
        try:
            with (
                client.metered(mailbox, budget, upload_bytes=sent_bytes),
                telemetry.http_span(method, UPLOAD_TEMPLATE, urlsplit(url).hostname) as span,
            ):
                response = client.session.request(
                    method,
                    url,
                    data=data,
                    headers={**kwargs.get("headers", {}), "client-request-id": request_id},
                    timeout=settings.timeout,
                    auth=_no_authorization,
                )
                telemetry.answered(span, response.status_code, response.headers)
        except requests.RequestException as exc:
            if not (isinstance(exc, requests.ConnectionError) and before_sending(exc)):
                logger.warning(
                    "The upload's %s broke off after it was sent: %s",
                    what,
                    exc,
                    extra=_log_extra(client, mailbox),
                )
                return None
            wait = budget.next_wait(None)
            if wait is None:
                raise GraphConnectionError(
                    f"Cannot reach the upload URL for {what} ({type(exc).__name__})",
                    client_request_id=request_id,
                ) from None
            _pause(wait, f"{what}: {type(exc).__name__}", client, mailbox)
            continue
        if response.status_code in RETRIED_STATUSES:
            wait = budget.next_wait(parse_retry_after(response.headers.get("Retry-After")))
            if wait is not None:
                _pause(wait, f"{what}: HTTP {response.status_code}", client, mailbox, response)
                continue
        if response.status_code >= 400 and response.status_code not in (404, 416):
            raise graph_error(response, request_id)
        return response


def _refusal(response: requests.Response, note: str = "") -> MSGraphMailError:
    """Graph's error for an answer of the upload URL, with our ``client-request-id``."""
    sent = response.request.headers.get("client-request-id") if response.request else None
    error = graph_error(response, str(sent or ""))
    error.message += note
    error.args = (error.message,)
    return error


def _no_authorization(request: requests.PreparedRequest) -> requests.PreparedRequest:
    """The upload URL is pre-authenticated: never send a bearer token (nor .netrc's) to it."""
    request.headers.pop("Authorization", None)
    return request


def _pause(
    wait: float,
    reason: str,
    client: GraphClient,
    mailbox: str | None,
    response: requests.Response | None = None,
) -> None:
    status = response.status_code if response is not None else None
    request_id = response.headers.get("request-id") if response is not None else None
    logger.warning(
        "Retrying upload %s in %.2f s",
        reason,
        wait,
        extra=_log_extra(client, mailbox, request_id, str(status) if status else None),
    )
    with telemetry.retrying("upload", telemetry.retry_reason(status), status, wait):
        time.sleep(wait)


def _check_upload_url(url: str) -> None:
    parts = urlsplit(url)
    secure = parts.scheme == "https" or (
        parts.scheme == "http" and is_loopback(parts.hostname or "")
    )
    if not parts.hostname or not secure:
        raise GraphAPIError("Graph's upload session has no usable https uploadUrl")


def _next_offset(body: Any, default: int) -> int:
    """The first byte Graph expects next: ``nextExpectedRanges`` (any case), e.g. ``["0-"]``,
    ``["3276800"]`` or ``["3276800-6553599"]``."""
    if isinstance(body, dict):
        for key, ranges in body.items():
            if key.lower() != "nextexpectedranges" or not isinstance(ranges, list):
                continue
            starts = [str(r).split("-")[0].strip() for r in ranges]
            numbers = [int(s) for s in starts if s.isdigit()]
            if numbers:
                return min(numbers)
    return default


def _json(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _draft_id(created: Response) -> str:
    body = created.body
    draft = body.get("id") if isinstance(body, dict) else None
    if not isinstance(draft, str) or not draft:
        raise GraphAPIError(
            "Graph's answer to the draft creation has no message id",
            status=created.status,
            request_id=created.request_id,
            client_request_id=created.client_request_id,
        )
    return draft


def _explain_create(
    error: MSGraphMailError, mailbox: str, explain: Callable[[MSGraphMailError], MSGraphMailError]
) -> MSGraphMailError:
    """A refused draft means a missing Mail.ReadWrite, not a missing Mail.Send."""
    if error.code == "ErrorAccessDenied":
        return MailboxOutOfScope(
            f"The application may not create drafts in {mailbox}, which messages over 4 MB "
            f"need: {_FIX}",
            **error.context(mailbox=mailbox),
        )
    if isinstance(error, DeliveryUnknown):
        return error  # handled by _failed: a draft may exist, its id unknown
    return explain(error)


def _failed(error: MSGraphMailError, step: str, note: str) -> MSGraphMailError:
    """The error of a route that stopped before the send: nothing was sent."""
    message = f"Large message not sent: {step} failed: {error.message}; {note}"
    if isinstance(error, DeliveryUnknown):  # before the send, "maybe done" is still "not sent"
        return GraphConnectionError(
            message,
            **error.context(),
        )
    error.message = message
    error.args = (message,)
    return error


def _delete(client: GraphClient, messages: str, draft: str | None) -> str:
    """Delete the draft (no orphan in the user's Drafts); say what became of it."""
    if draft is None:
        return "no draft was created, unless Graph created one without answering"
    try:
        with telemetry.span("msgraph_mail draft delete"):
            client.request("DELETE", f"{messages}/{quote(draft, safe='=')}")
    except MSGraphMailError as exc:
        if exc.status == 404:
            return "the draft is gone"
        logger.error(
            "Could not delete draft %s: %s",
            draft,
            exc,
            extra=_log_extra(client, mailbox_of(messages), exc.request_id, str(exc.status or "")),
        )
        return f"the draft {draft} could not be deleted ({exc}): delete it from the Drafts folder"
    return "the draft was deleted"


def _delete_unanswered(
    client: GraphClient, messages: str, mailbox: str, message_id: str | None
) -> str:
    """Find the draft whose creation went unanswered by its Message-ID, and delete it.

    ``GET .../messages?$filter=internetMessageId eq '<id>'`` (the value percent-encoded per
    RFC 3986, its quotes doubled), polled a few times with a growing pause: a new draft may not
    be listed at once. Only drafts are deleted; a sent copy with the same id is left alone.
    """
    if not message_id:
        return (
            f"Graph may have created the draft without answering; with no Message-ID to find "
            f"it by, look for it in the Drafts folder of {mailbox}"
        )
    literal = message_id.replace("'", "''")
    expression = f"internetMessageId eq '{literal}'"
    query = f"{messages}?$filter={quote(expression, safe='')}&$select=id,isDraft"
    deadline = client.settings.max_retry_wait
    waited = 0.0
    lookups = 0
    for wait in (0.0, *(retry.BACKOFF_BASE * factor for factor in ORPHAN_SEARCH_WAITS)):
        if waited + wait > deadline:
            break
        if wait:
            logger.info(
                "Looking for the draft of %s again in %.2f s",
                message_id,
                wait,
                extra=_log_extra(client, mailbox_of(messages)),
            )
            time.sleep(wait)
            waited += wait
        lookups += 1
        try:
            found = client.request("GET", query).body
        except MSGraphMailError as exc:
            logger.error(
                "Could not look for the draft of %s: %s",
                message_id,
                exc,
                extra=_log_extra(client, mailbox_of(messages), exc.request_id),
            )
            return (
                f"Graph may have created the draft without answering, and looking for it by "
                f"its Message-ID {message_id} failed ({exc}): delete it from the Drafts folder "
                f"of {mailbox} if it is there"
            )
        values = found.get("value") if isinstance(found, dict) else None
        drafts = [
            str(item["id"])
            for item in values or []
            if isinstance(item, dict) and item.get("id") and item.get("isDraft", True) is True
        ]
        if drafts:
            notes = [_delete(client, messages, draft) for draft in drafts]
            if all(note in ("the draft was deleted", "the draft is gone") for note in notes):
                return (
                    f"Graph had created the draft without answering; it was found by its "
                    f"Message-ID {message_id} and deleted"
                )
            return "Graph had created the draft without answering; " + "; ".join(notes)
    return (
        f"no draft with the Message-ID {message_id} was found in {mailbox} ({lookups} "
        f"lookups in {waited:.2f} s): if one appears in its Drafts folder, delete it"
    )


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
