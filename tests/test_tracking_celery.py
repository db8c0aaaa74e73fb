"""Delivery tracking on Celery: a real ``celery worker`` with embedded beat (``-B``) runs the
periodic task ``msgraph_mail.track``; the outbox, the tracking state and the broker live in
the test Redis; the worker's ``delivery_event`` receiver (tests/celery_app.py) records what
it announced in Redis for the test to read.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core import mail
from django.test import override_settings

from msgraph_mail.emulator import GraphEmulator

from .test_outbox_celery import QUEUED, ROOT, Worker

pytest.importorskip("celery")
pytestmark = pytest.mark.django_db

ROLES = ["Mail.Send", "User.Read.All", "Mail.Read", "ExchangeMessageTrace.Read.All"]


@pytest.fixture
def beat(redis_url: str, tmp_path: Path) -> Iterator[tuple[GraphEmulator, Any, dict[str, Any]]]:
    import redis as redis_py

    from tests import celery_app

    base = redis_url.rsplit("/", 1)[0]
    # The broker of tests/test_outbox_celery.py (database 1): the test process's Celery app
    # keeps its broker connections from one module to the next.
    state_url, broker_url = f"{base}/2", f"{base}/1"
    for url in (state_url, broker_url):
        client = redis_py.Redis.from_url(url)
        client.flushdb()
        client.close()
    celery_app.app.conf.broker_url = broker_url
    with GraphEmulator() as emulator:
        emulator.roles = ROLES
        emulator.delivery_delay = 0.2
        options = emulator.settings(
            MODE="permissive",
            QUEUE="celery",
            REDIS_URL=state_url,
            DELIVERY_TRACKING=["bounces", "trace"],
            TIMEOUT=5,
        )
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.celery_settings",
            "MSGRAPH_TEST_MSGRAPH_MAIL": json.dumps(options),
            "MSGRAPH_TEST_BROKER_URL": broker_url,
            "MSGRAPH_TEST_SIGNALS_URL": state_url,
            "MSGRAPH_TEST_BEAT": "0.5",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        worker = Worker(env, tmp_path / "worker.log")
        worker.start(extra=("-B", f"--schedule={tmp_path / 'beat-schedule'}"))
        signals = redis_py.Redis.from_url(state_url)
        try:
            worker.wait_ready(celery_app.app)
            with override_settings(EMAIL_BACKEND=QUEUED, MSGRAPH_MAIL=options):
                yield emulator, signals, {"worker": worker}
        finally:
            worker.stop()
            signals.close()
            celery_app.app.close()


def test_celery_beat_runs_the_tracker_and_the_worker_reports_the_bounce(
    beat: tuple[GraphEmulator, Any, dict[str, Any]],
) -> None:
    from tests.celery_app import SIGNALS_KEY

    emulator, signals, rig = beat
    mail.send_mail("Hi", "Body", "noreply@contoso.com", ["ghost@nowhere.invalid", "ok@x.com"])
    deadline = time.monotonic() + 60
    events: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        rows = [json.loads(raw) for raw in signals.lrange(SIGNALS_KEY, 0, -1)]
        events = [row for row in rows if row["signal"] == "delivery_event"]
        if {row["event_type"] for row in events} >= {"bounced", "delivered"}:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"no bounce reported: {events}\n{rig['worker'].output()}")
    [bounced] = [row for row in events if row["event_type"] == "bounced"]
    assert (bounced["recipient"], bounced["status_code"]) == ("ghost@nowhere.invalid", "5.1.1")
    time.sleep(1.5)  # three more beats: still once
    rows = [json.loads(raw) for raw in signals.lrange(SIGNALS_KEY, 0, -1)]
    bounces = [r for r in rows if r["signal"] == "delivery_event" and r["event_type"] == "bounced"]
    assert len(bounces) == 1
    assert emulator.count("sendMail") == 1
