"""Source: non-delivery reports in the sending mailboxes' Inboxes, found by delta query.

Exchange puts an NDR into the sender's Inbox; remote servers send their DSNs there too. Per
mailbox, ``GET /users/{id}/mailFolders/inbox/messages/delta`` lists what arrived since the
last ``@odata.deltaLink`` (kept in the tracking store, so a restart goes on where it
stopped). Only messages from a reporting address (Exchange's ``MicrosoftExchange329e…``,
``MAILER-DAEMON``, ``postmaster``) are fetched (``$value``: the MIME) and parsed
(:mod:`.ndr`); everything else in the Inbox, replies and auto-replies included, costs no
request of its own. Reading needs the application permission ``Mail.Read``, which an
administrator scopes to the sending mailboxes.

The first pass of a mailbox reads only the reports of the last days (``since``): older ones
cannot concern a tracked message, and an Inbox's history would cost a request each.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

from .. import telemetry
from ..exceptions import GraphAPIError
from ..graph import GraphClient, user_path
from .store import TrackingStore
from .trace import _parse_time, _relative

__all__ = ["REPORTERS", "Arrival", "arrivals"]

logger = logging.getLogger("msgraph_mail")

#: Local parts of the addresses NDRs and DSNs come from (lower-case).
REPORTERS = frozenset(
    {"microsoftexchange329e71ec88ae4615bbc36ab6ce41109e", "mailer-daemon", "postmaster"}
)
SELECT = "from,subject,receivedDateTime,internetMessageId"


@dataclass(frozen=True)
class Arrival:
    """A report found in a mailbox's Inbox: its MIME, when it arrived, where."""

    mailbox: str
    graph_id: str
    raw: bytes
    received: datetime


class Delta:
    """One mailbox's pass: :meth:`arrivals`, then :meth:`commit` once they are handled."""

    def __init__(
        self, client: GraphClient, store: TrackingStore, mailbox: str, since: datetime
    ) -> None:
        self.client, self.store, self.mailbox, self.since = client, store, mailbox, since
        self._next_link: str | None = None

    @property
    def _cursor_name(self) -> str:
        return f"delta:{self.mailbox.lower()}"

    def arrivals(self) -> Iterator[Arrival]:
        """The reports that arrived since the last committed pass (on the first: since
        ``since``)."""
        link = self.store.cursor(self._cursor_name)
        first = link is None
        start = f"{user_path(self.mailbox)}/mailFolders/inbox/messages/delta?$select={SELECT}"
        path: str | None = _relative(self.client, link) if link else start
        while path is not None:
            try:
                body = self.client.request("GET", path).body
            except GraphAPIError as exc:
                if exc.status not in (400, 404, 410) or first:
                    raise
                # Graph forgot the delta state (syncStateNotFound, an expired token): start
                # again; what arrived meanwhile is the trace's, or is lost to this source.
                logger.warning(
                    "The Inbox delta link of %s was refused (%s): starting a new one",
                    self.mailbox,
                    exc.code or exc.status,
                    extra=telemetry.log_extra(mailbox=self.mailbox, status=str(exc.status or "")),
                )
                first, path = True, start
                continue
            body = body if isinstance(body, dict) else {}
            yield from self._reports(body.get("value") or [], None if not first else self.since)
            path = _relative(self.client, body.get("@odata.nextLink"))
            self._next_link = body.get("@odata.deltaLink") or self._next_link

    def commit(self) -> None:
        """Keep the delta link: the next pass starts after what this one handled."""
        if self._next_link:
            self.store.set_cursor(self._cursor_name, str(self._next_link))

    def _reports(self, items: list[Any], since: datetime | None) -> Iterator[Arrival]:
        for item in items:
            if not isinstance(item, dict) or "@removed" in item or not _from_reporter(item):
                continue
            received = _parse_time(item.get("receivedDateTime"))
            if since is not None and received < since:
                continue
            graph_id = str(item.get("id") or "")
            path = f"{user_path(self.mailbox)}/messages/{quote(graph_id, safe='')}/$value"
            raw = self.client.request("GET", path, headers={"Accept": "*/*"}).body
            if isinstance(raw, bytes):
                yield Arrival(self.mailbox, graph_id, raw, received)


def arrivals(client: GraphClient, store: TrackingStore, mailbox: str, since: datetime) -> Delta:
    return Delta(client, store, mailbox, since)


def _from_reporter(item: dict[str, Any]) -> bool:
    sender = ((item.get("from") or {}).get("emailAddress") or {}).get("address") or ""
    return str(sender).partition("@")[0].lower() in REPORTERS
