"""Each mailbox's Inbox: the reports Exchange writes there after a send, and what tests put in.

Read through Graph as Graph serves it (Learn: message-delta, delta-query-messages, message-get,
outlook-get-mime-message):

- ``GET /users/{id|upn}/mailFolders/inbox/messages/delta`` (also ``mailFolders('inbox')``, the
  folder's id and ``microsoft.graph.delta``): pages with ``@odata.nextLink`` (``$skiptoken``),
  the last with ``@odata.deltaLink`` (``$deltatoken``), which returns only what arrived since.
  ``$select``, ``$top`` and ``Prefer: odata.maxpagesize`` set what a page holds (10 messages by
  default: UNCONFIRMED), ``changeType`` is accepted; the tokens carry the first request's
  options. A token not issued for this mailbox is 410 ``SyncStateNotFound``, as Graph answers
  an expired one (Learn: delta-query-overview, "a 40X-series error with error codes such as
  syncStateNotFound"; the 410 and the PascalCase code from field reports). UNCONFIRMED whether
  Graph answers a malformed token with a 400 instead.
- ``GET /users/{id}/messages/{id}`` and ``.../$value``: the message, and its MIME served as
  ``text/plain`` (as field reports show Graph serving it). Only Inbox messages: the emulator
  keeps no MIME of its other folders, so their ids are 404 ``ErrorItemNotFound`` here.

Permissions as Graph's: ``Mail.ReadBasic.All``, ``Mail.Read`` or ``Mail.ReadWrite`` (or an
Exchange RBAC grant on the mailbox: ``rbac_read_scope``, ``rbac_readwrite_scope``) list and get,
without ``bodyPreview`` for ReadBasic, which excludes bodies (Learn: permissions reference;
leaving the property out is inferred); ``$value`` needs ``Mail.Read`` or ``Mail.ReadWrite`` (or
the RBAC Mail.ReadWrite scope). Anything else: 403 ``ErrorAccessDenied``.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import getaddresses, parsedate_to_datetime
from typing import Any
from urllib.parse import quote

from .directory import User
from .entra import IssuedToken
from .errors import GraphError, access_denied, bad_request, bad_segment, item_not_found
from .http import Request, Response, graph_time, json_response
from .mail import body_parts
from .query import options, select_fields, top

DEFAULT_PAGE = 10
_PREFER_PAGE = re.compile(r"odata\.maxpagesize\s*=\s*(\d+)", re.I)
_CHANGE_TYPES = ("created", "updated", "deleted")
_TAGS = re.compile(r"<[^>]*>")


@dataclass(frozen=True)
class InboxMessage:
    """A message in a mailbox's Inbox, with the properties Graph shows for it."""

    id: str
    mailbox_id: str
    raw: bytes = dataclasses.field(repr=False)
    received: datetime
    subject: str
    sender: tuple[str, str] | None  # (name, address)
    to: list[tuple[str, str]]
    internet_message_id: str | None
    sent: datetime | None
    preview: str
    has_attachments: bool

    @classmethod
    def parse(cls, mailbox_id: str, raw: bytes, received: datetime) -> InboxMessage:
        """Whatever arrived, however malformed: what cannot be read is left empty."""
        message = BytesParser(policy=policy.default).parsebytes(raw)
        assert isinstance(message, EmailMessage)
        text, html, attachments = body_parts(message)
        senders = _addresses(message, "From")
        return cls(
            id="AAMk" + uuid.uuid4().hex,
            mailbox_id=mailbox_id,
            raw=raw,
            received=received,
            subject=_header(message, "Subject") or "",
            sender=senders[0] if senders else None,
            to=_addresses(message, "To"),
            internet_message_id=_header(message, "Message-ID"),
            sent=_date(_header(message, "Date")),
            preview=_preview(text if text is not None else _TAGS.sub(" ", html or "")),
            has_attachments=bool(attachments),
        )

    def as_graph(self, fields: Iterable[str], full: bool) -> dict[str, Any]:
        """The message resource; without ``full`` read rights, no ``bodyPreview``."""
        return {name: _PROPERTIES[name](self) for name in fields if full or name != "bodyPreview"}


def _sender(message: InboxMessage) -> dict[str, Any] | None:
    return _recipient(*message.sender) if message.sender is not None else None


