"""Graph's per-mailbox limits: requests in flight and the 10-minute, 5-minute and 24-hour budgets.

Graph counts per application *and* mailbox (GRAPH_NOTES B.1, B.2): 4 requests in flight,
10,000 requests per 10 minutes, 150 MB uploaded per 5 minutes, and Exchange adds 10,000
recipients per rolling 24 hours. ``MAILBOX_LIMITS`` holds those figures; this module keeps
each mailbox within them *before* a request leaves, so a busy mailbox is paced instead of
answered 429, and a spent 24-hour budget fails fast instead of after a day of retries.

One interface, two stores, chosen once from the settings by :func:`limits_for`:

- :class:`InProcessLimits` (no ``REDIS_URL``): counts for this process only -- each gunicorn
  worker or Celery child has its own slots and budgets.
- :class:`RedisLimits` (``REDIS_URL`` set): one count for every process of every host, kept
  by Lua scripts that check and spend atomically.

How a caller uses it, around each Graph request of a message (the draft path's several
requests included)::

    limits = limits_for(settings)
    limits.spend(mailbox, requests=1, recipients=n if first_request else 0,
                 upload_bytes=len(body), priority=settings.priority)
    with limits.hold(mailbox):
        response = post(...)

``spend`` waits when the budget frees within the message's remaining ``MAX_RETRY_WAIT`` and
otherwise raises :class:`~msgraph_mail.exceptions.MailboxBudgetExhausted` naming the budget
and when it frees -- always before anything is sent. ``hold`` occupies one of
``CONCURRENT_REQUESTS`` slots while one request runs; hold it around one request, not around
the retries of a message (a retry's wait should not keep a slot).

Details that matter:

- **Keys** are per application and mailbox: (GRAPH_URL, TENANT_ID, CLIENT_ID, mailbox
  lower-cased), hashed. Redis keys look like ``msgraph_mail:{<hash>}:slots``; the hash tag
  keeps one mailbox's keys in one cluster slot, and no key holds a secret or an address.
- **Upload MB** are 1,048,576 bytes (2**20), as everywhere else in the package (Graph's
  4 MB request limit, the 150 MB message limit) and in the emulator, so the largest message
  the draft path may send fits one UPLOAD_MB_PER_5_MINUTES budget.
- **Priority** ``"bulk"`` may not spend the last ``BULK_RESERVE`` fraction of
  REQUESTS_PER_10_MINUTES and RECIPIENTS_PER_24_HOURS (its limit is
  ``floor(limit * (1 - BULK_RESERVE))``); ``"normal"`` may use all of them.
- **Slots in Redis are leases**: a ZSET of holder tokens scored by expiry, the lease being
  TIMEOUT + :data:`LEASE_MARGIN` seconds, renewed every third of it while held. A process
  killed while holding a slot frees it when the lease runs out. Waiting for a slot polls
  every 10-25 ms, for at most ``max(MAX_RETRY_WAIT, TIMEOUT)`` seconds, then raises
  MailboxBudgetExhausted with budget ``"CONCURRENT_REQUESTS"``. (In process, a waiting thread
  waits for a holder of the same process, as before: each holder's request has a timeout.)
- **Redis unreachable** raises :class:`~msgraph_mail.exceptions.LimitsUnavailable` (a
  delivery error: nothing was sent) within a few seconds (connect and socket timeouts of
  :data:`REDIS_TIMEOUT`, one retry). There is no fallback to per-process counting: every
  process would then burst at once, which is the 429 storm REDIS_URL exists to prevent.
  Releasing a slot never raises (the request has already gone); a lost release is logged
  and the lease expires.
- **Time scale**: tests and demos shrink the windows (never the leases) with
  ``window_scale`` (``InProcessLimits(settings, window_scale=0.001)`` makes 10 minutes
  0.6 s), or for a whole process with the environment variable
  ``MSGRAPH_MAIL_LIMITS_TIME_SCALE``, read by :func:`limits_for`. It is not a setting.
- **Fork**: the Redis client is made lazily, once per process (redis-py also resets its pool
  after a fork).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Protocol

from . import telemetry
from .conf import MSGraphMailSettings, mask_url
from .exceptions import ConfigurationError, LimitsUnavailable, MailboxBudgetExhausted

if TYPE_CHECKING:
    import redis

logger = logging.getLogger("msgraph_mail")

__all__ = [
    "BUDGETS",
    "InProcessLimits",
    "MailboxLimits",
    "RedisLimits",
    "limits_for",
    "redis_client",
]

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


class MailboxLimits(Protocol):
    """May this request go now, and what does it spend? One instance per configuration."""

    def hold(self, mailbox: str, settle: Receipt | None = None) -> AbstractContextManager[None]:
        """Occupy one of the mailbox's CONCURRENT_REQUESTS slots while the block runs; then
        :meth:`settle` ``settle``, in the same step as the release."""
        ...

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
        ...

    def settle(self, mailbox: str, receipt: Receipt | None) -> None:
        """Date what ``receipt`` spent from now, when the request has been answered.

        Graph counts a request when it arrives, which is after we spent it; counted from the
        answer, our windows free no earlier than Graph's, so pacing never meets a 429 at a
        window's edge.
        """
        ...

    def usage(self, mailbox: str) -> dict[str, dict[str, float]]:
        """Each MAILBOX_LIMITS key -> ``{"used": ..., "limit": ...}`` (in flight for
        CONCURRENT_REQUESTS, MB for uploads)."""
        ...


def limits_for(settings: MSGraphMailSettings) -> MailboxLimits:
    """The limits of these settings: in Redis when REDIS_URL is set, else in this process.

    Cached per configuration (REDIS_URL, the application, MAILBOX_LIMITS and the other values
    that change the counting); the counts themselves are shared per application and mailbox
    by every instance of a store.
    """
    scale = _env_scale()
    key = (
        settings.redis_url,
        settings.graph_url,
        settings.tenant_id,
        settings.client_id,
        settings.mailbox_limits,
        settings.timeout,
        settings.max_retry_wait,
        settings.priority,
        settings.bulk_reserve,
        scale,
    )
    with _cache_lock:
        limits = _cache.get(key)
        if limits is None:
            store = RedisLimits if settings.redis_url else InProcessLimits
            limits = _cache[key] = store(settings, window_scale=scale)
        return limits


def clear() -> None:
    """Forget every in-process count, cached instance and Redis client (tests)."""
    with _cache_lock:
        _cache.clear()
    with _states_lock:
        _states.clear()
    with _clients_lock:
        _clients.clear()


_cache: dict[tuple[Any, ...], MailboxLimits] = {}
_cache_lock = threading.Lock()


def _env_scale() -> float:
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
class _Ask:
    """What one request spends on one budget."""

    budget: str
    window: float  # seconds, scaled
    limit: int  # in the budget's unit (bytes for uploads), after the bulk reserve
    amount: int


@dataclass(frozen=True)
class _Short:
    """Why a spend did not fit: the budget, and seconds until it fits (None: never)."""

    budget: str
    wait: float | None


@dataclass(frozen=True, eq=False)
class Receipt:
    """What one spend took: its entry in each budget's window."""

    token: str
    entries: tuple[tuple[_Ask, Any], ...]  # (ask, the store's handle of its entry)


