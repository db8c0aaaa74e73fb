"""The outbox's claim store in Redis, shared by every Celery worker (``QUEUE = "celery"``).

Celery delivers a task at least once: a worker killed after Graph's 202 and before the
acknowledgement runs it again. What makes that harmless is this store: each message has one
record, and a worker *claims* it (``queued`` -> ``sending``) in one atomic step before it
sends; a second run finds it claimed and never sends it again.

Layout (every key starts with ``msgraph_mail:outbox:`` and carries the hash tag ``{outbox}``,
so the scripts also run on Redis Cluster, where all their keys must share one slot):

- ``msgraph_mail:outbox:{outbox}:message:<message id>``: a HASH per message: ``envelope``
  (the envelope's JSON), ``status``, ``attempts`` (claims so far), ``next_try_at``,
  ``last_error``, ``request_id``, ``created_at``, ``updated_at``, ``claimed_at``,
  ``finished_at`` (times as Unix seconds, floats), ``mailbox`` (the From address or the
  override; once tried, the mailbox used) and ``history`` (one JSON object per line: each
  attempt's outcome and each manual resend).
- ``msgraph_mail:outbox:{outbox}:status:<status>``: a sorted set per status of message ids,
  scored by time: ``queued`` by the next try, ``sending`` by the claim, ``sent``,
  ``failed`` and ``unknown`` by the end.

Every change of status is one Lua script (read the status, move the id between the sorted
sets, write the fields), so the sets never disagree with the records.

Finished messages (``sent``, ``failed``, ``unknown``) expire after ``OUTBOX_RETENTION``
(:meth:`RedisStore.for_settings`; :data:`FINISHED_TTL`, 7 days, for ``RedisStore(client)``);
the sorted sets of finished statuses are trimmed to the same age whenever a message
finishes, so Redis does not grow forever. ``queued`` and
``sending`` records never expire: a message waiting for its next try, or claimed by a worker
that died, stays visible until it is finished (``manage.py msgraph_outbox``). Contents: the
MIME of each message (its recipients and body, never a secret) -- protect this Redis as you
protect the mail itself; with ``OUTBOX_ENCRYPTION_KEYS`` the MIME, JSON body and draft plan
are stored encrypted (:mod:`.sealing`), what the listing shows stays readable.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from . import sealing
from .envelope import Envelope
from .store import Columns, StoredMessage, columns, entry, history

if TYPE_CHECKING:
    import redis

    from ..conf import MSGraphMailSettings

__all__ = [
    "FINISHED",
    "FINISHED_TTL",
    "PREFIX",
    "STALE_CLAIM",
    "STATUSES",
    "RedisStore",
]

#: Every key of the store starts with this (the hash tag keeps them in one cluster slot).
PREFIX = "msgraph_mail:outbox:{outbox}:"
#: The statuses a message goes through, in order; the last three are final.
STATUSES = ("queued", "sending", "sent", "failed", "unknown")
FINISHED = frozenset({"sent", "failed", "unknown"})
#: How long a finished message is kept (seconds): 7 days.
FINISHED_TTL = 7 * 24 * 3600
#: The error kept on a message whose claim went stale (see :meth:`RedisStore.reap`).
STALE_CLAIM = (
    "The worker that claimed this message stopped before it finished (killed, or lost): it "
    "may or may not have been sent, so it is not sent again"
)

# KEYS[1]: the message's hash; KEYS[2..6]: the status sets, in the order of STATUSES.
# ARGV[1]: message id; ARGV[2]: the new status; ARGV[3]: its score; ARGV[4]: TTL in seconds
# (0: never expires); ARGV[5]: the statuses it may leave, comma-separated ("" = any, "-" =
# none: the message must not exist yet); ARGV[6]: "1" to count an attempt; ARGV[7]: the
# finished sets are trimmed of ids older than this (0: no trimming); ARGV[8..]: field, value
# (a field named "+name" appends the value to field "name").
_MOVE = """
local key = KEYS[1]
local current = redis.call('HGET', key, 'status')
local expect = ARGV[5]
if expect == '-' then
    if current then return 0 end
elseif not current then
    return 0
elseif expect ~= '' then
    local allowed = false
    for status in string.gmatch(expect, '[^,]+') do
        if status == current then allowed = true end
    end
    if not allowed then return 0 end
