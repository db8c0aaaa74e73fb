"""Delivery tracking as a periodic Celery task, for ``QUEUE = "celery"`` projects.

The task ``msgraph_mail.track`` makes one tracking pass (:class:`~.tracker.Tracker`) for a
mailer alias (None: ``MSGRAPH_MAIL``). Celery beat runs it; the store's lease keeps two
overlapping runs (a slow pass, two beats) from working at once, and each event is reported
once whatever runs it::

    CELERY_IMPORTS = ["msgraph_mail.outbox.celery", "msgraph_mail.tracking.celery"]
    CELERY_BEAT_SCHEDULE = {
        "msgraph-mail-track": {"task": "msgraph_mail.track", "schedule": 60.0},
    }
"""

from __future__ import annotations

from typing import Any

from celery import shared_task  # type: ignore[import-untyped]

from ..outbox.deliver import settings_for
from .tracker import Tracker

__all__ = ["TASK_NAME", "track"]

TASK_NAME = "msgraph_mail.track"


@shared_task(name=TASK_NAME, ignore_result=True)  # type: ignore[untyped-decorator]
def track(alias: str | None = None) -> dict[str, Any]:
    """One tracking pass; returns what it did (events reported by type, reports, rows)."""
    tracker = Tracker(settings_for(alias))
    try:
        done = tracker.run_once(lease_ttl=300.0)
    finally:
        tracker.close()
    return {"ran": done.ran, "reported": done.reported, "reports": done.reports, "rows": done.rows}
