"""Non-delivery reports (RFC 3464), read with the standard library's ``email`` package.

A report is ``multipart/report; report-type=delivery-status`` with a
``message/delivery-status`` part (``message/global-delivery-status``, RFC 6533, too): one
field group for the reporting MTA, then one per recipient (Final-Recipient, Action, Status,
Diagnostic-Code, Remote-MTA, Last-Attempt-Date). The original message's headers come back as
``text/rfc822-headers`` or inside an attached ``message/rfc822``: our tracking header and the
Message-ID are read from there. The email package parses each field group of the
delivery-status part as a small message of headers; no regular expression reads a body.

Only standard reports are read. Legacy bounces that are plain text (old qmail, old Gmail),
auto-replies (``Auto-Submitted: auto-replied`` on a plain message: Postfix and Exchange put
the same header on their reports, so it does not decide alone), read receipts
(``report-type=disposition-notification``) and reports with no failed or delayed recipient
are :class:`NotAReport`. Anything that claims to be a delivery report but cannot be read is
:class:`MalformedReport`, whose message says what is wrong without quoting the body.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime, timezone
from email import message_from_bytes, policy
from email.header import decode_header, make_header
from email.message import Message
from email.utils import parsedate_to_datetime
from typing import Any

from .events import DeliveryEvent, classify, status_code

__all__ = ["TRACKING_HEADER", "MalformedReport", "NotAReport", "Report", "parse"]

TRACKING_HEADER = "X-MSGraph-Tracking-Id"
STATUS_TYPES = frozenset({"message/delivery-status", "message/global-delivery-status"})
HEADER_TYPES = frozenset({"text/rfc822-headers", "message/global-headers"})
ORIGINAL_TYPES = frozenset({"message/rfc822", "message/global"})
#: The most parts walked in one report: a hostile one cannot make the tracker work forever.
MAX_PARTS = 50
#: Bytes of a report parsed at most (Exchange's NDRs are a few kB; the original may follow).
MAX_BYTES = 2 * 1024 * 1024


class NotAReport(Exception):
    """An ordinary message, an auto-reply, a read receipt, or a report of no failure."""


class MalformedReport(ValueError):
    """It says it is a delivery report but cannot be read."""


@dataclass(frozen=True)
class Report:
    """What a delivery report says: one event per failed or delayed recipient."""

    events: list[DeliveryEvent]
    original_message_id: str | None
    tracking_id: str | None
    reporting_mta: str | None
    subject: str | None


def parse(raw: bytes, *, mailbox: str | None = None, received: datetime | None = None) -> Report:
    """Read one report; raise :class:`NotAReport` or :class:`MalformedReport`."""
    try:
        message = message_from_bytes(raw[:MAX_BYTES], policy=policy.compat32)
    except Exception as exc:  # the parser is lenient; a failure here is an odd input
        raise MalformedReport(f"the message cannot be parsed ({type(exc).__name__})") from None
    if message.get_content_type() != "multipart/report":
        if _auto_reply(message):
            raise NotAReport("an automatic reply")
        raise NotAReport(f"a {message.get_content_type()} message, not a report")
    report_type = str(message.get_param("report-type") or "").lower()
    if report_type != "delivery-status":
        raise NotAReport(f"a report of type {report_type or 'unknown'}, not delivery-status")
    parts = _parts(message)
    groups = _status_groups(parts)
    if len(groups) < 2:
        raise MalformedReport("the delivery-status part has no recipient field group")
    original = _original_headers(parts)
    when = _date(groups[0].get("Arrival-Date")) or _date(message.get("Date")) or received
    events = [
        event
        for group in groups[1:]
        if (event := _event(group, when, mailbox, original)) is not None
    ]
    if not events:
        raise NotAReport("a report of no failed or delayed recipient")
    return Report(
        events=events,
        original_message_id=_header(original, "Message-ID"),
        tracking_id=_header(original, TRACKING_HEADER),
        reporting_mta=_typed(groups[0].get("Reporting-MTA")),
        subject=_header(message, "Subject"),
    )


def _auto_reply(message: Message) -> bool:
    submitted = str(message.get("Auto-Submitted") or "").strip().lower()
    return submitted.startswith("auto-replied")


def _parts(message: Message) -> list[Message]:
    """The parts of the report, walked breadth-first, at most :data:`MAX_PARTS`."""
    found: list[Message] = []
    for part in message.walk():
        found.append(part)
        if len(found) > MAX_PARTS:
            raise MalformedReport(f"more than {MAX_PARTS} parts")
    return found


def _status_groups(parts: list[Message]) -> list[Message]:
    """The field groups of the delivery-status part (the email package parses each group
    as a message of headers); the first is the per-message group."""
    for part in parts:
        if part.get_content_type() not in STATUS_TYPES:
            continue
        payload = part.get_payload()
        if isinstance(payload, list) and all(isinstance(p, Message) for p in payload):
            return list(payload)
        raise MalformedReport("the delivery-status part cannot be read as field groups")
    raise MalformedReport("no message/delivery-status part")


def _original_headers(parts: list[Message]) -> Message | None:
    """The original message's headers: text/rfc822-headers, or an attached message."""
    for part in parts:
        content_type = part.get_content_type()
        if content_type in HEADER_TYPES:
            text = part.get_payload(decode=True)
            if isinstance(text, bytes):
                return message_from_bytes(text, policy=policy.compat32)
        if content_type in ORIGINAL_TYPES:
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                return payload[0]
    return None


