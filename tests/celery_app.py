"""The Celery app of the test workers (``celery -A tests.celery_app worker``) and of the test
process that publishes to them.

Everything comes from the environment, set by tests/test_outbox_celery.py: the broker (the
test Redis, another database than the outbox's), a short ``visibility_timeout`` so that a
killed worker's unacknowledged tasks come back within seconds (swept every second, not every
~100 s), and the claim grace of the outbox. Django is configured in the worker by
``DJANGO_SETTINGS_MODULE=tests.celery_settings``.
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.celery_settings")

#: Seconds before an unacknowledged task is delivered again.
VISIBILITY_TIMEOUT = float(os.environ.get("MSGRAPH_TEST_VISIBILITY_TIMEOUT", "4"))

app = Celery(
    "msgraph_mail_tests",
    include=["msgraph_mail.outbox.celery", "msgraph_mail.tracking.celery"],
)
app.conf.update(
    broker_url=os.environ.get("MSGRAPH_TEST_BROKER_URL", "redis://127.0.0.1:6379/1"),
    broker_transport_options={
        "visibility_timeout": VISIBILITY_TIMEOUT,
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
    },
    broker_connection_retry_on_startup=True,
    task_ignore_result=True,
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
    msgraph_mail_claim_grace=float(os.environ.get("MSGRAPH_TEST_CLAIM_GRACE", "3")),
)


#: When set (a Redis URL), the worker appends each outcome signal it sends to the Redis list
#: SIGNALS_KEY, as JSON: the test reads what the worker process itself announced.
SIGNALS_URL = os.environ.get("MSGRAPH_TEST_SIGNALS_URL")
SIGNALS_KEY = "msgraph_test:signals"

if SIGNALS_URL:
    import json

    from msgraph_mail import signals

    _clients: dict[int, object] = {}

    def _record(sender: object, signal: object, **kwargs: object) -> None:
        import redis

        client = _clients.get(os.getpid())  # one client per (forked) process
        if client is None:
            client = _clients[os.getpid()] = redis.Redis.from_url(SIGNALS_URL)
        status = kwargs.get("status")
        outcome = {
            "signal": next(n for n, s in signals.BY_STATUS.items() if s is signal),
            "message_id": kwargs.get("message_id"),
            "mailbox": kwargs.get("mailbox"),
            "status": getattr(status, "status", None),
            "error": str(getattr(status, "error", "") or ""),
            "request_id": kwargs.get("request_id"),
            "pid": os.getpid(),
        }
        client.rpush(SIGNALS_KEY, json.dumps(outcome))  # type: ignore[attr-defined]

    for _signal in signals.BY_STATUS.values():
        _signal.connect(_record, weak=False, dispatch_uid=f"msgraph-test-{id(_signal)}")

    def _record_delivery(sender: object, event: object, **kwargs: object) -> None:
        import redis

        client = _clients.get(os.getpid())
        if client is None:
            client = _clients[os.getpid()] = redis.Redis.from_url(SIGNALS_URL)
        row = {"signal": "delivery_event", "pid": os.getpid(), **event.as_dict()}  # type: ignore[attr-defined]
        client.rpush(SIGNALS_KEY, json.dumps(row, default=str))  # type: ignore[attr-defined]

    signals.delivery_event.connect(_record_delivery, weak=False, dispatch_uid="msgraph-test-dlv")

#: When set (seconds), Celery beat runs the tracking task that often (test_tracking_celery).
BEAT = os.environ.get("MSGRAPH_TEST_BEAT")
if BEAT:
    app.conf.beat_schedule = {
        "msgraph-mail-track": {"task": "msgraph_mail.track", "schedule": float(BEAT)},
    }
