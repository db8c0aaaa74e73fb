"""Delivery tracking end to end, in-process: Django's mail API, the emulator over HTTP, the
tracker's passes, the delivery_event signal, the suppression list and the outbox.

The tracker as its own process (killed, restarted, two at once, 1,000 messages) is in
tests/test_tracking_process.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from io import StringIO
from typing import Any

import pytest
from django.core import mail
from django.core.management import call_command
from django.test import override_settings

from msgraph_mail.conf import load_settings
from msgraph_mail.emulator import GraphEmulator
from msgraph_mail.exceptions import BatchSendError, RecipientsSuppressed
from msgraph_mail.signals import delivery_event
from msgraph_mail.tracking.events import DeliveryEvent
from msgraph_mail.tracking.store import DatabaseStore
from msgraph_mail.tracking.tracker import Tracker

from .helpers import DUMMY, QUEUED

pytestmark = pytest.mark.django_db(transaction=True)

ROLES = ["Mail.Send", "User.Read.All", "Mail.Read", "ExchangeMessageTrace.Read.All"]
DELAY = 0.05


@pytest.fixture
def tracked(msgraph_emulator: GraphEmulator) -> Iterator[GraphEmulator]:
    """The emulator with tracking's permissions, quick outcomes, and both sources on."""
    msgraph_emulator.roles = ROLES
    msgraph_emulator.delivery_delay = DELAY
    graph = msgraph_emulator.settings(DELIVERY_TRACKING=["trace", "bounces"])
    with override_settings(MSGRAPH_MAIL=graph):
        yield msgraph_emulator


@pytest.fixture
def events() -> Iterator[list[tuple[DeliveryEvent, Any]]]:
    seen: list[tuple[DeliveryEvent, Any]] = []

    def receiver(sender: Any, event: DeliveryEvent, outbox_message: Any, **kwargs: Any) -> None:
        seen.append((event, outbox_message))

    delivery_event.connect(receiver, weak=False)
    yield seen
    delivery_event.disconnect(receiver)


def tracker() -> Tracker:
    return Tracker(load_settings())


def settle(passes: int = 1) -> None:
    """Let the emulator's outcomes and reports become due, then run the tracker."""
    time.sleep(DELAY * 3)
    track = tracker()
    try:
        for _ in range(passes):
            track.run_once()
    finally:
        track.close()


def kinds(seen: list[tuple[DeliveryEvent, Any]]) -> list[tuple[str, str]]:
    return sorted((event.event_type, event.recipient) for event, _ in seen)


def test_a_bounce_is_reported_once_with_its_code(
    tracked: GraphEmulator, events: list[tuple[DeliveryEvent, Any]]
) -> None:
    message = mail.EmailMessage("Hi", "Body", "noreply@contoso.com", ["ghost@nowhere.invalid"])
    message.send()
    settle(passes=3)
    [(event, outbox_message)] = [(e, o) for e, o in events if e.event_type == "bounced"]
    assert event.recipient == "ghost@nowhere.invalid"
    assert event.status_code == "5.1.1"
    assert event.source == "ndr"
    assert event.message_id == message.msgraph_status.message_id
    assert event.mailbox == "noreply@contoso.com"
    assert not event.sender_problem
    assert outbox_message is None
    settle(passes=2)  # the NDR and the trace row, read again: nothing new
    assert [e.event_type for e, _ in events].count("bounced") == 1


def test_delivered_quarantined_deferred_and_spam_are_reported(
    tracked: GraphEmulator, events: list[tuple[DeliveryEvent, Any]]
) -> None:
    tracked.set_delivery("late@example.com", "deferred")
    tracked.set_delivery("jail@example.com", "quarantined")
    tracked.set_delivery("junk@example.com", "filtered_as_spam")
    to = ["ok@example.com", "late@example.com", "jail@example.com", "junk@example.com"]
    mail.send_mail("Hi", "Body", "noreply@contoso.com", to)
    settle(passes=2)
    found = set(kinds(events))
    assert ("delivered", "ok@example.com") in found
    assert ("deferred", "late@example.com") in found
    assert ("quarantined", "jail@example.com") in found
    assert ("filtered_as_spam", "junk@example.com") in found
    [deferred] = [e for e, _ in events if e.event_type == "deferred"]
    assert deferred.status_code is not None
    assert deferred.status_code.startswith("4.")


def test_suppression_drops_a_hard_bounced_address_next_time(
    tracked: GraphEmulator, events: list[tuple[DeliveryEvent, Any]]
) -> None:
    mail.send_mail("One", "Body", "noreply@contoso.com", ["nobody@contoso.com"])
    settle(passes=2)
    assert ("bounced", "nobody@contoso.com") in kinds(events)
    before = tracked.count("sendMail")
    message = mail.EmailMessage(
        "Two", "Body", "noreply@contoso.com", ["Nobody <NOBODY@contoso.com>", "alice@contoso.com"]
    )
    assert message.send() == 1
    assert message.msgraph_status.suppressed == ["nobody@contoso.com"]
    assert tracked.sent[-1].to == ["alice@contoso.com"]
    with pytest.raises(RecipientsSuppressed, match=r"nobody@contoso\.com") as raised:
        mail.send_mail("Three", "Body", "noreply@contoso.com", ["nobody@contoso.com"])
    assert raised.value.suppressed == ["nobody@contoso.com"]
    assert tracked.count("sendMail") == before + 1  # nothing sent for the third
    out = StringIO()
    call_command("msgraph_suppressions", stdout=out)
    assert "nobody@contoso.com" in out.getvalue()
    call_command("msgraph_suppressions", "--remove", "nobody@contoso.com", stdout=StringIO())
    mail.send_mail("Four", "Body", "noreply@contoso.com", ["nobody@contoso.com"])
    assert tracked.count("sendMail") == before + 2


