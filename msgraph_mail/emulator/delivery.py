"""After Graph's 202: each recipient's fate, and the reports Exchange writes back about it.

Exchange accepts a message (202), then routes it: message trace shows each recipient moving from
``gettingStatus`` to ``pending`` to a final status, and a recipient it cannot reach comes back as
a non-delivery report (NDR) in the sending mailbox's Inbox. The emulator decides each
recipient's outcome when the message is accepted, by the first rule that applies:

- a rule set with ``GraphEmulator.set_delivery`` for the address, else for its ``@domain``;
- an address at one of the tenant's own domains (those of its users) that no mailbox has:
  bounced by Exchange with 5.1.10, its RecipientNotFound (not in the permissive dev inbox,
  where any address becomes a mailbox);
- an address at a domain ending in ``.invalid`` (RFC 2606): bounced by the remote server, 5.1.1;
- anything else: delivered.

Half of ``delay`` after acceptance a recipient is ``pending``; after all of it, final (a
deferred one stays ``pending``) and the report is due: an NDR for the bounced recipients, a
"Delivery delayed" DSN for the deferred ones, one per message as Exchange groups the recipients
that fail together. No thread runs: states and reports are computed when they are read.

A report is RFC 3464 ``multipart/report; report-type=delivery-status``: a plain-text part, the
``message/delivery-status`` part and the original's headers as ``text/rfc822-headers`` (what
Exchange Online's NDRs usually carry [R]; THIRD_WAVE_NOTES). Its sender and subject are those of
Graph's own NDR sample (Learn: message-move); its texts are Exchange's where Learn's NDR table
gives them ("non-delivery-reports-in-exchange-online"), else marked UNCONFIRMED.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email import policy
from email.message import EmailMessage, Message, MIMEPart
from email.parser import BytesParser
from email.utils import format_datetime

from .directory import TENANT_DOMAIN, Tenant, User
from .mail import Screened, SentMessage
from .sent_items import exchange_message_id

#: What can become of a recipient (``GraphEmulator.set_delivery``).
OUTCOMES = ("delivered", "bounced", "deferred", "quarantined", "filtered_as_spam")
#: Message trace's final status for each outcome; a deferred recipient stays ``pending``.
TRACE_STATUS = {
    "delivered": "delivered",
    "bounced": "failed",
    "deferred": "pending",
    "quarantined": "quarantined",
    "filtered_as_spam": "filteredAsSpam",
}
#: The system mailbox Exchange Online signs NDRs with (Graph's sample, Learn: message-move).
NDR_FROM = f"Microsoft Outlook <MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e@{TENANT_DOMAIN}>"
#: The emulated Exchange server that accepts, reports and traces messages.
EXCHANGE_HOST = "EM1PR00MB0001.namprd00.prod.outlook.com"
#: Codes Exchange answers itself (no remote server involved), with its texts: 5.1.10 and
#: 5.7.233 per Learn's NDR table, 5.1.8 as reported [R]; 4.4.7 is the status of a delayed DSN
#: (its text, and the 451, UNCONFIRMED: Learn's table gives 4.4.7 as "Message expired").
EXCHANGE_CODES = {
    "5.1.10": "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP "
    "address lookup",
    "5.1.8": "550 5.1.8 Access denied, bad outbound sender",
    "5.7.233": "550 5.7.233 Your message can't be sent because your tenant exceeded its daily "
    "limit for sending email to external recipients (tenant external recipient rate limit)",
    "4.4.7": "451 4.4.7 Message delayed",
}
_DEFAULT_CODES = {"bounced": "5.1.1", "deferred": "4.4.7"}
_CODE = re.compile(r"[45]\.\d{1,3}\.\d{1,3}")
_TARGET = re.compile(r"[^@\s]*@[^@\s]+\.[^@\s]+")


@dataclass(frozen=True)
class Outcome:
    """One recipient's fate; ``code`` and ``diagnostic`` (the SMTP reply) for bounced and
    deferred ones; ``external``: the address is outside the tenant's domains."""

    kind: str
    code: str | None = None
    diagnostic: str | None = None
    external: bool = True

    @property
    def remote(self) -> bool:
        """Whether a remote server gave the answer (the report then names it, Remote-MTA)."""
        return self.external and self.code is not None and self.code not in EXCHANGE_CODES


def checked_outcome(kind: str, code: str | None, diagnostic: str | None) -> Outcome:
    """A rule's outcome, its code defaulted (5.1.1, 4.4.7) and checked: 5.x.x for a bounce
    (a sender-caused 5.7.233 or 5.1.8 included), 4.x.x for a deferral, none otherwise."""
    if kind not in OUTCOMES:
        raise ValueError(f"unknown outcome {kind!r}; one of {', '.join(OUTCOMES)}")
    if kind not in _DEFAULT_CODES:
        if code is not None or diagnostic is not None:
            raise ValueError(f"a {kind!r} recipient has no status code or diagnostic")
        return Outcome(kind)
    code = code or _DEFAULT_CODES[kind]
    if not _CODE.fullmatch(code) or code[0] != _DEFAULT_CODES[kind][0]:
        raise ValueError(f"a {kind!r} recipient needs a {_DEFAULT_CODES[kind][0]}.x.x code")
    return Outcome(kind, code, diagnostic or default_diagnostic(code))


