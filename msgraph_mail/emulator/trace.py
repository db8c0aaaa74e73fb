"""Exchange message trace through Graph: what became of each recipient of each message.

``GET /v1.0/admin/exchange/tracing/messageTraces`` lists one ``exchangeMessageTrace`` row per
message and recipient; ``.../messageTraces/{id}/getDetailsByRecipient(recipientAddress='x')``
lists one recipient's ``exchangeMessageTraceDetail`` events (Learn:
messagetracingroot-list-messagetraces, exchangemessagetrace, exchangemessagetracedetail,
exchangemessagetrace-getdetailsbyrecipient). As documented:

- permission ``ExchangeMessageTrace.Read.All`` in the token, else 403 (code and text
  UNCONFIRMED: Graph's "Missing role permissions" answer of other workloads);
- the tenant must hold a service principal for the first-party app
  ``8bd644d1-64a1-4d4b-ae52-2e0cbf64e373``; without it (``service_principal = False``) a 401
  ``Unauthorized`` "Service principal-less Authentication failed" (not on Learn: the text
  reported from tenants, office365itpros.com 2026-01-27, IBM's QRadar docs);
- 100 requests per 5 minutes per tenant, list and detail calls together, whatever application
  calls (Learn: throttling-limits), scaled by the emulator's ``time_scale``; beyond, 429 with
  Retry-After (its code and text UNCONFIRMED);
- ``$filter`` on ``id``, ``messageId``, ``senderAddress``, ``recipientAddress``, ``status``,
  ``fromIP``, ``toIP`` (``eq``), ``receivedDateTime`` (``ge`` and ``le``: both, at most 10
  days apart, the start within 90 days, the end not in the future; without them, the last 48
  hours) and ``contains``/``startsWith``/``endsWith(subject, ...)``, joined with ``and``;
  ``$top`` 1..5000 (1000 by default), then ``@odata.nextLink`` with a ``$skiptoken``. The
  answers to a query out of these bounds are 400s whose codes and texts are UNCONFIRMED; that a
  lone bound is refused is read from "filter ... by specifying both bounds" (UNCONFIRMED).

Status moves from ``gettingStatus`` through ``pending`` to the final one (delivery.py).
``recalled`` (shown only with ``Prefer: include-unknown-enum-members``) is never produced: the
emulator has no recall. ``fromIP`` is empty for messages submitted through Graph and ``toIP``
a documentation address for external recipients (both UNCONFIRMED). The detail events' names
are those of Get-MessageTraceDetail (Receive, Deliver, Send external, Fail, Defer); those of
quarantine and spam filtering are UNCONFIRMED.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlencode

from .delivery import EXCHANGE_HOST, Deliveries, Delivery, Outcome
from .entra import IssuedToken
from .errors import GraphError, bad_request
from .http import Request, Response, graph_time, json_response
from .limits import TenantWindow, throttled_error
from .query import TraceFilter, options, parse_trace_filter, top

TRACE_ROLE = "ExchangeMessageTrace.Read.All"
#: The first-party app whose service principal the tenant needs (Learn: exchangemessagetrace).
TRACE_APP_ID = "8bd644d1-64a1-4d4b-ae52-2e0cbf64e373"
TRACE_REQUESTS, TRACE_WINDOW_SECONDS = 100, 300.0
DEFAULT_TOP, MAX_TOP = 1000, 5000
_DEFAULT_SPAN, _MAX_SPAN, _MAX_AGE = timedelta(hours=48), timedelta(days=10), timedelta(days=90)

Row = tuple[int, int, Delivery, str, Outcome]  # (message, recipient) positions, then the row


class MessageTraces:
    """The two message trace endpoints, over the emulator's accepted messages."""

    def __init__(
        self, deliveries: Deliveries, base_url: Callable[[], str], time_scale: Callable[[], float]
    ) -> None:
        self.deliveries = deliveries
        self.base_url = base_url
        self.window = TenantWindow(TRACE_REQUESTS, TRACE_WINDOW_SECONDS, time_scale)
        #: The tenant holds the service principal of ``TRACE_APP_ID``.
        self.service_principal = True

    def _admit(self, token: IssuedToken) -> None:
        """Refuse as Graph does: service principal, permission, rate."""
        if not self.service_principal:
            raise GraphError(
                401,
                "Unauthorized",
                "Service principal-less Authentication failed: the service principal for App "
                f"ID {TRACE_APP_ID} was not found. Please create a service principal for this "
                "app in your tenant. Provisioning may take several hours to complete.",
            )
        if TRACE_ROLE not in token.roles:
            raise GraphError(
                403,
                "Forbidden",
                f"Missing role permissions on the request. API requires one of '{TRACE_ROLE}'. "
                f"Roles on the request '{', '.join(token.roles)}'.",
            )
        refused = self.window.spend()
        if refused is not None:
            raise throttled_error(refused)

    def list(self, request: Request, token: IssuedToken) -> Response:
        self._admit(token)
        given = options(request.query, ("$filter", "$top", "$skiptoken"))
        value = given.get("$top", str(DEFAULT_TOP))
        error = bad_request(
            f"Invalid $top '{value}': the page size must be between 1 and {MAX_TOP}."
        )
        size = top(value, MAX_TOP, error)
        wanted = parse_trace_filter(given["$filter"]) if "$filter" in given else TraceFilter()
        since, until = _period(wanted)
        now = time.monotonic()
        rows = [
            row
            for row in self._rows()
            if since <= row[2].received <= until and _matches(wanted, _trace(row, now))
        ]
        if "$skiptoken" in given:
            after = _position(given["$skiptoken"])
            rows = [row for row in rows if (row[0], row[1]) < after]
        page = rows[:size]
        context = "$metadata#admin/exchange/tracing/messageTraces"
        body: dict[str, Any] = {
            "@odata.context": f"{self.base_url()}/v1.0/{context}",
            "value": [_trace(row, now) for row in page],
        }
        if len(rows) > size:
            kept = {k: v for k, v in given.items() if k != "$skiptoken"}
            skip = base64.urlsafe_b64encode(f"{page[-1][0]}.{page[-1][1]}".encode()).decode()
            query = urlencode({**kept, "$skiptoken": skip})
            body["@odata.nextLink"] = (
                f"{self.base_url()}/v1.0/admin/exchange/tracing/messageTraces?{query}"
            )
        return json_response(200, body)

    def details(
        self, request: Request, token: IssuedToken, trace_id: str, recipient: str
    ) -> Response:
        """One recipient's events so far; an unknown id or recipient has none (as the
        Get-MessageTraceDetailV2 cmdlet answers; Graph's answer is UNCONFIRMED)."""
        self._admit(token)
        options(request.query, ())
        now = time.monotonic()
        events = [
            event
            for index, position, delivery, address, outcome in self._rows()
            if delivery.trace_id == trace_id and address == recipient.lower()
            for event in _events(delivery, address, outcome, now)
        ]
        context = "$metadata#Collection(microsoft.graph.exchangeMessageTraceDetail)"
        return json_response(
            200, {"@odata.context": f"{self.base_url()}/v1.0/{context}", "value": events}
        )

    def _rows(self) -> Iterator[Row]:
        """Every (message, recipient), newest message first."""
        for index, delivery in reversed(list(enumerate(self.deliveries.deliveries))):
            for position, (address, outcome) in reversed(list(enumerate(delivery.recipients))):
                yield index, position, delivery, address, outcome


