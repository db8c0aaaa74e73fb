"""manage.py msgraph_outbox: listing the outbox, and a manual resend that refuses to risk a
second delivery of an unknown message unless told to."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from io import StringIO
from typing import Any

import django
import pytest
from django.core import mail
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from msgraph_mail.emulator import GraphEmulator
from msgraph_mail.outbox.store import DatabaseStore

from .helpers import DUMMY, IMMEDIATE, QUEUED

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


def test_the_list_says_which_message_is_which(dummy_tasks: Any) -> None:
    message = mail.EmailMessage(
        "Invoice 42",
        "Body",
        "noreply@contoso.com",
        ["a@example.com", "b@example.com"],
        cc=["c@example.com"],
    )
    assert mail.get_connection().send_messages([message]) == 1
    text = outbox()
    assert '"Invoice 42" to a@example.com and 2 more' in text
    [row] = json.loads(outbox("--json"))
    assert (row["subject"], row["recipients"], row["first_recipient"]) == (
        "Invoice 42",
        3,
        "a@example.com",
    )


def test_an_envelope_queued_before_subjects_were_kept_is_described_from_its_mime(
    dummy_tasks: Any,
) -> None:
    from msgraph_mail.models import OutboxMessage

    [message_id] = queue("Older")
    row = OutboxMessage.objects.get(message_id=message_id)
    data = json.loads(row.envelope)
    del data["subject"], data["first_recipient"]
    row.envelope = json.dumps(data)
    row.save()
    [listed] = json.loads(outbox("--json"))
    assert (listed["subject"], listed["first_recipient"]) == ("Older", "a@example.com")


def database_check() -> None:
    """``manage.py check --database default --fail-level WARNING``, as a deployment gate."""
    call_command(
        "check",
        "--database",
        "default",
        "--fail-level",
        "WARNING",
        stdout=StringIO(),
        stderr=StringIO(),
    )


def test_a_missing_outbox_table_is_named_with_what_to_do(dummy_tasks: Any) -> None:
    """Without migrate: our typed error in the caller and in the command, and check names it."""
    from django.core.management import CommandError as ManagementError
    from django.core.management.base import SystemCheckError
    from django.db import connection

    from msgraph_mail.exceptions import OutboxNotMigrated

    with connection.cursor() as cursor:  # rolled back with the test's transaction
        cursor.execute("ALTER TABLE msgraph_mail_outboxmessage RENAME TO not_migrated")
    with pytest.raises(OutboxNotMigrated, match=r"manage\.py migrate msgraph_mail"):
        mail.send_mail("Hi", "Body", "noreply@contoso.com", ["a@example.com"])
    assert dummy_tasks.results == []  # nothing enqueued without its outbox row
    with pytest.raises(ManagementError, match="outbox table msgraph_mail_outboxmessage is missing"):
        outbox()
    with pytest.raises(SystemCheckError, match=r"msgraph_mail\.W012"):
        database_check()
    call_command("check", stdout=StringIO())  # offline, without --database: no query


def test_an_unapplied_migration_is_reported_by_the_database_check(dummy_tasks: Any) -> None:
    from django.core.management.base import SystemCheckError
    from django.db.migrations.recorder import MigrationRecorder

    MigrationRecorder.Migration.objects.filter(app="msgraph_mail").delete()
    with pytest.raises(SystemCheckError, match=r"msgraph_mail\.W013.*0001_initial"):
        database_check()


def test_the_database_check_says_nothing_when_the_outbox_is_migrated(dummy_tasks: Any) -> None:
    from msgraph_mail import checks

    assert checks.check_outbox_database(databases=["default"]) == []


MAILERS_ONLY = pytest.mark.skipif(django.VERSION < (6, 1), reason="MAILERS is new in Django 6.1")


def _mailers(emulator: GraphEmulator, *queued: str, default: str | None = None) -> Any:
    options = {key.lower(): value for key, value in emulator.settings().items()}
    mailers = {alias: {"BACKEND": QUEUED, "OPTIONS": options} for alias in queued}
    mailers["default"] = {"BACKEND": default or QUEUED, "OPTIONS": options}
    if default is not None and default != QUEUED:
        mailers["default"] = {"BACKEND": default}
    return override_settings(MAILERS=mailers, MSGRAPH_MAIL=None, TASKS=DUMMY)


@MAILERS_ONLY
def test_a_mailers_only_project_is_found_without_using(msgraph_emulator: GraphEmulator) -> None:
    with _mailers(msgraph_emulator):
        mail.send_mail("Hello", "Body", "noreply@contoso.com", ["a@example.com"])
        assert '"Hello" to a@example.com' in outbox()


@MAILERS_ONLY
def test_the_only_queued_mailer_is_used_when_default_is_another_backend(
    msgraph_emulator: GraphEmulator,
) -> None:
    console = "django.core.mail.backends.locmem.EmailBackend"
    with _mailers(msgraph_emulator, "bulk", default=console):
        mail.send_mail("Hello", "Body", "noreply@contoso.com", ["a@example.com"], using="bulk")
        assert '"Hello" to a@example.com' in outbox()


@MAILERS_ONLY
def test_several_queued_mailers_without_default_need_using(
    msgraph_emulator: GraphEmulator,
) -> None:
    console = "django.core.mail.backends.locmem.EmailBackend"
    with (
        _mailers(msgraph_emulator, "bulk", "billing", default=console),
        pytest.raises(CommandError, match=r"--using \(bulk, billing\)"),
    ):
        outbox()
    with _mailers(msgraph_emulator, "bulk", "billing", default=console):
        assert (
            outbox("--using", "billing")
            == "No queued or deferred or sending or failed or unknown messages.\n"
        )
        with pytest.raises(CommandError, match="No mailer 'nope' in MAILERS"):
            outbox("--using", "nope")
        with pytest.raises(CommandError, match="does not use QueuedEmailBackend"):
            outbox("--using", "default")


@MAILERS_ONLY
def test_default_is_chosen_among_several_and_the_others_are_named(
    msgraph_emulator: GraphEmulator,
) -> None:
    err = StringIO()
    with _mailers(msgraph_emulator, "bulk"):
        call_command("msgraph_outbox", stdout=StringIO(), stderr=err)
    assert (
        "Using MAILERS['default']; also configured: bulk (choose with --using)." in err.getvalue()
    )


def test_purge_deletes_finished_messages_older_than_the_retention(dummy_tasks: Any) -> None:
    from msgraph_mail.models import OutboxMessage

    old_sent, old_failed, recent, waiting = queue("a", "b", "c", "d")
    store = DatabaseStore()
    for message_id, status in ((old_sent, "sent"), (old_failed, "failed"), (recent, "sent")):
        assert store.claim(message_id)
        store.finish(message_id, status)
    long_ago = datetime.now(timezone.utc) - timedelta(days=31)
    OutboxMessage.objects.filter(message_id__in=[old_sent, old_failed, waiting]).update(
        updated_at=long_ago
    )
    assert "Deleted 2 finished message(s) older than 30 days." in outbox("--purge")
    left = set(OutboxMessage.objects.values_list("message_id", flat=True))
    assert left == {recent, waiting}  # a queued message is never purged, however old


def test_a_sent_message_keeps_only_what_the_listing_shows(
    msgraph_emulator: GraphEmulator,
) -> None:
    """OUTBOX_KEEP_CONTENT off (the default): the MIME is dropped once sent."""
    graph = msgraph_emulator.settings()
    with override_settings(EMAIL_BACKEND=QUEUED, TASKS=IMMEDIATE, MSGRAPH_MAIL=graph):
        mail.send_mail("Private", "Secret body", "noreply@contoso.com", ["a@example.com"])
        [row] = json.loads(outbox("--json", "--status", "sent"))
    stored = DatabaseStore().get(row["message_id"])
    assert stored is not None
    assert stored.envelope.mime == ""
    assert stored.envelope.subject == "Private"
    assert row["subject"] == "Private"
    keep = {**graph, "OUTBOX_KEEP_CONTENT": True}
    with override_settings(EMAIL_BACKEND=QUEUED, TASKS=IMMEDIATE, MSGRAPH_MAIL=keep):
        mail.send_mail("Kept", "Body", "noreply@contoso.com", ["a@example.com"])
    [kept] = [m for m in DatabaseStore().list("sent") if m.envelope.subject == "Kept"]
    assert kept.envelope.mime != ""


def test_the_worker_enforces_the_retention_hourly(
    dummy_tasks: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from msgraph_mail.models import OutboxMessage
    from msgraph_mail.outbox import deliver

    [old] = queue("old")
    store = DatabaseStore()
    assert store.claim(old)
    store.finish(old, "failed")
    OutboxMessage.objects.filter(message_id=old).update(
        updated_at=datetime.now(timezone.utc) - timedelta(days=40)
    )
    monkeypatch.setattr(deliver, "_last_purge", {})
    deliver.enforce_retention(store, None)
    assert not OutboxMessage.objects.filter(message_id=old).exists()
    [other] = queue("other")
    assert store.claim(other)
    store.finish(other, "failed")
    OutboxMessage.objects.filter(message_id=other).update(
        updated_at=datetime.now(timezone.utc) - timedelta(days=40)
    )
    deliver.enforce_retention(store, None)  # within the hour: no second sweep
    assert OutboxMessage.objects.filter(message_id=other).exists()
