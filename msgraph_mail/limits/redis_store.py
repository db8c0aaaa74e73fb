"""The limits in Redis (``REDIS_URL`` set): one count for every process of every host, kept by
the Lua scripts of ``lua/`` that check and spend atomically."""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from importlib import resources
from typing import TYPE_CHECKING, Any

from .. import telemetry
from ..conf import MSGraphMailSettings, mask_url
from ..exceptions import ConfigurationError, LimitsUnavailable, MailboxBudgetExhausted
from .interface import (
    BUDGETS,
    LEASE_MARGIN,
    POLL,
    REDIS_TIMEOUT,
    SLOTS,
    Ask,
    MailboxLimits,
    Receipt,
    Short,
    mailbox_key,
)

if TYPE_CHECKING:
    import redis

logger = logging.getLogger("msgraph_mail")


def _script(*names: str) -> str:
    """A script as Redis runs it: the shared functions, then its own body (``lua/*.lua``)."""
    folder = resources.files(__package__) / "lua"
    return "".join((folder / f"{name}.lua").read_text(encoding="utf-8") for name in names)


_SPEND = _script("common", "spend")
_SETTLE = _script("common", "settle_function", "settle")
_ACQUIRE = _script("common", "acquire")
_RELEASE = _script("common", "settle_function", "release")
_RENEW = _script("common", "renew")
_USAGE = _script("common", "usage")


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


class RedisLimits(MailboxLimits):
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
                    budget=SLOTS,
                    retry_at=datetime.now(timezone.utc) + timedelta(seconds=free_in),
                )
            granted = self._await_grant(keys["grants"], min(POLL, left))
            if granted is not None:
                # A released slot, handed over as this lease. The waiter's registration runs
                # out by itself: a grant made for it meanwhile goes to the next caller.
                token = granted
                break
        if waiting_since is not None:
            telemetry.record_wait("slot", SLOTS, waiting_since)
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

    def _try_spend(self, mailbox: str, asks: list[Ask]) -> Short | Receipt:
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
            return Short(budget, None)
        return Short(budget, int(outcome[2]) / 1000)

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


def forget_clients() -> None:
    """Forget this process's Redis clients (tests)."""
    with _clients_lock:
        _clients.clear()
