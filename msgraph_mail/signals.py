"""Signals for a project's own delivery log, sent by both backends in whatever process sends.

Each is a plain :class:`django.dispatch.Signal`, sent with ``sender`` the backend class and
the keyword arguments ``message`` (the ``EmailMessage``, or None in a queue worker, which
only has the MIME), ``message_id`` (the Message-ID header), ``mailbox`` (the address it went
through, when known), ``status`` (the :class:`~msgraph_mail.backend.MessageStatus`) and
``request_id`` (Graph's, to quote to Microsoft support)::

    from django.dispatch import receiver

    from msgraph_mail.signals import message_failed


    @receiver(message_failed)
    def record_failure(sender, message_id, mailbox, status, request_id, **kwargs): ...

- ``message_queued``: ``QueuedEmailBackend`` put the message in its outbox;
- ``message_sent``: Graph accepted it (202);
- ``message_failed``: it was not sent (``status.error`` says why);
- ``message_unknown``: the request left and no answer came: it may have been sent.

Receivers run after the outcome and cannot change it: an exception in one is logged and the
others still run (``send_robust``), so a broken delivery log never fails or repeats a send.

After the 202, delivery tracking (``DELIVERY_TRACKING``) sends one more signal from the
tracker's process, ``delivery_event``, with ``sender`` the tracker class and ``event`` (a
:class:`~msgraph_mail.tracking.events.DeliveryEvent`: ``event_type`` delivered, bounced,
deferred, quarantined, filtered_as_spam or pending; recipient, status code, reason,
timestamp, mailbox, Message-ID) and ``outbox_message`` (the outbox entry of a queued message,
else None). One signal with a normalised ``event_type``, as django-anymail's ``tracking``:
a project keeps one receiver and one table whatever happened, and a new kind of event
(Exchange's ``recalled``) needs no new signal. Each event is sent once.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from django.dispatch import Signal

from . import telemetry

logger = logging.getLogger("msgraph_mail")

message_queued = Signal()
message_sent = Signal()
message_failed = Signal()
message_unknown = Signal()
delivery_event = Signal()

#: The signal for each outcome of ``MessageStatus.status``.
BY_STATUS = {
    "queued": message_queued,
    "sent": message_sent,
    "failed": message_failed,
    "unknown": message_unknown,
}


_announcing = threading.local()


def announce(sender: type, message: Any, status: Any) -> None:
    """Send the signal of ``status.status``; log (never raise) what a receiver raised.

    Not while a receiver of this thread runs: Django logs a receiver's exception to
    ``django.dispatch``, whose default handler mails ADMINS when DEBUG is off; that mail's
    own signal would meet the same broken receiver, and so on without end.
    """
    telemetry.count_message(status.status, getattr(status, "route", None))
    signal = BY_STATUS.get(status.status)
    if signal is None or getattr(_announcing, "active", False):
        return
    if not signal.has_listeners(sender):
        return
    _announcing.active = True
    try:
        results = signal.send_robust(
            sender,
            message=message,
            message_id=status.message_id,
            mailbox=status.mailbox,
            status=status,
            request_id=status.request_id,
        )
    finally:
        _announcing.active = False
    for receiver, result in results:
        if isinstance(result, Exception):
            logger.error(
                "A receiver of msgraph_mail's %s signal raised %s: %s",
                status.status,
                type(result).__name__,
                result,
                extra=telemetry.log_extra(
                    request_id=status.request_id,
                    status=status.status,
                    route=getattr(status, "route", None),
                ),
            )
            logger.debug("Receiver: %r", receiver, extra=telemetry.log_extra())


def announce_delivery(sender: type, event: Any, outbox_message: Any = None) -> None:
    """Send ``delivery_event``; log (never raise) what a receiver raised."""
    telemetry.count_delivery_event(str(getattr(event, "event_type", "unknown")))
    if not delivery_event.has_listeners(sender):
        return
    results = delivery_event.send_robust(sender, event=event, outbox_message=outbox_message)
    for receiver, result in results:
        if isinstance(result, Exception):
            logger.error(
                "A receiver of msgraph_mail's delivery_event signal raised %s: %s",
                type(result).__name__,
                result,
                extra=telemetry.log_extra(status=str(getattr(event, "event_type", ""))),
            )
            logger.debug("Receiver: %r", receiver, extra=telemetry.log_extra())
