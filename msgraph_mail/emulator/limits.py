"""Outlook's per-mailbox limits and Exchange's recipient rate limit, with a time scale.

GRAPH_NOTES B.1: per application (the token's ``appid``) and mailbox, Graph allows 4 requests
in flight, 10,000 requests per 10 minutes and 150 MB of upload (bodies of POST, PUT and
PATCH) per 5 minutes; one mailbox over a limit does not affect another. B.2: Exchange lets a
mailbox send to 10,000 recipients (To+Cc+Bcc) per rolling 24 hours, whatever application
sends. The windows slide. Only the mailbox's mail endpoints count (sendMail, drafts,
attachments, upload sessions and their chunk PUTs, send); tokens and directory reads do not.

``time_scale`` shrinks the windows (0.001: 10 minutes last 0.6 s), so a test can run a day in
seconds; ``Retry-After`` is scaled with them. Only admitted requests are spent: a refused one
leaves the budgets as they were, so a client that honours ``Retry-After`` gets in (whether
Graph counts refused requests is not documented).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .errors import GraphError
from .faults import retry_after_header

#: Graph's limit: concurrent requests per app ID + mailbox.
MAILBOX_CONCURRENCY = 4
#: Retry-After the emulator advertises with ``ApplicationThrottled`` (seconds).
CONCURRENCY_RETRY_AFTER = 0.05
#: The limits and their defaults, named as the backend's setting names them.
DEFAULT_LIMITS: dict[str, float | None] = {
    "CONCURRENT_REQUESTS": MAILBOX_CONCURRENCY,
    "REQUESTS_PER_10_MINUTES": 10_000,
    "UPLOAD_MB_PER_5_MINUTES": 150,
    "RECIPIENTS_PER_24_HOURS": 10_000,
}
#: Why a request was refused, as ``throttled()`` and ``usage()`` name the budgets.
REASONS = ("concurrency", "requests", "upload", "recipients")
#: Each windowed budget: its limit's key and its window in (unscaled) seconds.
WINDOWS = {
    "requests": ("REQUESTS_PER_10_MINUTES", 600.0),
    "upload": ("UPLOAD_MB_PER_5_MINUTES", 300.0),
    "recipients": ("RECIPIENTS_PER_24_HOURS", 86_400.0),
}
#: How Outlook's 429 names each per-application-and-mailbox limit it refuses for.
_OUTLOOK_LIMITS = {
    "concurrency": "MailboxConcurrency",
    "requests": "MailboxRequests",
    "upload": "IncomingBytes",
}
#: One MB of the upload limit (Graph's MB, like the 4 MB request limit, is 2**20 bytes).
MB = 1024 * 1024

Owner = tuple[str, str]  # (application id, mailbox id)


def checked_limits(limits: Mapping[str, float | None]) -> dict[str, float | None]:
    """``limits`` validated: known keys only, each a number >= 0 or None (no limit)."""
    checked: dict[str, float | None] = {}
    for key, value in limits.items():
        if key not in DEFAULT_LIMITS:
            raise ValueError(f"unknown limit {key!r}; one of {', '.join(DEFAULT_LIMITS)}")
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0
        ):
            raise ValueError(f"limit {key} must be a number >= 0 or None, not {value!r}")
        checked[key] = value
    return checked


def checked_time_scale(value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"time_scale must be a number > 0, not {value!r}")
    return float(value)


@dataclass(frozen=True)
class Refusal:
    """A request over a budget: which one, and the (scaled) seconds until it would fit."""

    reason: str
    retry_after: float | None  # None: no Retry-After (``concurrency_retry_after = None``)


def throttled_error(refusal: Refusal) -> GraphError:
    """The 429 a client sees for ``refusal``, with Retry-After in (scaled) seconds.

    The request and upload budgets answer like the concurrency limit, whose text is observed
    (GRAPH_NOTES B.1): ``ApplicationThrottled``, the message naming the limit. UNCONFIRMED:
    the names Outlook gives these two limits in that message.
    """
    retry = retry_after_header(refusal.retry_after)
    if refusal.reason in _OUTLOOK_LIMITS:  # concurrency's text observed (GRAPH_NOTES B.1)
        limit = _OUTLOOK_LIMITS[refusal.reason]
        return GraphError(
            429, "ApplicationThrottled", f"Application is over its {limit} limit.", retry
        )
    if refusal.reason == "trace":
        # UNCONFIRMED: the code and text of message trace's 429 (only the limit is documented).
        return GraphError(
            429,
            "TooManyRequests",
            "Too many requests: the tenant is over message trace's limit of 100 requests "
            "per 5 minutes.",
            retry,
        )
    # UNCONFIRMED (GRAPH_NOTES B.2 says only that the mailbox "can't send until the 24-h count
    # drops"): Exchange's SMTP answer is "554 5.2.0 STOREDRV.Submission.Exception:
    # SubmissionQuotaExceededException"; what Graph's sendMail answers is not documented. The
    # emulator refuses with a 429 and an Exchange-style code, so a client retries later.
    return GraphError(
        429,
        "ErrorExceededMessageLimit",
        "The mailbox has exceeded its recipient rate limit (recipients per 24 hours); it can "
        "send again when the 24-hour count drops. SubmissionQuotaExceededException",
        retry,
    )


class _Window:
    """Amounts spent in a sliding window, oldest first, and their sum."""

    def __init__(self) -> None:
        self.entries: deque[tuple[float, int]] = deque()
        self.total = 0

    def prune(self, now: float, span: float) -> None:
        while self.entries and self.entries[0][0] <= now - span:
            self.total -= self.entries.popleft()[1]

    def wait(self, now: float, span: float, limit: float | None, amount: int) -> float | None:
        """None if ``amount`` fits under ``limit`` now; else the seconds until it does."""
        if limit is None or self.total + amount <= limit:
            return None
        excess = self.total + amount - limit
        freed = 0
        for at, spent in self.entries:
            freed += spent
            if freed >= excess:
                return at + span - now
        return span  # more than the whole limit: it never fits, say "a whole window"

    def add(self, now: float, amount: int) -> None:
        if amount:
            self.entries.append((now, amount))
            self.total += amount


def _retry_after(seconds: float) -> float:
    """Rounded up to the next millisecond (and one more), so a retry never comes too soon."""
    return math.ceil(max(seconds, 0.0) * 1000) / 1000 + 0.001


class MailboxBudgets:
    """The three windowed budgets per (application, mailbox), and the refusals counted.

    Thread-safe: handler threads spend while the test thread reads or reconfigures.
    """

    def __init__(
        self,
        limits: Mapping[str, float | None] | None = None,
        time_scale: float = 1.0,
    ) -> None:
        self._lock = threading.Lock()
        self._limits = {**DEFAULT_LIMITS, **checked_limits(limits or {})}
        self._time_scale = checked_time_scale(time_scale)
        self._windows: dict[tuple[str, object], _Window] = {}
        self._refused: dict[tuple[str, str], int] = {}

    # configuration ------------------------------------------------------------------------

    @property
    def limits(self) -> dict[str, float | None]:
        with self._lock:
            return dict(self._limits)

    def set_limits(
        self, limits: Mapping[str, float | None] | None = None, /, **changes: float | None
    ) -> None:
        """Change some limits, e.g. ``set_limits(REQUESTS_PER_10_MINUTES=5)``; others stay.

        Keys: ``CONCURRENT_REQUESTS`` (4), ``REQUESTS_PER_10_MINUTES`` (10,000),
        ``UPLOAD_MB_PER_5_MINUTES`` (150, MB of 2**20 bytes, fractions allowed) and
        ``RECIPIENTS_PER_24_HOURS`` (10,000); None lifts one. What was spent stays spent.
        """
        checked = checked_limits({**(limits or {}), **changes})
        with self._lock:
            self._limits.update(checked)

    def limit(self, key: str) -> float | None:
        with self._lock:
            return self._limits[key]

    @property
    def time_scale(self) -> float:
        return self._time_scale

    @time_scale.setter
    def time_scale(self, value: float) -> None:
        self._time_scale = checked_time_scale(value)

    def clear(self) -> None:
        """Empty every window and forget the refusals counted; the limits stay."""
        with self._lock:
            self._windows.clear()
            self._refused.clear()

    def reset(self) -> None:
        """Graph's default limits again, with empty windows and no refusals counted."""
        with self._lock:
            self._limits = dict(DEFAULT_LIMITS)
            self._windows.clear()
            self._refused.clear()

    # spending -----------------------------------------------------------------------------

    def _window(self, budget: str, key: object, now: float) -> tuple[_Window, float, float | None]:
        """The window (pruned), its scaled span and its limit in counted units."""
        limit_key, seconds = WINDOWS[budget]
        span = seconds * self._time_scale
        window = self._windows.setdefault((budget, key), _Window())
        window.prune(now, span)
        limit = self._limits[limit_key]
        if budget == "upload" and limit is not None:
            limit = limit * MB
        return window, span, limit

    def spend_request(self, owner: Owner, upload_bytes: int) -> Refusal | None:
        """Admit one request of ``upload_bytes`` for ``owner``, or say which budget refuses."""
        with self._lock:
            now = time.monotonic()
            requests, span, limit = self._window("requests", owner, now)
            wait = requests.wait(now, span, limit, 1)
            if wait is not None:
                return self._refuse("requests", owner[1], wait)
            upload, upload_span, upload_limit = self._window("upload", owner, now)
            wait = upload.wait(now, upload_span, upload_limit, upload_bytes)
            if wait is not None:
                return self._refuse("upload", owner[1], wait)
            requests.add(now, 1)
            upload.add(now, upload_bytes)
            return None

    def spend_recipients(self, mailbox: str, count: int) -> Refusal | None:
        """Admit a message to ``count`` recipients from ``mailbox`` (any application)."""
        with self._lock:
            now = time.monotonic()
            window, span, limit = self._window("recipients", mailbox, now)
            wait = window.wait(now, span, limit, count)
            if wait is not None:
                return self._refuse("recipients", mailbox, wait)
            window.add(now, count)
            return None

    def refused_concurrency(self, mailbox: str, retry_after: float | None) -> Refusal:
        with self._lock:
            self._count("concurrency", mailbox)
        return Refusal("concurrency", retry_after)

    def _refuse(self, reason: str, mailbox: str, wait: float) -> Refusal:
        self._count(reason, mailbox)
        return Refusal(reason, _retry_after(wait))

    def _count(self, reason: str, mailbox: str) -> None:
        self._refused[(reason, mailbox)] = self._refused.get((reason, mailbox), 0) + 1

    # reading ------------------------------------------------------------------------------

    def throttled(self, mailbox: str | None = None) -> dict[str, int]:
        """429s answered per reason, for ``mailbox`` (an id) or for every mailbox."""
        with self._lock:
            counts = dict.fromkeys(REASONS, 0)
            for (reason, refused_mailbox), count in self._refused.items():
                if mailbox is None or refused_mailbox == mailbox:
                    counts[reason] += count
            return counts

    def usage(self, owner: Owner) -> dict[str, dict[str, float | None]]:
        """``{"requests": {"used", "limit"}, "upload": {...}, "recipients": {...}}``.

        Upload is in bytes (``limit`` too); recipients are the mailbox's, whatever app sent.
        """
        with self._lock:
            now = time.monotonic()
            used: dict[str, dict[str, float | None]] = {}
            for budget in WINDOWS:
                key: object = owner[1] if budget == "recipients" else owner
                window, _, limit = self._window(budget, key, now)
                used[budget] = {"used": window.total, "limit": limit}
            return used

    def owners(self) -> list[Owner]:
        """Every (application, mailbox) that spent from its budgets in their windows."""
        with self._lock:
            now = time.monotonic()
            found: list[Owner] = []
            for (budget, key), _ in list(self._windows.items()):
                if budget == "recipients" or not isinstance(key, tuple):
                    continue
                window, _, _ = self._window(budget, key, now)
                if window.total and key not in found:
                    found.append(key)
            return found


