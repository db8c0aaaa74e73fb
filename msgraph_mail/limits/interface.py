"""The limits' interface, the budgets, and what both stores share: the asks of a request,
pacing and the errors (:class:`MailboxLimits`)."""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from .. import telemetry
from ..conf import MSGraphMailSettings
from ..exceptions import ConfigurationError, MailboxBudgetExhausted

logger = logging.getLogger("msgraph_mail")

#: The budgets, as MAILBOX_LIMITS keys, and the length of each one's sliding window (s).
BUDGETS: dict[str, float] = {
    "REQUESTS_PER_10_MINUTES": 600.0,
    "UPLOAD_MB_PER_5_MINUTES": 300.0,
    "RECIPIENTS_PER_24_HOURS": 86_400.0,
}
#: The budgets priority "bulk" may not spend to the end (BULK_RESERVE).
RESERVED = frozenset({"REQUESTS_PER_10_MINUTES", "RECIPIENTS_PER_24_HOURS"})
#: Bytes in one MB of UPLOAD_MB_PER_5_MINUTES (Graph's MB, like its 4 MB request limit).
MB = 1024 * 1024
#: A slot's lease outlives the request's TIMEOUT by this much (seconds).
LEASE_MARGIN = 5.0
#: Connect and read timeout of the Redis client (seconds): an unreachable Redis fails fast.
REDIS_TIMEOUT = 3.0
#: The longest a waiter for a slot in Redis blocks before trying again (seconds); a release
#: hands its slot to a waiter at once, this bounds the wait for a lease that ran out.
POLL = 0.1
#: Environment variable that scales the windows of the whole process (tests, demos).
TIME_SCALE_ENV = "MSGRAPH_MAIL_LIMITS_TIME_SCALE"

PRIORITIES = ("normal", "bulk")


def env_scale() -> float:
    value = os.environ.get(TIME_SCALE_ENV)
    if not value:
        return 1.0
    try:
        scale = float(value)
    except ValueError:
        scale = 0.0
    if not 0 < scale <= 1:
        raise ConfigurationError(f"{TIME_SCALE_ENV} must be a number in (0, 1], e.g. 0.001")
    return scale


def mailbox_key(settings: MSGraphMailSettings, mailbox: str) -> str:
    """The hash that names one application's counts for one mailbox (no secret, no address)."""
    identity = "\n".join(
        (settings.graph_url, settings.tenant_id.lower(), settings.client_id, mailbox.lower())
    )
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Ask:
    """What one request spends on one budget."""

    budget: str
    window: float  # seconds, scaled
    limit: int  # in the budget's unit (bytes for uploads), after the bulk reserve
    amount: int


@dataclass(frozen=True)
class Short:
    """Why a spend did not fit: the budget, and seconds until it fits (None: never)."""

    budget: str
    wait: float | None


@dataclass(frozen=True, eq=False)
class Receipt:
    """What one spend took: its entry in each budget's window."""

    token: str
    entries: tuple[tuple[Ask, Any], ...]  # (ask, the store's handle of its entry)


