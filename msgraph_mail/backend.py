"""The Django email backend: ``EMAIL_BACKEND = "msgraph_mail.backend.EmailBackend"``.

Data flows one way: settings -> route -> resolver -> client -> status. Each message is
built for its route (:mod:`msgraph_mail.routes`: MIME with Bcc kept and our headers removed;
JSON when it must not be saved to Sent Items; a draft when too large), given a mailbox by
the mode's :class:`~msgraph_mail.resolvers.SenderResolver`, sent through that mailbox, and
stamped with a :class:`MessageStatus` as ``message.msgraph_status``.
"""

from __future__ import annotations

import contextvars
import dataclasses
import logging
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.core.mail import EmailMessage
from django.core.mail.backends.base import BaseEmailBackend
from django.db import transaction

from . import routes, signals, telemetry
from .conf import OPTION_NAMES, MSGraphMailSettings, load_settings
from .exceptions import (
    BatchSendError,
    DeliveryUnknown,
    InvalidMessage,
    MailboxBudgetExhausted,
    MSGraphMailError,
)
from .graph import GraphClient
from .mime import MAILBOX_HEADER, header, sender_address
from .outbox import build_envelope
from .resolvers import SenderResolver, refuse_early, resolver_for
from .tracking import outgoing
from .values import MessageStatus

logger = logging.getLogger("msgraph_mail")