def _trace(row: Row, now: float) -> dict[str, Any]:
    _, _, delivery, address, outcome = row
    return {
        "id": delivery.trace_id,
        "messageId": delivery.message_id,
        "senderAddress": delivery.message.from_,
        "recipientAddress": address,
        "subject": delivery.message.subject,
        "status": delivery.status(outcome, now),
        "receivedDateTime": graph_time(delivery.received),
        "size": len(delivery.message.raw),
        "fromIP": "",
        "toIP": _mx_ip(address) if outcome.external else "",
    }


def _events(delivery: Delivery, address: str, outcome: Outcome, now: float) -> list[dict[str, Any]]:
    """Receive at once; the event that settles the recipient once ``delay`` has passed."""
    found = [(delivery.received, "Receive", f"Message received by: {EXCHANGE_HOST}")]
    if delivery.done(now):
        domain = address.rpartition("@")[2]
        final = {
            "delivered": ("Send external", f"Message sent to mx.{domain} at {_mx_ip(address)}.")
            if outcome.external
            else ("Deliver", "The message was successfully delivered."),
            "bounced": ("Fail", f"Reason: [{{LED={outcome.diagnostic}}}]"),
            "deferred": ("Defer", f"Reason: [{{LED={outcome.diagnostic}}}]"),
            "quarantined": ("Quarantine", "The message was quarantined."),
            "filtered_as_spam": ("Spam", "The message was filtered as spam."),
        }[outcome.kind]
        found.append((delivery.finished, *final))
    return [
        {
            "id": delivery.trace_id,
            "messageId": delivery.message_id,
            "dateTime": graph_time(moment),
            "event": event,
            "action": "",
            "description": description,
            "data": "<root></root>",
        }
        for moment, event, description in found
    ]


def _matches(wanted: TraceFilter, trace: dict[str, Any]) -> bool:
    subject = str(trace["subject"]).lower()
    return all(str(trace[k]).lower() == v.lower() for k, v in wanted.equals.items()) and all(
        getattr(subject, "__contains__" if function == "contains" else function)(text.lower())
        for function, text in wanted.subject
    )


def _period(wanted: TraceFilter) -> tuple[datetime, datetime]:
    """The receivedDateTime bounds, checked as the documentation states them."""
    now = datetime.now(timezone.utc)
    if wanted.since is None and wanted.until is None:
        return now - _DEFAULT_SPAN, now
    if wanted.since is None or wanted.until is None:
        raise bad_request("Filter on receivedDateTime with both bounds (ge and le).")
    if not timedelta(0) <= wanted.until - wanted.since <= _MAX_SPAN:
        raise bad_request("The receivedDateTime interval must not exceed 10 days.")
    if wanted.since < now - _MAX_AGE or wanted.until > now:
        raise bad_request("The start must be within 90 days and the end not later than now.")
    return wanted.since, wanted.until


def _position(token: str) -> tuple[int, int]:
    try:
        index, position = base64.urlsafe_b64decode(token.encode()).decode().split(".")
        return int(index), int(position)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise bad_request("The $skiptoken is not valid.") from None


def _mx_ip(address: str) -> str:
    """A documentation address (RFC 5737) standing for the domain's MX, the same each time."""
    digest = hashlib.sha256(address.rpartition("@")[2].encode()).digest()
    return f"203.0.113.{digest[0] % 254 + 1}"
