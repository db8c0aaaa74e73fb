"""The one function every worker calls: claim, send, and decide what became of a message.

:func:`deliver` sends an :class:`~msgraph_mail.outbox.envelope.Envelope` with everything the
synchronous backend does (the mailer's settings, the mode's resolver and its explanations,
the shared limits when ``REDIS_URL`` is set) and returns an :class:`Outcome`:

- ``sent``: Graph accepted it (202).
- ``retry``: refused for a passing reason, nothing was sent (429 or 503 after the client's
  own retries, Graph unreachable before the request left, a spent MAILBOX_LIMITS budget,
  REDIS_URL unreachable): try again after ``delay`` seconds, taken from ``Retry-After`` or
  the budget's reset, with backoff and jitter; once ``QUEUE_MAX_AGE`` has passed since the
  message was queued, it is ``failed`` instead.
- ``failed``: refused for a lasting reason (unknown sender, denied, invalid, too large, a
  credential Entra refuses, any other 4xx): not retried.
- ``unknown``: the request left and no answer came back (timeout, broken connection, 502 or
  504): it may have been sent, so it is never sent again automatically. A message that
  another run has claimed is ``unknown`` to this run too (``claimed`` is False), and is not
  touched.

With ``RESOLVE_UNKNOWN`` on, the engines look an ``unknown`` message up afterwards
(:func:`resolve`): by its Message-ID, in the mailbox's Sent Items, :data:`RESOLVE_CHECKS`
times at growing intervals. Found, it is ``sent``; not found, it stays ``unknown``. A lookup
never sends.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from django.conf import settings as django_settings
from django.utils.module_loading import import_string

from .. import routes, signals, telemetry
from ..conf import OPTION_NAMES, MSGraphMailSettings, load_settings
from ..exceptions import (
    AuthenticationError,
    DeliveryUnknown,
    GraphConnectionError,
    LimitsUnavailable,
    MailboxBudgetExhausted,
    MSGraphMailError,
    SentItemsDenied,
)
from ..graph import GraphClient
from ..resolvers import resolver_for
from ..tracking import outgoing
from ..values import MessageStatus
from .envelope import Envelope, payload_of
from .store import ClaimStore

__all__ = [
    "QUEUED_BACKEND",
    "RESOLVE_CHECKS",
    "Outcome",
    "Resolution",
    "announce",
    "announce_lost",
    "claim_timeout",
    "classify",
    "deliver",
    "missing",
    "resolution_delay",
    "resolve",
    "settings_for",
]

logger = logging.getLogger("msgraph_mail")

#: Statuses after which Graph did no work, and that pass: retried later.
PASSING_STATUSES = frozenset({429, 503})
#: The longest wait between two attempts of one message.
MAX_DELAY = 3600.0
#: The shortest backoff, when MAX_RETRY_WAIT is smaller.
MIN_BACKOFF = 1.0
#: How many times an unknown message is looked up in Sent Items (RESOLVE_UNKNOWN): the
#: first look RESOLVE_UNKNOWN seconds after the outcome, each next one twice as long after
#: the one before (the Sent Items copy appears only once transport took the message).
RESOLVE_CHECKS = 3
#: What separates a message's own error from what its lookups found, in ``last_error``.
RESOLVE_NOTE = " -- Sent Items: "


@dataclass(frozen=True)
class Outcome:
    """What became of one attempt; ``delay`` (seconds) is set for ``retry``."""

    status: Literal["sent", "retry", "failed", "unknown"]
    delay: float = 0.0
    error: str | None = None
    request_id: str | None = None
    mailbox: str | None = None
    exception: MSGraphMailError | None = None
    claimed: bool = True  # False: another run holds or finished the message; nothing done
    mailbox_id: str | None = None  # the mailbox's directory id, for telemetry


def deliver(envelope: Envelope, *, attempt: int, store: ClaimStore) -> Outcome:
    """Claim the message, send it once, record and return the outcome (see the module).

    Its ``process outbox`` span continues the trace of the request that queued it (the
    envelope's ``trace_context``)."""
    settings = settings_for(envelope.alias)
    telemetry.watch_outbox(store, settings.queue)
    with telemetry.operation(
        "process outbox",
        settings,
        kind="consumer",
        operation_type="process",
        destination="outbox",
        parent=envelope.trace_context,
    ) as op:
        op.route = envelope.route
        op.set("messaging.message.id", envelope.message_id)
        op.set("msgraph_mail.outbox.attempt", attempt)
        outcome = _deliver(envelope, attempt, store, settings)
        op.outcome = outcome.status if outcome.claimed else "skipped"
        if outcome.exception is not None:
            telemetry.failed(op.span, outcome.exception)
    return outcome


def _deliver(
    envelope: Envelope, attempt: int, store: ClaimStore, settings: MSGraphMailSettings
) -> Outcome:
    if not store.claim(envelope.message_id):
        found = store.get(envelope.message_id)
        state = found.status if found is not None else "missing"
        logger.warning(
            "Message %s is not sent again: it is %s (another run claimed it)",
            envelope.message_id,
            state,
            extra=telemetry.log_extra(settings, status=state, route=envelope.route),
        )
        return Outcome(
            status="unknown",
            error=f"not sent by this run: the message is {state} in the outbox",
            claimed=False,
        )
    try:
        outcome = _attempt(envelope, attempt)
    except BaseException as exc:  # a bug or a shutdown mid-send: it may have left
        store.finish(envelope.message_id, "unknown", error=f"{type(exc).__name__}: {exc}")
        raise
    if outcome.status == "retry":
        until = datetime.now(timezone.utc) + timedelta(seconds=outcome.delay)
        note = getattr(store, "note", None)
        if note is not None and outcome.error:
            note(envelope.message_id, outcome.error)
        store.defer(
            envelope.message_id,
            until,
            error=outcome.error,
            request_id=outcome.request_id,
            mailbox=outcome.mailbox,
        )
        logger.warning(
            "Message %s deferred %.1f s (attempt %d): %s",
            envelope.message_id,
            outcome.delay,
            attempt,
            outcome.error,
            extra=_log_extra(settings, envelope, outcome),
        )
    else:
        store.finish(
            envelope.message_id,
            outcome.status,
            outcome.error,
            outcome.request_id,
            mailbox=outcome.mailbox,
        )
        log = logger.info if outcome.status == "sent" else logger.error
        log(
            "Queued message %s %s through mailbox %s (request-id %s)%s",
            envelope.message_id,
            outcome.status,
            outcome.mailbox,
            outcome.request_id,
            f": {outcome.error}" if outcome.error else "",
            extra=_log_extra(settings, envelope, outcome),
        )
    _signal(envelope, outcome)
    enforce_retention(store, envelope.alias)
    return outcome


def _log_extra(
    settings: MSGraphMailSettings, envelope: Envelope, outcome: Outcome
) -> dict[str, Any]:
    return telemetry.log_extra(
        settings,
        request_id=outcome.request_id,
        mailbox=outcome.mailbox_id,
        address=outcome.mailbox,
        status=outcome.status,
        route=envelope.route,
    )


#: Seconds between two retention sweeps of one worker process (OUTBOX_RETENTION).
PURGE_EVERY = 3600.0
_last_purge: dict[str, float] = {}


def enforce_retention(store: ClaimStore, alias: str | None) -> None:
    """Delete finished messages older than OUTBOX_RETENTION, at most once an hour per
    process and store: the worker keeps the outbox bounded without a cron job."""
    key = f"{type(store).__name__}:{alias}"
    now = time.monotonic()
    if now - _last_purge.get(key, -PURGE_EVERY) < PURGE_EVERY or not hasattr(store, "purge"):
        return
    _last_purge[key] = now
    try:
        removed = store.purge(settings_for(alias).outbox_retention)
    except Exception as exc:  # a sweep failing must never fail a delivery
        logger.warning(
            "Outbox retention sweep failed: %s: %s",
            type(exc).__name__,
            exc,
            extra=telemetry.log_extra(),
        )
        return
    if removed:
        logger.info(
            "Outbox retention: %d finished message(s) deleted", removed, extra=telemetry.log_extra()
        )


@dataclass(frozen=True)
class Resolution:
    """What one lookup of an unknown message found: ``sent`` (its copy is in Sent Items),
    ``again`` (not yet: look again after ``delay`` seconds), ``unknown`` (not found in
    the last look, or the lookup was refused: it stays unknown), ``skipped`` (the message
    is not unknown any more: a manual resend, or another lookup resolved it)."""

    status: Literal["sent", "again", "unknown", "skipped"]
    delay: float = 0.0
    note: str | None = None


def resolution_delay(settings: MSGraphMailSettings, check: int) -> float | None:
    """Seconds before lookup number ``check`` (from 1), None when RESOLVE_UNKNOWN is off."""
    if not settings.resolve_unknown:
        return None
    return float(settings.resolve_unknown) * float(2 ** max(0, check - 1))


def resolve(envelope: Envelope, *, check: int, store: ClaimStore) -> Resolution:
    """Look an unknown message up by its Message-ID in its mailbox's Sent Items; never send.

    Found: ``unknown`` -> ``sent`` in one atomic step of the store, and ``message_sent``.
    Not found: it stays unknown, ``last_error`` says so; ``again`` while lookups remain.
    A 403 (no Mail.ReadBasic.All) ends the lookups at once; a message sent without a copy
    in Sent Items (its JSON route) is not looked up at all.
    """
    found = store.get(envelope.message_id)
    if found is None or found.status != "unknown":
        return Resolution(status="skipped")
    original = (found.last_error or "").split(RESOLVE_NOTE)[0]
    if envelope.json_body is not None:
        note = (
            "not looked up: it was sent without a copy in Sent Items (SAVE_TO_SENT_ITEMS off), "
            "so there is none to find; it is not sent again"
        )
        return _unresolved(store, envelope, original, note)
    settings = settings_for(envelope.alias)
    client = _client(envelope.alias, settings)
    mailbox_address: str | None = None
    copy: dict[str, Any] | None = None
    failure: str | None = None
    try:
        mailbox = resolver_for(settings, client).resolve_address(
            envelope.from_address, envelope.mailbox_override
        )
        mailbox_address = mailbox.address
        copy = client.find_sent(mailbox.id, envelope.message_id)
    except SentItemsDenied as exc:
        return _unresolved(store, envelope, original, f"not looked up: {exc}")
    except MSGraphMailError as exc:
        failure = f"the lookup failed ({exc})"
    where = f"the Sent Items of {mailbox_address or envelope.from_address}"
    if copy is not None:
        note = (
            f"found in {where} (sent {copy.get('sentDateTime') or 'at an unknown time'}) at "
            f"look {check}: it was sent"
        )
        mark = getattr(store, "resolved", None)
        if mark is None or not mark(envelope.message_id, f"{original}{RESOLVE_NOTE}{note}"):
            return Resolution(status="skipped")
        logger.info(
            "Queued message %s resolved: %s",
            envelope.message_id,
            note,
            extra=telemetry.log_extra(
                settings, request_id=found.request_id, status="sent", route=envelope.route
            ),
        )
        _signal(
            envelope,
            Outcome(status="sent", mailbox=mailbox_address, request_id=found.request_id),
        )
        return Resolution(status="sent", note=note)
    seen = failure or f"not found in {where}"
    delay = resolution_delay(settings, check + 1)
    if check < RESOLVE_CHECKS and delay is not None:
        note = f"{seen} at look {check} of {RESOLVE_CHECKS}; looking again in {delay:g} s"
        _note(store, envelope.message_id, f"{original}{RESOLVE_NOTE}{note}")
        logger.info(
            "Queued message %s: %s",
            envelope.message_id,
            note,
            extra=telemetry.log_extra(settings, status="unknown", route=envelope.route),
        )
        return Resolution(status="again", delay=delay, note=note)
    note = (
        f"{seen} after {check} looks: it may or may not have been sent (the request never "
        "reached Exchange, or the tenant rewrote its Message-ID: see msgraph_diagnose "
        "--send-test); it is not sent again"
    )
    return _unresolved(store, envelope, original, note)


def _unresolved(store: ClaimStore, envelope: Envelope, original: str, note: str) -> Resolution:
    _note(store, envelope.message_id, f"{original}{RESOLVE_NOTE}{note}")
    logger.error(
        "Queued message %s stays unknown: %s",
        envelope.message_id,
        note,
        extra=telemetry.log_extra(status="unknown", route=envelope.route),
    )
    return Resolution(status="unknown", note=note)


def _note(store: ClaimStore, message_id: str, error: str) -> None:
    note = getattr(store, "note", None)
    if note is not None:
        note(message_id, error)


def _attempt(envelope: Envelope, attempt: int) -> Outcome:
    """One try of the Graph send, in its ``send`` span (a child of ``process outbox``)."""
    settings = settings_for(envelope.alias)
    with telemetry.operation("send", settings) as op:
        op.route = envelope.route
        op.set("messaging.message.id", envelope.message_id)
        outcome = _send(envelope, attempt, settings, op)
        op.outcome = outcome.status
        op.set("msgraph_mail.request_id", outcome.request_id)
        if outcome.exception is not None:
            telemetry.failed(op.span, outcome.exception)
    return outcome


def _send(
    envelope: Envelope, attempt: int, settings: MSGraphMailSettings, op: telemetry.Operation
) -> Outcome:
    client = _client(envelope.alias, settings)
    resolver = resolver_for(settings, client)
    mailbox_address: str | None = None
    mailbox_id: str | None = None
    try:
        payload = payload_of(envelope)  # a sealed message no key opens fails before any request
        mailbox = resolver.resolve_address(envelope.from_address, envelope.mailbox_override)
        mailbox_address = mailbox.address
        mailbox_id = mailbox.id
        telemetry.describe_mailbox(op, settings, mailbox.id, mailbox.address)

        def explain(error: MSGraphMailError) -> MSGraphMailError:
            explained = resolver.explain(error, mailbox, envelope.from_address)
            if explained is not error and explained.retry_after is None:
                explained.retry_after = error.retry_after
            return explained

        response = routes.send(client, mailbox.id, payload, explain, recipients=envelope.recipients)
    except MSGraphMailError as exc:
        if isinstance(exc, MailboxBudgetExhausted) and mailbox_address:
            exc = exc.naming(mailbox_address)
        outcome = classify(exc, envelope, attempt, settings, mailbox_address)
        if outcome.status == "unknown":
            _track(settings, envelope, mailbox_address)
        return dataclasses.replace(outcome, mailbox_id=mailbox_id)
    _track(settings, envelope, mailbox_address)
    return Outcome(
        status="sent",
        request_id=response.request_id,
        mailbox=mailbox_address,
        error=None,
        mailbox_id=mailbox_id,
    )


def announce_resolved(envelope: Envelope, request_id: str | None) -> None:
    """``message_sent`` for an unknown message found sent afterwards (by the trace)."""
    _signal(envelope, Outcome(status="sent", request_id=request_id))


def _track(settings: MSGraphMailSettings, envelope: Envelope, mailbox: str | None) -> None:
    """Keep a sent (or maybe sent) message for the delivery tracker (DELIVERY_TRACKING)."""
    outgoing.record(
        settings,
        tracking_id=envelope.tracking_id,
        message_id=envelope.message_id if envelope.json_body is None else None,
        sender=envelope.from_address,
        mailbox=mailbox,
        recipients=envelope.recipient_addresses or [],
        outbox_id=envelope.message_id,
    )


def classify(
    exc: MSGraphMailError,
    envelope: Envelope,
    attempt: int,
    settings: MSGraphMailSettings,
    mailbox: str | None = None,
) -> Outcome:
    """The outcome rules for an error: retry (passing), failed (lasting) or unknown."""
    common: dict[str, Any] = {
        "error": str(exc),
        "request_id": exc.request_id,
        "mailbox": mailbox or exc.mailbox,
        "exception": exc,
    }
    if isinstance(exc, DeliveryUnknown):
        return Outcome(status="unknown", **common)
    wait: float | None = None
    if isinstance(exc, MailboxBudgetExhausted):
        if exc.retry_at is None:  # it can never fit the budget
            return Outcome(status="failed", **common)
        wait = (exc.retry_at - datetime.now(timezone.utc)).total_seconds()
    elif exc.status in PASSING_STATUSES:
        wait = exc.retry_after
    elif isinstance(exc, AuthenticationError) and (exc.status or 0) >= 500:
        pass  # Entra itself failed: passing; a refused credential (4xx) is lasting
    elif not isinstance(exc, (GraphConnectionError, LimitsUnavailable)) or (
        exc.status is not None and exc.status < 500
    ):
        # lasting: sender, denied, invalid, 4xx. A connection error with a 5xx (a gateway
        # timeout while drafting, before the send) sent nothing: passing.
        return Outcome(status="failed", **common)
    delay = _delay(wait, attempt, settings)
    age = (datetime.now(timezone.utc) - envelope.enqueued).total_seconds()
    if age + delay > settings.queue_max_age:
        common["error"] = (
            f"{exc} -- given up: the message was queued {age:.0f} s ago, and QUEUE_MAX_AGE "
            f"({settings.queue_max_age:g} s) would pass before the next try"
        )
        return Outcome(status="failed", **common)
    return Outcome(status="retry", delay=delay, **common)


def _delay(wait: float | None, attempt: int, settings: MSGraphMailSettings) -> float:
    """Retry-After or the budget's reset when known, else a backoff; plus up to 20 % jitter.

    The backoff starts at MAX_RETRY_WAIT (the client already waited that long in this
    attempt) and doubles with each attempt, up to an hour; a known wait is kept to at least
    one second, doubling too, so a message refused again and again backs off all the same.
    """
    doubling = 2 ** max(0, attempt - 1)
    if wait is None:
        delay = max(MIN_BACKOFF, settings.max_retry_wait) * doubling
    else:
        delay = max(wait, MIN_BACKOFF * doubling)
    return float(min(MAX_DELAY, delay) * (1 + 0.2 * random.random()))  # noqa: S311


def settings_for(alias: str | None) -> MSGraphMailSettings:
    """The settings a message's mailer sends with: MAILERS[alias]["OPTIONS"] over
    MSGRAPH_MAIL (Django 6.1), or MSGRAPH_MAIL alone."""
    options: dict[str, Any] = {}
    if alias is not None:
        mailers = getattr(django_settings, "MAILERS", None) or {}
        configured = mailers.get(alias, {}).get("OPTIONS", {}) or {}
        options = {name: value for name, value in configured.items() if name in OPTION_NAMES}
    return load_settings(options)


_clients: dict[str | None, tuple[MSGraphMailSettings, GraphClient]] = {}
_clients_lock = threading.Lock()


def _client(alias: str | None, settings: MSGraphMailSettings) -> GraphClient:
    """One client per mailer for the worker process: its connections and limits are reused."""
    with _clients_lock:
        found = _clients.get(alias)
        if found is not None and found[0] == settings:
            return found[1]
        if found is not None:
            found[1].close()
        client = GraphClient(settings)
        _clients[alias] = (settings, client)
        return client


def _signal(envelope: Envelope, outcome: Outcome) -> None:
    """message_sent / message_failed / message_unknown, from the worker (no EmailMessage)."""
    if outcome.status == "retry" or not outcome.claimed:
        return
    announce(
        MessageStatus(
            status=outcome.status,
            mailbox=outcome.mailbox,
            request_id=outcome.request_id,
            message_id=envelope.message_id,
            error=outcome.exception,
            route=envelope.route,
        )
    )


#: The sender of the worker's signals, as the caller's were sent: the class that queued the
#: message. Named by its dotted path, as ``EMAIL_BACKEND`` names it: the outbox sits below
#: the backends and imports none of them (tests/test_imports.py).
QUEUED_BACKEND = "msgraph_mail.backend.QueuedEmailBackend"


def missing(message_id: str) -> str:
    """A task's message that the outbox no longer holds (expired, deleted, never stored):
    nothing to send, logged; the task's result."""
    logger.error(
        "Queued message %s is not in the outbox (expired, deleted or never stored): "
        "nothing to send",
        message_id,
        extra=telemetry.log_extra(status="missing"),
    )
    return "missing"


def announce(status: MessageStatus) -> None:
    """A worker's outcome to the project's receivers (:mod:`msgraph_mail.signals`)."""
    signals.announce(import_string(QUEUED_BACKEND), None, status)


def announce_lost(message_id: str, reason: str) -> None:
    """message_unknown for a message whose worker stopped while it was claimed: the request
    may have left, so the message is never sent again automatically."""
    error = DeliveryUnknown(reason)
    announce(MessageStatus(status="unknown", message_id=message_id, error=error))


def claim_timeout(settings: MSGraphMailSettings) -> float:
    """How long one attempt may hold its claim: every try's timeout, the waits between them
    and one more timeout as a margin. A message claimed longer ago was left by a stopped
    worker."""
    return settings.max_retry_wait + settings.timeout * (settings.max_retries + 2)
