"""The limits counted in this process (no ``REDIS_URL``): each gunicorn worker or Celery child
has its own slots and budgets."""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from .. import telemetry
from .interface import BUDGETS, SLOTS, Ask, MailboxLimits, Receipt, Short, mailbox_key


@dataclass(eq=False)
class _Entry:
    """One spend in one budget's window: when (monotonic seconds) and how much."""

    at: float
    amount: int


class _MailboxState:
    """One application's counts for one mailbox, in this process."""

    def __init__(self) -> None:
        self.condition = threading.Condition()
        self.in_flight = 0
        self.entries: dict[str, deque[_Entry]] = {name: deque() for name in BUDGETS}
        self.totals: dict[str, int] = dict.fromkeys(BUDGETS, 0)

    def prune(self, budget: str, window: float, now: float) -> int:
        entries = self.entries[budget]
        while entries and entries[0].at <= now - window:
            self.totals[budget] -= entries.popleft().amount
        return self.totals[budget]

    def wait_for(self, budget: str, window: float, now: float, need: int) -> float:
        """Seconds until ``need`` of the budget has expired (oldest entries first)."""
        freed = 0
        for entry in self.entries[budget]:
            freed += entry.amount
            if freed >= need:
                return entry.at + window - now
        return window


_states: dict[str, _MailboxState] = {}
_states_lock = threading.Lock()


class InProcessLimits(MailboxLimits):
    """Slots and budgets counted in this process (no REDIS_URL).

    The counts live at module level, per application and mailbox, so every backend object
    and thread of the process shares them.
    """

    @contextmanager
    def hold(self, mailbox: str, settle: Receipt | None = None) -> Iterator[None]:
        state = self._state(mailbox)
        limit = self.settings.mailbox_limits.concurrent_requests
        with state.condition:
            if state.in_flight >= limit:
                with telemetry.waited("slot", SLOTS):
                    state.condition.wait_for(lambda: state.in_flight < limit)
            state.in_flight += 1
        try:
            yield
        finally:
            with state.condition:
                state.in_flight -= 1
                state.condition.notify_all()  # waiters may have different limits
            self.settle(mailbox, settle)

    def _try_spend(self, mailbox: str, asks: list[Ask]) -> Short | Receipt:
        state = self._state(mailbox)
        with state.condition:
            now = time.monotonic()
            worst: Short | None = None
            for ask in asks:
                total = state.prune(ask.budget, ask.window, now)
                if ask.amount > ask.limit:
                    return Short(ask.budget, None)
                if total + ask.amount > ask.limit:
                    wait = state.wait_for(
                        ask.budget, ask.window, now, total + ask.amount - ask.limit
                    )
                    if worst is None or (worst.wait is not None and wait > worst.wait):
                        worst = Short(ask.budget, wait)
            if worst is not None:
                return worst
            spent = []
            for ask in asks:
                entry = _Entry(now, ask.amount)
                state.entries[ask.budget].append(entry)
                state.totals[ask.budget] += ask.amount
                spent.append((ask, entry))
            return Receipt(uuid.uuid4().hex, tuple(spent))

    def _restamp(self, mailbox: str, receipt: Receipt) -> None:
        state = self._state(mailbox)
        with state.condition:
            now = time.monotonic()
            for ask, entry in receipt.entries:
                entries = state.entries[ask.budget]
                for index, candidate in enumerate(entries):  # newest last: the window's order
                    if candidate is entry:
                        del entries[index]
                        entry.at = now
                        entries.append(entry)
                        break

    def _usage(self, mailbox: str) -> tuple[int, dict[str, int]]:
        state = self._state(mailbox)
        with state.condition:
            now = time.monotonic()
            used = {
                budget: state.prune(budget, window * self.window_scale, now)
                for budget, window in BUDGETS.items()
            }
            return state.in_flight, used

    def _state(self, mailbox: str) -> _MailboxState:
        key = mailbox_key(self.settings, mailbox)
        with _states_lock:
            state = _states.get(key)
            if state is None:
                state = _states[key] = _MailboxState()
            return state


def forget_states() -> None:
    """Forget every count of this process (tests)."""
    with _states_lock:
        _states.clear()
