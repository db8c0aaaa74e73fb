"""The draft route: create the draft, attach and upload its parts, send it.

Carries out a :class:`~msgraph_mail.large.DraftPlan`. Should the route fail before the send,
the draft is deleted -- also one whose creation went unanswered, found by its Message-ID.
Only the send itself can leave the outcome unknown; then the draft is kept, and the error
says where to look.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from . import retry, telemetry
from .exceptions import (
    DeliveryUnknown,
    GraphAPIError,
    GraphConnectionError,
    MailboxOutOfScope,
    MSGraphMailError,
)
from .graph import GraphClient, Response, mailbox_of, user_path
from .large import DraftPlan, Part
from .uploads import log_extra, upload

logger = logging.getLogger("msgraph_mail")

#: How long to look for a draft whose creation went unanswered, in units of the backoff
#: base (1 s): it may take a moment to be listed. Bounded by MAX_RETRY_WAIT too.
ORPHAN_SEARCH_WAITS = (0.25, 0.5, 1.0, 2.0)

_FIX = (
    "LARGE_MESSAGES needs the application permission Mail.ReadWrite with admin consent, or "
    "(MODE rbac) the Exchange role 'Application Mail.ReadWrite' assigned to the app in the "
    "same management scope as 'Application Mail.Send'"
)


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
        extra=log_extra(client, mailbox, response.request_id, "sent"),
    )
    return response


def _sized(span: Any, part: Part) -> None:
    """An attachment's size on its step's span (never its name: a file name may be personal)."""
    if span.is_recording():
        span.set_attribute("msgraph_mail.attachment.size", part.size)


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
            extra=log_extra(client, mailbox_of(messages), exc.request_id, str(exc.status or "")),
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
                extra=log_extra(client, mailbox_of(messages)),
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
                extra=log_extra(client, mailbox_of(messages), exc.request_id),
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