def _event(
    group: Message, when: datetime | None, mailbox: str | None, original: Message | None
) -> DeliveryEvent | None:
    action = str(group.get("Action") or "").strip().lower()
    if action not in {"failed", "delayed"}:
        return None  # delivered, relayed, expanded: nothing failed
    recipient = _typed(group.get("Final-Recipient") or group.get("Original-Recipient"))
    if not recipient or "@" not in recipient:
        raise MalformedReport("a recipient field group without a Final-Recipient address")
    status = status_code(str(group.get("Status") or ""))
    diagnostic = _typed(group.get("Diagnostic-Code"))
    specific = status_code(diagnostic)
    if status is None and specific is None:
        raise MalformedReport(f"no Status for the recipient {recipient}")
    if status is None or (status.endswith(".0.0") and specific is not None):
        status = specific  # "5.0.0" with "550 5.1.1 user unknown": the specific one
    event_type, sender_problem = classify(status, delayed=action == "delayed")
    details = {
        name.lower(): _unfold(group.get(name))
        for name in ("Remote-MTA", "X-Supplementary-Info", "X-Display-Name")
        if group.get(name)
    }
    return DeliveryEvent(
        event_type=event_type,
        recipient=recipient.lower(),
        timestamp=_date(group.get("Last-Attempt-Date")) or when or datetime.now(timezone.utc),
        source="ndr",
        message_id=_header(original, "Message-ID"),
        tracking_id=_header(original, TRACKING_HEADER),
        mailbox=mailbox,
        status_code=status,
        reason=diagnostic,
        sender_problem=sender_problem,
        details=details,
    )


def _typed(value: Any) -> str | None:
    """``rfc822; a@b`` -> ``a@b``; ``smtp; 550 ...`` -> ``550 ...`` (RFC 3464 typed fields)."""
    text = _unfold(value)
    if not text:
        return None
    kind, sep, rest = text.partition(";")
    return (rest if sep and " " not in kind.strip() else text).strip() or None


def _unfold(value: Any) -> str:
    return " ".join(str(value or "").split())


def _header(message: Message | None, name: str) -> str | None:
    """A header's value, RFC 2047 encoded words decoded (a localised subject)."""
    if message is None:
        return None
    value = _unfold(message.get(name))
    with contextlib.suppress(ValueError, LookupError, UnicodeError):  # else: as written
        value = str(make_header(decode_header(value)))
    return value or None


def _date(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        when = parsedate_to_datetime(str(value))
    except (TypeError, ValueError, IndexError):
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)