class EmailBackend(BaseEmailBackend):
    """Send Django mail through Microsoft Graph's sendMail.

    Keyword arguments (``get_connection(**kwargs)``, Django 6.1 ``MAILERS`` OPTIONS) are the
    lower-case settings keys and override ``MSGRAPH_MAIL``; see :mod:`msgraph_mail.conf`.
    """

    def __init__(self, fail_silently: bool = False, **kwargs: Any) -> None:
        options = {name: kwargs.pop(name) for name in list(kwargs) if name in OPTION_NAMES}
        super().__init__(**kwargs)
        self.fail_silently = fail_silently
        self.settings: MSGraphMailSettings = load_settings(options)
        self.client: GraphClient | None = None
        self.resolver: SenderResolver | None = None
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        alias = getattr(self, "alias", None)
        return (
            f"<{type(self).__name__} mode={self.settings.mode} tenant={self.settings.tenant_id}"
            f"{f' alias={alias}' if alias else ''}>"
        )

    def open(self) -> bool:
        """Open the HTTP session; True when this call opened it (as Django's SMTP backend)."""
        if self.client is not None:
            return False
        self.client = GraphClient(self.settings)
        self.resolver = resolver_for(self.settings, self.client)
        return True

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        self.client = None
        self.resolver = None

    def send_messages(self, email_messages: Iterable[EmailMessage]) -> int:
        """Send every message; return how many Graph accepted.

        Every message is attempted even when others fail. Afterwards, unless
        ``fail_silently``, the failure is raised: the message's own exception when one
        failed, a :class:`~msgraph_mail.exceptions.BatchSendError` listing them when several.
        """
        email_messages = list(email_messages)  # any iterable, as Django's contract says
        if not email_messages:
            return 0
        failures: list[tuple[EmailMessage, MSGraphMailError]] = []
        sent = 0
        # The tracking store is read and written here, in the caller's thread: the sending
        # threads never open a database connection of their own.
        suppressed = outgoing.suppressed_in(email_messages, self.settings)
        with self._lock, telemetry.batch(len(email_messages), type(self).__name__):
            opened = self.open()
            try:
                statuses = self._send_all(email_messages, suppressed)
            finally:
                if opened:
                    self.close()
        outgoing.record_all(self.settings, email_messages, statuses)
        for message, status in zip(email_messages, statuses, strict=True):
            if status.status == "sent":
                sent += 1
            elif status.error is not None and message.recipients():
                failures.append((message, status.error))
        if failures and not self.fail_silently:
            if len(failures) == 1:
                raise failures[0][1]
            raise BatchSendError(failures, sent, _suppressed(email_messages, statuses))
        return sent

    def _send_all(
        self, messages: list[EmailMessage], suppressed: frozenset[str] = frozenset()
    ) -> list[MessageStatus]:
        """Send concurrently, up to MAX_CONCURRENCY threads; one message needs no thread.

        How many requests reach one mailbox at once is bounded separately, by Graph's own
        limit, for the process or (REDIS_URL) for every process (:mod:`msgraph_mail.limits`).
        """
        workers = min(self.settings.max_concurrency, len(messages))
        if not self.settings.redis_url:
            # In one process a freed slot passes to a waiting thread at once; threads beyond
            # the slots would only wait. With Redis a slot may free in another process, and a
            # thread waiting with its message built takes it sooner than one building it.
            slots = self.settings.mailbox_limits.concurrent_requests * _senders(messages)
            workers = min(workers, slots)
        if workers <= 1:
            return [self._send(message, suppressed) for message in messages]
        if telemetry.active():  # each thread's spans are children of the batch span
            contexts = [contextvars.copy_context() for _ in messages]
            with ThreadPoolExecutor(workers, thread_name_prefix="msgraph_mail") as pool:
                return list(
                    pool.map(
                        lambda context, message: context.run(self._send, message, suppressed),
                        contexts,
                        messages,
                    )
                )
        with ThreadPoolExecutor(workers, thread_name_prefix="msgraph_mail") as pool:
            return list(pool.map(lambda message: self._send(message, suppressed), messages))

    def _send(self, message: EmailMessage, suppressed: frozenset[str]) -> MessageStatus:
        """One message's pipeline in its ``send`` span, then its outcome announced
        (:mod:`msgraph_mail.signals`)."""
        with telemetry.operation("send", self.settings) as op:
            status = self._deliver(message, suppressed, op)
            op.outcome = status.status if message.recipients() else "skipped"
            op.route = status.route
        if message.recipients():  # skipped without a request, as Django's SMTP backend does
            signals.announce(type(self), message, status)
        return status

    def _deliver(
        self,
        message: EmailMessage,
        suppressed: frozenset[str],
        op: telemetry.Operation = telemetry.NO_OPERATION,
    ) -> MessageStatus:
        """The per-message pipeline: payload -> mailbox -> sendMail -> status."""
        assert self.client is not None
        assert self.resolver is not None
        status = MessageStatus(status="failed")
        message.msgraph_status = status
        mailbox_id: str | None = None
        try:
            if not message.recipients():
                # Django's SMTP backend skips these silently; so do we (not counted).
                raise InvalidMessage("The message has no recipients", email_message=message)
            message, status.suppressed = outgoing.prepare(message, self.settings, suppressed)
            payload = routes.build(message, self.settings)
            status.route, status.message_id = payload.route, payload.message_id
            op.set("messaging.message.id", status.message_id)
            mailbox = self.resolver.resolve(message)
            status.mailbox = mailbox.address
            mailbox_id = mailbox.id
            telemetry.describe_mailbox(op, self.settings, mailbox.id, mailbox.address)
            resolver = self.resolver
            response = routes.send(
                self.client,
                mailbox.id,
                payload,
                lambda error: resolver.explain(error, mailbox, sender_address(message)),
                recipients=len(message.recipients()),
            )
        except MSGraphMailError as exc:
            if isinstance(exc, MailboxBudgetExhausted) and status.mailbox:
                exc = exc.naming(status.mailbox)  # the address, not the id the counts use
            if exc.email_message is None:
                exc.email_message = message
            status.status = "unknown" if isinstance(exc, DeliveryUnknown) else "failed"
            status.error = exc
            status.request_id = exc.request_id
            status.client_request_id = exc.client_request_id
            telemetry.failed(op.span, exc)
            if message.recipients():
                logger.error(
                    "Message %s not sent: %s",
                    status.message_id or "(unbuilt)",
                    exc,
                    extra=self._log_extra(status, mailbox_id),
                )
            return status
        status.status = "sent"
        status.request_id = response.request_id
        status.client_request_id = response.client_request_id
        op.set("msgraph_mail.request_id", status.request_id)
        logger.info(
            "Sent message %s through mailbox %s by %s (request-id %s)",
            status.message_id or "(Message-ID set by Exchange)",
            status.mailbox,
            status.route,
            status.request_id,
            extra=self._log_extra(status, mailbox_id),
        )
        return status

    def _log_extra(self, status: MessageStatus, mailbox_id: str | None) -> dict[str, Any]:
        return telemetry.log_extra(
            self.settings,
            request_id=status.request_id,
            mailbox=mailbox_id,
            address=status.mailbox,
            status=status.status,
            route=status.route,
        )


