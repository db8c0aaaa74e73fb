"""Faults at the click of a button: the dev inbox's, ``POST /api/faults``' and ``--fault``'s
words for the emulator's faults (:mod:`msgraph_mail.emulator.faults`).

A developer arms what their app must survive on the next ``sendMail`` requests — a 429 with
a chosen ``Retry-After``, a 503, a 504 after the message went out, a dropped connection — or
a standing latency on every answer, and switches it off again. One parser (:func:`parse`)
serves the command line (``--fault 429:3:10``) and the JSON API, so a test suite can script
exactly what a developer clicks.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from .events import EventHub
from .faults import PlannedFault
from .inbox_folder import InboxMessage
from .mail import SentMessage
from .request_log import RecordedRequest


class Emulator(Protocol):
    """What the workbench and the dev inbox use of ``Emulator`` (which they serve:
    naming the protocol, not the class, keeps them free of the server module)."""

    latency: float
    events: EventHub

    @property
    def url(self) -> str: ...
    @property
    def strict(self) -> bool: ...
    @property
    def sent(self) -> list[SentMessage]: ...
    @property
    def requests(self) -> list[RecordedRequest]: ...
    @property
    def time_scale(self) -> float: ...
    @property
    def limits(self) -> Mapping[str, float | None]: ...
    def settings(self, **overrides: Any) -> dict[str, Any]: ...
    def clear_messages(self) -> None: ...
    def budgets(self) -> list[dict[str, Any]]: ...
    def throttled(self, mailbox: str | None = None) -> dict[str, int]: ...
    def delivery_of(self, request_id: str) -> list[dict[str, Any]]: ...
    def reports_of(self, request_id: str) -> list[InboxMessage]: ...
    def inbox_messages(self, mailbox: str | None = None) -> list[InboxMessage]: ...
    def fail_next(
        self, fault: str, times: int = 1, *, on: str = "sendMail", retry_after: float | None = 0.01
    ) -> None: ...
    def pending_faults(self, on: str = "sendMail") -> list[PlannedFault]: ...
    def clear_faults(self, on: str | None = None) -> None: ...


#: The workbench's fault names, and the emulator fault each arms on sendMail.
FAULTS = {
    "429": "throttle",
    "503": "unavailable",
    "504": "gateway_timeout",
    "drop": "reset_before",
    "drop-after": "reset_after",
}
#: What each does, for the page and ``--help``.
DESCRIPTIONS = {
    "429": "429 Too Many Requests with Retry-After (nothing sent)",
    "503": "503 Service Unavailable (nothing sent)",
    "504": "504 Gateway Timeout after the message went out",
    "drop": "connection dropped before the request is processed (nothing sent)",
    "drop-after": "connection dropped after the message went out",
    "latency": "every answer takes this many seconds (until switched off)",
}
#: The Retry-After a 429 advertises when none is chosen.
DEFAULT_RETRY_AFTER = 1.0
MAX_COUNT = 1000
MAX_SECONDS = 600.0


@dataclass(frozen=True)
class Arming:
    """One request to the workbench: ``count`` sendMail faults, or a latency in seconds."""

    fault: str
    count: int = 1
    seconds: float | None = None  # Retry-After (429, 503) or the latency

    def apply(self, emulator: Emulator) -> None:
        if self.fault == "latency":
            emulator.latency = float(self.seconds or 0.0)
            return
        retry_after = self.seconds
        if self.fault == "429" and retry_after is None:
            retry_after = DEFAULT_RETRY_AFTER
        emulator.fail_next(
            FAULTS[self.fault], times=self.count, on="sendMail", retry_after=retry_after
        )


def parse(spec: str) -> Arming:
    """``FAULT[:COUNT[:SECONDS]]`` (``429:3:10``, ``503``, ``drop:2``) or ``latency:SECONDS``."""
    fault, _, rest = spec.strip().partition(":")
    if fault == "latency":
        return checked({"fault": fault, "seconds": rest or None})
    count, _, seconds = rest.partition(":")
    return checked({"fault": fault, "count": count or 1, "seconds": seconds or None})


def checked(data: Any) -> Arming:
    """An :class:`Arming` from JSON (``{"fault", "count", "seconds"}``); ValueError says
    what is wrong in words a developer can act on."""
    if not isinstance(data, dict):
        raise ValueError('expected a JSON object such as {"fault": "429", "count": 3}')
    unknown = set(data) - {"fault", "count", "seconds"}
    if unknown:
        raise ValueError(f"unknown field {sorted(unknown)[0]!r}; fields: fault, count, seconds")
    fault = str(data.get("fault") or "")
    if fault not in (*FAULTS, "latency"):
        raise ValueError(f"unknown fault {fault!r}; one of {', '.join([*FAULTS, 'latency'])}")
    count = _number(data.get("count", 1), "count", int)
    seconds = data.get("seconds")
    seconds = None if seconds in (None, "") else _number(seconds, "seconds", float)
    if fault == "latency" and seconds is None:
        raise ValueError("latency needs seconds, e.g. latency:1.5")
    if not 1 <= count <= MAX_COUNT:
        raise ValueError(f"count must be 1 to {MAX_COUNT}")
    if seconds is not None and not 0 <= seconds <= MAX_SECONDS:
        raise ValueError(f"seconds must be 0 to {MAX_SECONDS:g}")
    return Arming(fault, count, seconds)


def _number(value: Any, name: str, kind: type[int] | type[float]) -> Any:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, not {str(value)[:20]!r}") from None
    if kind is int and not number.is_integer():
        raise ValueError(f"{name} must be a whole number")
    return kind(number)


def armed(emulator: Emulator) -> list[dict[str, Any]]:
    """What is armed now, in the workbench's words: faults waiting for sendMail requests
    (consecutive equal ones together), then the latency if any."""
    names = {fault: name for name, fault in FAULTS.items()}
    planned = [
        (names.get(p.name, p.name), p.retry_after) for p in emulator.pending_faults("sendMail")
    ]
    found: list[dict[str, Any]] = [
        {"fault": name, "count": len(list(same)), "seconds": seconds}
        for (name, seconds), same in itertools.groupby(planned)
    ]
    if emulator.latency:
        found.append({"fault": "latency", "count": None, "seconds": emulator.latency})
    for entry in found:
        entry["description"] = DESCRIPTIONS.get(entry["fault"], entry["fault"])
    return found


def disarm(emulator: Emulator) -> None:
    """Switch every workbench fault off: the pending sendMail faults and the latency."""
    emulator.clear_faults("sendMail")
    emulator.latency = 0.0
