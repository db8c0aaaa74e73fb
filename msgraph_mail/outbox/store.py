"""Where queued messages are claimed: one store shared by every worker of an engine.

:class:`ClaimStore` is the interface :func:`~msgraph_mail.outbox.deliver.deliver` needs;
:class:`DatabaseStore` keeps it in the Django database (the ``tasks`` engine), the Celery
engine keeps it in Redis. A claim is atomic: of two runs of the same task, one sends and the
other sees the message taken, so a task that runs twice never sends twice.
"""

from __future__ import annotations

import builtins
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ParamSpec, Protocol, TypedDict, TypeVar

from django.db import DatabaseError, connections, router
from django.db.models import Count, F, TextField, Value
from django.db.models.functions import Concat
from django.utils import timezone

from ..exceptions import OutboxNotMigrated
from . import sealing
from .envelope import Envelope

__all__ = [
    "ClaimStore",
    "Columns",
    "DatabaseStore",
    "StoredMessage",
    "columns",
    "entry",
    "history",
]


@dataclass(frozen=True)
class StoredMessage:
    """A message as a store holds it; ``status`` is queued, sending, sent, failed or unknown
    (a queued one whose ``next_try_at`` lies ahead is deferred)."""

    message_id: str
    envelope: Envelope
    status: str
    attempts: int = 0
    next_try_at: datetime | None = None
    last_error: str | None = None
    request_id: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    history: tuple[dict[str, Any], ...] = ()  # each attempt's outcome, each manual action
    mailbox: str | None = None  # the From address or override; once tried, the mailbox used

    @property
    def deferred(self) -> bool:
        return (
            self.status == "queued"
            and self.next_try_at is not None
            and self.next_try_at > timezone.now()
        )


class ClaimStore(sealing.Rewritable, Protocol):
    """What :func:`~msgraph_mail.outbox.deliver.deliver` needs of a store; what
    ``--reencrypt`` needs (:class:`.sealing.Rewritable`) is declared there, once."""

    def add(self, envelope: Envelope) -> None:
        """Record a new message as queued."""

    def claim(self, message_id: str) -> bool:
        """Atomically mark a queued message as sending; False when it is not queued (already
        sending, or finished): then it must not be sent."""

    def defer(
        self,
        message_id: str,
        until: datetime,
        *,
        error: str | None = None,
        request_id: str | None = None,
        mailbox: str | None = None,
    ) -> None:
        """Back to queued, next try at ``until``: only after a passing failure (nothing sent)."""

    def finish(
        self,
        message_id: str,
        status: str,
        error: str | None = None,
        request_id: str | None = None,
        *,
        mailbox: str | None = None,
    ) -> None:
        """The message is done: "sent", "failed" or "unknown" (through ``mailbox``)."""

    def get(self, message_id: str) -> StoredMessage | None: ...

    def purge(self, older_than: float) -> int:
        """Delete finished messages older than ``older_than`` seconds; how many went."""
        ...

    def list(self, status: str | None = None) -> list[StoredMessage]: ...

    def requeue(
        self,
        message_id: str,
        *,
        force: bool = False,
        envelope: Envelope | None = None,
        by: str | None = None,
    ) -> bool:
        """A failed (with ``force`` also an unknown) message back to queued: a manual resend
        (``by``: who asked, kept in its history)."""
        ...


P = ParamSpec("P")
R = TypeVar("R")


