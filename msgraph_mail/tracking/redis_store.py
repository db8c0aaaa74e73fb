"""Delivery tracking's state in Redis, shared by every tracker process and host (``REDIS_URL``).

The same promises as :class:`~msgraph_mail.tracking.store.DatabaseStore`: a message is
tracked once (the first record wins), each event is reported once under its
:func:`~msgraph_mail.tracking.store.event_key`, and never after a final event for that
recipient. Every check-and-set is one Lua script, so two trackers racing on the same event
record it once.

Layout (every key starts with ``msgraph_mail:tracking:`` and carries the hash tag
``{tracking}``, so the scripts also run on Redis Cluster, where all their keys must share one
slot; times are Unix seconds):

- ``msgraph_mail:tracking:{tracking}:message:<tracking id>``: a HASH per tracked message:
  ``tracking_id``, ``message_id``, ``sender``, ``mailbox``, ``recipients`` (a JSON list,
  lower-case), ``outbox_id``, ``sent_at`` (with exactly six decimals: the datetime back to
  the microsecond).
- ``...:message-id:<Message-ID>``: a STRING, the tracking id of the latest message tracked
  with that Message-ID.
- ``...:sent``: a sorted set of tracking ids scored by the time sent (:meth:`near`).
- ``...:unsettled``: a sorted set of the tracking ids with a recipient still lacking a final
  event, scored by the time sent (:meth:`unsettled`).
- ``...:mailboxes``: a sorted set of sending mailboxes scored by the latest time each sent
  (:meth:`mailboxes` reads the mailboxes, not every message).
- ``...:events:<tracking id>``: a LIST of the message's events as JSON, oldest first.
- ``...:reported:<tracking id>``: a SET of the event keys reported (what makes it once).
- ``...:final:<tracking id>``: a SET of the recipients with a final event.
- ``...:announcing``: a sorted set of the events recorded but not yet announced, scored by
  when they were recorded; each member is ``{"tracking_id": ..., "event": ...}`` as JSON.
- ``...:cursor:<name>``: a STRING per cursor (never expires).
- ``...:lease:<name>``: a STRING, the lease's holder, expiring with the lease.
- ``...:watches``: a HASH subscription id -> ``{"mailbox", "client_state", "expires_at"}``
  as JSON: the change-notification subscriptions (``expires_at`` as ``sent_at``; no TTL:
  the tracker drops them). The webhook view reads one with one HGET.
- ``...:notices``: a STREAM of the notifications the webhook view accepted, one entry each
  (``subscription_id``, ``kind``, ``resource``; the entry's ID, ordered and unique, is the
  notice's ``id``), added by one MULTI/EXEC per request, deleted (XDEL) once handled, and
  capped at about :data:`NOTICES_KEPT` (``XADD MAXLEN ~``): a tracker that stops handling
  them cannot make Redis grow without bound; the oldest go first, and the tracker's polling
  still finds what they announced.
- ``...:suppressions``: a HASH address -> ``{"status_code", "reason", "message_id",
  "since"}`` as JSON (never expires: an address stays suppressed until removed).

Retention: everything about a message expires :data:`RETENTION` (14 days,
``RedisStore(ttl=...)``) after it was tracked; its events expire with it. The sorted sets are
trimmed of members older than the retention whenever a message is tracked, as the outbox
store trims its finished sets, so Redis does not grow forever.

Exactly once, without a shared transaction: the database store records an event and runs
``announce`` (the signal) in one transaction. Redis cannot join the receiver's transaction,
so :meth:`RedisStore.report` records the event as *announcing* (one script, which is what
makes it reported once), calls ``announce``, then marks it announced. Recording first means
an event is never announced twice by two reports; announcing first would mean a crash
before the record repeats the signal on every later pass. A tracker killed between record
and mark (or an ``announce`` that raised) leaves the event announcing, and
:meth:`RedisStore.unannounced` hands it over, once, to the next pass, which announces it.
The guarantee, for a tracker that calls :meth:`~RedisStore.unannounced` (the tracker does,
at the start of each pass, for events older than 60 s): every recorded event is announced
exactly once, unless the process dies after a receiver's own effect and before the mark --
then it is announced once more, never a third time. Without that call, an interrupted
event is announced at most once. (A second failure inside the recovery itself, after
:meth:`~RedisStore.unannounced` returned and before the recovering tracker announced, loses
that event: recovery hands each event over once rather than risk repeating it.)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from .events import DeliveryEvent
from .records import Notice, Tracked, Watch, event_key

if TYPE_CHECKING:
    import redis

    from ..conf import MSGraphMailSettings

__all__ = [
    "HANDOVER_BATCH",
    "NEAR_CANDIDATES",
    "NOTICES_KEPT",
    "PREFIX",
    "RETENTION",
    "RedisStore",
]

#: Every key of the store starts with this (the hash tag keeps them in one cluster slot).
PREFIX = "msgraph_mail:tracking:{tracking}:"
#: Notifications kept at most while no tracker handles them (the stream's MAXLEN, about).
NOTICES_KEPT = 100_000
#: How long everything about a tracked message is kept (seconds): 14 days.
RETENTION = 14 * 24 * 3600
#: :meth:`RedisStore.near` looks at no more than this many messages sent in its window.
NEAR_CANDIDATES = 1000
#: :meth:`RedisStore.unannounced` hands over no more than this many events at a time.
HANDOVER_BATCH = 1000

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

# KEYS[1]: the message's hash; KEYS[2]: its Message-ID index; KEYS[3..6]: the sorted sets
# sent, unsettled, mailboxes, announcing. ARGV[1]: tracking id; ARGV[2]: time sent; ARGV[3]:
# TTL in seconds; ARGV[4]: the sorted sets are trimmed of members scored below this;
# ARGV[5]: the Message-ID ("" none); ARGV[6]: the mailbox ("" none); ARGV[7..]: field, value.
_TRACK = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for i = 7, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[1], ARGV[3])
if ARGV[5] ~= '' then redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[3]) end
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
if ARGV[6] ~= '' then
    local latest = redis.call('ZSCORE', KEYS[5], ARGV[6])
    if not latest or tonumber(latest) < tonumber(ARGV[2]) then
        redis.call('ZADD', KEYS[5], ARGV[2], ARGV[6])
    end
end
for i = 3, 6 do redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', '(' .. ARGV[4]) end
return 1
"""

