"""The ``tasks`` engine: Django's tasks framework (``django.tasks`` on Django 6.0 and later,
the ``django-tasks`` backport on 5.2), on whatever tasks backend the project configured.

:func:`send_envelope` is the task: it loads the message from the outbox
(:class:`~msgraph_mail.outbox.store.DatabaseStore`), calls
:func:`~msgraph_mail.outbox.deliver.deliver`, and on a passing failure enqueues itself again
with ``run_after`` (the framework has no retries of its own). Its arguments are the message
id and the attempt number only: the MIME stays in the outbox row.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import timedelta
from typing import Any

import django
from django.utils import timezone

from .. import telemetry
from . import deliver as worker
from . import sealing
from .envelope import Envelope
from .store import DatabaseStore

if django.VERSION >= (6, 0):
    from django.tasks import task
else:  # the backport: pip install django-tasks, and "django_tasks" in INSTALLED_APPS
    from django_tasks import task

__all__ = ["enqueue", "send_envelope"]

logger = logging.getLogger("msgraph_mail")


@task()  # type: ignore[untyped-decorator,misc,unused-ignore]
def send_envelope(message_id: str, attempt: int = 1, resolve_check: int = 0) -> str:
    """Deliver one queued message; return its outcome ("sent", "retry", ...).

    ``resolve_check`` > 0: do not send; look the unknown message up in Sent Items
    (RESOLVE_UNKNOWN, :func:`~msgraph_mail.outbox.deliver.resolve`)."""
    store = DatabaseStore()
    found = store.get(message_id)
    if found is None:
        return worker.missing(message_id)
    settings = worker.settings_for(found.envelope.alias)
    store.keep_content = settings.outbox_keep_content  # the mailer's OUTBOX_KEEP_CONTENT
    store.keys = settings.outbox_encryption_keys  # and OUTBOX_ENCRYPTION_KEYS, which opens it:
    found = dataclasses.replace(found, envelope=sealing.opened(found.envelope, store.keys))
    if resolve_check > 0:
        looked = worker.resolve(found.envelope, check=resolve_check, store=store)
        if looked.status == "again":
            enqueue(found.envelope, looked.delay, attempt=attempt, resolve_check=resolve_check + 1)
        return f"resolve:{looked.status}"
    stale = worker.claim_timeout(settings)
    lost = store.stale(stale)
    reaped = store.reap(stale)
    if reaped:
        logger.warning(
            "%d queued messages left sending by a stopped worker are unknown",
            reaped,
            extra=telemetry.log_extra(status="unknown"),
        )
        _after_reaping(store, lost, settings)
    for orphan in store.orphans(stale):  # their task died with a worker: never sent, so safe
        logger.warning(
            "Queued message %s lost its task; enqueued again",
            orphan.message_id,
            extra=telemetry.log_extra(status="queued", route=orphan.envelope.route),
        )
        enqueue(orphan.envelope, attempt=max(orphan.attempts, 1))
    outcome = worker.deliver(found.envelope, attempt=attempt, store=store)
    if outcome.status == "retry":
        enqueue(found.envelope, delay=outcome.delay, attempt=attempt + 1)
    wait = worker.resolution_delay(settings, 1)
    if outcome.status == "unknown" and outcome.claimed and wait is not None:
        enqueue(found.envelope, wait, attempt=attempt, resolve_check=1)
    return outcome.status


def _after_reaping(store: DatabaseStore, lost: list[str], settings: Any) -> None:
    """A message left sending by a stopped worker is unknown like any other: announced, and
    with RESOLVE_UNKNOWN looked up in Sent Items."""
    wait = worker.resolution_delay(settings, 1)
    for message_id in lost:
        found = store.get(message_id)
        if found is None or found.status != "unknown":
            continue  # reaped by another run, or finished meanwhile
        worker.announce_lost(message_id, found.last_error or "the worker stopped while sending")
        if wait is not None:
            enqueue(found.envelope, wait, attempt=max(found.attempts, 1), resolve_check=1)


def enqueue(
    envelope: Envelope, delay: float = 0, *, attempt: int = 1, resolve_check: int = 0
) -> Any:
    """Enqueue the task of a message already in the outbox; ``delay`` in seconds;
    ``resolve_check`` > 0: a lookup in Sent Items, not a send."""
    args: tuple[Any, ...] = (envelope.message_id, attempt)
    if resolve_check > 0:
        args = (*args, resolve_check)
    if delay > 0:
        deferred = send_envelope.using(run_after=timezone.now() + timedelta(seconds=delay))
        return deferred.enqueue(*args)
    return send_envelope.enqueue(*args)
