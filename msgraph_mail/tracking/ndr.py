"""Non-delivery reports (RFC 3464), read with the standard library's ``email`` package.

A report is ``multipart/report; report-type=delivery-status`` (RFC 6522) whose parts are a
text for people (in the sender's language: the subject and this part are never read), a
``message/delivery-status`` part, and optionally the original message: its headers as
``text/rfc822-headers``, or the whole of it as ``message/rfc822``. The internationalised forms
of RFC 6533 are read too: ``message/global-delivery-status`` (``utf-8;`` addresses) and
``message/global-headers`` / ``message/global``, in any transfer encoding. The delivery-status
part holds one field group for the reporting MTA, then one per recipient (Final-Recipient,
Action, Status, Diagnostic-Code, Remote-MTA, Last-Attempt-Date); the email package parses each
group as a small message of headers. No regular expression reads a body.

One :class:`~.events.DeliveryEvent` per recipient whose ``Action`` is ``failed`` (bounced,
whatever its code: the MTA gave up, as Exchange's ``550 4.4.7`` for an expired message) or
``delayed`` (deferred). Our tracking header and the Message-ID are read from the returned
original headers, when the report returns them.

Only standard reports are read: legacy bounces that are plain text (old qmail, old Gmail),
auto-replies (``Auto-Submitted: auto-replied``, ``X-Auto-Response-Suppress``, "Automatic
reply:"; Exchange and Postfix put ``Auto-Submitted`` on their reports too, so it never decides
alone), read receipts (``report-type=disposition-notification``) and reports of no failed or
delayed recipient ("relayed", "delivered", "expanded") are :class:`NotAReport`. Anything that
says it is a delivery report but cannot be read is :class:`MalformedReport`, whose message
says what is wrong without quoting the body.

Hostile input is bounded before it costs anything: the first :data:`MAX_BYTES` are parsed, each
header value is cut at :data:`MAX_HEADER` characters, and the parse stops past
:data:`MAX_PARTS` parts or :data:`MAX_DEPTH` levels of nesting. The parser keeps header values
as raw text (``compat32``): ``policy.default`` parses structured headers on every read, which
on hostile values is super-linear (seconds for a 100 kB Content-Type), runs out of memory (a
Subject of many encoded words) or raises (``IndexError`` on ``Message-ID: <@>`` on Python
3.11).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from email import message_from_bytes
from email.errors import MessageError, MissingHeaderBodySeparatorDefect
from email.header import decode_header, make_header
from email.message import Message
from email.policy import Compat32, Policy
from email.utils import collapse_rfc2231_value, parsedate_to_datetime
from typing import Any

from .events import DeliveryEvent, EventType, classify, status_code

__all__ = ["TRACKING_HEADER", "MalformedReport", "NotAReport", "Report", "parse"]

#: Our own correlation header, set on every tracked message and read back from the original
#: headers a report returns.
TRACKING_HEADER = "X-MSGraph-Tracking-Id"

REPORT_TYPES = frozenset({"delivery-status", "global-delivery-status"})
STATUS_TYPES = frozenset({"message/delivery-status", "message/global-delivery-status"})
HEADER_TYPES = frozenset({"text/rfc822-headers"})
ORIGINAL_TYPES = frozenset({"message/rfc822", "message/global", "message/global-headers"})
IDENTITY = frozenset({"", "7bit", "8bit", "binary"})

#: Bytes of a report parsed at most. The parts that matter come first (RFC 6522: the text,
#: the delivery status, then the original, whose headers lead it); an attached original
#: may be cut.
MAX_BYTES = 1024 * 1024
#: Characters of one header value kept (a Diagnostic-Code is a few hundred).
MAX_HEADER = 8 * 1024
#: Parts (field groups included) a report may have: a message to 1,000 recipients that all
#: failed is one group each.
MAX_PARTS = 2000
#: Levels of nesting: the parser checks each line against every enclosing boundary, so depth
#: multiplies its work.
MAX_DEPTH = 16
#: The longest address (RFC 5321: 64 + 1 + 255) and Message-ID kept; longer ones are not ours.
MAX_ADDRESS = 320
MAX_MESSAGE_ID = 255
MAX_TRACKING_ID = 64

#: What the email package and this module's reading can raise on odd input (UnicodeError and
#: binascii.Error are ValueErrors, HeaderParseError a MessageError).
_ODD_INPUT = (MessageError, ValueError, LookupError, TypeError, AttributeError, ArithmeticError)
_SHOWN = 40  # characters of a value named in an exception's message
_REPLY_PREFIX = 4  # "550-" / "550 " before a continued SMTP reply line
_UNICODE_ESCAPE = re.compile(r"\\x\{([0-9A-Fa-f]{1,6})\}")  # RFC 6533 EmbeddedUnicodeChar


class NotAReport(Exception):
    """An ordinary message, an auto-reply, a read receipt, or a report of no failure."""


class MalformedReport(ValueError):
    """It says it is a delivery report but cannot be read."""


@dataclass(frozen=True)
class Report:
    """What a delivery report says: one event per failed or delayed recipient.

    ``original_message_id`` and ``tracking_id`` come from the original headers the report
    returned: None when it returned none (or a value longer than any of ours).
    ``reporting_mta`` is the MTA that wrote the report, ``subject`` its own subject
    (localised: informative only). An event's ``details`` may hold ``remote-mta``,
    ``x-supplementary-info``, ``x-display-name`` and ``original-recipient`` (when it differs
    from the Final-Recipient: the address as sent, before a forward).
    """

    events: list[DeliveryEvent]
    original_message_id: str | None
    tracking_id: str | None
    reporting_mta: str | None
    subject: str | None


def parse(raw: bytes, *, mailbox: str | None = None, received: datetime | None = None) -> Report:
    """Read one report; raise :class:`NotAReport` or :class:`MalformedReport`.

    ``mailbox`` is copied to every event. An event's time is its recipient's
    Last-Attempt-Date, else the report's Arrival-Date, else the report's Date, else
    ``received`` (when the mailbox got it), else now; always in UTC.
    """
    try:
        return _parse(bytes(raw[:MAX_BYTES]), mailbox, received)
    except (NotAReport, MalformedReport):
        raise
    except RecursionError:
        raise MalformedReport("the report is nested too deeply to read") from None
    except _ODD_INPUT as exc:
        # the parser is lenient and this module checks what it reads: an odd input that
        # still gets here is reported, never raised as something else
        raise MalformedReport(f"the report cannot be read ({type(exc).__name__})") from None


def _parse(raw: bytes, mailbox: str | None, received: datetime | None) -> Report:
    budget = _Budget()
    message = _read(raw, budget)
    if message.get_content_type() != "multipart/report":
        raise NotAReport(_plain(message))
    report_type = _param(message, "report-type")
    parts = message.get_payload()
    if not isinstance(parts, list) or not parts:
        if report_type in REPORT_TYPES:
            raise MalformedReport("the multipart/report has no parts")
        raise NotAReport(f"a report of type {_shown(report_type)}, not a delivery report")
    children = [part for part in parts if isinstance(part, Message)]
    status = next((p for p in children if p.get_content_type() in STATUS_TYPES), None)
    if report_type not in REPORT_TYPES and (report_type or status is None):
        raise NotAReport(f"a report of type {_shown(report_type)}, not a delivery report")
    if status is None:
        raise MalformedReport("no message/delivery-status part")
    per_message, recipients = _groups(status, budget)
    original = _original(children, budget)
    message_id = _id(_field(original, "Message-ID"), MAX_MESSAGE_ID)
    tracking_id = _id(_field(original, TRACKING_HEADER), MAX_TRACKING_ID)
    when = (
        _date(_field(per_message, "Arrival-Date"))
        or _date(_field(message, "Date"))
        or _utc(received)
        or datetime.now(timezone.utc)
    )
    events = [
        event
        for group in recipients
        if (event := _event(group, when, mailbox, message_id, tracking_id)) is not None
    ]
    if not events:
        raise NotAReport("a delivery report of no failed or delayed recipient")
    return Report(
        events=events,
        original_message_id=message_id,
        tracking_id=tracking_id,
        reporting_mta=_typed(_field(per_message, "Reporting-MTA")) or None,
        subject=_header(message, "Subject"),
    )


# reading MIME ---------------------------------------------------------------------------------


class _Policy(Compat32):
    """``compat32``, header values kept as raw text and cut at :data:`MAX_HEADER`."""

    def header_source_parse(self, sourcelines: list[str]) -> tuple[str, str]:
        name, value = super().header_source_parse(sourcelines)
        return name, value[:MAX_HEADER]

    def header_fetch_parse(self, name: str, value: str) -> str:
        return value  # never a Header object, even for raw 8-bit bytes


_POLICY = _Policy()


class _Budget:
    """Makes the parser's messages: past :data:`MAX_PARTS` of them, the report is refused."""

    def __init__(self) -> None:
        self.parts = 0

    def __call__(self, policy: Policy[Any]) -> _Part:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise MalformedReport(f"the report has more than {MAX_PARTS} parts")
        return _Part(policy)