def _suppressed(
    messages: list[EmailMessage], statuses: list[MessageStatus]
) -> list[tuple[EmailMessage, list[str]]]:
    """The messages sent without some suppressed recipients, for BatchSendError."""
    return [(m, s.suppressed) for m, s in zip(messages, statuses, strict=True) if s.suppressed]


def _senders(messages: list[EmailMessage]) -> int:
    """How many mailboxes the batch may go through, at most: its distinct From addresses
    and mailbox overrides (a message whose From is invalid fails without a request)."""
    found = set()
    for message in messages:
        found.add(
            str(
                header(message, MAILBOX_HEADER) or header(message, "From") or message.from_email
            ).lower()
        )
    return len(found)


class QueuedEmailBackend(EmailBackend):
    """Queue mail for a worker: ``EMAIL_BACKEND = "msgraph_mail.backend.QueuedEmailBackend"``.

    ``send_messages`` validates and builds each message at once (a bad message raises here,
    as with :class:`EmailBackend`), records it in the outbox and enqueues it with the engine
    chosen by ``QUEUE``; it returns how many were queued, each with a ``"queued"``
    :class:`MessageStatus`. A worker sends them (:mod:`msgraph_mail.outbox`). Messages over
    Graph's 4 MB request limit are queued with their draft plan when ``LARGE_MESSAGES`` is on
    (the worker sends them through a draft, as :class:`EmailBackend` does), and refused with
    :class:`~msgraph_mail.exceptions.MessageTooLarge` when it is off.
    """

    def open(self) -> bool:
        return False  # no HTTP session in the caller: the worker talks to Graph

    def close(self) -> None:
        pass

    def send_messages(self, email_messages: Iterable[EmailMessage]) -> int:
        from .outbox.engines import engine_for, store_for  # the store's models: apps ready

        email_messages = list(email_messages)
        if not email_messages:
            return 0
        engine, store = engine_for(self.settings), store_for(self.settings)
        suppressed = outgoing.suppressed_in(email_messages, self.settings)
        alias = getattr(self, "alias", None)
        telemetry.watch_outbox(store, self.settings.queue)
        failures: list[tuple[EmailMessage, MSGraphMailError]] = []
        queued = 0
        with telemetry.batch(len(email_messages), type(self).__name__):
            for message in email_messages:
                with telemetry.operation("send outbox", self.settings, destination="outbox") as op:
                    status = self._queue(message, suppressed, alias, engine, store, op)
                    op.outcome, op.route = status.status, status.route
                if status.status == "queued":
                    queued += 1
                    signals.announce(type(self), message, status)
                elif status.error is not None and message.recipients():
                    # none: skipped and not counted, as EmailBackend
                    failures.append((message, status.error))
        if failures and not self.fail_silently:
            if len(failures) == 1:
                raise failures[0][1]
            raise BatchSendError(failures, queued)
        return queued

    def _queue(
        self,
        message: EmailMessage,
        suppressed: frozenset[str],
        alias: str | None,
        engine: Any,
        store: Any,
        op: telemetry.Operation,
    ) -> MessageStatus:
        """Build, record and enqueue one message; its envelope carries the trace context of
        its ``send outbox`` span, which the worker's ``process outbox`` span continues."""
        status = MessageStatus(status="failed")
        message.msgraph_status = status
        try:
            prepared, status.suppressed = outgoing.prepare(message, self.settings, suppressed)
            envelope = build_envelope(prepared, self.settings, alias)
            # What the mode refuses without a request is refused here, as EmailBackend does.
            refuse_early(self.settings, envelope.from_address, envelope.mailbox_override)
        except MSGraphMailError as exc:
            if exc.email_message is None:
                exc.email_message = message
            status.error = exc
            telemetry.failed(op.span, exc)
            if message.recipients():
                logger.error(
                    "Message not queued: %s",
                    exc,
                    extra=telemetry.log_extra(self.settings, status="failed"),
                )
            return status
        status.message_id, status.route = envelope.message_id, envelope.route
        op.set("messaging.message.id", status.message_id)
        trace_context = telemetry.carrier()
        if trace_context is not None:
            envelope = dataclasses.replace(envelope, trace_context=trace_context)
        with transaction.atomic():  # no outbox row without its task (tasks engine)
            store.add(envelope)
            engine.enqueue(envelope)
        status.status = "queued"
        return status