end
for i = 2, #KEYS do redis.call('ZREM', KEYS[i], ARGV[1]) end
local statuses = {'queued', 'sending', 'sent', 'failed', 'unknown'}
for i, status in ipairs(statuses) do
    if status == ARGV[2] then redis.call('ZADD', KEYS[i + 1], ARGV[3], ARGV[1]) end
end
redis.call('HSET', key, 'status', ARGV[2])
for i = 8, #ARGV, 2 do
    if string.sub(ARGV[i], 1, 1) == '+' then
        local name = string.sub(ARGV[i], 2)
        redis.call('HSET', key, name, (redis.call('HGET', key, name) or '') .. ARGV[i + 1])
    elseif ARGV[i + 1] == '' then
        redis.call('HDEL', key, ARGV[i])
    else
        redis.call('HSET', key, ARGV[i], ARGV[i + 1])
    end
end
if ARGV[6] == '1' then redis.call('HINCRBY', key, 'attempts', 1) end
if tonumber(ARGV[4]) > 0 then
    redis.call('EXPIRE', key, ARGV[4])
else
    redis.call('PERSIST', key)
end
if tonumber(ARGV[7]) > 0 then
    for i = 4, 6 do redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', '(' .. ARGV[7]) end
end
return 1
"""

# KEYS as for _MOVE; ARGV[1]: message id. Deletes the message only while it is queued.
_FORGET = """
if redis.call('HGET', KEYS[1], 'status') ~= 'queued' then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""


# KEYS[1]: the message's hash; ARGV[1]: the envelope read; ARGV[2]: its replacement. The
# hash keeps its expiry (HSET does not touch it).
_SWAP = """
if redis.call('HGET', KEYS[1], 'envelope') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'envelope', ARGV[2])
return 1
"""


def _epoch(value: datetime | float | None) -> float:
    if value is None:
        return time.time()
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.timestamp()
    return float(value)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _datetime(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromtimestamp(float(value), tz=timezone.utc)


class RedisStore:
    """The :class:`~msgraph_mail.outbox.store.ClaimStore` of the Celery engine, in Redis.

    ``RedisStore(client)`` with a redis-py client, or :meth:`for_settings` with the
    package's client for ``REDIS_URL`` (made once per process, never shared by a fork).
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        ttl: int = FINISHED_TTL,
        keep_content: bool = True,
        keys: sealing.Keys = (),
    ) -> None:
        self.keep_content = keep_content
        self.keys = keys  # OUTBOX_ENCRYPTION_KEYS: the content is stored encrypted
        self.client = client
        self.ttl = int(ttl)
        self._move = client.register_script(_MOVE)
        self._forget = client.register_script(_FORGET)
        self._swap = client.register_script(_SWAP)

    @classmethod
    def for_settings(cls, settings: MSGraphMailSettings, *, ttl: int | None = None) -> RedisStore:
        """The store in the Redis of ``settings.redis_url`` (ConfigurationError if unset);
        finished messages kept ``OUTBOX_RETENTION`` unless ``ttl`` says otherwise."""
        from ..limits import redis_client

        return cls(
            redis_client(settings),
            ttl=int(settings.outbox_retention) if ttl is None else ttl,
            keep_content=settings.outbox_keep_content,
            keys=settings.outbox_encryption_keys,
        )

    # keys -------------------------------------------------------------------------------

    @staticmethod
    def message_key(message_id: str) -> str:
        return f"{PREFIX}message:{message_id}"

    @staticmethod
    def status_key(status: str) -> str:
        return f"{PREFIX}status:{status}"

    def _keys(self, message_id: str) -> list[str]:
        return [self.message_key(message_id), *(self.status_key(s) for s in STATUSES)]

    def _run(
        self,
        message_id: str,
        status: str,
        *,
        score: float,
        expect: str,
        fields: dict[str, Any],
        attempt: bool = False,
    ) -> bool:
        if status not in STATUSES:
            raise ValueError(f"unknown outbox status {status!r}; one of {', '.join(STATUSES)}")
        final = status in FINISHED
        pairs: list[str] = []
        for name, value in fields.items():
            pairs += [name, "" if value is None else str(value)]
        args = [
            message_id,
            status,
            repr(score),
            self.ttl if final else 0,
            expect,
            "1" if attempt else "0",
            repr(time.time() - self.ttl) if final else 0,
            *pairs,
        ]
        return bool(self._move(keys=self._keys(message_id), args=args))

    # the ClaimStore protocol ---------------------------------------------------------------

    def add(self, envelope: Envelope, *, not_before: datetime | float | None = None) -> None:
        """Record a new message as ``queued``, due at ``not_before`` (default: now).

        Adding a message id that is already stored changes nothing (an enqueue that runs
        twice does not reset a message that was claimed or finished meanwhile).
        """
        now = time.time()
        due = _epoch(not_before) if not_before is not None else now
        self._run(
            envelope.message_id,
            "queued",
            score=due,
            expect="-",
            fields={
                "envelope": sealing.dump(envelope, self.keys),
                "attempts": 0,
                "next_try_at": repr(due),
                "created_at": repr(now),
                "updated_at": repr(now),
                **columns(envelope),
            },
        )

    def claim(self, message_id: str) -> bool:
        """``queued`` -> ``sending`` in one step; False when it is not queued (already
        claimed, finished or not stored): then it must not be sent."""
        now = repr(time.time())
        return self._run(
            message_id,
            "sending",
            score=float(now),
            expect="queued",
            fields={"claimed_at": now, "updated_at": now},
            attempt=True,
        )

    def defer(
        self,
        message_id: str,
        until: datetime | float,
        *,
        error: str | None = None,
        request_id: str | None = None,
        mailbox: str | None = None,
    ) -> None:
        """Back to ``queued``, next try at ``until`` (a claimed message only: nothing sent)."""
        due = _epoch(until)
        line = entry(
            "deferred",
            error=error,
            request_id=request_id,
            mailbox=mailbox,
            until=datetime.fromtimestamp(due, tz=timezone.utc),
        )
        fields = {"next_try_at": repr(due), "updated_at": repr(time.time()), "+history": line}
        self._run(message_id, "queued", score=due, expect="sending", fields=fields)

    def note(self, message_id: str, error: str) -> None:
        """Keep why the last attempt failed (a deferred message shows it)."""
        key = self.message_key(message_id)
        if self.client.exists(key):
            self.client.hset(key, "last_error", error[:2000])

    def resolved(self, message_id: str, note: str) -> bool:
        """An unknown message found in Sent Items: ``unknown`` -> ``sent`` in one step (False
        when it is not unknown any more: resent by hand, or resolved by another run)."""
        return self._finish(
            message_id, "sent", note, None, expect="unknown", log="found in Sent Items"
        )

    def finish(
        self,
        message_id: str,
        status: str,
        error: str | None = None,
        request_id: str | None = None,
        *,
        mailbox: str | None = None,
    ) -> None:
        """``sent``, ``failed`` or ``unknown``: kept for the store's TTL, then forgotten."""
        self._finish(message_id, status, error, request_id, expect="", mailbox=mailbox)

    def get(self, message_id: str) -> StoredMessage | None:
        """The message as stored, or None (never stored, or expired)."""
        raw = self.client.hgetall(self.message_key(message_id))
        return self._record(message_id, raw) if raw else None

    def list(self, status: str | None = None) -> list[StoredMessage]:
        """The stored messages of one status (all when None), oldest first in each status;
        queued ones in the order of their next try."""
        statuses: Sequence[str] = STATUSES if status is None else (status,)
        records = []
        for name in statuses:
            if name not in STATUSES:
                raise ValueError(f"unknown outbox status {name!r}; one of {', '.join(STATUSES)}")
            for message_id in self._ids(name):
                record = self.get(message_id)
                if record is not None and record.status == name:
                    records.append(record)
        return records

    # beyond the protocol: what the outbox command and the worker use ------------------------

    def requeue(
        self,
        message_id: str,
        *,
        force: bool = False,
        envelope: Envelope | None = None,
        by: str | None = None,
    ) -> bool:
        """A failed message (an unknown one too with ``force``) back to ``queued``, due now,
        to be enqueued again (a manual resend); ``envelope`` replaces the stored one. False
        when it is in no such state."""
        now = time.time()
        fields: dict[str, Any] = {
            "next_try_at": repr(now),
            "updated_at": repr(now),
            "finished_at": None,
            "+history": entry("resent", by=by),
        }
        if envelope is not None:
            fields["envelope"] = sealing.dump(envelope, self.keys)
        return self._run(
            message_id,
            "queued",
            score=now,
            expect="failed,unknown" if force else "failed",
            fields=fields,
        )

    def reap(self, stale_after: float) -> int:
        """Mark messages claimed longer than ``stale_after`` seconds ago as unknown; how many.

        A worker killed while sending leaves its message ``sending``: the request may have
        reached Graph, so the message is unknown, never sent again.
        """
        return sum(self.expire_claim(message_id) for message_id in self.stale(stale_after))

    def stale(self, stale_after: float) -> builtins.list[str]:
        """Ids of the messages claimed longer than ``stale_after`` seconds ago."""
        cutoff = time.time() - stale_after
        members = self.client.zrange(self.status_key("sending"), "-inf", cutoff, byscore=True)
        return [m.decode() if isinstance(m, bytes) else str(m) for m in members]

    def expire_claim(self, message_id: str) -> bool:
        """A claimed message whose worker is gone: ``sending`` -> ``unknown`` (False when it
        is not ``sending`` any more: it finished meanwhile)."""
        return self._finish(message_id, "unknown", STALE_CLAIM, None, expect="sending")

    def forget(self, message_id: str) -> bool:
        """Delete a ``queued`` message that was never enqueued (the broker refused the task)."""
        return bool(self._forget(keys=self._keys(message_id), args=[message_id]))

    def counts(self) -> dict[str, int]:
        """How many messages each status holds."""
        pipe = self.client.pipeline(transaction=False)
        for name in STATUSES:
            pipe.zcard(self.status_key(name))
        return dict(zip(STATUSES, (int(n) for n in pipe.execute()), strict=True))

    def claimed_at(self, message_id: str) -> datetime | None:
        """When the message was last claimed (None if never, or not stored)."""
        value = self.client.hget(self.message_key(message_id), "claimed_at")
        return _datetime(value.decode() if isinstance(value, bytes) else value)

    def _finish(
        self,
        message_id: str,
        status: str,
        error: str | None,
        request_id: str | None,
        *,
        expect: str,
        mailbox: str | None = None,
        log: str | None = None,
    ) -> bool:
        if status not in FINISHED:
            raise ValueError(f"finish() takes sent, failed or unknown, not {status!r}")
        now = time.time()
        fields: dict[str, Any] = {
            "finished_at": repr(now),
            "updated_at": repr(now),
            "next_try_at": None,
            "+history": entry(status, error=log or error, request_id=request_id, mailbox=mailbox),
        }
        if mailbox:
            fields["mailbox"] = mailbox
        if error is not None:
            fields["last_error"] = error[:2000]
        if request_id is not None:
            fields["request_id"] = request_id
        if status == "sent" and not self.keep_content:  # OUTBOX_KEEP_CONTENT off
            found = self.get(message_id)
            if found is not None:
                envelope = found.envelope.without_content()
                fields["envelope"] = sealing.dump(envelope, self.keys)
        return self._run(message_id, status, score=now, expect=expect, fields=fields)

    def purge(self, older_than: float) -> int:
        """Forget finished messages older than ``older_than`` seconds (they also expire by
        themselves after the store's TTL, OUTBOX_RETENTION); how many went."""
        cutoff = time.time() - older_than
        removed = 0
        for status in FINISHED:
            ids = [
                i.decode() if isinstance(i, bytes) else str(i)
                for i in self.client.zrangebyscore(self.status_key(status), "-inf", cutoff)
            ]
            if not ids:
                continue
            pipe = self.client.pipeline(transaction=True)
            pipe.delete(*[self.message_key(i) for i in ids])
            pipe.zrem(self.status_key(status), *ids)
            removed += int(pipe.execute()[0])
        return removed

    # what the admin lists ------------------------------------------------------------------

    #: The fields of a message's record the admin's list shows, searches and filters on.
    LISTED = (
        "status",
        *Columns.__annotations__,
        "attempts",
        "created_at",
        "next_try_at",
        "last_error",
    )

    def listing(
        self, *, query: str = "", status: str = "", route: str = "", mailbox: str = ""
    ) -> builtins.list[str]:
        """Message ids, the most recently changed first, of one status (all when ""), whose
        route and mailbox match and whose Message-ID, subject or recipients contain every
        word of ``query`` (case-insensitive). Filtering reads only the listed fields."""
        statuses = [status] if status in STATUSES else list(STATUSES)
        scored: builtins.list[tuple[float, str]] = []
        for name in statuses:
            members: Any = self.client.zrange(self.status_key(name), 0, -1, withscores=True)
            scored += [(float(pair[1]), _text(pair[0])) for pair in members]
        scored.sort(reverse=True)
        ids = [message_id for _, message_id in scored]
        words = query.lower().split()
        if not (words or route or mailbox):
            return ids
        pipe = self.client.pipeline(transaction=False)
        for message_id in ids:
            pipe.hmget(self.message_key(message_id), ["subject", "recipients", "route", "mailbox"])
        kept = []
        for message_id, values in zip(ids, pipe.execute(), strict=True):
            subject, recipients, found_route, found_mailbox = (_text(v or b"") for v in values)
            if (route and found_route != route) or (mailbox and found_mailbox != mailbox):
                continue
            haystack = f"{message_id}\n{subject}\n{recipients}".lower()
            if all(word in haystack for word in words):
                kept.append(message_id)
        return kept

    def summaries(self, message_ids: Iterable[str]) -> builtins.list[dict[str, Any]]:
        """The listed fields of these messages (no envelope read), in one round trip; a
        message gone meanwhile is left out."""
        ids = list(message_ids)
        pipe = self.client.pipeline(transaction=False)
        for message_id in ids:
            pipe.hmget(self.message_key(message_id), self.LISTED)
        return [
            _summary(message_id, values)
            for message_id, values in zip(ids, pipe.execute(), strict=True)
            if values[0] is not None
        ]

    def mailboxes(self) -> builtins.list[str]:
        """Every mailbox a stored message names, for the admin's filter."""
        ids = [i for name in STATUSES for i in self._ids(name)]
        pipe = self.client.pipeline(transaction=False)
        for message_id in ids:
            pipe.hget(self.message_key(message_id), "mailbox")
        return sorted({_text(m) for m in pipe.execute() if m})

    def delete(self, message_id: str) -> bool:
        """Forget a message whatever its status (the admin's delete); False if not stored."""
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(self.message_key(message_id))
        for name in STATUSES:
            pipe.zrem(self.status_key(name), message_id)
        return bool(pipe.execute()[0])

    # what --reencrypt rewrites (outbox.sealing.Rewritable) ---------------------------------

    def envelope_refs(self) -> builtins.list[Any]:
        return list(dict.fromkeys(i for name in STATUSES for i in self._ids(name)))

    def read_envelope(self, ref: Any) -> tuple[str, str] | None:
        value = self.client.hget(self.message_key(ref), "envelope")
        return (str(ref), _text(value)) if value is not None else None

    def swap_envelope(self, ref: Any, old: str, new: str) -> bool:
        return bool(self._swap(keys=[self.message_key(ref)], args=[old, new]))

    def _ids(self, status: str) -> Iterator[str]:
        for member in self.client.zrange(self.status_key(status), 0, -1):
            yield member.decode() if isinstance(member, bytes) else str(member)

    def _record(self, message_id: str, raw: dict[Any, Any]) -> StoredMessage:
        values = {
            (k.decode() if isinstance(k, bytes) else str(k)): (
                v.decode() if isinstance(v, bytes) else str(v)
            )
            for k, v in raw.items()
        }
        return StoredMessage(
            message_id=message_id,
            envelope=sealing.load(values.get("envelope"), self.keys),
            status=values.get("status", ""),
            attempts=int(values.get("attempts") or 0),
            next_try_at=_datetime(values.get("next_try_at")),
            last_error=values.get("last_error") or None,
            request_id=values.get("request_id") or None,
            created_at=_datetime(values.get("created_at")),
            updated_at=_datetime(values.get("updated_at")),
            history=history(values.get("history")),
            mailbox=values.get("mailbox") or None,
        )


def _summary(message_id: str, values: Sequence[Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"message_id": message_id}
    for name, value in zip(RedisStore.LISTED, values, strict=True):
        row[name] = _text(value) if value is not None else ""
    for name in ("created_at", "next_try_at"):
        row[name] = _datetime(row[name])
    due = row["next_try_at"]
    if row["status"] == "queued" and due is not None and due > datetime.now(timezone.utc):
        row["status"] = "deferred"
    return row
