"""A queued message whose task was lost (its worker killed after taking the task and before
claiming the message) is enqueued again by the next task: never sent twice, never lost."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.core import mail
from django.test import override_settings
from django.utils import timezone

from msgraph_mail.emulator import GraphEmulator
from msgraph_mail.models import OutboxMessage
from msgraph_mail.outbox.store import DatabaseStore

pytestmark = pytest.mark.django_db


def test_a_lost_task_is_enqueued_again_and_sent_once(
    msgraph_emulator: GraphEmulator, dummy_tasks: Any
) -> None:
    from msgraph_mail.outbox.tasks import send_envelope

    lost, later = (
        mail.EmailMessage("Lost", "x", None, ["a@example.com"]),
        mail.EmailMessage("Later", "x", None, ["b@example.com"]),
    )
    assert mail.get_connection().send_messages([lost, later]) == 2
    lost_id, later_id = lost.msgraph_status.message_id, later.msgraph_status.message_id
    # The worker that took Lost's task died before claiming it, an hour ago.
    an_hour_ago = timezone.now() - timedelta(hours=1)
    OutboxMessage.objects.filter(message_id=lost_id).update(updated_at=an_hour_ago)
    dummy_tasks.clear()
    assert send_envelope.call(later_id, 1) == "sent"  # the next task notices the orphan
    assert [r.args for r in dummy_tasks.results] == [[lost_id, 1]]
    send_envelope.call(later_id, 1)  # a duplicate run: already finished, nothing sent
    assert [r.args for r in dummy_tasks.results] == [[lost_id, 1]]  # found once, not every time
    assert send_envelope.call(lost_id, 1) == "sent"
    assert sorted(m.subject for m in msgraph_emulator.sent) == ["Later", "Lost"]
    assert DatabaseStore().get(lost_id).status == "sent"  # type: ignore[union-attr]


def test_a_deferred_message_is_no_orphan(msgraph_emulator: GraphEmulator, dummy_tasks: Any) -> None:
    store = DatabaseStore()
    message = mail.EmailMessage("Deferred", "x", None, ["a@example.com"])
    assert mail.get_connection().send_messages([message]) == 1
    message_id = message.msgraph_status.message_id
    assert store.claim(message_id)
    store.defer(message_id, timezone.now() + timedelta(hours=2))  # a spent daily budget
    OutboxMessage.objects.filter(message_id=message_id).update(
        updated_at=timezone.now() - timedelta(hours=1)
    )
    assert store.orphans(240) == []


def test_a_reaped_message_is_announced_and_looked_up(
    msgraph_emulator: GraphEmulator, dummy_tasks: Any
) -> None:
    """A message left sending by a killed worker is unknown like any other: the
    message_unknown signal, and with RESOLVE_UNKNOWN a lookup in Sent Items (never a send)."""
    from msgraph_mail.outbox.tasks import send_envelope
    from msgraph_mail.signals import message_unknown

    announced: list[str] = []

    def record(sender: type, message_id: str, **kwargs: Any) -> None:
        announced.append(message_id)

    message_unknown.connect(record)
    try:
        with override_settings(MSGRAPH_MAIL=msgraph_emulator.settings(RESOLVE_UNKNOWN=2)):
            held = mail.EmailMessage("Held", "x", None, ["a@example.com"])
            other = mail.EmailMessage("Other", "x", None, ["b@example.com"])
            assert mail.get_connection().send_messages([held, other]) == 2
            held_id = held.msgraph_status.message_id
            assert DatabaseStore().claim(held_id)  # the worker that claimed it was killed
            OutboxMessage.objects.filter(message_id=held_id).update(
                updated_at=timezone.now() - timedelta(hours=1)
            )
            dummy_tasks.clear()
            assert send_envelope.call(other.msgraph_status.message_id, 1) == "sent"
    finally:
        message_unknown.disconnect(record)
    assert announced == [held_id]
    assert DatabaseStore().get(held_id).status == "unknown"  # type: ignore[union-attr]
    assert [r.args for r in dummy_tasks.results] == [[held_id, 1, 1]]  # a lookup, not a send
    assert [m.subject for m in msgraph_emulator.sent] == ["Other"]
