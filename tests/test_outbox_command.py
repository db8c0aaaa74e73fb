"""manage.py msgraph_outbox: listing the outbox, and a manual resend that refuses to risk a
second delivery of an unknown message unless told to."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from io import StringIO
from typing import Any

import pytest
from django.core import mail
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from msgraph_mail.emulator import GraphEmulator
from msgraph_mail.outbox.store import DatabaseStore

from .helpers import IMMEDIATE, QUEUED

pytestmark = pytest.mark.django_db


def outbox(*args: str) -> str:
    out = StringIO()
    call_command("msgraph_outbox", *args, stdout=out)
    return out.getvalue()


def queue(*subjects: str, sender: str = "noreply@contoso.com") -> list[str]:
    messages = [mail.EmailMessage(s, "Body", sender, ["a@example.com"]) for s in subjects]
    assert mail.get_connection().send_messages(messages) == len(messages)
    return [m.msgraph_status.message_id for m in messages]


def test_lists_every_open_message_with_its_next_try(dummy_tasks: Any) -> None:
    store = DatabaseStore()
    queued, deferred, failed, unknown, sent = queue("q", "d", "f", "u", "s")
    later = datetime.now(timezone.utc) + timedelta(minutes=5)
    assert store.claim(deferred)  # a passing failure: claimed, then deferred
    store.defer(deferred, later)
    for message_id, status in ((failed, "failed"), (unknown, "unknown"), (sent, "sent")):
        assert store.claim(message_id)
        store.finish(message_id, status, error=f"why {status}")
    text = outbox()
    assert [line.split()[0] for line in text.splitlines() if not line.startswith(" ")] == [
        "queued",
        "deferred",
        "failed",
        "unknown",
    ]
    assert f"deferred  {deferred}" in text
    assert f"next try {later.isoformat()[:16]}" in text
    assert "why failed" in text
    assert sent not in text  # sent mail is not listed unless asked for
    rows = json.loads(outbox("--json", "--status", "sent"))
    assert [(r["message_id"], r["status"]) for r in rows] == [(sent, "sent")]
    assert rows[0]["from"] == "noreply@contoso.com"
    assert outbox("--status", "sending") == "No sending messages.\n"
    assert queued in outbox("--status", "queued")


def test_resend_queues_a_failed_message_again(dummy_tasks: Any) -> None:
    store = DatabaseStore()
    [failed] = queue("Invoice")
    assert store.claim(failed)
    store.finish(failed, "failed", error="SenderNotFound")
    dummy_tasks.clear()
    before = store.get(failed)
    assert before is not None
    assert "Queued" in outbox("--resend", failed)
    after = store.get(failed)
    assert after is not None
    assert after.status == "queued"
    assert after.envelope.enqueued > before.envelope.enqueued  # QUEUE_MAX_AGE from the resend
    assert [r.args[0] for r in dummy_tasks.results] == [failed]


def test_an_unknown_message_is_resent_only_with_force(dummy_tasks: Any) -> None:
    store = DatabaseStore()
    [unknown] = queue("Receipt")
    assert store.claim(unknown)
    store.finish(unknown, "unknown", error="no answer")
    with pytest.raises(CommandError, match="may have been delivered") as refused:
        outbox("--resend", unknown)
    assert "Sent Items" in str(refused.value)
    assert "--force" in str(refused.value)
    assert len(dummy_tasks.results) == 1  # only the first enqueue: nothing queued again
    assert store.get(unknown).status == "unknown"  # type: ignore[union-attr]
    outbox("--resend", unknown, "--force")
    assert store.get(unknown).status == "queued"  # type: ignore[union-attr]
    assert [r.args[0] for r in dummy_tasks.results] == [unknown, unknown]


@pytest.mark.parametrize("state", ["queued", "sent"])
def test_only_failed_or_unknown_messages_are_resent(dummy_tasks: Any, state: str) -> None:
    store = DatabaseStore()
    [message_id] = queue("Hi")
    if state == "sent":
        assert store.claim(message_id)
        store.finish(message_id, "sent")
    with pytest.raises(CommandError, match=f"is {state}: only a failed message"):
        outbox("--resend", message_id)
    with pytest.raises(CommandError, match="no message <nothing@here>"):
        outbox("--resend", "<nothing@here>")


def test_resend_delivers_once_the_cause_is_fixed(msgraph_emulator: GraphEmulator) -> None:
    """End to end: an unknown sender fails for good; the administrator creates the mailbox
    and resends from the command; the message arrives once."""
    with override_settings(EMAIL_BACKEND=QUEUED, TASKS=IMMEDIATE):
        mail.send_mail("Welcome", "Body", "sales@contoso.com", ["a@example.com"])
        [row] = json.loads(outbox("--json", "--status", "failed"))
        assert "sales@contoso.com" in row["last_error"]
        msgraph_emulator.add_user("sales@contoso.com")
        outbox("--resend", row["message_id"])
    assert [m.subject for m in msgraph_emulator.sent] == ["Welcome"]
    assert DatabaseStore().get(row["message_id"]).status == "sent"  # type: ignore[union-attr]
