"""The Celery engine of the outbox (``QUEUE = "celery"``): Redis as broker and claim store.

The caller (:class:`~msgraph_mail.backend.QueuedEmailBackend`) calls :func:`enqueue`: the
envelope goes into the :class:`~msgraph_mail.outbox.redis_store.RedisStore` of ``REDIS_URL``
as ``queued``, then the task :func:`send_envelope` (``"msgraph_mail.send_envelope"``) is
published with the message id. A worker runs it: it reads the message from the store and calls
:func:`~msgraph_mail.outbox.deliver.deliver`, which claims the message, sends it and records
the outcome; on ``retry`` the task publishes itself again with the delay.

What the task relies on, and why:

- ``acks_late=True``: the message is acknowledged after the run, so a worker killed mid-run
  leaves it in the broker, to be delivered again -- where the claim stops a second send: a
  message already claimed is not sent again, and once its claim is older than one attempt
  can last (:func:`~msgraph_mail.outbox.deliver.claim_timeout` of the settings: every try's
  TIMEOUT and the waits between them; the Celery setting ``msgraph_mail_claim_grace``
  overrides it) it is reported ``unknown`` (the request may have left). No
  ``task_reject_on_worker_lost``: it would redeliver at once, in a loop if the message kills
  the child.
- The next try lives in the store, not in the broker: Celery's Redis transport redelivers a
  task held with a ``countdown`` longer than ``visibility_timeout`` again and again. A delay
  is published as a countdown of at most :func:`max_countdown` (300 s, and never more than
  half the ``visibility_timeout`` of ``broker_transport_options``); when the task runs before
  the message's ``next_try_at``, it publishes itself again for the rest, without sending.
- A duplicate run (a redelivery, a restored message) finds the message finished and does
  nothing, or claimed and leaves it to its claim.
- Stale claims are reaped by every run (one sorted-set read): a prefork child killed while
  sending (OOM, SIGKILL) has its task acknowledged by Celery and never run again, so its
  message would otherwise stay ``sending`` for ever.

Install the task in the worker: ``CELERY_IMPORTS = ["msgraph_mail.outbox.celery"]`` (with
``app.config_from_object("django.conf:settings", namespace="CELERY")``), or
``Celery(..., include=["msgraph_mail.outbox.celery"])``. Route it to a queue of its own with
``task_routes = {"msgraph_mail.send_envelope": {"queue": "mail"}}``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery import shared_task  # type: ignore[import-untyped]

from .. import telemetry
from ..conf import MSGraphMailSettings
from ..exceptions import ConfigurationError
from . import deliver as worker
from .envelope import Envelope
from .redis_store import FINISHED, STALE_CLAIM, RedisStore

__all__ = [
    "MAX_COUNTDOWN",
    "TASK_NAME",
    "claim_grace",
    "enqueue",
    "max_countdown",
    "send_envelope",
    "store_for",
]

logger = logging.getLogger("msgraph_mail")

#: The task's name, for ``task_routes`` and the worker's log.
TASK_NAME = "msgraph_mail.send_envelope"
#: The longest countdown a task is published with (seconds); longer delays are waited out
#: in steps, the message's next try being kept in the store.
MAX_COUNTDOWN = 300.0
#: A task that finds its message due within this many seconds sends it.
EARLY = 0.05
#: How often one process looks for stale claims (seconds).
REAP_INTERVAL = 5.0
#: Celery's default visibility_timeout of the Redis transport (seconds).
VISIBILITY_TIMEOUT = 3600.0


def store_for(alias: str | None = None) -> RedisStore:
    """The claim store in the Redis of the mailer's ``REDIS_URL`` (required for this engine)."""
    settings = worker.settings_for(alias)
    return store_of(settings)


def store_of(settings: MSGraphMailSettings) -> RedisStore:
    if not settings.redis_url:
        raise ConfigurationError(
            'msgraph_mail: QUEUE "celery" keeps its outbox in Redis: set REDIS_URL'
        )
    return RedisStore.for_settings(settings)


def enqueue(envelope: Envelope, delay: float = 0) -> None:
    """Record the message as queued, then publish its task (after ``delay`` seconds).

    When the broker refuses the task, the message is removed from the store again and the
    error is raised to the caller: nothing was queued.
    """
    store = store_for(envelope.alias)
    delay = max(0.0, float(delay))
    store.add(envelope, not_before=time.time() + delay)
    try:
        _publish(envelope.message_id, 1, envelope.alias, delay)
    except Exception:
        store.forget(envelope.message_id)
        raise


def max_countdown(app: Any = None) -> float:
    """The longest countdown to publish: MAX_COUNTDOWN, and at most half the broker's
    ``visibility_timeout`` (a task held longer would be delivered again meanwhile)."""
    options = _conf(app, "broker_transport_options", None) or {}
    visibility = float(options.get("visibility_timeout") or VISIBILITY_TIMEOUT)
    configured = _conf(app, "msgraph_mail_max_countdown", None)
    bound = float(configured) if configured is not None else MAX_COUNTDOWN
    return max(0.1, min(bound, visibility / 2))


