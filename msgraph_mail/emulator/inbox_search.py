"""Finding a message in the dev inbox: the page's search form and ``/api/messages`` filters.

``q`` matches the subject and every address (From, To, Cc, Bcc, with display names),
case-insensitively; ``mailbox`` the sending mailbox; ``route`` how it reached Graph
(``mime``, ``json``, ``draft``); ``since`` and ``until`` the capture time, as a date
(``2026-12-02``: the whole day, in the emulator's local time) or an ISO date-time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, time, timedelta

from .mail import SentMessage

ROUTES = ("mime", "json", "draft")
FIELDS = ("q", "mailbox", "route", "since", "until")


@dataclass(frozen=True)
class MessageQuery:
    """The filters of one search; an empty query matches everything."""

    q: str = ""
    mailbox: str = ""
    route: str = ""
    since: datetime | None = None
    until: datetime | None = None
    text: tuple[tuple[str, str], ...] = ()  # the fields as given, for links and forms

    @classmethod
    def parse(cls, query: Iterable[tuple[str, str]]) -> MessageQuery:
        """From a request's query string; ValueError names the field that is wrong."""
        given = {name: value.strip() for name, value in query if name in FIELDS and value.strip()}
        route = given.get("route", "").lower()
        if route and route not in ROUTES:
            raise ValueError(f"route must be one of {', '.join(ROUTES)}, not {route[:20]!r}")
        return cls(
            q=given.get("q", "").lower(),
            mailbox=given.get("mailbox", "").lower(),
            route=route,
            since=_moment(given.get("since"), "since", end=False),
            until=_moment(given.get("until"), "until", end=True),
            text=tuple((name, given[name]) for name in FIELDS if name in given),
        )

    def __bool__(self) -> bool:
        return bool(self.text)

    def value(self, name: str) -> str:
        return dict(self.text).get(name, "")

    def matches(self, message: SentMessage) -> bool:
        box = message.mailbox
        return (
            (
                not self.mailbox
                or self.mailbox in (box.user_principal_name.lower(), box.mail.lower())
            )
            and (not self.route or message.format == self.route)
            and (self.since is None or message.received_at >= self.since)
            and (self.until is None or message.received_at <= self.until)
            and (not self.q or self.q in _haystack(message))
        )

    def filter(self, messages: Iterable[SentMessage]) -> list[SentMessage]:
        return [message for message in messages if self.matches(message)]


def _haystack(message: SentMessage) -> str:
    """Everything ``q`` looks in, lower-cased: subject, addresses and display names."""
    parts = [
        message.subject,
        message.from_header,
        message.header("To") or "",
        message.header("Cc") or "",
        *message.to,
        *message.cc,
        *message.bcc,
    ]
    return "\n".join(parts).lower()


def _moment(text: str | None, name: str, *, end: bool) -> datetime | None:
    """A date (the whole day, local time) or an ISO date-time (naive: local time)."""
    if not text:
        return None
    try:
        if len(text) == 10:
            day = datetime.fromisoformat(text).date()
            moment = datetime.combine(day, time.min) + (timedelta(days=1) if end else timedelta())
        else:
            moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{name} must be a date (2026-12-02) or a date and time (2026-12-02T09:30), "
            f"not {text[:30]!r}"
        ) from None
    return moment.astimezone() if moment.tzinfo is None else moment