def test_a_batch_error_names_the_suppressed_recipients(tracked: GraphEmulator) -> None:
    DatabaseStore().suppress("gone@example.com")
    messages = [
        mail.EmailMessage("A", "B", "noreply@contoso.com", ["gone@example.com", "ok@example.com"]),
        mail.EmailMessage("C", "D", "nobody-here@nowhere.com", ["x@example.com"]),
        mail.EmailMessage("E", "F", "nobody-else@nowhere.com", ["y@example.com"]),
    ]
    with pytest.raises(BatchSendError) as raised:
        mail.get_connection().send_messages(messages)
    assert raised.value.suppressed == [(messages[0], ["gone@example.com"])]
    assert "sent without gone@example.com" in str(raised.value)


def test_a_sender_problem_is_logged_and_never_suppresses(
    tracked: GraphEmulator,
    events: list[tuple[DeliveryEvent, Any]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    tracked.set_delivery("partner@example.com", "bounced", code="5.7.233")
    mail.send_mail("Hi", "Body", "noreply@contoso.com", ["partner@example.com"])
    settle(passes=2)
    [event] = [e for e, _ in events if e.event_type == "bounced"]
    assert event.sender_problem
    assert event.status_code == "5.7.233"
    assert DatabaseStore().suppressed(["partner@example.com"]) == set()
    errors = [r for r in caplog.records if r.levelname == "ERROR" and "5.7.233" in r.getMessage()]
    assert errors
    assert "external recipient rate limit" in errors[0].getMessage()


def test_json_route_messages_are_tracked_by_our_header(
    tracked: GraphEmulator, events: list[tuple[DeliveryEvent, Any]]
) -> None:
    message = mail.EmailMessage(
        "Bulk",
        "Body",
        "noreply@contoso.com",
        ["ghost@nowhere.invalid"],
        headers={"X-MSGraph-Save-To-Sent-Items": "false"},
    )
    message.send()
    assert message.msgraph_status.route == "sendMail-json"
    settle(passes=2)
    assert ("bounced", "ghost@nowhere.invalid") in kinds(events)


def test_a_tenant_that_rewrites_message_ids_is_tracked_all_the_same(
    tracked: GraphEmulator, events: list[tuple[DeliveryEvent, Any]]
) -> None:
    tracked.rewrite_message_ids = True
    mail.send_mail("Hi", "Body", "noreply@contoso.com", ["ok@example.com", "x@nowhere.invalid"])
    settle(passes=2)
    assert {("delivered", "ok@example.com"), ("bounced", "x@nowhere.invalid")} <= set(kinds(events))


def test_nothing_is_asked_when_nothing_is_tracked(tracked: GraphEmulator) -> None:
    before = len(tracked.requests)
    settle()
    assert [r for r in tracked.requests[before:] if "messageTraces" in r.path] == []


def test_tracking_off_costs_no_request_and_no_header(msgraph_emulator: GraphEmulator) -> None:
    message = mail.EmailMessage("Hi", "Body", "noreply@contoso.com", ["a@example.com"])
    message.send()
    assert "X-MSGraph-Tracking-Id" not in message.extra_headers
    assert msgraph_emulator.count() == 3  # token, lookup, sendMail


def test_the_outbox_records_delivery_and_the_trace_resolves_an_unknown_message(
    tracked: GraphEmulator, events: list[tuple[DeliveryEvent, Any]]
) -> None:
    from msgraph_mail.outbox.deliver import deliver
    from msgraph_mail.outbox.store import DatabaseStore as Outbox

    graph = tracked.settings(DELIVERY_TRACKING=["trace"])
    with override_settings(EMAIL_BACKEND=QUEUED, TASKS=DUMMY, MSGRAPH_MAIL=graph):
        message = mail.EmailMessage("Hi", "Body", "noreply@contoso.com", ["ok@example.com"])
        message.send()
        outbox = Outbox()
        stored = outbox.get(message.msgraph_status.message_id)
        assert stored is not None
        tracked.fail_next("gateway_timeout")  # Graph takes it; the answer is a 504
        outcome = deliver(stored.envelope, attempt=1, store=outbox)
        assert outcome.status == "unknown"
        settle(passes=2)
        assert outbox.get(stored.message_id).status == "sent"  # type: ignore[union-attr]
        assert tracked.count("sendMail") == 1  # never sent again
        [(_event, outbox_message)] = [(e, o) for e, o in events if e.event_type == "delivered"]
        assert outbox_message is not None
        assert outbox_message.message_id == stored.message_id
        out = StringIO()
        call_command("msgraph_outbox", "--status", "sent", stdout=out)
    assert "delivery: delivered ok@example.com" in out.getvalue()