def default_diagnostic(code: str) -> str:
    """The SMTP reply for ``code``: Exchange's own, else a remote server's ("550 5.1.1 user
    unknown"; UNCONFIRMED for other codes, which get a generic text)."""
    if code in EXCHANGE_CODES:
        return EXCHANGE_CODES[code]
    text = "user unknown" if code == "5.1.1" else "Requested action not taken"
    return f"{'550' if code[0] == '5' else '451'} {code} {text}"


@dataclass
class Delivery:
    """One accepted message: its recipients' outcomes and when they become final."""

    trace_id: str  # message trace's id, shared by the message's rows
    message: SentMessage | Screened = field(repr=False)
    message_id: str  # as delivered (``rewrite_message_ids`` respected)
    recipients: list[tuple[str, Outcome]]
    received: datetime  # wall clock, UTC, whole seconds (as message trace shows it)
    started: float  # monotonic
    delay: float
    reported: bool = False

    def status(self, outcome: Outcome, now: float) -> str:
        """Message trace's status at ``now`` (monotonic)."""
        if self.done(now):  # a deferred recipient's final status is pending too
            return TRACE_STATUS[outcome.kind]
        return "gettingStatus" if now - self.started < self.delay / 2 else "pending"

    def done(self, now: float) -> bool:
        return now - self.started >= self.delay

    @property
    def finished(self) -> datetime:
        """When the outcomes became final (and the reports arrived), wall clock."""
        return self.received + timedelta(seconds=self.delay)


@dataclass(frozen=True)
class Report:
    """An NDR or delayed DSN due in ``mailbox``'s Inbox."""

    mailbox: User
    raw: bytes
    arrived: datetime


class Deliveries:
    """The accepted messages, the rules that decide their recipients' fate, and the reports
    still to arrive. Thread-safe: handler threads accept and read, tests configure."""

    def __init__(self, tenant: Tenant) -> None:
        self.tenant = tenant
        self._lock = threading.Lock()
        self._rules: dict[str, Outcome] = {}
        self._deliveries: list[Delivery] = []
        #: Seconds from acceptance to the final state and the reports (not scaled).
        self.delay = 5.0

    def set_rule(self, target: str, outcome: Outcome) -> None:
        """``target``: an address, or ``@domain`` for every address at exactly that domain."""
        if not _TARGET.fullmatch(target):
            raise ValueError(f"{target!r} is neither an address nor '@domain'")
        with self._lock:
            self._rules[target.lower()] = outcome

    def clear_rules(self) -> None:
        """Drop every ``set_delivery`` rule; the built-in rules stay."""
        with self._lock:
            self._rules.clear()

    def clear(self) -> None:
        """Forget the accepted messages (and their reports not yet arrived)."""
        with self._lock:
            self._deliveries.clear()

    @property
    def deliveries(self) -> list[Delivery]:
        with self._lock:
            return list(self._deliveries)

    def accept(self, message: SentMessage | Screened, message_id: str) -> None:
        """Decide the fate of each recipient (once each) of a message Graph accepted."""
        domains = self._tenant_domains()
        unique = list(dict.fromkeys(address.lower() for address in message.recipients))
        with self._lock:
            self._deliveries.append(
                Delivery(
                    trace_id=str(uuid.uuid4()),
                    message=message,
                    message_id=message_id,
                    recipients=[(a, self._decide(a, domains)) for a in unique],
                    received=datetime.now(timezone.utc).replace(microsecond=0),
                    started=time.monotonic(),
                    delay=self.delay,
                )
            )

    def due(self) -> list[Report]:
        """The reports whose time has come, each handed out once."""
        now = time.monotonic()
        with self._lock:
            ready = [d for d in self._deliveries if not d.reported and d.done(now)]
            for delivery in ready:
                delivery.reported = True
        reports = []
        for delivery in ready:
            for kind, delayed in (("bounced", False), ("deferred", True)):
                rows = [(a, o) for a, o in delivery.recipients if o.kind == kind]
                if rows:
                    raw = build_report(delivery, rows, delayed=delayed)
                    reports.append(Report(delivery.message.mailbox, raw, delivery.finished))
        return reports

    def _decide(self, address: str, domains: set[str]) -> Outcome:
        domain = address.rpartition("@")[2]
        external = domain not in domains
        rule = self._rules.get(address) or self._rules.get("@" + domain)
        if rule is not None:
            return Outcome(rule.kind, rule.code, rule.diagnostic, external)
        if not external and not self.tenant.permissive and not self._has_mailbox(address):
            return Outcome("bounced", "5.1.10", EXCHANGE_CODES["5.1.10"], external)
        if domain == "invalid" or domain.endswith(".invalid"):
            return Outcome("bounced", "5.1.1", default_diagnostic("5.1.1"), external)
        return Outcome("delivered", external=external)

    def _tenant_domains(self) -> set[str]:
        """The domains of the users' addresses (a guest's own address is not the tenant's)."""
        domains: set[str] = set()
        for user in self.tenant.users:
            addresses = [user.user_principal_name] if user.is_guest else user.addresses()
            domains.update(a.rpartition("@")[2].lower() for a in addresses)
        return domains

    def _has_mailbox(self, address: str) -> bool:
        user = self.tenant.user(address)
        return user is not None and user.mailbox_enabled