#: The message properties the emulator serves, each from a message; all by default.
_PROPERTIES: dict[str, Callable[[InboxMessage], Any]] = {
    "id": lambda m: m.id,
    "createdDateTime": lambda m: graph_time(m.received),
    "receivedDateTime": lambda m: graph_time(m.received),
    "sentDateTime": lambda m: graph_time(m.sent or m.received),
    "subject": lambda m: m.subject,
    "bodyPreview": lambda m: m.preview,
    "importance": lambda m: "normal",
    "parentFolderId": lambda m: inbox_id(m.mailbox_id),
    "from": _sender,
    "sender": _sender,
    "toRecipients": lambda m: [_recipient(*pair) for pair in m.to],
    "internetMessageId": lambda m: m.internet_message_id,
    "isRead": lambda m: False,
    "hasAttachments": lambda m: m.has_attachments,
}
#: The same, by lower-case name (``$select`` is case-insensitive).
_FIELDS = {name.lower(): name for name in _PROPERTIES}


@dataclass(frozen=True)
class _SyncState:
    """What a ``$skiptoken`` or ``$deltatoken`` stands for: the messages returned so far, the
    ones this round still owes, and the first request's options."""

    mailbox_id: str
    seen: frozenset[str]
    owed: tuple[str, ...]
    fields: tuple[str, ...]
    page: int
    change_type: str | None


def inbox_id(mailbox_id: str) -> str:
    """The Inbox's folder id in ``mailbox_id`` (stable, opaque like Exchange's)."""
    return "AQMkInbox" + uuid.uuid5(uuid.NAMESPACE_URL, mailbox_id).hex


