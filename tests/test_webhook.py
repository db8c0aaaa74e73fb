"""Change notifications end to end: a real Django server (pytest-django's ``live_server``)
serving ``msgraph_mail.urls``, the emulator creating subscriptions (validating the URL
first) and posting real HTTP notifications to it, and the tracker acting on them.

Proven here: the handshake; a bounce reported through a notification within a second; a
forged notification refused; a missed notification found by the resync; renewal before
expiry; duplicate notifications reported once; a slow tracker never makes the view slow.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import requests
from django.core import mail
from django.test import override_settings

from msgraph_mail.conf import load_settings
from msgraph_mail.emulator import GraphEmulator
from msgraph_mail.signals import delivery_event
from msgraph_mail.tracking.events import DeliveryEvent
from msgraph_mail.tracking.store import DatabaseStore, Watch
from msgraph_mail.tracking.tracker import Tracker

pytestmark = pytest.mark.django_db(transaction=True)

ROLES = ["Mail.Send", "User.Read.All", "Mail.Read"]


@pytest.fixture
def site(msgraph_emulator: GraphEmulator, live_server: Any) -> Iterator[GraphEmulator]:
    """Tracking with NOTIFICATION_URL pointing at the live server."""
    msgraph_emulator.roles = ROLES
    msgraph_emulator.delivery_delay = 0.05
    graph = msgraph_emulator.settings(
        MODE="single_mailbox",
        MAILBOX="noreply@contoso.com",
        DELIVERY_TRACKING=["bounces"],
        NOTIFICATION_URL=f"{live_server.url}/msgraph/",
    )
    with override_settings(MSGRAPH_MAIL=graph):
        yield msgraph_emulator


@pytest.fixture
def events() -> Iterator[list[DeliveryEvent]]:
    seen: list[DeliveryEvent] = []

    def receiver(sender: Any, event: DeliveryEvent, **kwargs: Any) -> None:
        seen.append(event)

    delivery_event.connect(receiver, weak=False)
    yield seen
    delivery_event.disconnect(receiver)


@pytest.fixture
def tracker(site: GraphEmulator) -> Iterator[Tracker]:
    track = Tracker(load_settings())
    track.run_once()  # subscribes (Graph validates the URL), and takes the delta link
    yield track
    track.close()


def react_until(tracker: Tracker, done: Any, timeout: float = 5.0) -> float:
    """Act on notifications only (no polling pass) until ``done()``; the seconds it took."""
    started = time.monotonic()
    while not done():
        if time.monotonic() - started > timeout:
            raise AssertionError("nothing reported through a notification")
        tracker.react()
        time.sleep(0.02)
    return time.monotonic() - started


def test_the_handshake_creates_one_subscription_per_mailbox(
    site: GraphEmulator, tracker: Tracker
) -> None:
    [watch] = DatabaseStore().watches()
    assert watch.mailbox == "noreply@contoso.com"
    assert watch.expires_at > datetime.now(timezone.utc) + timedelta(days=6)
    [subscription] = site.subscriptions()
    assert subscription["id"] == watch.subscription_id
    assert subscription["notificationUrl"].endswith("/msgraph/notifications/")
    assert subscription["lifecycleNotificationUrl"].endswith("/msgraph/lifecycle/")
    tracker.run_once()  # nothing due: no second subscription, no request
    assert len(site.subscriptions()) == 1


def test_a_bounce_is_reported_through_a_notification_within_a_second(
    site: GraphEmulator, tracker: Tracker, events: list[DeliveryEvent]
) -> None:
    mail.send_mail("Hi", "Body", "noreply@contoso.com", ["ghost@nowhere.invalid"])
    took = react_until(tracker, lambda: any(e.event_type == "bounced" for e in events))
    print(f"bounce to signal through a notification: {took:.2f} s")
    assert took < 1.0
    [event] = events
    assert (event.recipient, event.status_code) == ("ghost@nowhere.invalid", "5.1.1")


def test_a_forged_notification_is_refused(site: GraphEmulator, tracker: Tracker) -> None:
    [watch] = DatabaseStore().watches()
    body = {
        "value": [
            {
                "subscriptionId": watch.subscription_id,
                "clientState": "guessed",
                "changeType": "created",
                "resource": "Users/x/Messages/y",
            }
        ]
    }
    url = site.subscriptions()[0]["notificationUrl"]
    assert requests.post(url, json=body, timeout=5).status_code == 403
    assert DatabaseStore().notices() == []


def test_a_missed_notification_is_found_by_the_resync(
    site: GraphEmulator, tracker: Tracker, events: list[DeliveryEvent]
) -> None:
    [watch] = DatabaseStore().watches()
    DatabaseStore().drop_watch(watch.subscription_id)  # the view refuses: as if the site were down
    mail.send_mail("Hi", "Body", "noreply@contoso.com", ["lost@nowhere.invalid"])
    time.sleep(0.5)
    tracker.react()
    assert events == []  # the notification was refused: nothing known yet
    DatabaseStore().save_watch(watch)  # the site is back
    site.send_lifecycle(watch.subscription_id, "missed")
    react_until(tracker, lambda: bool(events))
    assert [(e.event_type, e.recipient) for e in events] == [("bounced", "lost@nowhere.invalid")]


def test_subscriptions_are_renewed_before_they_expire(
    site: GraphEmulator, tracker: Tracker
) -> None:
    store = DatabaseStore()
    [watch] = store.watches()
    soon = datetime.now(timezone.utc) + timedelta(hours=20)
    store.save_watch(Watch(watch.subscription_id, watch.mailbox, watch.client_state, soon))
    tracker.run_once()
    [renewed] = store.watches()
    assert renewed.subscription_id == watch.subscription_id
    assert renewed.expires_at > datetime.now(timezone.utc) + timedelta(days=6)
    assert [r.method for r in site.requests if "/subscriptions/" in r.path] == ["PATCH"]


def test_a_removed_subscription_is_created_again(site: GraphEmulator, tracker: Tracker) -> None:
    [watch] = DatabaseStore().watches()
    site.send_lifecycle(watch.subscription_id, "subscriptionRemoved")
    deadline = time.monotonic() + 5
    while DatabaseStore().watches() == [watch] and time.monotonic() < deadline:
        tracker.react()
        time.sleep(0.05)
    [again] = DatabaseStore().watches()
    assert again.subscription_id != watch.subscription_id
    assert [s["id"] for s in site.subscriptions()] == [again.subscription_id]


def test_duplicate_notifications_are_reported_once(
    site: GraphEmulator, tracker: Tracker, events: list[DeliveryEvent]
) -> None:
    mail.send_mail("Hi", "Body", "noreply@contoso.com", ["twice@nowhere.invalid"])
    react_until(tracker, lambda: bool(events))
    [watch] = DatabaseStore().watches()
    DatabaseStore().notify([(watch.subscription_id, "created", "again")] * 3)  # Graph's retries
    tracker.react()
    tracker.run_once()  # and the polling pass reads the same NDR
    assert [(e.event_type, e.recipient) for e in events] == [("bounced", "twice@nowhere.invalid")]


def test_a_slow_tracker_never_makes_the_view_slow(site: GraphEmulator, tracker: Tracker) -> None:
    [watch] = DatabaseStore().watches()
    url = site.subscriptions()[0]["notificationUrl"]
    site.latency = 4.0  # every Graph request of the tracker now takes 4 s

    def run_once() -> None:
        from django.db import connection

        try:
            tracker.run_once()
        finally:  # this thread's own connection (Django never closes an in-memory one)
            if connection.connection is not None:
                connection.connection.close()

    busy = threading.Thread(target=run_once)
    busy.start()
    try:
        body = {
            "value": [
                {
                    "subscriptionId": watch.subscription_id,
                    "clientState": watch.client_state,
                    "changeType": "created",
                    "resource": "Users/x/Messages/y",
                }
            ]
        }
        started = time.monotonic()
        answer = requests.post(url, json=body, timeout=10)
        took = time.monotonic() - started
    finally:
        site.latency = 0.0
        busy.join()
    assert answer.status_code == 202
    assert took < 3.0
