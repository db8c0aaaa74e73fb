"""Each mailbox's Sent Items folder: what MIME ``sendMail`` and a draft's ``/send`` delivered.

Graph saves every MIME message to the sender's Sent Items (a MIME body cannot carry
``saveToSentItems``), and a JSON one unless ``saveToSentItems`` is false (GRAPH_NOTES A.1,
A.2). ``GET /users/{id}/mailFolders/sentitems/messages`` (the well-known name in any case)
lists the folder with ``$filter=internetMessageId eq '<id>'`` and ``$select``, as Graph does;
it needs ``Mail.ReadBasic.All``, ``Mail.Read`` or ``Mail.ReadWrite`` (or an Exchange RBAC
grant on the mailbox: "Application Mail.ReadBasic", ``rbac_read_scope``), else 403
``ErrorAccessDenied``.

Whether Exchange keeps the Message-ID of a MIME message is UNCONFIRMED: with
``rewrite_message_ids`` the copy in Sent Items gets one of Exchange's own instead, so tests can
show that a lookup by our Message-ID then finds nothing.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import quote

from .directory import User
from .errors import access_denied
from .http import Response, graph_time, json_response
from .mail import Screened, SentMessage
from .query import message_list_query

#: What Graph returns without ``$select`` (of what the emulator keeps).
_DEFAULT_FIELDS = ("id", "internetMessageId", "sentDateTime", "subject", "isDraft")
#: The ``$select``able properties (lower-case name -> Graph's).
_FIELDS = {name.lower(): name for name in _DEFAULT_FIELDS}


def exchange_message_id() -> str:
    """A Message-ID of Exchange's own making."""
    return f"<{uuid.uuid4().hex.upper()}@emulator.prod.outlook.com>"


def delivered_message_id(message: SentMessage | Screened, rewrite: bool) -> str:
    """The Message-ID a message travels with (Sent Items, NDRs, message trace): its own,
    unless the tenant rewrites it (``rewrite``) or it has none; then one of Exchange's."""
    own = message.header("Message-ID") if isinstance(message, SentMessage) else message.message_id
    return exchange_message_id() if rewrite or not own else own.strip()


@dataclass(frozen=True)
class SentItem:
    """The copy of a sent message in its mailbox's Sent Items."""

    id: str
    mailbox_id: str
    internet_message_id: str
    subject: str
    sent: datetime

    def as_graph(self, fields: Iterable[str]) -> dict[str, object]:
        values: dict[str, object] = {
            "id": self.id,
            "internetMessageId": self.internet_message_id,
            "sentDateTime": graph_time(self.sent),
            "subject": self.subject,
            "isDraft": False,
        }
        return {name: values[name] for name in fields}


class SentItems:
    """Every mailbox's Sent Items; thread-safe (handler threads)."""

    def __init__(self, may_read: Callable[[User, Iterable[str]], bool]) -> None:
        self._lock = threading.Lock()
        self._items: list[SentItem] = []
        #: The Sent Items copy gets a Message-ID of Exchange's own (a tenant that rewrites it).
        self.rewrite_message_ids = False
        self.may_read = may_read  # Tenant.may_read

    def items(self, mailbox_id: str | None = None) -> list[SentItem]:
        with self._lock:
            return [i for i in self._items if mailbox_id is None or i.mailbox_id == mailbox_id]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def record(self, message: SentMessage | Screened, message_id: str) -> None:
        """Save the copy of a delivered message (none when ``saveToSentItems`` was false);
        ``message_id`` is the one it travels with (``delivered_message_id``)."""
        if isinstance(message, SentMessage) and not message.save_to_sent_items:
            return
        item = SentItem(
            id="AAMk" + uuid.uuid4().hex,
            mailbox_id=message.mailbox.id,
            internet_message_id=message_id,
            subject=message.subject,
            sent=datetime.now(timezone.utc),
        )
        with self._lock:
            self._items.append(item)

    def list(
        self,
        query: list[tuple[str, str]],
        mailbox: User,
        roles: Iterable[str],
        base_url: str,
    ) -> Response:
        """``GET .../mailFolders/sentitems/messages``."""
        if not self.may_read(mailbox, roles):
            raise access_denied()
        wanted, selected = message_list_query(query, _FIELDS)
        fields: list[str] = selected or list(_DEFAULT_FIELDS)
        found = [i for i in self.items(mailbox.id) if wanted in (None, i.internet_message_id)]
        found.sort(key=lambda item: item.sent, reverse=True)
        context = (
            f"{base_url}/v1.0/$metadata#users('{quote(mailbox.id)}')/mailFolders('sentitems')"
            "/messages"
        )
        return json_response(
            200, {"@odata.context": context, "value": [i.as_graph(fields) for i in found]}
        )