class _Limits:
    """What both stores share: the asks of a request, pacing and the errors."""

    def __init__(self, settings: MSGraphMailSettings, *, window_scale: float = 1.0) -> None:
        if not 0 < window_scale <= 1:
            raise ValueError("window_scale must be in (0, 1]")
        self.settings = settings
        self.window_scale = window_scale

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
                    needed=_in_unit(short.budget, ask.amount),
                    limit=_in_unit(short.budget, ask.limit),
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
        in_flight, used = self._usage(mailbox)
        limits = self.settings.mailbox_limits.as_keys()
        report = {"CONCURRENT_REQUESTS": {"used": in_flight, "limit": limits.pop(_SLOTS)}}
        for budget in BUDGETS:
            report[budget] = {"used": _in_unit(budget, used[budget]), "limit": limits[budget]}
        return report

    def _asks(self, requests: int, recipients: int, upload_bytes: int, priority: str) -> list[_Ask]:
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
                _Ask(budget, window * self.window_scale, math.floor(limit), int(amounts[budget]))
            )
        return asks

    def settle(self, mailbox: str, receipt: Receipt | None) -> None:
        if receipt is not None:
            self._restamp(mailbox, receipt)

    def _try_spend(self, mailbox: str, asks: list[_Ask]) -> _Short | Receipt:
        raise NotImplementedError

    def _restamp(self, mailbox: str, receipt: Receipt) -> None:
        raise NotImplementedError

    def _usage(self, mailbox: str) -> tuple[int, dict[str, int]]:
        raise NotImplementedError


