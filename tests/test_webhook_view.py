"""The change-notification views through Django's test client, with CSRF checks on as in
production: the validation handshake, notifications recorded, and everything forged or
malformed refused with nothing recorded. (Graph's own notifications, over real HTTP to a
running server, are in tests/test_webhook.py.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from django.test import Client, override_settings

from msgraph_mail.emulator import GraphEmulator
from msgraph_mail.tracking.store import DatabaseStore, Watch
from msgraph_mail.views import MAX_BODY

pytestmark = pytest.mark.django_db

NOTIFICATIONS, LIFECYCLE = "/msgraph/notifications/", "/msgraph/lifecycle/"
SECRET = "s3cr3t-client-state-" + "x" * 40


@pytest.fixture
def watch(emulator: GraphEmulator) -> Iterator[Watch]:
    graph = emulator.settings(
        DELIVERY_TRACKING=["bounces"], NOTIFICATION_URL="https://example.com/msgraph/"
    )
    watch = Watch(
        "sub-1", "noreply@contoso.com", SECRET, datetime.now(timezone.utc) + timedelta(days=6)
    )
    DatabaseStore().save_watch(watch)
    with override_settings(MSGRAPH_MAIL=graph):
        yield watch


@pytest.fixture
def client() -> Client:
    return Client(enforce_csrf_checks=True)


def post(client: Client, url: str, body: Any, **extra: Any) -> Any:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post(url, data=data, content_type="application/json", **extra)


def change(subscription: str = "sub-1", state: str = SECRET, **more: Any) -> dict[str, Any]:
    return {
        "value": [
            {
                "subscriptionId": subscription,
                "clientState": state,
                "changeType": "created",
                "resource": "Users/0d3f/Messages/AAMk1",
                **more,
            }
        ]
    }


@pytest.mark.parametrize("url", [NOTIFICATIONS, LIFECYCLE])
def test_the_validation_handshake(client: Client, url: str) -> None:
    answer = client.post(f"{url}?validationToken=Validation%3A+Testing+client+application")
    assert answer.status_code == 200
    assert answer["Content-Type"].startswith("text/plain")
    assert answer.content == b"Validation: Testing client application"


def test_a_notification_is_recorded_and_answered_at_once(client: Client, watch: Watch) -> None:
    answer = post(client, NOTIFICATIONS, change())
    assert answer.status_code == 202
    [notice] = DatabaseStore().notices()
    assert (notice.subscription_id, notice.kind) == ("sub-1", "created")
    assert notice.resource == "Users/0d3f/Messages/AAMk1"


def test_lifecycle_events_are_recorded(client: Client, watch: Watch) -> None:
    for event in ("reauthorizationRequired", "subscriptionRemoved", "missed"):
        assert post(client, LIFECYCLE, change(lifecycleEvent=event)).status_code == 202
    assert [n.kind for n in DatabaseStore().notices()] == [
        "reauthorizationRequired",
        "subscriptionRemoved",
        "missed",
    ]
    assert post(client, LIFECYCLE, change(lifecycleEvent="nonsense")).status_code == 400


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (change(state="wrong"), 403),
        (change(state=""), 403),
        ({"value": [{"subscriptionId": "sub-1"}]}, 403),  # no clientState at all
        (change(subscription="sub-unknown"), 404),
        (b"not json", 400),
        ({"novalue": []}, 400),
        ({"value": "not a list"}, 400),
        (
            {"value": [change()["value"][0], change(state="wrong")["value"][0]]},
            403,
        ),  # one forged item refuses the whole batch
    ],
    ids=[
        "wrong state",
        "empty state",
        "no state",
        "unknown",
        "not json",
        "no value",
        "value not a list",
        "one forged of two",
    ],
)
def test_refused_notifications_record_nothing(
    client: Client, watch: Watch, body: Any, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    answer = post(client, NOTIFICATIONS, body)
    assert answer.status_code == status
    assert DatabaseStore().notices() == []
    assert SECRET not in caplog.text


def test_an_oversized_body_is_refused(client: Client, watch: Watch) -> None:
    answer = post(client, NOTIFICATIONS, b"{" + b" " * (MAX_BODY + 10) + b"}")
    assert answer.status_code == 413
    assert DatabaseStore().notices() == []


def test_only_post_is_accepted(client: Client, watch: Watch) -> None:
    assert client.get(NOTIFICATIONS).status_code == 405


def test_csrf_exemption_is_limited_to_these_views() -> None:
    from django.urls import get_resolver

    from msgraph_mail import views

    assert views.notifications.csrf_exempt is True
    assert views.lifecycle.csrf_exempt is True
    exempt = [
        pattern
        for pattern in get_resolver().url_patterns[0].url_patterns  # type: ignore[attr-defined]
        if getattr(pattern.callback, "csrf_exempt", False)
    ]
    assert {p.name for p in exempt} == {"notifications", "lifecycle"}