def claim_grace(settings: MSGraphMailSettings, app: Any = None) -> float:
    """How long a claim may last before its message is taken for lost (seconds): the Celery
    setting ``msgraph_mail_claim_grace``, else ``claim_timeout(settings)``."""
    configured = _conf(app, "msgraph_mail_claim_grace", None)
    return float(configured) if configured is not None else worker.claim_timeout(settings)


@shared_task(  # type: ignore[untyped-decorator]
    name=TASK_NAME, bind=True, acks_late=True, ignore_result=True, track_started=False
)
def send_envelope(
    self: Any,
    message_id: str,
    attempt: int = 1,
    alias: str | None = None,
    resolve_check: int = 0,
) -> str:
    """Send one queued message (see the module); returns what the run did.
    ``resolve_check`` > 0: look an unknown message up in Sent Items instead (never sends)."""
    return run(message_id, attempt, alias, app=self.app, resolve_check=resolve_check)


def run(
    message_id: str,
    attempt: int,
    alias: str | None,
    *,
    app: Any = None,
    resolve_check: int = 0,
) -> str:
    """The task's body: ``sent``, ``retry``, ``failed``, ``unknown``, or ``waiting`` (not
    due yet, published again), ``missing`` (not in the store), or the status of a message a
    duplicate run found finished."""
    settings = worker.settings_for(alias)
    store = store_of(settings)
    grace = claim_grace(settings, app)
    _reap(store, grace, settings, app)
    record = store.get(message_id)
    if record is None:
        return worker.missing(message_id)
    if resolve_check > 0:  # RESOLVE_UNKNOWN: a lookup in Sent Items, never a send
        looked = worker.resolve(record.envelope, check=resolve_check, store=store)
        if looked.status == "again":
            _publish(
                message_id, attempt, alias, looked.delay, app=app, resolve_check=resolve_check + 1
            )
        return f"resolve:{looked.status}"
    if record.status in FINISHED:
        logger.info(
            "Message %s is already %s: nothing to do",
            message_id,
            record.status,
            extra=telemetry.log_extra(status=record.status, route=record.envelope.route),
        )
        return record.status
    now = time.time()
    if record.status == "sending":
        claimed = store.claimed_at(message_id)
        age = now - claimed.timestamp() if claimed is not None else grace
        if age < grace:  # another run holds it, or held it when its worker died
            _publish(message_id, attempt, alias, grace - age, app=app)
            return "waiting"
        if store.expire_claim(message_id):
            _announce_lost(record.envelope)
        return "unknown"
    due = record.next_try_at.timestamp() if record.next_try_at is not None else now
    if due - now > EARLY:
        _publish(message_id, attempt, alias, due - now, app=app)
        return "waiting"
    outcome = worker.deliver(record.envelope, attempt=attempt, store=store)
    if outcome.status == "retry":
        _publish(message_id, attempt + 1, alias, outcome.delay, app=app)
    wait = worker.resolution_delay(settings, 1)
    if outcome.status == "unknown" and outcome.claimed and wait is not None:
        _publish(message_id, attempt, alias, wait, app=app, resolve_check=1)
    return outcome.status


def _publish(
    message_id: str,
    attempt: int,
    alias: str | None,
    delay: float,
    *,
    app: Any = None,
    resolve_check: int = 0,
) -> None:
    countdown = min(max(0.0, delay), max_countdown(app))
    options: dict[str, Any] = {"countdown": countdown} if countdown > 0 else {}
    kwargs: dict[str, Any] = {"alias": alias} if alias is not None else {}
    if resolve_check > 0:
        kwargs["resolve_check"] = resolve_check
    send_envelope.apply_async(args=(message_id, attempt), kwargs=kwargs, **options)


_reaped_at: dict[int, float] = {}
_reap_lock = threading.Lock()


def _reap(store: RedisStore, grace: float, settings: Any = None, app: Any = None) -> None:
    """Report claims older than the grace as unknown, at most every REAP_INTERVAL; with
    RESOLVE_UNKNOWN, each is then looked up in Sent Items like any other unknown."""
    now = time.monotonic()
    with _reap_lock:
        if now - _reaped_at.get(id(store.client), -REAP_INTERVAL) < REAP_INTERVAL:
            return
        _reaped_at[id(store.client)] = now
    for message_id in store.stale(grace):
        if store.expire_claim(message_id):
            record = store.get(message_id)
            if record is not None:
                _announce_lost(record.envelope)
                wait = worker.resolution_delay(settings, 1) if settings is not None else None
                if wait is not None:
                    alias = record.envelope.alias
                    _publish(
                        message_id, max(record.attempts, 1), alias, wait, app=app, resolve_check=1
                    )


def _announce_lost(envelope: Envelope) -> None:
    """message_unknown for a message whose worker died while it was claimed."""
    logger.error(
        "Queued message %s unknown: %s",
        envelope.message_id,
        STALE_CLAIM,
        extra=telemetry.log_extra(status="unknown", route=envelope.route),
    )
    worker.announce_lost(envelope.message_id, STALE_CLAIM)


def _conf(app: Any, name: str, default: Any) -> Any:
    if app is None:
        from celery import current_app

        app = current_app
    return app.conf.get(name, default)