_SLOTS = "CONCURRENT_REQUESTS"


def _in_unit(budget: str, amount: float) -> float:
    return amount / MB if budget == "UPLOAD_MB_PER_5_MINUTES" else amount


# -- in process --------------------------------------------------------------------------


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


class InProcessLimits(_Limits):
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
                with telemetry.waited("slot", _SLOTS):
                    state.condition.wait_for(lambda: state.in_flight < limit)
            state.in_flight += 1
        try:
            yield
        finally:
            with state.condition:
                state.in_flight -= 1
                state.condition.notify_all()  # waiters may have different limits
            self.settle(mailbox, settle)

    def _try_spend(self, mailbox: str, asks: list[_Ask]) -> _Short | Receipt:
        state = self._state(mailbox)
        with state.condition:
            now = time.monotonic()
            worst: _Short | None = None
            for ask in asks:
                total = state.prune(ask.budget, ask.window, now)
                if ask.amount > ask.limit:
                    return _Short(ask.budget, None)
                if total + ask.amount > ask.limit:
                    wait = state.wait_for(
                        ask.budget, ask.window, now, total + ask.amount - ask.limit
                    )
                    if worst is None or (worst.wait is not None and wait > worst.wait):
                        worst = _Short(ask.budget, wait)
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


# -- Redis -------------------------------------------------------------------------------

_LUA_COMMON = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- entries are 'token:amount' members scored by the time they were spent (ms)
local function amount_of(member)
  return tonumber(string.match(member, ':(%d+)$')) or 0
end

-- Drop the entries that left the window; return what is still spent. The running total
-- lives in tkey; when it is missing (evicted) it is counted again from the entries.
local function prune(zkey, tkey, now, window)
  local cutoff = now - window
  local total = tonumber(redis.call('GET', tkey))
  if total == nil then
    redis.call('ZREMRANGEBYSCORE', zkey, '-inf', cutoff)
    total = 0
    for _, member in ipairs(redis.call('ZRANGE', zkey, 0, -1)) do
      total = total + amount_of(member)
    end
  else
    local expired = redis.call('ZRANGEBYSCORE', zkey, '-inf', cutoff)
    if #expired > 0 then
      for _, member in ipairs(expired) do total = total - amount_of(member) end
      redis.call('ZREMRANGEBYSCORE', zkey, '-inf', cutoff)
    end
  end
  if redis.call('ZCARD', zkey) == 0 then
    redis.call('DEL', tkey)
    return 0
  end
  if total < 0 then total = 0 end
  redis.call('SET', tkey, total)
  local ttl = redis.call('PTTL', zkey)
  if ttl > 0 then redis.call('PEXPIRE', tkey, ttl) end
  return total
end
"""

# KEYS: per budget, its ZSET and its total. ARGV: token, then per budget window_ms, limit,
# amount. Returns {0} when spent, {1, i, wait_ms} when budget i is short, {2, i} when the
# amount alone exceeds budget i. Spends on all budgets or on none.
_SPEND = (
    _LUA_COMMON
    + """
local now = now_ms()
local token = ARGV[1]
local n = #KEYS / 2
local totals = {}
local worst, worst_wait = 0, -1
for i = 1, n do
  local zkey, tkey = KEYS[2 * i - 1], KEYS[2 * i]
  local window = tonumber(ARGV[3 * i - 1])
  local limit = tonumber(ARGV[3 * i])
  local amount = tonumber(ARGV[3 * i + 1])
  local total = prune(zkey, tkey, now, window)
  totals[i] = total
  if amount > limit then return {2, i} end
  if total + amount > limit then
    local need = total + amount - limit
    local freed, wait, start = 0, nil, 0
    while wait == nil do
      local batch = redis.call('ZRANGE', zkey, start, start + 99, 'WITHSCORES')
      if #batch == 0 then break end
      for j = 1, #batch, 2 do
        freed = freed + amount_of(batch[j])
        if freed >= need then
          wait = tonumber(batch[j + 1]) + window - now
          break
        end
      end
      start = start + 100
    end
    if wait == nil then wait = window end
    if wait > worst_wait then worst, worst_wait = i, wait end
  end