class Inboxes:
    """Every mailbox's Inbox and the delta sync states issued; thread-safe."""

    def __init__(
        self,
        base_url: Callable[[], str],
        may_read_basic: Callable[[User, Iterable[str]], bool],
        may_read_full: Callable[[User, Iterable[str]], bool],
    ) -> None:
        self.base_url = base_url
        self.may_read_basic, self.may_read_full = may_read_basic, may_read_full
        self._lock = threading.Lock()
        self._messages: list[InboxMessage] = []
        self._states: dict[str, _SyncState] = {}
        #: Called before every read, to let what is due arrive (the delivery reports).
        self.before_read: Callable[[], None] = lambda: None
        #: Called with (mailbox id, message id) for each arrival (change notifications).
        self.on_arrival: Callable[[str, str], None] = lambda mailbox_id, message_id: None

    def add(self, mailbox: User, raw: bytes, received: datetime | None = None) -> InboxMessage:
        message = InboxMessage.parse(mailbox.id, raw, received or datetime.now(timezone.utc))
        with self._lock:
            self._messages.append(message)
        self.on_arrival(mailbox.id, message.id)
        return message

    def messages(self, mailbox_id: str | None = None) -> list[InboxMessage]:
        """The Inbox of ``mailbox_id`` (None: every mailbox's), in order of arrival."""
        self.before_read()
        with self._lock:
            return [m for m in self._messages if mailbox_id in (None, m.mailbox_id)]

    def clear(self) -> None:
        with self._lock:
            self._messages.clear()
            self._states.clear()

    def _full(self, mailbox: User, token: IssuedToken) -> bool:
        """Whether the token may read bodies and MIME too; 403 if it may not even list."""
        if not self.may_read_basic(mailbox, token.roles):
            raise access_denied()
        return self.may_read_full(mailbox, token.roles)

    def get(self, request: Request, mailbox: User, token: IssuedToken, item: str) -> Response:
        full = self._full(mailbox, token)
        fields = _selected(options(request.query, ("$select",)).get("$select"))
        found = self._message(mailbox, item)
        context = f"{self.base_url()}/v1.0/$metadata#users('{quote(mailbox.id)}')/messages/$entity"
        return json_response(200, {"@odata.context": context, **found.as_graph(fields, full)})

    def value(self, request: Request, mailbox: User, token: IssuedToken, item: str) -> Response:
        """``$value``: the message's MIME, for Mail.Read or Mail.ReadWrite only."""
        full = self._full(mailbox, token)
        options(request.query, ())
        if not full:
            raise access_denied()
        return Response(200, self._message(mailbox, item).raw, {"Content-Type": "text/plain"})

    def delta(self, request: Request, mailbox: User, token: IssuedToken, folder: str) -> Response:
        """One page of a delta round; the round's state goes into the link it answers with."""
        full = self._full(mailbox, token)
        if folder.lower() != "inbox" and folder != inbox_id(mailbox.id):
            raise bad_segment(folder)
        found = options(request.query, ("$select", "$top", "$skiptoken", "$deltatoken"))
        state = self._state(request, found, mailbox)
        page = _prefer_page(request) or state.page
        batch, owed = state.owed[:page], state.owed[page:]
        key = secrets.token_urlsafe(24)
        with self._lock:
            by_id = {m.id: m for m in self._messages}
            self._states[key] = dataclasses.replace(state, seen=state.seen | set(batch), owed=owed)
        link = (
            f"{self.base_url()}/v1.0/users/{quote(mailbox.id)}/mailFolders('inbox')/messages"
            f"/delta?${'skiptoken' if owed else 'deltatoken'}={key}"
        )
        body = {
            "@odata.context": f"{self.base_url()}/v1.0/$metadata#Collection(message)",
            "@odata.nextLink" if owed else "@odata.deltaLink": link,
            "value": [
                {"@odata.type": "#microsoft.graph.message", **by_id[i].as_graph(state.fields, full)}
                for i in batch
            ],
        }
        response = json_response(200, body)
        if _prefer_page(request):
            response.headers["Preference-Applied"] = f"odata.maxpagesize={page}"
        return response

    def _state(self, request: Request, given: dict[str, str], mailbox: User) -> _SyncState:
        """The round a request continues (a token), or a new one over the whole folder."""
        arrived = [m.id for m in self.messages(mailbox.id)]
        token = given.get("$skiptoken") or given.get("$deltatoken")
        if token is None:
            change_type = next((v for k, v in request.query if k.lower() == "changetype"), None)
            if change_type is not None and change_type not in _CHANGE_TYPES:
                raise GraphError(
                    400, "ErrorInvalidUrlQuery", f"Invalid changeType '{change_type}'."
                )
            fields = _selected(given.get("$select"))
            value = given.get("$top")
            error = bad_request(f"Invalid value '{value}' for $top.")
            page = top(value, None, error) if value is not None else DEFAULT_PAGE
            return _SyncState(
                mailbox.id, frozenset(), tuple(arrived), tuple(fields), page, change_type
            )
        with self._lock:
            state = self._states.get(token)
        if state is None or state.mailbox_id != mailbox.id:
            raise GraphError(410, "SyncStateNotFound", "The sync state generation is not found.")
        if "$deltatoken" in given:  # a new round: what arrived since (messages are only created)
            new = [i for i in arrived if i not in state.seen]
            owed = tuple(new) if state.change_type in (None, "created") else ()
            state = dataclasses.replace(state, owed=owed)
        return state

    def _message(self, mailbox: User, message_id: str) -> InboxMessage:
        found = next((m for m in self.messages(mailbox.id) if m.id == message_id), None)
        if found is None:
            raise item_not_found()
        return found


def _selected(select: str | None) -> list[str]:
    """The properties a ``$select`` names (``id`` first), or every one."""
    return list(_FIELDS.values()) if select is None else select_fields(select, _FIELDS)


def _prefer_page(request: Request) -> int | None:
    match = _PREFER_PAGE.search(request.header("Prefer") or "")
    return max(1, int(match.group(1))) if match else None


def _header(message: EmailMessage, name: str) -> str | None:
    try:
        value = message[name]
    except Exception:  # a header the parser cannot make sense of
        return None
    return " ".join(str(value).split()) if value is not None else None


def _addresses(message: EmailMessage, name: str) -> list[tuple[str, str]]:
    try:
        raw = [str(value) for value in message.get_all(name, [])]
    except Exception:  # a header the parser cannot make sense of
        return []
    return [(n, a) for n, a in getaddresses(raw) if a]


def _date(value: str | None) -> datetime | None:
    try:
        return parsedate_to_datetime(value) if value else None
    except (TypeError, ValueError):
        return None


def _preview(text: str) -> str:
    """Graph's ``bodyPreview``: the first 255 characters of the body, whitespace collapsed."""
    return " ".join(text.split())[:255]


def _recipient(name: str, address: str) -> dict[str, Any]:
    return {"emailAddress": {"name": name or address, "address": address}}