# KEYS[1]: reported keys; KEYS[2]: recipients ended; KEYS[3]: events; KEYS[4]: unsettled;
# KEYS[5]: announcing; KEYS[6]: the message's hash (its TTL is the events' TTL). ARGV[1]:
# tracking id; ARGV[2]: event key; ARGV[3]: recipient; ARGV[4]: "1" for a final event;
# ARGV[5]: the event's JSON; ARGV[6]: its announcing member; ARGV[7]: now; ARGV[8]: TTL for
# a message no longer (or never) tracked; ARGV[9..]: the message's recipients.
_REPORT = """
if redis.call('SISMEMBER', KEYS[2], ARGV[3]) == 1 then return 0 end
if redis.call('SADD', KEYS[1], ARGV[2]) == 0 then return 0 end
redis.call('RPUSH', KEYS[3], ARGV[5])
if ARGV[4] == '1' then
    redis.call('SADD', KEYS[2], ARGV[3])
    local settled = true
    for i = 9, #ARGV do
        if redis.call('SISMEMBER', KEYS[2], ARGV[i]) == 0 then
            settled = false
            break
        end
    end
    if settled then redis.call('ZREM', KEYS[4], ARGV[1]) end
end
redis.call('ZADD', KEYS[5], ARGV[7], ARGV[6])
local ttl = redis.call('TTL', KEYS[6])
if ttl <= 0 then ttl = tonumber(ARGV[8]) end
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ttl) end
return 1
"""

# KEYS[1]: announcing. ARGV[1]: recorded at or before this; ARGV[2]: at most this many.
# Takes the events out as it returns them, so two callers never both get one.
_HAND_OVER = """
local found = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, member in ipairs(found) do redis.call('ZREM', KEYS[1], member) end
return found
"""