end
if worst > 0 then return {1, worst, worst_wait} end
for i = 1, n do
  local zkey, tkey = KEYS[2 * i - 1], KEYS[2 * i]
  local window = tonumber(ARGV[3 * i - 1])
  redis.call('ZADD', zkey, now, token .. ':' .. ARGV[3 * i + 1])
  redis.call('SET', tkey, totals[i] + tonumber(ARGV[3 * i + 1]), 'PX', window)
  redis.call('PEXPIRE', zkey, window)
end
return {0}
"""
)

# KEYS: per budget its ZSET and total. ARGV: per budget the member spent and window_ms.
# Dates the members from now (the answer came), if they are still in their windows.
_SETTLE_FUNCTION = """
-- KEYS[first..] are (budget ZSET, total) pairs, ARGV[first..] (member, window_ms) pairs.
local function settle(now, first_key, first_arg)
  for i = 0, (#KEYS - first_key + 1) / 2 - 1 do
    local zkey, tkey = KEYS[first_key + 2 * i], KEYS[first_key + 2 * i + 1]
    local member = ARGV[first_arg + 2 * i]
    local window = tonumber(ARGV[first_arg + 2 * i + 1])
    if redis.call('ZSCORE', zkey, member) then
      redis.call('ZADD', zkey, 'XX', now, member)
      redis.call('PEXPIRE', zkey, window)
      if redis.call('EXISTS', tkey) == 1 then redis.call('PEXPIRE', tkey, window) end
    end
  end
end
"""

_SETTLE = (
    _LUA_COMMON
    + _SETTLE_FUNCTION
    + """
settle(now_ms(), 1, 1)
return 1
"""
)

# Slots are handed over, not fought for: a holder that releases while others wait passes its
# slot on as a new lease (a grant, pushed to a list) that one waiter takes with BLPOP and
# holds at once, without another round trip. Waiters register with a short deadline, which
# they renew each time they try again, so a waiter that died is soon no longer served.

# KEYS: slots ZSET (holder token -> lease expiry, ms), grants LIST, waiters ZSET (token ->
# deadline). ARGV: token, limit, lease_ms, waiter_ms. Returns {1} when taken (a grant left
# unclaimed first, else a free slot), else {0, ms until the first lease runs out} after
# registering the caller as a waiter.
_ACQUIRE = (
    _LUA_COMMON
    + """
local now = now_ms()
local slots, grants, waiters = KEYS[1], KEYS[2], KEYS[3]
local token, limit = ARGV[1], tonumber(ARGV[2])
local lease, waiting = tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', slots, '-inf', now)
local function take()
  redis.call('ZADD', slots, now + lease, token)
  redis.call('ZREM', waiters, token)
  local last = redis.call('ZRANGE', slots, -1, -1, 'WITHSCORES')
  redis.call('PEXPIRE', slots, math.max(1, tonumber(last[2]) - now))
  return {1}
end
while true do
  local grant = redis.call('LPOP', grants)
  if not grant then break end
  if redis.call('ZSCORE', slots, grant) then
    redis.call('ZREM', slots, grant)
    return take()
  end
end
if redis.call('ZCARD', slots) < limit then
  return take()
end
redis.call('ZADD', waiters, now + waiting, token)
redis.call('PEXPIRE', waiters, waiting)
local first = redis.call('ZRANGE', slots, 0, 0, 'WITHSCORES')
return {0, tonumber(first[2]) - now}
"""
)

# KEYS: slots, grants, waiters, then the (ZSET, total) pairs to settle. ARGV: the holder's
# token, the token of the lease to hand over, lease_ms, the token the holder waited under
# (or ''), then the (member, window_ms) pairs to settle. Frees the slot, or hands it to a
# waiter when more wait than grants are pending; dates the request's spends from now.
_RELEASE = (
    _LUA_COMMON
    + _SETTLE_FUNCTION
    + """
local now = now_ms()
local slots, grants, waiters = KEYS[1], KEYS[2], KEYS[3]
local token, handed, lease = ARGV[1], ARGV[2], tonumber(ARGV[3])
if ARGV[4] ~= '' then redis.call('ZREM', waiters, ARGV[4]) end
redis.call('ZREMRANGEBYSCORE', waiters, '-inf', now)
local held = redis.call('ZREM', slots, token)
if held == 1 and redis.call('ZCARD', waiters) > redis.call('LLEN', grants) then
  redis.call('ZADD', slots, now + lease, handed)
  redis.call('RPUSH', grants, handed)
  redis.call('PEXPIRE', grants, lease)
  local last = redis.call('ZRANGE', slots, -1, -1, 'WITHSCORES')
  redis.call('PEXPIRE', slots, math.max(1, tonumber(last[2]) - now))
end
settle(now, 4, 5)
return 1
"""
)

# KEYS[1]: the slots ZSET. ARGV: token, lease_ms. 1: renewed; 0: the lease was lost.
_RENEW = (
    _LUA_COMMON
    + """
local now = now_ms()
local key, token, lease = KEYS[1], ARGV[1], tonumber(ARGV[2])
local expiry = tonumber(redis.call('ZSCORE', key, token))
if expiry == nil then return 0 end
if expiry <= now then
  redis.call('ZREM', key, token)
  return 0
end
redis.call('ZADD', key, 'XX', now + lease, token)
local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
redis.call('PEXPIRE', key, math.max(1, tonumber(last[2]) - now))
return 1
"""
)

# KEYS: the slots ZSET, per budget its ZSET and total, the grants LIST. ARGV: per budget
# window_ms.
# Returns {in flight, spent on budget 1, ...}.
_USAGE = (
    _LUA_COMMON
    + """
local now = now_ms()
-- in flight: the live leases, less the grants no waiter has taken yet
local leases = redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
local result = {math.max(0, leases - redis.call('LLEN', KEYS[#KEYS]))}
for i = 1, (#KEYS - 2) / 2 do
  result[i + 1] = prune(KEYS[2 * i], KEYS[2 * i + 1], now, tonumber(ARGV[i]))
end
return result
"""
)


@dataclass(frozen=True)
class _Connection:
    """A Redis client of this process and its scripts."""

    client: redis.Redis
    spend: Any
    acquire: Any
    renew: Any
    usage: Any
    settle: Any
    release: Any


_clients: dict[str, tuple[int, _Connection]] = {}
_clients_lock = threading.Lock()


def _import_redis() -> Any:
    try:
        import redis
    except ImportError:
        raise ConfigurationError(
            'msgraph_mail: REDIS_URL needs redis-py: pip install "django-msgraph-mailer[redis]"'
        ) from None
    return redis


def _connection(url: str) -> _Connection:
    """The client for ``url``, made on first use in each process (never shared by a fork)."""
    pid = os.getpid()
    with _clients_lock:
        cached = _clients.get(url)
        if cached is not None and cached[0] == pid:
            return cached[1]
        redis = _import_redis()
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry

        client = redis.Redis.from_url(
            url,
            socket_connect_timeout=REDIS_TIMEOUT,
            socket_timeout=REDIS_TIMEOUT,
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), 1),
            health_check_interval=30,
        )
        connection = _Connection(
            client,
            client.register_script(_SPEND),
            client.register_script(_ACQUIRE),
            client.register_script(_RENEW),
            client.register_script(_USAGE),
            client.register_script(_SETTLE),
            client.register_script(_RELEASE),
        )
        _clients[url] = (pid, connection)
        return connection


def redis_client(settings: MSGraphMailSettings) -> redis.Redis:
    """The process's Redis client for REDIS_URL (also used by :mod:`msgraph_mail.shared_state`).

    Raises ConfigurationError when REDIS_URL is not set or redis-py is not installed.
    """
    if not settings.redis_url:
        raise ConfigurationError("msgraph_mail: REDIS_URL is not set")
    return _connection(str(settings.redis_url)).client


def unavailable(settings: MSGraphMailSettings, exc: Exception) -> LimitsUnavailable:
    """The typed error for a Redis failure; the password of REDIS_URL never shows."""
    url = str(settings.redis_url or "")
    reason = " ".join(str(exc).split())[:200] or type(exc).__name__
    from urllib.parse import urlsplit

    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    if password:
        reason = reason.replace(password, "***")
    return LimitsUnavailable(
        f"msgraph_mail: cannot use REDIS_URL {mask_url(url)} for the mailbox limits "
        f"({type(exc).__name__}: {reason}); nothing was sent. Start Redis or correct "
        "REDIS_URL, or remove REDIS_URL to count the limits in each process"
    )


class _Renewer:
    """One thread per process renews the leases of every slot held longer than a third of
    its lease (a request slower than about TIMEOUT / 3); most requests end long before."""

    def __init__(self) -> None:
        self._held: dict[str, tuple[RedisLimits, str, int, float]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def add(self, limits: RedisLimits, key: str, token: str, lease_ms: int) -> None:
        with self._lock:
            self._held[token] = (limits, key, lease_ms, time.monotonic())
            if self._thread is None or self._pid != os.getpid():  # none yet, or forked
                self._pid = os.getpid()
                self._thread = threading.Thread(
                    target=self._run, name="msgraph_mail-leases", daemon=True
                )
                self._thread.start()

    def remove(self, token: str) -> None:
        with self._lock:
            self._held.pop(token, None)

    def _run(self) -> None:
        while True:
            with self._lock:  # every lease renewed within half its length
                shortest = min((held[2] for held in self._held.values()), default=None)
            time.sleep(RENEW_EVERY if shortest is None else min(RENEW_EVERY, shortest / 6000))
            now = time.monotonic()
            with self._lock:
                due = [
                    (token, held)
                    for token, held in self._held.items()
                    if now - held[3] >= held[2] / 3000
                ]
            for token, (limits, key, lease_ms, _) in due:
                renewed = limits.renew(key, token, lease_ms)
                with self._lock:
                    if token in self._held:
                        if renewed:
                            self._held[token] = (limits, key, lease_ms, time.monotonic())
                        else:
                            del self._held[token]
                            logger.warning(
                                "A slot's lease in Redis ran out while the request was running",
                                extra=telemetry.log_extra(limits.settings),
                            )


#: How often the lease renewer looks at the held slots (seconds).
RENEW_EVERY = 0.5

_renewer = _Renewer()


class RedisLimits(_Limits):
    """Slots and budgets shared through Redis by every process (REDIS_URL set).

    ``lease_margin`` (seconds) is added to TIMEOUT for the length of a slot's lease.
    """

    def __init__(
        self,
        settings: MSGraphMailSettings,
        *,
        window_scale: float = 1.0,
        lease_margin: float = LEASE_MARGIN,
    ) -> None:
        if not settings.redis_url:
            raise ConfigurationError("msgraph_mail: RedisLimits needs REDIS_URL")
        super().__init__(settings, window_scale=window_scale)
        self.lease = settings.timeout + lease_margin
        self._redis_errors: tuple[type[Exception], ...] = (_import_redis().exceptions.RedisError,)

    def keys(self, mailbox: str) -> dict[str, str]:
        """The Redis keys of a mailbox: ``slots``, and per budget its entries and total."""
        prefix = f"msgraph_mail:{{{mailbox_key(self.settings, mailbox)}}}"
        keys = {
            "slots": f"{prefix}:slots",
            "grants": f"{prefix}:grants",
            "waiters": f"{prefix}:waiters",
        }
        for budget in BUDGETS:
            name = budget.lower()
            keys[budget] = f"{prefix}:{name}"
            keys[f"{budget}:total"] = f"{prefix}:{name}:total"
        return keys

    @contextmanager
    def hold(self, mailbox: str, settle: Receipt | None = None) -> Iterator[None]:
        keys = self.keys(mailbox)
        slots = [keys["slots"], keys["grants"], keys["waiters"]]
        token = waited_as = uuid.uuid4().hex
        lease_ms = max(1, round(self.lease * 1000))
        waiter_ms = round(POLL * 3000)
        limit = self.settings.mailbox_limits.concurrent_requests
        deadline = time.monotonic() + max(self.settings.max_retry_wait, self.settings.timeout)
        waiting_since: int | None = None  # time.time_ns() of the first refusal
        while True:
            taken, *rest = self._call(
                "acquire", keys=slots, args=[waited_as, limit, lease_ms, waiter_ms]
            )
            if taken:
                token = waited_as
                break
            if waiting_since is None:
                waiting_since = time.time_ns()
            left = deadline - time.monotonic()
            if left <= 0:
                free_in = max(0, int(rest[0])) / 1000 if rest else self.lease
                raise MailboxBudgetExhausted(
                    mailbox=mailbox,
                    budget=_SLOTS,
                    retry_at=datetime.now(timezone.utc) + timedelta(seconds=free_in),
                )
            granted = self._await_grant(keys["grants"], min(POLL, left))
            if granted is not None:
                # A released slot, handed over as this lease. The waiter's registration runs
                # out by itself: a grant made for it meanwhile goes to the next caller.
                token = granted
                break
        if waiting_since is not None:
            telemetry.record_wait("slot", _SLOTS, waiting_since)
        _renewer.add(self, keys["slots"], token, lease_ms)
        try:
            yield
        finally:
            _renewer.remove(token)
            settled_keys, settled_args = self._settle_args(mailbox, settle)
            try:
                self._connection().release(
                    keys=slots + settled_keys,
                    args=[token, uuid.uuid4().hex, lease_ms, "", *settled_args],
                )
            except self._redis_errors as exc:
                logger.warning(
                    "Could not release a slot of mailbox %s in Redis (%s); it frees when its "
                    "lease runs out",
                    mailbox,
                    type(exc).__name__,
                    extra=telemetry.log_extra(self.settings, mailbox=mailbox),
                )

    def _await_grant(self, grants: str, seconds: float) -> str | None:
        """Block until a holder hands a slot over (the lease's token) or ``seconds`` pass."""
        try:
            popped = self._connection().client.blpop([grants], timeout=max(seconds, 0.01))
        except self._redis_errors as exc:
            raise unavailable(self.settings, exc) from exc
        if popped is None:
            return None
        value = popped[1]
        return value.decode() if isinstance(value, bytes) else str(value)

    def renew(self, key: str, token: str, lease_ms: int) -> bool:
        """Extend a held lease; False when it was lost (it ran out first)."""
        try:
            return bool(self._connection().renew(keys=[key], args=[token, lease_ms]))
        except self._redis_errors as exc:
            logger.warning(
                "Could not renew a slot's lease in Redis (%s)",
                type(exc).__name__,
                extra=telemetry.log_extra(self.settings),
            )
            return True  # try again next round

    def _try_spend(self, mailbox: str, asks: list[_Ask]) -> _Short | Receipt:
        keys = self.keys(mailbox)
        script_keys: list[str] = []
        token = uuid.uuid4().hex
        args: list[Any] = [token]
        for ask in asks:
            script_keys += [keys[ask.budget], keys[f"{ask.budget}:total"]]
            args += [max(1, round(ask.window * 1000)), ask.limit, ask.amount]
        outcome = self._call("spend", keys=script_keys, args=args)
        if outcome[0] == 0:
            members = tuple((ask, f"{token}:{ask.amount}") for ask in asks)
            return Receipt(token, members)
        budget = asks[int(outcome[1]) - 1].budget
        if outcome[0] == 2:
            return _Short(budget, None)
        return _Short(budget, int(outcome[2]) / 1000)

    def _settle_args(self, mailbox: str, receipt: Receipt | None) -> tuple[list[str], list[Any]]:
        """The keys and arguments that date ``receipt``'s entries from now (_SETTLE)."""
        keys = self.keys(mailbox)
        script_keys: list[str] = []
        args: list[Any] = []
        for ask, member in receipt.entries if receipt is not None else ():
            script_keys += [keys[ask.budget], keys[f"{ask.budget}:total"]]
            args += [member, max(1, round(ask.window * 1000))]
        return script_keys, args

    def _restamp(self, mailbox: str, receipt: Receipt) -> None:
        script_keys, args = self._settle_args(mailbox, receipt)
        try:
            self._connection().settle(keys=script_keys, args=args)
        except self._redis_errors as exc:  # the request has gone: the entry keeps its time
            logger.warning(
                "Could not settle a spend in Redis (%s)",
                type(exc).__name__,
                extra=telemetry.log_extra(self.settings, mailbox=mailbox),
            )

    def _usage(self, mailbox: str) -> tuple[int, dict[str, int]]:
        keys = self.keys(mailbox)
        script_keys = [keys["slots"]]
        for budget in BUDGETS:
            script_keys += [keys[budget], keys[f"{budget}:total"]]
        script_keys.append(keys["grants"])
        windows = [max(1, round(window * self.window_scale * 1000)) for window in BUDGETS.values()]
        result = self._call("usage", keys=script_keys, args=windows)
        return int(result[0]), {
            budget: int(value) for budget, value in zip(BUDGETS, result[1:], strict=True)
        }

    def _connection(self) -> _Connection:
        assert self.settings.redis_url is not None
        return _connection(str(self.settings.redis_url))

    def _call(self, script: str, *, keys: list[str], args: list[Any]) -> list[Any]:
        try:
            return list(getattr(self._connection(), script)(keys=keys, args=args))
        except self._redis_errors as exc:
            raise unavailable(self.settings, exc) from exc
