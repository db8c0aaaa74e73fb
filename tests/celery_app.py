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

app = Celery("msgraph_mail_tests", include=["msgraph_mail.outbox.celery"])
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
