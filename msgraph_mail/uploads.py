"""An attachment through an upload session: ordered chunks to a pre-authenticated URL.

An attachment too large for one attachment request (``MAX_POSTED_BYTES``) is uploaded through
``createUploadSession`` in ordered chunks of 3,276,800 bytes (10 x 320 KiB, under the 4 MB
limit), to a pre-authenticated URL that gets no Authorization header. A chunk whose
connection broke after it left is sent again, from where the session says it stands. Each
chunk is a ``memoryview`` slice of the attachment's bytes, written to the socket as it is.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any, cast
from urllib.parse import urlsplit

import requests

from . import telemetry
from .conf import is_loopback
from .exceptions import GraphAPIError, GraphConnectionError, MSGraphMailError
from .graph import RETRIED_STATUSES, GraphClient, before_sending, graph_error, mailbox_of
from .large import CHUNK_BYTES, MAX_POSTED_BYTES, Part
from .retry import RetryBudget, parse_retry_after

logger = logging.getLogger("msgraph_mail")

#: An upload session's URL in telemetry: never the URL itself, which is its key.
UPLOAD_TEMPLATE = "/upload-session"


def log_extra(
    client: GraphClient,
    mailbox: str | None,
    request_id: str | None = None,
    status: str | None = None,
) -> dict[str, Any]:
    """The log fields of the draft route's records (uploads and the draft's own steps)."""
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
                    extra=log_extra(client, mailbox),
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
        extra=log_extra(client, mailbox, request_id, str(status) if status else None),
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
