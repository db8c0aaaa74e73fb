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

Who may import what: the Graph client, the shared caches (``redis_client``), the diagnosis
and the telemetry's budget gauges import this package; it imports only conf, exceptions and
telemetry.

The package: :mod:`.interface` (the interface, the budgets and what both stores share),
:mod:`.in_process` and :mod:`.redis_store` (the two stores; the Redis one runs the Lua scripts
of ``lua/``, package data, which ``redis-cli --eval`` can run too once ``common.lua`` is put
in front), and here :func:`limits_for`, which picks one.
"""

from __future__ import annotations

import threading
from typing import Any

from ..conf import MSGraphMailSettings
from .in_process import InProcessLimits, forget_states
from .interface import (
    BUDGETS,
    LEASE_MARGIN,
    TIME_SCALE_ENV,
    MailboxLimits,
    Receipt,
    env_scale,
    mailbox_key,
)
from .redis_store import RedisLimits, forget_clients, redis_client, unavailable

__all__ = [
    "BUDGETS",
    "LEASE_MARGIN",
    "TIME_SCALE_ENV",
    "InProcessLimits",
    "MailboxLimits",
    "Receipt",
    "RedisLimits",
    "clear",
    "limits_for",
    "mailbox_key",
    "redis_client",
    "unavailable",
]


def limits_for(settings: MSGraphMailSettings) -> MailboxLimits:
    """The limits of these settings: in Redis when REDIS_URL is set, else in this process.

    Cached per configuration (REDIS_URL, the application, MAILBOX_LIMITS and the other values
    that change the counting); the counts themselves are shared per application and mailbox
    by every instance of a store.
    """
    scale = env_scale()
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
    forget_states()
    forget_clients()


_cache: dict[tuple[Any, ...], MailboxLimits] = {}
_cache_lock = threading.Lock()
