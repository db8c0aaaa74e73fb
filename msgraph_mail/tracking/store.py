"""Where delivery tracking keeps its state: the database, or Redis when ``REDIS_URL`` is set.

What is kept: each tracked message (to correlate reports with it), each reported event (its
unique key is what makes an event reported once, however often a source shows it), the
suppression list, the tracker's cursors and its lease. :class:`TrackingStore` is the
interface; :class:`DatabaseStore` keeps it in Django's database, and
:class:`~msgraph_mail.tracking.redis_store.RedisStore` in Redis, where every process and host
of a ``QUEUE = "celery"`` deployment already looks.

Exactly once: :meth:`TrackingStore.report` records an event and runs the caller's
``announce`` (the signal) together. In the database both happen in one transaction, so a
receiver writing to the same database commits with the record or not at all: a tracker
killed in between reports the event again after its restart, once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any, Protocol

from django.db import IntegrityError, transaction
from django.utils import timezone

from ..conf import MSGraphMailSettings
from .events import DeliveryEvent
from .records import Notice, Tracked, Watch, event_key

__all__ = ["DatabaseStore", "Notice", "Tracked", "TrackingStore", "Watch", "store_for"]


class TrackingStore(Protocol):
    def track(self, tracked: Tracked) -> None:
        """Record a message as sent (again: a resend keeps the first record)."""

    def find(
        self, *, tracking_id: str | None = None, message_id: str | None = None
    ) -> Tracked | None:
        """The tracked message with this tracking id, else with this Message-ID."""

    def near(self, recipient: str, when: datetime, slack: float) -> Tracked | None:
        """The latest message to ``recipient`` sent within ``slack`` seconds before ``when``
        (the last resort of correlation: a report without our id or Message-ID)."""

    def unsettled(self, since: datetime) -> list[Tracked]:
        """Messages sent since ``since`` with a recipient still lacking a final event."""

    def mailboxes(self, since: datetime) -> list[str]:
        """The sending mailboxes of the messages sent since ``since``."""

    def report(self, tracked: Tracked, event: DeliveryEvent, announce: Callable[[], None]) -> bool:
        """Record ``event`` of ``tracked`` once and call ``announce`` with it; False (nothing
        called) when it was reported before, or a final event already ended that recipient."""

    def events(self, tracking_id: str) -> list[dict[str, Any]]:
        """The events reported for one message, oldest first."""

    def cursor(self, name: str) -> str | None: ...

    def set_cursor(self, name: str, value: str) -> None: ...

    def acquire(self, name: str, holder: str, ttl: float) -> bool:
        """Take or renew the lease ``name`` for ``ttl`` seconds; False while another holds it."""

    def release(self, name: str, holder: str) -> None: ...

    def suppress(
        self, address: str, *, status_code: str = "", reason: str = "", message_id: str = ""
    ) -> bool:
        """Add an address to the suppression list; False when it is there already."""

    def unsuppress(self, address: str) -> bool: ...

    def suppressed(self, addresses: Iterable[str]) -> set[str]:
        """Which of ``addresses`` (lower-cased) are on the suppression list."""

    def suppressions(self) -> list[dict[str, Any]]: ...

    def save_watch(self, watch: Watch) -> None:
        """Record a subscription, or its new expiry."""

    def watches(self) -> list[Watch]: ...

    def watch(self, subscription_id: str) -> Watch | None: ...

    def drop_watch(self, subscription_id: str) -> None: ...

    def notify(self, notices: list[tuple[str, str, str]]) -> None:
        """Record (subscription id, kind, resource) notifications, all or none."""

    def notices(self, limit: int = 1000) -> list[Notice]:
        """Notifications not handled yet, oldest first."""

    def handled(self, notice_ids: list[str]) -> None:
        """Forget notifications the tracker has acted on."""


def store_for(settings: MSGraphMailSettings) -> TrackingStore:
    """Redis when REDIS_URL is set (every process and host shares it), else the database."""
    if settings.redis_url:
        from .redis_store import RedisStore

        return RedisStore.for_settings(settings)
    return DatabaseStore()


class DatabaseStore:
    """The tracking state in Django's default database (:mod:`msgraph_mail.models`)."""

    def track(self, tracked: Tracked) -> None:
        from ..models import TrackedMessage

        TrackedMessage.objects.get_or_create(
            tracking_id=tracked.tracking_id,
            defaults={
                "message_id": tracked.message_id or "",
                "sender": tracked.sender.lower(),
                "mailbox": (tracked.mailbox or "").lower(),
                "recipients": json.dumps([r.lower() for r in tracked.recipients]),
                "outbox_id": tracked.outbox_id or "",
                "sent_at": tracked.sent_at,
            },
        )

    def find(
        self, *, tracking_id: str | None = None, message_id: str | None = None
    ) -> Tracked | None:
        from ..models import TrackedMessage

        row = None
        if tracking_id:
            row = TrackedMessage.objects.filter(tracking_id=tracking_id).first()
        if row is None and message_id:
            row = TrackedMessage.objects.filter(message_id=message_id).order_by("-id").first()
        return _tracked(row) if row is not None else None

    def near(self, recipient: str, when: datetime, slack: float) -> Tracked | None:
        from ..models import TrackedMessage

        rows = TrackedMessage.objects.filter(
            sent_at__lte=when, sent_at__gte=when - timedelta(seconds=slack)
        ).order_by("-sent_at")
        wanted = recipient.lower()
        for row in rows[:1000]:
            if wanted in json.loads(row.recipients):
                return _tracked(row)
        return None

    def unsettled(self, since: datetime) -> list[Tracked]:
        from ..models import TrackedMessage

        rows = TrackedMessage.objects.filter(settled=False, sent_at__gte=since)
        return [_tracked(row) for row in rows.order_by("sent_at")]

    def mailboxes(self, since: datetime) -> list[str]:
        from ..models import TrackedMessage

        rows = TrackedMessage.objects.filter(sent_at__gte=since).exclude(mailbox="")
        return sorted(set(rows.values_list("mailbox", flat=True)))

    def report(self, tracked: Tracked, event: DeliveryEvent, announce: Callable[[], None]) -> bool:
        from ..models import DeliveryRecord, TrackedMessage

        recipient = event.recipient.lower()
        with transaction.atomic():
            ended = DeliveryRecord.objects.filter(
                tracking_id=tracked.tracking_id, recipient=recipient, final=True
            ).exists()
            if ended:
                return False
            try:
                with transaction.atomic():
                    DeliveryRecord.objects.create(
                        key=event_key(tracked.tracking_id, event),
                        tracking_id=tracked.tracking_id,
                        recipient=recipient,
                        event_type=event.event_type,
                        final=event.final,
                        event=json.dumps(event.as_dict()),
                    )
            except IntegrityError:
                return False  # reported before, by this tracker or another
            if event.final and _all_final(tracked, recipient):
                TrackedMessage.objects.filter(tracking_id=tracked.tracking_id).update(settled=True)
            announce()
        return True

    def events(self, tracking_id: str) -> list[dict[str, Any]]:
        from ..models import DeliveryRecord

        rows = DeliveryRecord.objects.filter(tracking_id=tracking_id).order_by("created_at", "id")
        return [json.loads(row.event) for row in rows]

    def cursor(self, name: str) -> str | None:
        from ..models import TrackerState

        row = TrackerState.objects.filter(name=f"cursor:{name}").first()
        return row.value if row is not None else None

    def set_cursor(self, name: str, value: str) -> None:
        from ..models import TrackerState

        TrackerState.objects.update_or_create(name=f"cursor:{name}", defaults={"value": value})

    def acquire(self, name: str, holder: str, ttl: float) -> bool:
        from ..models import TrackerState

        now = timezone.now()
        expires = now + timedelta(seconds=ttl)
        key = f"lease:{name}"
        TrackerState.objects.get_or_create(name=key)
        taken: int = (
            TrackerState.objects.filter(name=key)
            .filter(_free(holder, now))
            .update(holder=holder, expires_at=expires)
        )
        return taken == 1

    def release(self, name: str, holder: str) -> None:
        from ..models import TrackerState

        TrackerState.objects.filter(name=f"lease:{name}", holder=holder).update(
            holder="", expires_at=None
        )

    def suppress(
        self, address: str, *, status_code: str = "", reason: str = "", message_id: str = ""
    ) -> bool:
        from ..models import Suppression

        _, created = Suppression.objects.get_or_create(
            address=address.strip().lower(),
            defaults={
                "status_code": status_code,
                "reason": reason[:2000],
                "message_id": message_id,
            },
        )
        return bool(created)

    def unsuppress(self, address: str) -> bool:
        from ..models import Suppression

        deleted, _ = Suppression.objects.filter(address=address.strip().lower()).delete()
        return bool(deleted)

    def suppressed(self, addresses: Iterable[str]) -> set[str]:
        from ..models import Suppression

        wanted = {address.strip().lower() for address in addresses}
        if not wanted:
            return set()
        found = Suppression.objects.filter(address__in=wanted).values_list("address", flat=True)
        return set(found)

    def suppressions(self) -> list[dict[str, Any]]:
        from ..models import Suppression

        return [
            {
                "address": row.address,
                "status_code": row.status_code,
                "reason": row.reason,
                "message_id": row.message_id,
                "since": row.created_at.isoformat(),
            }
            for row in Suppression.objects.order_by("address")
        ]

    def save_watch(self, watch: Watch) -> None:
        from ..models import Subscription

        Subscription.objects.update_or_create(
            subscription_id=watch.subscription_id,
            defaults={
                "mailbox": watch.mailbox.lower(),
                "client_state": watch.client_state,
                "expires_at": watch.expires_at,
            },
        )

    def watches(self) -> list[Watch]:
        from ..models import Subscription

        return [_watch(row) for row in Subscription.objects.order_by("mailbox", "expires_at")]

    def watch(self, subscription_id: str) -> Watch | None:
        from ..models import Subscription

        row = Subscription.objects.filter(subscription_id=subscription_id).first()
        return _watch(row) if row is not None else None

    def drop_watch(self, subscription_id: str) -> None:
        from ..models import Subscription

        Subscription.objects.filter(subscription_id=subscription_id).delete()

    def notify(self, notices: list[tuple[str, str, str]]) -> None:
        from ..models import Notification

        Notification.objects.bulk_create(
            [Notification(subscription_id=s, kind=k, resource=r) for s, k, r in notices]
        )

    def notices(self, limit: int = 1000) -> list[Notice]:
        from ..models import Notification

        rows = Notification.objects.order_by("id")[:limit]
        return [Notice(str(r.pk), r.subscription_id, r.kind, r.resource) for r in rows]

    def handled(self, notice_ids: list[str]) -> None:
        from ..models import Notification

        Notification.objects.filter(pk__in=[int(i) for i in notice_ids]).delete()


def _watch(row: Any) -> Watch:
    return Watch(row.subscription_id, row.mailbox, row.client_state, row.expires_at)


def _free(holder: str, now: datetime) -> Any:
    from django.db.models import Q

    return Q(holder="") | Q(holder=holder) | Q(expires_at__lt=now) | Q(expires_at=None)


def _all_final(tracked: Tracked, just_ended: str) -> bool:
    from ..models import DeliveryRecord

    ended = set(
        DeliveryRecord.objects.filter(tracking_id=tracked.tracking_id, final=True).values_list(
            "recipient", flat=True
        )
    )
    return set(tracked.recipients) <= ended | {just_ended}


def _tracked(row: Any) -> Tracked:
    return Tracked(
        tracking_id=row.tracking_id,
        message_id=row.message_id or None,
        sender=row.sender,
        mailbox=row.mailbox or None,
        recipients=tuple(json.loads(row.recipients)),
        sent_at=row.sent_at,
        outbox_id=row.outbox_id or None,
    )