class _Part(Message):
    """A message the parser builds; it attaches each new part to its parent, which is where
    nesting deeper than :data:`MAX_DEPTH` is refused."""

    depth = 0

    def attach(self, payload: Message | str) -> None:
        if isinstance(payload, _Part):
            payload.depth = self.depth + 1
            if payload.depth > MAX_DEPTH:
                raise MalformedReport(f"the report is nested more than {MAX_DEPTH} levels deep")
        super().attach(payload)


def _read(data: bytes, budget: _Budget) -> Message:
    return message_from_bytes(data, policy=_POLICY.clone(message_factory=budget))


def _groups(part: Message, budget: _Budget) -> tuple[Message | None, list[Message]]:
    """The per-message field group and the per-recipient ones of a delivery-status part."""
    payload = part.get_payload()
    encoding = _field(part, "Content-Transfer-Encoding").lower()
    if part.get_content_type() == "message/delivery-status" and encoding in IDENTITY:
        found = payload if isinstance(payload, list) else []
    else:
        # message/global-delivery-status is parsed as one message (its first group's fields as
        # headers, the rest as a body) and an encoded part's groups are still encoded: put the
        # text together again, decode it and let the parser split it into groups
        text = _decoded(part, budget)
        again = _read(b"Content-Type: message/delivery-status\n\n" + text, budget).get_payload()
        found = again if isinstance(again, list) else []
    groups = [g for g in found if isinstance(g, Message) and g.keys()]  # blank lines: empty
    if groups and "Final-Recipient" in groups[0] and "Reporting-MTA" not in groups[0]:
        return None, groups  # no per-message group (not RFC 3464, but read anyway)
    if len(groups) < 2:
        raise MalformedReport("the delivery-status part has no per-recipient field group")
    return groups[0], groups[1:]