def migrated(method: Callable[P, R]) -> Callable[P, R]:
    """A database error naming the outbox's table becomes :class:`OutboxNotMigrated`, which
    says to run migrate, instead of ``OperationalError: no such table``."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except DatabaseError as exc:
            from ..models import OutboxMessage

            table = OutboxMessage._meta.db_table
            if table not in str(exc).lower():
                raise
            database = router.db_for_write(OutboxMessage)
            raise OutboxNotMigrated(
                f"msgraph_mail's outbox table {table} is missing from database {database!r}, "
                "or lacks a column of a newer migration. Run "
                "`python manage.py migrate msgraph_mail`; `python manage.py check --database "
                f"{database}` reports what is missing."
            ) from exc

    return wrapper


class DatabaseStore:
    """The store of the ``tasks`` engine: :class:`msgraph_mail.models.OutboxMessage` rows in
    the default database, written in the caller's transaction.

    ``keep_content`` False (``OUTBOX_KEEP_CONTENT``'s default): a sent message keeps only what
    the listing shows; its MIME is dropped, as stored mail is personal data. ``keys``
    (``OUTBOX_ENCRYPTION_KEYS``): the content is stored encrypted (:mod:`.sealing`).
    """

    def __init__(self, *, keep_content: bool = True, keys: sealing.Keys = ()) -> None:
        self.keep_content = keep_content
        self.keys = keys

    @migrated
    def add(self, envelope: Envelope) -> None:
        from ..models import OutboxMessage

        OutboxMessage.objects.create(
            message_id=envelope.message_id,
            envelope=_json(envelope, self.keys),
            status="queued",
            **columns(envelope),
        )

    def counts(self) -> dict[str, int]:
        """How many messages each status holds (the ``msgraph_mail.outbox.depth`` gauge).

        Called from a metric reader's own thread too: a connection this call had to open is
        closed again, so an exporter thread never keeps one.
        """
        from ..models import STATUSES, OutboxMessage

        connection = connections[router.db_for_read(OutboxMessage)]
        opened = connection.connection is None
        try:
            found = dict(
                OutboxMessage.objects.values_list("status").annotate(count=Count("pk")).order_by()
            )
        finally:
            if opened and not connection.in_atomic_block:
                connection.close()
        return {status: int(found.get(status, 0)) for status in STATUSES}

    @migrated
    def claim(self, message_id: str) -> bool:
        from ..models import OutboxMessage

        claimed: int = OutboxMessage.objects.filter(message_id=message_id, status="queued").update(
            status="sending", attempts=F("attempts") + 1, updated_at=timezone.now()
        )
        return claimed == 1

    @migrated
    def defer(
        self,
        message_id: str,
        until: datetime,
        *,
        error: str | None = None,
        request_id: str | None = None,
        mailbox: str | None = None,
    ) -> None:
        from ..models import OutboxMessage

        line = entry("deferred", error=error, request_id=request_id, mailbox=mailbox, until=until)
        OutboxMessage.objects.filter(message_id=message_id, status="sending").update(
            status="queued", next_try_at=until, updated_at=timezone.now(), history=_append(line)
        )

    @migrated
    def note(self, message_id: str, error: str) -> None:
        """Keep why the last attempt failed (a deferred message shows it)."""
        from ..models import OutboxMessage

        OutboxMessage.objects.filter(message_id=message_id).update(last_error=error[:2000])

    @migrated
    def resolved(self, message_id: str, note: str) -> bool:
        """An unknown message found in Sent Items: ``unknown`` -> ``sent`` in one step (False
        when it is not unknown any more: resent by hand, or resolved by another run)."""
        from ..models import OutboxMessage

        rows = OutboxMessage.objects.filter(message_id=message_id, status="unknown")
        updated: int = rows.update(
            status="sent",
            last_error=note[:2000],
            next_try_at=None,
            updated_at=timezone.now(),
            history=_append(entry("sent", error="found in Sent Items")),
        )
        if updated == 1:
            self._drop_content(message_id)
        return updated == 1

    @migrated
    def finish(
        self,
        message_id: str,
        status: str,
        error: str | None = None,
        request_id: str | None = None,
        *,
        mailbox: str | None = None,
    ) -> None:
        from ..models import OutboxMessage

        changes: dict[str, Any] = {"mailbox": mailbox} if mailbox else {}
        line = entry(status, error=error, request_id=request_id, mailbox=mailbox)
        OutboxMessage.objects.filter(message_id=message_id).update(
            status=status,
            last_error=(error or "")[:2000],
            request_id=request_id or "",
            next_try_at=None,
            updated_at=timezone.now(),
            history=_append(line),
            **changes,
        )
        if status == "sent":
            self._drop_content(message_id)

    @migrated
    def purge(self, older_than: float) -> int:
        """Delete finished messages (sent, failed, unknown) untouched for ``older_than``
        seconds (OUTBOX_RETENTION); how many went."""
        from ..models import OutboxMessage

        cutoff = timezone.now() - timedelta(seconds=older_than)
        rows = OutboxMessage.objects.filter(
            status__in=["sent", "failed", "unknown"], updated_at__lt=cutoff
        )
        deleted, _ = rows.delete()
        return int(deleted)

    def _drop_content(self, message_id: str) -> None:
        from ..models import OutboxMessage

        if self.keep_content:
            return
        row = OutboxMessage.objects.filter(message_id=message_id).first()
        if row is not None:
            envelope = Envelope.from_dict(json.loads(row.envelope)).without_content()
            OutboxMessage.objects.filter(pk=row.pk).update(envelope=_json(envelope))

    # what --reencrypt rewrites (outbox.sealing.Rewritable) ---------------------------------

    def envelope_refs(self) -> builtins.list[Any]:
        from ..models import OutboxMessage

        return list(OutboxMessage.objects.order_by("pk").values_list("pk", flat=True))

    def read_envelope(self, ref: Any) -> tuple[str, str] | None:
        from ..models import OutboxMessage

        row = OutboxMessage.objects.filter(pk=ref).values_list("message_id", "envelope").first()
        return (str(row[0]), str(row[1])) if row is not None else None

    def swap_envelope(self, ref: Any, old: str, new: str) -> bool:
        from ..models import OutboxMessage

        updated: int = OutboxMessage.objects.filter(pk=ref, envelope=old).update(envelope=new)
        return updated == 1

    @migrated
    def get(self, message_id: str) -> StoredMessage | None:
        from ..models import OutboxMessage

        row = OutboxMessage.objects.filter(message_id=message_id).first()
        return _stored(row, self.keys) if row is not None else None

    @migrated
    def list(self, status: str | None = None) -> list[StoredMessage]:
        from ..models import OutboxMessage

        rows = OutboxMessage.objects.all()
        if status is not None:
            rows = rows.filter(status=status)
        return [_stored(row, self.keys) for row in rows]

    @migrated
    def requeue(
        self,
        message_id: str,
        *,
        force: bool = False,
        envelope: Envelope | None = None,
        by: str | None = None,
    ) -> bool:
        """A failed message (an unknown one too with ``force``) back to queued, to be enqueued
        again (a manual resend); ``envelope`` replaces the stored one (a new enqueued_at, so
        QUEUE_MAX_AGE counts from the resend). False when it is in no such state."""
        from ..models import OutboxMessage

        statuses = ["failed", "unknown"] if force else ["failed"]
        changes: dict[str, Any] = {
            "status": "queued",
            "next_try_at": None,
            "updated_at": timezone.now(),
            "history": _append(entry("resent", by=by)),
        }
        if envelope is not None:
            changes["envelope"] = _json(envelope, self.keys)
        rows = OutboxMessage.objects.filter(message_id=message_id, status__in=statuses)
        updated: int = rows.update(**changes)
        return updated == 1

    @migrated
    def orphans(self, stale_after: float) -> builtins.list[StoredMessage]:
        """Queued messages due more than ``stale_after`` seconds ago and untouched since: their
        task was lost (a worker killed after it took the task and before it claimed the
        message; django-tasks-db never runs a task twice). Touched, so each is found once."""
        from ..models import OutboxMessage

        now = timezone.now()
        cutoff = now - timedelta(seconds=stale_after)
        rows = list(
            OutboxMessage.objects.filter(status="queued", updated_at__lt=cutoff).exclude(
                next_try_at__gt=cutoff
            )
        )
        touched = OutboxMessage.objects.filter(
            pk__in=[row.pk for row in rows], status="queued", updated_at__lt=cutoff
        ).update(updated_at=now)
        return [_stored(row, self.keys) for row in rows] if touched else []

    @migrated
    def stale(self, stale_after: float) -> builtins.list[str]:
        """Ids of the messages claimed (``sending``) more than ``stale_after`` seconds ago."""
        from ..models import OutboxMessage

        cutoff = timezone.now() - timedelta(seconds=stale_after)
        rows = OutboxMessage.objects.filter(status="sending", updated_at__lt=cutoff)
        return list(rows.values_list("message_id", flat=True))

    @migrated
    def reap(self, stale_after: float) -> int:
        """Mark messages claimed longer than ``stale_after`` seconds ago as unknown.

        A worker killed while sending (SIGKILL, OOM, a lost host) leaves its message
        ``sending`` and its task row running forever (django-tasks-db has no lease): the
        request may have reached Graph, so the message is unknown, never sent again.
        """
        from ..models import OutboxMessage

        cutoff = timezone.now() - timedelta(seconds=stale_after)
        error = (
            "The worker that claimed this message stopped before it finished (killed, or "
            "lost): it may or may not have been sent, so it is not sent again"
        )
        reaped: int = OutboxMessage.objects.filter(status="sending", updated_at__lt=cutoff).update(
            status="unknown",
            last_error=error,
            updated_at=timezone.now(),
            history=_append(entry("unknown", error=error)),
        )
        return reaped


def _stored(row: Any, keys: sealing.Keys = ()) -> StoredMessage:
    return StoredMessage(
        message_id=row.message_id,
        envelope=sealing.load(row.envelope, keys),
        status=row.status,
        attempts=row.attempts,
        next_try_at=row.next_try_at,
        last_error=row.last_error or None,
        request_id=row.request_id or None,
        created_at=row.created_at,
        updated_at=row.updated_at,
        history=history(row.history),
        mailbox=row.mailbox or None,
    )


def _json(envelope: Envelope, keys: sealing.Keys = ()) -> str:
    return sealing.dump(envelope, keys)


class Columns(TypedDict):
    """What the admin lists, filters and searches, copied from the envelope when queued; both
    stores keep them beside the envelope, so a listing reads no envelope."""

    subject: str
    from_address: str
    mailbox: str
    recipient_count: int
    first_recipient: str
    recipients: str  # one address a line
    route: str  # mime, json or draft


def columns(envelope: Envelope) -> Columns:
    """The envelope's :class:`Columns`."""
    subject, first = envelope.described()
    addresses = envelope.recipient_addresses or ([first] if first else [])
    if envelope.draft is not None:
        route = "draft"
    elif envelope.json_body is not None:
        route = "json"
    else:
        route = "mime"
    return {
        "subject": subject[:998],
        "from_address": envelope.from_address[:320],
        "mailbox": (envelope.mailbox_override or envelope.from_address)[:320],
        "recipient_count": envelope.recipients,
        "first_recipient": first[:320],
        "recipients": "\n".join(addresses),
        "route": route,
    }


def entry(outcome: str, **fields: Any) -> str:
    """One line of a message's history: when, what, and the rest (None left out)."""
    data: dict[str, Any] = {"at": timezone.now().isoformat(), "outcome": outcome}
    for name, value in fields.items():
        if value is not None and value != "":
            data[name] = value.isoformat() if isinstance(value, datetime) else str(value)[:2000]
    return json.dumps(data, separators=(",", ":")) + "\n"


def history(text: str | None) -> tuple[dict[str, Any], ...]:
    """The history lines as dicts (a damaged line is skipped, never fatal)."""
    found = []
    for line in (text or "").splitlines():
        try:
            found.append(json.loads(line))
        except ValueError:
            continue
    return tuple(item for item in found if isinstance(item, dict))


def _append(line: str) -> Concat:
    """``history`` plus one line, in the UPDATE itself: no read, so no lost update."""
    return Concat(F("history"), Value(line), output_field=TextField())
