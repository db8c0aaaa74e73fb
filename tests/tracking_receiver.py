"""A project's receiver of ``delivery_event`` for tests/test_tracking_process.py: each event
becomes a row of the table ``seen`` in the tracker's own database and transaction, with the
time it was signalled, so a test counts what was reported, and how many times."""

from __future__ import annotations

import time
from typing import Any

from django.apps import AppConfig
from django.db import connection

TABLE = (
    "CREATE TABLE IF NOT EXISTS seen (message_id TEXT, recipient TEXT, event_type TEXT, "
    "status_code TEXT, pid INTEGER, at REAL)"
)


def record(sender: Any, event: Any, **kwargs: Any) -> None:
    import os

    with connection.cursor() as cursor:
        cursor.execute(TABLE)
        cursor.execute(
            "INSERT INTO seen VALUES (%s, %s, %s, %s, %s, %s)",
            [
                event.message_id,
                event.recipient,
                event.event_type,
                event.status_code,
                os.getpid(),
                time.time(),
            ],
        )


class ReceiverConfig(AppConfig):
    name = "tests"
    label = "tracking_receiver"

    def ready(self) -> None:
        from msgraph_mail.signals import delivery_event

        delivery_event.connect(record, weak=False)