def _decoded(part: Message, budget: _Budget) -> bytes:
    """A message/* part's body, as it came (from the messages the parser made of it), with its
    transfer encoding undone by the email package."""
    payload = part.get_payload()
    blocks = []
    for sub in payload if isinstance(payload, list) else []:
        if not isinstance(sub, Message):
            continue
        head = _bytes("".join(f"{name}: {value}\n" for name, value in sub.items()))
        body = sub.get_payload(decode=True)  # its bytes (decode=False would decode 8-bit)
        body = body if isinstance(body, bytes) else b""
        joined = any(isinstance(d, MissingHeaderBodySeparatorDefect) for d in sub.defects)
        blocks.append(head + (b"\n" if head and body and not joined else b"") + body)
    text = b"\n".join(blocks)
    encoding = _field(part, "Content-Transfer-Encoding").lower()
    if encoding in IDENTITY:
        return text
    carrier = _read(f"Content-Transfer-Encoding: {encoding}\n\n".encode() + text, budget)
    decoded = carrier.get_payload(decode=True)
    return decoded if isinstance(decoded, bytes) else b""


def _bytes(text: str) -> bytes:
    """Text the bytes parser made back into its bytes (8-bit bytes are kept as surrogates)."""
    try:
        return text.encode("ascii", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape")


def _original(parts: list[Message], budget: _Budget) -> Message | None:
    """The original message's headers: text/rfc822-headers, or the attached message."""
    for part in parts:
        content_type = part.get_content_type()
        if content_type in HEADER_TYPES:
            text = part.get_payload(decode=True)
            return _read(text, budget) if isinstance(text, bytes) else None
        if content_type in ORIGINAL_TYPES:
            encoding = _field(part, "Content-Transfer-Encoding").lower()
            payload = part.get_payload()
            if encoding in IDENTITY:
                first = payload[0] if isinstance(payload, list) and payload else None
                return first if isinstance(first, Message) else None
            return _read(_decoded(part, budget), budget)
    return None


# reading fields -------------------------------------------------------------------------------


def _event(
    group: Message,
    when: datetime,
    mailbox: str | None,
    message_id: str | None,
    tracking_id: str | None,
) -> DeliveryEvent | None:
    """The event of one recipient's field group, None for a delivered/relayed/expanded one."""
    recipient = _address(group, "Final-Recipient")
    if recipient is None:
        raise MalformedReport("a recipient field group without a Final-Recipient address")
    status = status_code(_field(group, "Status"))
    diagnostic = _diagnostic(group)
    specific = status_code(diagnostic)
    if status is None:
        status = specific
    elif status.endswith(".0.0") and specific and specific[0] == status[0]:
        status = specific  # "5.0.0" with "550 5.1.1 user unknown": the specific one
    if status is None:
        raise MalformedReport("a recipient field group without a Status")
    action = (_field(group, "Action").lower().split() or [""])[0]
    if not action:  # RFC 3464 requires it; read the status class instead
        action = {"5": "failed", "4": "delayed"}.get(status[0], "delivered")
    if action not in {"failed", "delayed"}:
        return None  # delivered, relayed, expanded: nothing failed
    event_type: EventType
    event_type, sender_problem = classify(status, delayed=action == "delayed")
    if action == "failed":
        event_type = "bounced"  # final even with a 4.x.x code: the MTA gave up
    details = {
        "remote-mta": _typed(_field(group, "Remote-MTA")),
        "x-supplementary-info": _header(group, "X-Supplementary-Info") or "",
        "x-display-name": _header(group, "X-Display-Name") or "",
        "original-recipient": _address(group, "Original-Recipient") or "",
    }
    if details["original-recipient"] == recipient:
        del details["original-recipient"]
    return DeliveryEvent(
        event_type=event_type,
        recipient=recipient,
        timestamp=_date(_field(group, "Last-Attempt-Date")) or when,
        source="ndr",
        message_id=message_id,
        tracking_id=tracking_id,
        mailbox=mailbox,
        status_code=status,
        reason=diagnostic,
        sender_problem=sender_problem,
        details={name: value for name, value in details.items() if value},
    )


def _field(message: Message | None, name: str) -> str:
    """A header's value, unfolded, 8-bit bytes read as UTF-8, control characters dropped."""
    if message is None:
        return ""
    return _clean(message.get(name))


def _header(message: Message | None, name: str) -> str | None:
    """A header's value with RFC 2047 encoded words decoded (a localised subject)."""
    value = _field(message, name)
    with contextlib.suppress(MessageError, ValueError, LookupError):  # else as written
        value = _clean(str(make_header(decode_header(value))))
    return value or None


def _clean(value: object) -> str:
    if not isinstance(value, str):
        return ""
    with contextlib.suppress(UnicodeEncodeError):  # raw 8-bit bytes are read as UTF-8
        value = value.encode("ascii", "surrogateescape").decode("utf-8", "replace")
    text = " ".join(value.split())
    return "".join(ch for ch in text if ch >= " " and ch != "\x7f")


def _param(message: Message, name: str) -> str:
    value = message.get_param(name)
    return collapse_rfc2231_value(value).strip().lower() if value else ""


def _typed(value: str) -> str:
    """``rfc822; a@b`` -> ``a@b``; ``smtp; 550 ...`` -> ``550 ...`` (RFC 3464 typed fields)."""
    kind, sep, rest = value.partition(";")
    return (rest if sep and kind.strip() and " " not in kind.strip() else value).strip()


def _diagnostic(group: Message) -> str | None:
    """The Diagnostic-Code without its type; a multi-line SMTP reply made one line, the reply
    code (and enhanced code) that starts each continued line dropped: ``550-5.1.1 a`` /
    ``550 5.1.1 b`` -> ``550-5.1.1 a b`` (Gmail writes its replies so)."""
    raw = group.get("Diagnostic-Code")
    lines = [_clean(line) for line in raw.splitlines()] if isinstance(raw, str) else []
    lines = [line for line in lines if line]
    if not lines:
        return None
    lines[0] = _typed(lines[0])
    code = lines[0][:3]
    continued = code.isdigit() and lines[0][3:4] == "-"  # "550-": more lines follow
    for index, line in enumerate(lines[1:], start=1):
        if continued and line[:3] == code and line[3:4] in {"-", " "}:
            word, _, rest = line[_REPLY_PREFIX:].lstrip().partition(" ")
            lines[index] = rest if status_code(word) == word else f"{word} {rest}"
    return " ".join(" ".join(lines).split()) or None


def _address(group: Message, name: str) -> str | None:
    """An address field's address, lower-case; None when absent or not an address (one
    whose bytes were not UTF-8 cannot be one we sent to)."""
    value = _field(group, name)
    kind, sep, address = value.partition(";")
    if not sep:
        kind, address = "rfc822", value  # no address type: not RFC 3464, but plain enough
    if kind.strip().lower() == "utf-8":  # RFC 6533: \x{HEX} escapes
        address = _UNICODE_ESCAPE.sub(lambda found: _char(found.group(1)), address)
    address = address.strip().strip("<>").strip().lower()
    if (
        "@" not in address
        or len(address) > MAX_ADDRESS
        or any(ch.isspace() or ch < " " or ch in "\x7f\ufffd" for ch in address)
    ):
        return None
    return address


def _char(hexpoint: str) -> str:
    point = int(hexpoint, 16)
    return chr(point) if point <= 0x10FFFF and not 0xD800 <= point <= 0xDFFF else "\ufffd"


def _id(value: str, longest: int) -> str | None:
    """A Message-ID or tracking id, None when longer than any of ours can be."""
    return value if value and len(value) <= longest and " " not in value else None


def _date(value: str) -> datetime | None:
    if not value:
        return None
    try:
        return _utc(parsedate_to_datetime(value))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _utc(when: datetime | None) -> datetime | None:
    if when is None:
        return None
    if when.tzinfo is None:  # "-0000": the time is UTC, the zone unknown (RFC 5322)
        return when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc)


def _plain(message: Message) -> str:
    """Why an ordinary message is not a report (for the log)."""
    subject = (_header(message, "Subject") or "").lower()
    if (
        _field(message, "Auto-Submitted").lower().startswith("auto-replied")
        or "X-Auto-Response-Suppress" in message
        or subject.startswith("automatic reply:")
    ):
        return "an automatic reply, not a delivery report"
    return f"a {_shown(message.get_content_type())} message, not a delivery report (RFC 3464)"


def _shown(value: str) -> str:
    """A value named in an exception's message, cut short: never a hostile header whole."""
    if not value:
        return "unknown"
    return value if len(value) <= _SHOWN else value[:_SHOWN] + "..."