# KEYS[1]: the lease. ARGV[1]: holder; ARGV[2]: TTL in milliseconds.
_ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS[1]: the lease. ARGV[1]: holder. Deletes it only while this holder has it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _hiding_password(
    method: Callable[Concatenate[RedisStore, _P], _R],
) -> Callable[Concatenate[RedisStore, _P], _R]:
    """Keep redis-py's exception, but never with the Redis password in its message."""

    @functools.wraps(method)
    def wrapper(self: RedisStore, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:
            self._hide_password(exc)
            raise

    return wrapper


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _seconds(value: datetime) -> str:
    """Unix seconds with exactly six decimals: exact for any date (a float keeps every
    microsecond only for dates near ours)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    micros = (value - _EPOCH) // timedelta(microseconds=1)
    whole, fraction = divmod(micros, 1_000_000)
    return f"{whole}.{fraction:06d}"


def _datetime(value: str) -> datetime:
    whole, _, fraction = value.partition(".")
    return _EPOCH + timedelta(seconds=int(whole), microseconds=int(fraction.ljust(6, "0")[:6]))


def _score(value: datetime) -> float:
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.timestamp()


def _tracked(raw: dict[Any, Any]) -> Tracked | None:
    values = {_text(k): _text(v) for k, v in raw.items()}
    if "tracking_id" not in values:
        return None  # expired meanwhile
    return Tracked(
        tracking_id=values["tracking_id"],
        message_id=values.get("message_id") or None,
        sender=values.get("sender", ""),
        mailbox=values.get("mailbox") or None,
        recipients=tuple(json.loads(values.get("recipients") or "[]")),
        sent_at=_datetime(values["sent_at"]),
        outbox_id=values.get("outbox_id") or None,
    )


_EVENT_FIELDS = frozenset(f.name for f in dataclasses.fields(DeliveryEvent))


def _event(data: dict[str, Any]) -> DeliveryEvent:
    """A :class:`DeliveryEvent` back from :meth:`DeliveryEvent.as_dict`."""
    values = {k: v for k, v in data.items() if k in _EVENT_FIELDS}
    values["timestamp"] = datetime.fromisoformat(values["timestamp"])
    return DeliveryEvent(**values)


class RedisStore:
    """The :class:`~msgraph_mail.tracking.store.TrackingStore` in Redis.

    ``RedisStore(client)`` with a redis-py client, or :meth:`for_settings` with the
    package's client for ``REDIS_URL`` (made once per process, never shared by a fork).
    Redis errors are redis-py's own exceptions, with the password masked out of them.
    """

    def __init__(self, client: redis.Redis, *, ttl: int = RETENTION) -> None:
        self.client = client
        self.ttl = int(ttl)
        self._track = client.register_script(_TRACK)
        self._report = client.register_script(_REPORT)
        self._hand_over = client.register_script(_HAND_OVER)
        self._acquire = client.register_script(_ACQUIRE)
        self._release = client.register_script(_RELEASE)

    @classmethod
    def for_settings(cls, settings: MSGraphMailSettings, *, ttl: int = RETENTION) -> RedisStore:
        """The store in the Redis of ``settings.redis_url`` (ConfigurationError if unset)."""
        from ..limits import redis_client

        return cls(redis_client(settings), ttl=ttl)

    def __repr__(self) -> str:
        """Where the store is, never with the password (the client's repr is not ours)."""
        kwargs = self.client.connection_pool.connection_kwargs
        where = kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}"
        return f"<RedisStore {where}/{kwargs.get('db', 0)} ttl={self.ttl}>"

    # keys -------------------------------------------------------------------------------

    @staticmethod
    def key(*parts: str) -> str:
        """The key of ``parts`` (``key("message", tracking_id)``)."""
        return PREFIX + ":".join(parts)

    def _sets(self) -> list[str]:
        return [self.key(name) for name in ("sent", "unsettled", "mailboxes", "announcing")]

    # tracked messages -----------------------------------------------------------------------

    @_hiding_password
    def track(self, tracked: Tracked) -> None:
        """Record a message as sent; tracking it again (a resend) keeps the first record."""
        fields = {
            "tracking_id": tracked.tracking_id,
            "message_id": tracked.message_id or "",
            "sender": tracked.sender.lower(),
            "mailbox": (tracked.mailbox or "").lower(),
            "recipients": json.dumps([r.lower() for r in tracked.recipients]),
            "outbox_id": tracked.outbox_id or "",
            "sent_at": _seconds(tracked.sent_at),
        }
        keys = [
            self.key("message", tracked.tracking_id),
            self.key("message-id", tracked.message_id or ""),
            *self._sets(),
        ]
        args: list[Any] = [
            tracked.tracking_id,
            repr(_score(tracked.sent_at)),
            self.ttl,
            repr(time.time() - self.ttl),
            tracked.message_id or "",
            fields["mailbox"],
        ]
        for name, value in fields.items():
            args += [name, value]
        self._track(keys=keys, args=args)

    @_hiding_password
    def find(
        self, *, tracking_id: str | None = None, message_id: str | None = None
    ) -> Tracked | None:
        """The tracked message with this tracking id, else the latest with this Message-ID."""
        if tracking_id:
            found = self._get(tracking_id)
            if found is not None:
                return found
        if message_id:
            indexed = self.client.get(self.key("message-id", message_id))
            if indexed is not None:
                return self._get(_text(indexed))
        return None

    @_hiding_password
    def near(self, recipient: str, when: datetime, slack: float) -> Tracked | None:
        """The latest message to ``recipient`` sent within ``slack`` seconds before ``when``;
        of the latest :data:`NEAR_CANDIDATES` in that window (one round trip for them)."""
        end = _score(when)
        ids = self.client.zrevrangebyscore(
            self.key("sent"), end, end - slack, start=0, num=NEAR_CANDIDATES
        )
        pipe = self.client.pipeline(transaction=False)
        for tracking_id in ids:
            pipe.hget(self.key("message", _text(tracking_id)), "recipients")
        wanted = recipient.lower()
        for tracking_id, recipients in zip(ids, pipe.execute(), strict=True):
            if recipients is not None and wanted in json.loads(recipients):
                return self._get(_text(tracking_id))
        return None

    @_hiding_password
    def unsettled(self, since: datetime) -> list[Tracked]:
        """Messages sent since ``since`` with a recipient still lacking a final event."""
        ids = self.client.zrangebyscore(self.key("unsettled"), _score(since), "+inf")
        return self._get_many(_text(i) for i in ids)

    @_hiding_password
    def mailboxes(self, since: datetime) -> list[str]:
        """The mailboxes that sent a message since ``since``, sorted."""
        found = self.client.zrangebyscore(self.key("mailboxes"), _score(since), "+inf")
        return sorted(_text(mailbox) for mailbox in found)

    # events ----------------------------------------------------------------------------------

    @_hiding_password
    def report(self, tracked: Tracked, event: DeliveryEvent, announce: Callable[[], None]) -> bool:
        """Record ``event`` once, call ``announce``, then mark it announced; False (nothing
        called) when it was reported before, or a final event already ended that recipient.

        Redis cannot join the receiver's transaction, so the event is recorded *before* it is
        announced: recorded as announcing, announced, then marked. A process killed (or an
        ``announce`` that raises) in between leaves it announcing, and the next tracker pass
        announces it (:meth:`unannounced`). So one crash never loses an event, and an event
        is announced twice only when the process dies after the receiver's own effect and
        before the mark -- once more, never more. (The database store's transaction also
        covers a receiver's writes to the same database, so those never repeat; Redis
        cannot offer that.)
        """
        member = json.dumps(
            {"tracking_id": tracked.tracking_id, "event": event.as_dict()}, sort_keys=True
        )
        if not self._record(tracked, event, member):
            return False
        announce()
        self.client.zrem(self.key("announcing"), member)
        return True

    @_hiding_password
    def unannounced(
        self, older_than: float, *, limit: int = HANDOVER_BATCH
    ) -> list[tuple[Tracked, DeliveryEvent]]:
        """Events recorded more than ``older_than`` seconds ago and never marked announced
        (a tracker killed between record and signal, or an ``announce`` that raised).

        Handed over once: they count as announced when returned, so the caller must announce
        each (the tracker does, at the start of a pass). ``older_than`` must exceed the
        longest ``announce``, or an event being announced right now is handed over too.
        Events of messages expired meanwhile are dropped.
        """
        cutoff = repr(time.time() - older_than)
        members = self._hand_over(keys=[self.key("announcing")], args=[cutoff, limit])
        found = []
        for member in members:
            data = json.loads(_text(member))
            tracked = self._get(data["tracking_id"])
            if tracked is not None:
                found.append((tracked, _event(data["event"])))
        return found

    @_hiding_password
    def events(self, tracking_id: str) -> list[dict[str, Any]]:
        """The events reported for one message, oldest first (each as its JSON)."""
        raw = self.client.lrange(self.key("events", tracking_id), 0, -1)
        return [json.loads(item) for item in raw]

    # cursors and the lease ---------------------------------------------------------------

    @_hiding_password
    def cursor(self, name: str) -> str | None:
        value = self.client.get(self.key("cursor", name))
        return _text(value) if value is not None else None

    @_hiding_password
    def set_cursor(self, name: str, value: str) -> None:
        self.client.set(self.key("cursor", name), value)

    @_hiding_password
    def acquire(self, name: str, holder: str, ttl: float) -> bool:
        """Take or renew the lease ``name`` for ``ttl`` seconds; False while another holds
        it. One script: two trackers asking at once never both get it."""
        ms = max(1, round(ttl * 1000))
        return bool(self._acquire(keys=[self.key("lease", name)], args=[holder, ms]))

    @_hiding_password
    def release(self, name: str, holder: str) -> None:
        """Free the lease, if ``holder`` still holds it (not one taken over after expiry)."""
        self._release(keys=[self.key("lease", name)], args=[holder])

    # the suppression list -----------------------------------------------------------------

    @_hiding_password
    def suppress(
        self, address: str, *, status_code: str = "", reason: str = "", message_id: str = ""
    ) -> bool:
        """Add an address (lower-cased) to the suppression list; False when it is there."""
        entry = {
            "status_code": status_code,
            "reason": reason[:2000],
            "message_id": message_id,
            "since": _seconds(datetime.now(timezone.utc)),
        }
        added = self.client.hsetnx(self.key("suppressions"), _address(address), json.dumps(entry))
        return bool(added)

    @_hiding_password
    def unsuppress(self, address: str) -> bool:
        return bool(self.client.hdel(self.key("suppressions"), _address(address)))

    @_hiding_password
    def suppressed(self, addresses: Iterable[str]) -> set[str]:
        """Which of ``addresses`` (lower-cased) are on the suppression list: one round trip."""
        wanted = sorted({_address(address) for address in addresses})
        if not wanted:
            return set()
        found = self.client.hmget(self.key("suppressions"), wanted)
        return {address for address, entry in zip(wanted, found, strict=True) if entry}

    @_hiding_password
    def suppressions(self) -> list[dict[str, Any]]:
        """The whole list, by address, with the database store's keys (``since`` ISO 8601)."""
        rows = []
        for address, raw in self.client.hscan_iter(self.key("suppressions"), count=1000):
            entry = json.loads(raw)
            rows.append(
                {
                    "address": _text(address),
                    "status_code": entry.get("status_code", ""),
                    "reason": entry.get("reason", ""),
                    "message_id": entry.get("message_id", ""),
                    "since": _datetime(entry["since"]).isoformat(),
                }
            )
        return sorted(rows, key=lambda row: str(row["address"]))

    # change notifications -----------------------------------------------------------------

    @_hiding_password
    def save_watch(self, watch: Watch) -> None:
        """Record a subscription, or its new expiry (one HSET: insert or update)."""
        entry = {
            "mailbox": watch.mailbox.lower(),
            "client_state": watch.client_state,
            "expires_at": _seconds(watch.expires_at),
        }
        self.client.hset(self.key("watches"), watch.subscription_id, json.dumps(entry))

    @_hiding_password
    def watches(self) -> list[Watch]:
        """Every subscription, by mailbox, then expiry."""
        found = [
            _watch(_text(sub), raw)
            for sub, raw in self.client.hscan_iter(self.key("watches"), count=1000)
        ]
        return sorted(found, key=lambda w: (w.mailbox, w.expires_at))

    @_hiding_password
    def watch(self, subscription_id: str) -> Watch | None:
        """The subscription, or None: one round trip (the webhook view asks on every
        notification)."""
        raw = self.client.hget(self.key("watches"), subscription_id)
        return _watch(subscription_id, raw) if raw else None

    @_hiding_password
    def drop_watch(self, subscription_id: str) -> None:
        self.client.hdel(self.key("watches"), subscription_id)

    @_hiding_password
    def notify(self, notices: list[tuple[str, str, str]]) -> None:
        """Record them all or none, in one round trip: one MULTI/EXEC of XADDs (nothing is
        sent for none). The stream is capped at about :data:`NOTICES_KEPT` so a stopped
        tracker cannot make it grow without bound (the oldest go first; polling finds their
        NDRs)."""
        pipe = self.client.pipeline(transaction=True)
        for subscription_id, kind, resource in notices:
            fields: dict[Any, Any] = {
                "subscription_id": subscription_id,
                "kind": kind,
                "resource": resource,
            }
            pipe.xadd(self.key("notices"), fields, maxlen=NOTICES_KEPT, approximate=True)
        pipe.execute()

    @_hiding_password
    def notices(self, limit: int = 1000) -> list[Notice]:
        """Notifications not handled yet, oldest first (their stream IDs as ``id``)."""
        if limit < 1:
            return []
        rows: list[Any] = self.client.xrange(self.key("notices"), count=limit) or []
        return [_notice(notice_id, fields or {}) for notice_id, fields in rows]

    @_hiding_password
    def handled(self, notice_ids: list[str]) -> None:
        """Delete these notifications (IDs gone already are ignored)."""
        if notice_ids:
            self.client.xdel(self.key("notices"), *notice_ids)

    # helpers ------------------------------------------------------------------------------

    def _get(self, tracking_id: str) -> Tracked | None:
        return _tracked(self.client.hgetall(self.key("message", tracking_id)))

    def _get_many(self, tracking_ids: Iterable[str]) -> list[Tracked]:
        pipe = self.client.pipeline(transaction=False)
        for tracking_id in tracking_ids:
            pipe.hgetall(self.key("message", tracking_id))
        return [t for t in (_tracked(raw) for raw in pipe.execute()) if t is not None]

    def _record(self, tracked: Tracked, event: DeliveryEvent, member: str) -> bool:
        """The one script of :meth:`report`: check the final and the key, then record."""
        tid = tracked.tracking_id
        keys = [
            self.key("reported", tid),
            self.key("final", tid),
            self.key("events", tid),
            self.key("unsettled"),
            self.key("announcing"),
            self.key("message", tid),
        ]
        args: list[Any] = [
            tid,
            event_key(tid, event),
            event.recipient.lower(),
            "1" if event.final else "0",
            json.dumps(event.as_dict()),
            member,
            repr(time.time()),
            self.ttl,
            *(r.lower() for r in tracked.recipients),
        ]
        return bool(self._report(keys=keys, args=args))

    def _hide_password(self, exc: BaseException) -> None:
        """Replace the password in ``exc`` and the exceptions it chains (in place)."""
        password = self.client.connection_pool.connection_kwargs.get("password")
        seen: set[int] = set()
        current: BaseException | None = exc
        while password and current is not None and id(current) not in seen:
            seen.add(id(current))
            current.args = tuple(
                a.replace(password, "***") if isinstance(a, str) else a for a in current.args
            )
            current = current.__cause__ or current.__context__


def _address(address: str) -> str:
    return address.strip().lower()


def _watch(subscription_id: str, raw: Any) -> Watch:
    entry = json.loads(raw)
    return Watch(
        subscription_id, entry["mailbox"], entry["client_state"], _datetime(entry["expires_at"])
    )


def _notice(notice_id: Any, fields: dict[Any, Any]) -> Notice:
    def field(name: str) -> str:
        return _text(fields.get(name.encode(), fields.get(name, b"")))

    return Notice(_text(notice_id), field("subscription_id"), field("kind"), field("resource"))
