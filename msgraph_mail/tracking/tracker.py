"""The tracker: one pass reads the sources, correlates, records each event once, and acts.

Run by ``manage.py msgraph_track`` (a loop, or ``--once``) or the periodic Celery task
``msgraph_mail.track``. A pass holds the store's lease ``tracker``, so of two trackers one
works and the other waits; each event is also recorded under a unique key
(:meth:`~.store.TrackingStore.report`), so even two passes at once report it once.

Per pass: NDRs first (``"bounces"``: they carry the status code and the diagnostic), then the
message trace (``"trace"``) for the messages not settled yet. Each event is matched to the
message we sent (our tracking id, the Message-ID, else the latest message to that recipient),
and, the first time it is seen: the ``delivery_event`` signal; a hard bounce puts the address
on the suppression list (``SUPPRESS_BOUNCED``), a sender problem is logged as an error with
its fix; an ``unknown`` outbox message that the trace shows Exchange received becomes
``sent``, without a resend.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from .. import signals, telemetry
from ..conf import MSGraphMailSettings
from ..exceptions import MSGraphMailError
from ..graph import GraphClient
from . import bounces, ndr, subscriptions, trace
from .events import DeliveryEvent
from .store import Tracked, TrackingStore, store_for

__all__ = ["Pass", "Tracker"]

logger = logging.getLogger("msgraph_mail")

LEASE = "tracker"
#: How far back a mailbox still counts as sending, and a message as worth tracing.
LOOKBACK = timedelta(days=3)
#: A report without our id or Message-ID matches the latest message to its recipient sent
#: this long before it.
NEAR = 3 * 24 * 3600.0
#: With "bounces" on, a failed trace row waits this long for its NDR (which has the code).
NDR_GRACE = timedelta(minutes=15)
#: A trace row still pending this long after it was received is reported as ``pending``
#: (once); a message that is pending on its way to delivered reports nothing but that.
PENDING_AFTER = timedelta(minutes=15)


@dataclass
class Pass:
    """What one pass did: events reported (by type), reports read, trace rows seen."""

    ran: bool = True
    reported: dict[str, int] = field(default_factory=dict)
    reports: int = 0
    rows: int = 0
    skipped: int = 0


class Tracker:
    """Delivery tracking for one mailer's settings."""

    def __init__(
        self, settings: MSGraphMailSettings, *, store: TrackingStore | None = None
    ) -> None:
        self.settings = settings
        self.store = store or store_for(settings)
        # The tracker waits for nothing: a 429 is remembered and the next pass comes later.
        self.client = GraphClient(settings.model_copy(update={"max_retry_wait": 2.0}))
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"
        self._lease_ttl = 300.0

    def _renew(self) -> bool:
        return self.store.acquire(LEASE, self.holder, self._lease_ttl)

    def close(self) -> None:
        self.client.close()
        self.store.release(LEASE, self.holder)

    def run_once(self, lease_ttl: float = 300.0) -> Pass:
        """One pass, if this tracker holds (or takes) the lease; ``ran`` False otherwise.

        The lease lasts ``lease_ttl`` seconds and is renewed as the pass goes (each mailbox,
        each trace page), so a tracker that dies frees it within that time.
        """
        self._lease_ttl = lease_ttl
        if not self._renew():
            return Pass(ran=False)
        done = Pass()
        with telemetry.span("msgraph_mail track") as span:
            for tracked, event in getattr(self.store, "unannounced", lambda _: [])(60.0):
                self._announce(tracked, event)  # a tracker killed between record and signal
            if "bounces" in self.settings.delivery_tracking:
                if self.settings.notification_url:
                    self._subscribe()
                    self._react(done)
                for mailbox in self._mailboxes():
                    self._bounces(mailbox, done)
            if "trace" in self.settings.delivery_tracking:
                self._trace(done)
            if span.is_recording():
                span.set_attributes(
                    {
                        "msgraph_mail.track.reports": done.reports,
                        "msgraph_mail.track.rows": done.rows,
                        "msgraph_mail.track.events": sum(done.reported.values()),
                    }
                )
        return done

    def react(self, lease_ttl: float = 300.0) -> Pass | None:
        """Act at once on what the webhook view recorded (NOTIFICATION_URL): read the NDRs
        of the mailboxes notified; None when there was nothing (one cheap store read)."""
        if not self.store.notices(limit=1):
            return None
        self._lease_ttl = lease_ttl
        if not self._renew():
            return None
        done = Pass()
        self._react(done)
        return done

    def _react(self, done: Pass) -> None:
        notices = self.store.notices()
        mailboxes: set[str] = set()
        for notice in notices:
            watch = self.store.watch(notice.subscription_id)
            if watch is None:
                continue
            mailboxes.add(watch.mailbox)  # created, missed, and after any lifecycle event
            try:
                if notice.kind == "reauthorizationRequired":
                    subscriptions.reauthorize(self.client, self.store, self.settings, watch)
                elif notice.kind == "subscriptionRemoved":
                    self.store.drop_watch(watch.subscription_id)
                    subscriptions.create(self.client, self.store, self.settings, watch.mailbox)
            except MSGraphMailError as exc:
                logger.error(
                    "The subscription on %s could not be restored after %s: %s (polling goes "
                    "on; the next pass tries again)",
                    watch.mailbox,
                    notice.kind,
                    exc,
                    extra=telemetry.log_extra(self.settings, mailbox=watch.mailbox),
                )
        for mailbox in sorted(mailboxes):
            self._bounces(mailbox, done)
        self.store.handled([notice.id for notice in notices])

    def _subscribe(self) -> None:
        """One live subscription per sending mailbox; a failure leaves polling to it."""
        try:
            for line in subscriptions.ensure(
                self.client, self.store, self.settings, self._mailboxes()
            ):
                logger.info(
                    "Change notifications: %s", line, extra=telemetry.log_extra(self.settings)
                )
        except MSGraphMailError as exc:
            logger.error(
                "Cannot subscribe to change notifications (%s); NDRs are found by polling "
                "until it works. Check that NOTIFICATION_URL reaches this site from the "
                "internet and that msgraph_mail.urls is included there.",
                exc,
                extra=telemetry.log_extra(self.settings),
            )

    # sources -------------------------------------------------------------------------------

    def mailboxes(self) -> list[str]:
        """The mailboxes whose Inbox is read: MAILBOX, or those that sent lately."""
        return self._mailboxes()

    def _mailboxes(self) -> list[str]:
        if self.settings.mode == "single_mailbox" and self.settings.mailbox:
            return [self.settings.mailbox]
        return self.store.mailboxes(datetime.now(timezone.utc) - LOOKBACK)

    def _bounces(self, mailbox: str, done: Pass) -> None:
        """The reports that arrived in ``mailbox`` since its last delta link."""
        since = datetime.now(timezone.utc) - LOOKBACK
        delta = bounces.arrivals(self.client, self.store, mailbox, since)
        for arrival in delta.arrivals():
            done.reports += 1
            try:
                report = ndr.parse(arrival.raw, mailbox=mailbox, received=arrival.received)
            except ndr.NotAReport:
                continue
            except ndr.MalformedReport as exc:
                done.skipped += 1
                logger.warning(
                    "Skipped a malformed delivery report in %s (message %s): %s",
                    mailbox,
                    arrival.graph_id,
                    exc,
                    extra=telemetry.log_extra(self.settings, mailbox=mailbox),
                )
                continue
            for event in report.events:
                self._handle(event, self._match(event, report.tracking_id), done)
        delta.commit()
        self._renew()

    def _trace(self, done: Pass) -> None:
        now = datetime.now(timezone.utc)
        unsettled = self.store.unsettled(now - LOOKBACK)
        if not unsettled:
            return  # nothing to ask about: no request at all
        budget = trace.TraceBudget(self.store)
        senders = {tracked.sender for tracked in unsettled}
        since = min(tracked.sent_at for tracked in unsettled) - timedelta(minutes=1)
        sender = next(iter(senders)) if len(senders) == 1 else None
        wait_for_ndr = "bounces" in self.settings.delivery_tracking
        for row in trace.rows(self.client, budget, since, now, sender):
            done.rows += 1
            if done.rows % 1000 == 0:
                self._renew()
            tracked = self._match_row(row)
            if tracked is None:
                continue
            self._resolve_unknown(tracked)
            if wait_for_ndr and row.status == "failed" and now - row.received < NDR_GRACE:
                continue  # its NDR will bring the status code
            if row.status == "pending" and now - row.received < PENDING_AFTER:
                continue
            event = trace.event_of(row)
            if event is not None:
                self._handle(event, tracked, done)

    # correlation ---------------------------------------------------------------------------

    def _match(self, event: DeliveryEvent, tracking_id: str | None) -> Tracked | None:
        found = self.store.find(tracking_id=tracking_id, message_id=event.message_id)
        return found or self.store.near(event.recipient, event.timestamp, NEAR)

    def _match_row(self, row: trace.Row) -> Tracked | None:
        found = self.store.find(message_id=row.message_id) if row.message_id else None
        if found is None:  # the tenant rewrote the Message-ID, or the JSON route: by time
            found = self.store.near(row.recipient, row.received + timedelta(minutes=5), 900.0)
            if found is not None and found.sender != row.sender:
                return None
        return found if found is not None and row.recipient in found.recipients else None

    # acting --------------------------------------------------------------------------------

    def _handle(self, event: DeliveryEvent, tracked: Tracked | None, done: Pass) -> None:
        if tracked is None:
            logger.info(
                "A %s report for %s matches no tracked message (sent before tracking, or by "
                "someone else through the mailbox): ignored",
                event.event_type,
                event.recipient,
                extra=telemetry.log_extra(self.settings, status=event.event_type),
            )
            return
        event = _completed(event, tracked)
        if not self.store.report(tracked, event, lambda: self._announce(tracked, event)):
            return
        done.reported[event.event_type] = done.reported.get(event.event_type, 0) + 1
        self._act(event)

    def _announce(self, tracked: Tracked, event: DeliveryEvent) -> None:
        signals.announce_delivery(type(self), event, self._outbox_message(tracked))

    def _act(self, event: DeliveryEvent) -> None:
        where = f"message {event.message_id or event.tracking_id} to {event.recipient}"
        if event.sender_problem:
            logger.error(
                "Bounce caused by the sender, not the address (%s, %s): %s Fix: %s",
                where,
                event.status_code,
                event.reason or "",
                event.fix,
                extra=telemetry.log_extra(self.settings, status=event.event_type),
            )
        elif event.event_type == "bounced":
            logger.warning(
                "Bounced: %s (%s) %s",
                where,
                event.status_code,
                event.reason or "",
                extra=telemetry.log_extra(self.settings, status=event.event_type),
            )
            expired = (event.status_code or "").startswith("4.")  # gave up on a passing cause
            if self.settings.suppress_bounced and not expired:
                self.store.suppress(
                    event.recipient,
                    status_code=event.status_code or "",
                    reason=event.reason or "",
                    message_id=event.message_id or "",
                )
        else:
            logger.info(
                "%s: %s",
                event.event_type.replace("_", " ").capitalize(),
                where,
                extra=telemetry.log_extra(self.settings, status=event.event_type),
            )

    def _outbox_message(self, tracked: Tracked) -> Any:
        if not tracked.outbox_id:
            return None
        from ..outbox.engines import store_for as outbox_store

        return outbox_store(self.settings).get(tracked.outbox_id)

    def _resolve_unknown(self, tracked: Tracked) -> None:
        """Exchange received it: an ``unknown`` outbox message was sent after all."""
        if not tracked.outbox_id:
            return
        from ..outbox.engines import store_for as outbox_store

        store = outbox_store(self.settings)
        found = store.get(tracked.outbox_id)
        mark = getattr(store, "resolved", None)
        if found is None or found.status != "unknown" or mark is None:
            return
        note = f"{found.last_error or ''} -- message trace: Exchange received it, so it was sent"
        if mark(tracked.outbox_id, note.strip(" -")):
            logger.info(
                "Queued message %s resolved by the message trace: sent",
                tracked.outbox_id,
                extra=telemetry.log_extra(self.settings, status="sent"),
            )
            from ..outbox.deliver import announce_resolved

            announce_resolved(found.envelope, found.request_id)


def _completed(event: DeliveryEvent, tracked: Tracked) -> DeliveryEvent:
    """The event with what the tracked message knows: its ids and sending mailbox."""
    from dataclasses import replace

    return replace(
        event,
        recipient=event.recipient.lower(),
        message_id=tracked.message_id or event.message_id,
        tracking_id=tracked.tracking_id,
        mailbox=tracked.mailbox or event.mailbox,
    )