class MailboxLimits:
    """May this request go now, and what does it spend? One instance per configuration.

    What both stores share is here: the asks of a request, pacing and the errors; each keeps
    the counts in its own place (:class:`~.in_process.InProcessLimits`,
    :class:`~.redis_store.RedisLimits`: ``hold`` and the hooks at the end).
    """

    def __init__(self, settings: MSGraphMailSettings, *, window_scale: float = 1.0) -> None:
        if not 0 < window_scale <= 1:
            raise ValueError("window_scale must be in (0, 1]")
        self.settings = settings
        self.window_scale = window_scale

    def hold(self, mailbox: str, settle: Receipt | None = None) -> AbstractContextManager[None]:
        """Occupy one of the mailbox's CONCURRENT_REQUESTS slots while the block runs; then
        :meth:`settle` ``settle``, in the same step as the release."""
        raise NotImplementedError

    def spend(
        self,
        mailbox: str,
        *,
        requests: int,
        recipients: int,
        upload_bytes: int,
        priority: str | None = None,
        max_wait: float | None = None,
    ) -> Receipt | None:
        """Spend on every budget at once, or on none: wait for room, or raise
        MailboxBudgetExhausted. ``priority`` defaults to PRIORITY, ``max_wait`` to
        MAX_RETRY_WAIT (pass what the message has left of it). Returns what was spent, for
        :meth:`settle`, or None when nothing was."""
        asks = self._asks(requests, recipients, upload_bytes, priority or self.settings.priority)
        if not asks:
            return None
        budget = self.settings.max_retry_wait if max_wait is None else max(0.0, max_wait)
        deadline = time.monotonic() + budget
        while True:
            short = self._try_spend(mailbox, asks)
            if isinstance(short, Receipt):
                return short
            if short.wait is None:
                ask = next(ask for ask in asks if ask.budget == short.budget)
                raise MailboxBudgetExhausted(
                    mailbox=mailbox,
                    budget=short.budget,
                    retry_at=None,
                    needed=in_unit(short.budget, ask.amount),
                    limit=in_unit(short.budget, ask.limit),
                )
            if time.monotonic() + short.wait > deadline:
                raise MailboxBudgetExhausted(
                    mailbox=mailbox,
                    budget=short.budget,
                    retry_at=datetime.now(timezone.utc) + timedelta(seconds=short.wait),
                )
            logger.info(
                "Mailbox %s: waiting %.2f s for its %s budget",
                mailbox,
                short.wait,
                short.budget,
                extra=telemetry.log_extra(self.settings, mailbox=mailbox),
            )
            with telemetry.waited("budget", short.budget):
                time.sleep(short.wait + random.uniform(0, 0.005))  # noqa: S311

    def usage(self, mailbox: str) -> dict[str, dict[str, float]]:
        """Each MAILBOX_LIMITS key -> ``{"used": ..., "limit": ...}`` (in flight for
        CONCURRENT_REQUESTS, MB for uploads)."""
        in_flight, used = self._usage(mailbox)
        limits = self.settings.mailbox_limits.as_keys()
        report = {"CONCURRENT_REQUESTS": {"used": in_flight, "limit": limits.pop(SLOTS)}}
        for budget in BUDGETS:
            report[budget] = {"used": in_unit(budget, used[budget]), "limit": limits[budget]}
        return report

    def _asks(self, requests: int, recipients: int, upload_bytes: int, priority: str) -> list[Ask]:
        if priority not in PRIORITIES:
            raise ValueError(f"priority must be one of {', '.join(PRIORITIES)}")
        amounts = {
            "REQUESTS_PER_10_MINUTES": requests,
            "UPLOAD_MB_PER_5_MINUTES": upload_bytes,
            "RECIPIENTS_PER_24_HOURS": recipients,
        }
        if any(amount < 0 for amount in amounts.values()):
            raise ValueError("requests, recipients and upload_bytes must not be negative")
        limits = self.settings.mailbox_limits.as_keys()
        asks = []
        for budget, window in BUDGETS.items():
            if not amounts[budget]:
                continue
            limit = limits[budget] * (MB if budget == "UPLOAD_MB_PER_5_MINUTES" else 1)
            if priority == "bulk" and budget in RESERVED:
                limit *= 1 - self.settings.bulk_reserve
            asks.append(
                Ask(budget, window * self.window_scale, math.floor(limit), int(amounts[budget]))
            )
        return asks

    def settle(self, mailbox: str, receipt: Receipt | None) -> None:
        """Date what ``receipt`` spent from now, when the request has been answered.

        Graph counts a request when it arrives, which is after we spent it; counted from the
        answer, our windows free no earlier than Graph's, so pacing never meets a 429 at a
        window's edge.
        """
        if receipt is not None:
            self._restamp(mailbox, receipt)

    def _try_spend(self, mailbox: str, asks: list[Ask]) -> Short | Receipt:
        raise NotImplementedError

    def _restamp(self, mailbox: str, receipt: Receipt) -> None:
        raise NotImplementedError

    def _usage(self, mailbox: str) -> tuple[int, dict[str, int]]:
        raise NotImplementedError


SLOTS = "CONCURRENT_REQUESTS"


def in_unit(budget: str, amount: float) -> float:
    return amount / MB if budget == "UPLOAD_MB_PER_5_MINUTES" else amount