class TenantWindow:
    """One budget for the whole tenant, whatever application calls: Exchange message trace's
    100 requests per 5 minutes, list and detail calls together (Learn: throttling-limits).

    The window is scaled by the emulator's ``time_scale`` like the mailbox budgets."""

    def __init__(self, limit: int, seconds: float, time_scale: Callable[[], float]) -> None:
        self._lock = threading.Lock()
        self._window = _Window()
        self.limit, self.seconds = limit, seconds
        self._time_scale = time_scale

    def spend(self) -> Refusal | None:
        """Admit one request, or the refusal with the (scaled) seconds until one fits."""
        with self._lock:
            now, span = time.monotonic(), self.seconds * self._time_scale()
            self._window.prune(now, span)
            wait = self._window.wait(now, span, self.limit, 1)
            if wait is not None:
                return Refusal("trace", _retry_after(wait))
            self._window.add(now, 1)
            return None

    def clear(self) -> None:
        with self._lock:
            self._window = _Window()


class MailboxGate:
    """Counts admitted in-flight requests per (application, mailbox) and remembers peaks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_flight: dict[Owner, int] = {}
        self._peaks: dict[Owner, int] = {}

    def enter(self, key: Owner, limit: float | None) -> bool:
        """Admit one more request for ``key`` unless ``limit`` are already in flight."""
        with self._lock:
            current = self._in_flight.get(key, 0)
            if limit is not None and current >= limit:
                return False
            self._in_flight[key] = current + 1
            self._peaks[key] = max(self._peaks.get(key, 0), current + 1)
            return True

    def leave(self, key: Owner) -> None:
        with self._lock:
            remaining = self._in_flight.get(key, 0) - 1
            if remaining > 0:
                self._in_flight[key] = remaining
            else:
                self._in_flight.pop(key, None)

    def in_flight(self, key: Owner) -> int:
        with self._lock:
            return self._in_flight.get(key, 0)

    def peak(self, mailbox: str | None) -> int:
        """The highest in-flight count seen for ``mailbox`` (any one application), or over
        every mailbox when None."""
        with self._lock:
            return max(
                (n for (_, m), n in self._peaks.items() if mailbox is None or m == mailbox),
                default=0,
            )

    def forget_peaks(self) -> None:
        """Start a new measurement; requests still in flight keep counting from now."""
        with self._lock:
            self._peaks = dict(self._in_flight)