# the report ----------------------------------------------------------------------------------


def build_report(delivery: Delivery, rows: list[tuple[str, Outcome]], *, delayed: bool) -> bytes:
    """The NDR (or delayed DSN) for ``rows`` of ``delivery``, as RFC 3464 MIME."""
    report = EmailMessage(policy=policy.SMTP)
    report["From"] = NDR_FROM
    report["To"] = delivery.message.mailbox.mail
    report["Date"] = format_datetime(delivery.finished)
    kind = "Delivery delayed" if delayed else "Undeliverable"
    report["Subject"] = f"{kind}: {delivery.message.subject}"
    report["Message-ID"] = exchange_message_id()
    report["Auto-Submitted"] = "auto-replied"  # RFC 3834; UNCONFIRMED that Exchange sets it
    report["MIME-Version"] = "1.0"
    report["Content-Type"] = "multipart/report; report-type=delivery-status"
    report.set_payload(
        [_human(rows, delayed), _status(delivery, rows, delayed), _headers(delivery)]
    )
    return report.as_bytes()


def _human(rows: list[tuple[str, Outcome]], delayed: bool) -> MIMEPart:
    """The part a person reads; Graph's ``bodyPreview`` of an NDR starts with its first line."""
    verb = "is delayed" if delayed else "has failed"
    lines = [f"Delivery {verb} to these recipients or groups:", ""]
    for address, outcome in rows:
        said = "Remote server returned" if outcome.remote else "Reported error"
        lines += [address, f"{said}: '{outcome.diagnostic}'", ""]
    lines.append(f"Generating server: {EXCHANGE_HOST}")
    part = MIMEPart(policy=policy.SMTP)
    part.set_content("\n".join(lines) + "\n")
    return part


def _status(delivery: Delivery, rows: list[tuple[str, Outcome]], delayed: bool) -> MIMEPart:
    """``message/delivery-status``: the per-message fields, then one block per recipient."""
    blocks: list[Message | str] = [
        _fields([("Reporting-MTA", f"dns;{EXCHANGE_HOST}"), ("Arrival-Date", _date(delivery))])
    ]
    for address, outcome in rows:
        remote = [("Remote-MTA", f"dns;mx.{address.rpartition('@')[2]}")] if outcome.remote else []
        blocks.append(
            _fields(
                [
                    ("Final-Recipient", f"rfc822;{address}"),
                    ("Action", "delayed" if delayed else "failed"),
                    ("Status", str(outcome.code)),
                    *remote,
                    ("Diagnostic-Code", f"smtp;{outcome.diagnostic}"),
                ]
            )
        )
    part = MIMEPart(policy=policy.SMTP)
    part["Content-Type"] = "message/delivery-status"
    part.set_payload(blocks)
    return part


def _headers(delivery: Delivery) -> MIMEPart:
    """``text/rfc822-headers``: From, To, Cc, Subject, Date, the Message-ID as delivered and
    every ``X-`` header of the original (never its Bcc)."""
    kept = [
        (name, value)
        for name, value in _original_headers(delivery.message)
        if name.lower() in ("from", "to", "cc", "subject", "date") or name.lower()[:2] == "x-"
    ]
    if not any(name.lower() == "date" for name, _ in kept):
        kept.append(("Date", _date(delivery)))
    part = MIMEPart(policy=policy.SMTP)
    headers = _fields([*kept, ("Message-ID", delivery.message_id)])
    part.set_content(headers.as_bytes(), "text", "rfc822-headers", cte="7bit")
    return part


def _original_headers(message: SentMessage | Screened) -> Iterable[tuple[str, str]]:
    if isinstance(message, SentMessage):
        return message.headers
    parsed = BytesParser(policy=policy.default).parsebytes(message.raw, headersonly=True)
    return [(name, str(value)) for name, value in parsed.items()]


def _fields(fields: Iterable[tuple[str, str]]) -> Message:
    block = Message(policy=policy.SMTP)
    for name, value in fields:
        block[name] = value
    return block


def _date(delivery: Delivery) -> str:
    return format_datetime(delivery.received)
