"""Source: Exchange's message trace through Graph, read by time window, never per message.

``GET /admin/exchange/tracing/messageTraces`` (application permission
``ExchangeMessageTrace.Read.All``) lists one row per message and recipient with its status.
The tenant may make **100 requests per 5 minutes**, shared with every other caller, so the
tracker asks once per pass for the whole window its unsettled messages were sent in (both
``receivedDateTime`` bounds, at most 10 days apart), ``$top`` 5,000 and ``@odata.nextLink``
pages, with ``senderAddress eq`` when a single address sends; and it spends at most
:data:`BUDGET` requests of its own per 5 minutes (kept in the tracking store, so a restart
does not forget them). A 429 stops the source until its Retry-After has passed.

A failed row's status code comes from the NDR when ``"bounces"`` is on; the trace alone
reports a bounce without one (its detail call would cost a request per recipient).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

from .. import telemetry
from ..exceptions import GraphAPIError
from ..graph import GraphClient
from .events import DeliveryEvent, EventType
from .store import TrackingStore

__all__ = ["BUDGET", "PATH", "Row", "TraceBudget", "event_of", "rows"]

logger = logging.getLogger("msgraph_mail")

PATH = "/admin/exchange/tracing/messageTraces"
#: Requests per 5 minutes this tracker allows itself, of the tenant's 100.
BUDGET = 50
WINDOW = 300.0
#: The widest window one query may span (Graph refuses more than 10 days).
MAX_SPAN = timedelta(days=10)
TOP = 5000
_FRACTION = re.compile(r"\.(\d+)")

#: A trace status and the event it reports; gettingStatus, expanded (a group) and
#: recalled report nothing.
EVENTS: dict[str, EventType] = {
    "delivered": "delivered",
    "failed": "bounced",
    "quarantined": "quarantined",
    "filteredAsSpam": "filtered_as_spam",
    "pending": "pending",
}


class TraceBudget:
    """The tracker's share of the tenant's 100 requests per 5 minutes, kept in the store."""

    def __init__(self, store: TrackingStore, budget: int = BUDGET) -> None:
        self.store = store
        self.budget = budget
        self._times = [float(t) for t in json.loads(store.cursor("trace:requests") or "[]")]
        self.not_before = float(store.cursor("trace:not-before") or 0)

    def take(self) -> bool:
        """Spend one request now, or False when none is left (or a 429 asked to wait)."""
        now = time.time()
        self._times = [t for t in self._times if t > now - WINDOW]
        if now < self.not_before or len(self._times) >= self.budget:
            return False
        self._times.append(now)
        self.store.set_cursor("trace:requests", json.dumps(self._times))
        return True

    def throttled(self, retry_after: float | None) -> None:
        self.not_before = time.time() + (retry_after if retry_after is not None else WINDOW)
        self.store.set_cursor("trace:not-before", str(self.not_before))


@dataclass(frozen=True)
class Row:
    """One trace row, as the tracker uses it."""

    trace_id: str
    message_id: str | None
    sender: str
    recipient: str
    status: str
    received: datetime


def rows(
    client: GraphClient,
    budget: TraceBudget,
    since: datetime,
    until: datetime,
    sender: str | None = None,
) -> Iterator[Row]:
    """Every trace row of the window (oldest bound clipped to 10 days), page by page, while
    the budget lasts; a 429 records its Retry-After and ends the listing."""
    since = max(since, until - MAX_SPAN)
    clauses = [f"receivedDateTime ge {_iso(since)}", f"receivedDateTime le {_iso(until)}"]
    if sender:
        clauses.append(f"senderAddress eq '{sender.replace(chr(39), chr(39) * 2)}'")
    path: str | None = f"{PATH}?$filter={quote(' and '.join(clauses), safe='')}&$top={TOP}"
    while path is not None and budget.take():
        body = _get(client, budget, path)
        if body is None:
            return
        for item in body.get("value") or []:
            if isinstance(item, dict):
                yield _row(item)
        path = _relative(client, body.get("@odata.nextLink"))


def event_of(row: Row) -> DeliveryEvent | None:
    """The event a row reports, None while it reports nothing yet. A failed row carries no
    status code: asking ``getDetailsByRecipient`` would cost a request per recipient, which
    the tenant's budget cannot pay; the NDR (``"bounces"``) brings the code."""
    event_type = EVENTS.get(row.status)
    if event_type is None:
        return None
    return DeliveryEvent(
        event_type=event_type,
        recipient=row.recipient,
        timestamp=row.received,
        source="trace",
        message_id=row.message_id,
        reason="failed (message trace)" if event_type == "bounced" else None,
        details={"trace_id": row.trace_id, "trace_status": row.status},
    )


def _get(client: GraphClient, budget: TraceBudget, path: str) -> dict[str, Any] | None:
    try:
        body = client.request("GET", path).body
    except GraphAPIError as exc:
        if exc.status != 429:
            raise
        budget.throttled(exc.retry_after)
        logger.warning(
            "Message trace throttled (the tenant's 100 requests per 5 minutes are used up): "
            "waiting %s s",
            f"{exc.retry_after:g}" if exc.retry_after is not None else "300",
            extra=telemetry.log_extra(status="429"),
        )
        return None
    return body if isinstance(body, dict) else {}


def _row(item: dict[str, Any]) -> Row:
    return Row(
        trace_id=str(item.get("id") or ""),
        message_id=str(item["messageId"]) if item.get("messageId") else None,
        sender=str(item.get("senderAddress") or "").lower(),
        recipient=str(item.get("recipientAddress") or "").lower(),
        status=str(item.get("status") or ""),
        received=_parse_time(item.get("receivedDateTime")),
    )


def _relative(client: GraphClient, link: Any) -> str | None:
    """A nextLink or deltaLink as a path the client requests (``/admin/...``)."""
    if not link:
        return None
    prefix = f"{client.settings.graph_url}/v1.0"
    link = str(link)
    return link[len(prefix) :] if link.startswith(prefix) else None


def _iso(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: Any) -> datetime:
    """Graph's ``2026-12-05T16:52:39.0000000Z`` (seven decimals, ``Z``), which Python 3.10's
    ``fromisoformat`` refuses: the fraction is cut to microseconds first."""
    text = str(value).strip().replace("Z", "+00:00")
    text = _FRACTION.sub(lambda found: "." + (found.group(1) + "000000")[:6], text, count=1)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return datetime.now(timezone.utc)
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)
