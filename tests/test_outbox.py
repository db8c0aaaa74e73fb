"""The outbox core: envelopes built in the caller, deliver()'s outcome rules against the
emulator, the database store's atomic claim, and QueuedEmailBackend with a tasks backend
that runs nothing (DummyBackend) or runs in the caller (ImmediateBackend)."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from django.core import mail
from django.test import override_settings

from msgraph_mail.conf import load_settings
from msgraph_mail.emulator import GraphEmulator
from msgraph_mail.exceptions import InvalidMessage, MessageTooLarge
from msgraph_mail.models import OutboxMessage
from msgraph_mail.outbox import Envelope, build_envelope
from msgraph_mail.outbox.deliver import claim_timeout, classify, deliver
from msgraph_mail.outbox.store import DatabaseStore

from .helpers import DUMMY, IMMEDIATE, QUEUED

pytestmark = pytest.mark.django_db


@pytest.fixture
def store() -> DatabaseStore:
    return DatabaseStore()


def message(subject: str = "Hi", sender: str = "noreply@contoso.com", **kw: Any) -> Any:
    return mail.EmailMessage(subject, "Body", sender, ["a@example.com"], **kw)


def envelope_of(emulator: GraphEmulator, msg: Any = None, **extra: Any) -> Envelope:
    with override_settings(MSGRAPH_MAIL=emulator.settings(**extra)):
        return build_envelope(msg or message(), load_settings())


def queued(store: DatabaseStore, envelope: Envelope) -> Envelope:
    store.add(envelope)
    return envelope


# the envelope ---------------------------------------------------------------------------


def test_envelope_is_plain_json_with_the_mime_and_no_secret(msgraph_emulator):
    msg = message(bcc=["hidden@example.com"], headers={"X-MSGraph-Mailbox": "alice@contoso.com"})
    envelope = envelope_of(msgraph_emulator, msg)
    data = json.loads(json.dumps(envelope.to_dict()))
    assert Envelope.from_dict(data) == envelope
    assert msgraph_emulator.settings()["CLIENT_SECRET"] not in json.dumps(data)
    mime = base64.b64decode(envelope.mime)
    assert b"Bcc: hidden@example.com" in mime
    assert b"X-MSGraph-Mailbox" not in mime
    assert envelope.mailbox_override == "alice@contoso.com"
    assert envelope.recipients == 2
    assert envelope.alias is None
    assert envelope.priority == "normal"
    # the Message-ID is minted once, in the message and in its MIME
    assert msg.extra_headers["Message-ID"] == envelope.message_id
    assert f"Message-ID: {envelope.message_id}".encode() in mime


def test_envelope_keeps_a_given_message_id(msgraph_emulator):
    msg = message(headers={"Message-ID": "<given@contoso.com>"})
    assert envelope_of(msgraph_emulator, msg).message_id == "<given@contoso.com>"


def test_a_bad_message_fails_when_it_is_built(msgraph_emulator):
    with pytest.raises(InvalidMessage):
        envelope_of(msgraph_emulator, message(sender="not an address"))
    big = message()
    big.attach("big.bin", b"x" * 3_500_000, "application/octet-stream")
    with pytest.raises(MessageTooLarge, match="LARGE_MESSAGES"):
        envelope_of(msgraph_emulator, big)  # with LARGE_MESSAGES: tests/test_outbox_large.py


# deliver() ------------------------------------------------------------------------------


def test_sent_once(msgraph_emulator, store):
    envelope = queued(store, envelope_of(msgraph_emulator))
    outcome = deliver(envelope, attempt=1, store=store)
    assert outcome.status == "sent"
    assert outcome.request_id
    assert [m.header("Message-ID") for m in msgraph_emulator.sent] == [envelope.message_id]
    row = store.get(envelope.message_id)
    assert row is not None
    assert (row.status, row.attempts, row.request_id) == ("sent", 1, outcome.request_id)
    # a second run of the same task (at-least-once engines) never sends again
    again = deliver(envelope, attempt=1, store=store)
    assert (again.status, again.claimed) == ("unknown", False)
    assert len(msgraph_emulator.sent) == 1
    assert store.get(envelope.message_id).status == "sent"  # untouched


def test_throttled_is_deferred_with_retry_after(msgraph_emulator, store):
    envelope = queued(store, envelope_of(msgraph_emulator))
    msgraph_emulator.fail_next("throttle", retry_after=30)
    with override_settings(MSGRAPH_MAIL=msgraph_emulator.settings(MAX_RETRY_WAIT=1)):
        outcome = deliver(envelope, attempt=1, store=store)
    assert outcome.status == "retry"
    assert 30 <= outcome.delay <= 36  # Retry-After plus up to 20 % jitter
    row = store.get(envelope.message_id)
    assert row.status == "queued"
    assert row.deferred
    assert "429" in (row.last_error or "")
    assert msgraph_emulator.sent == []
    assert deliver(envelope, attempt=2, store=store).status == "sent"


def test_unreachable_graph_is_deferred_with_backoff(msgraph_emulator, store):
    envelope = queued(store, envelope_of(msgraph_emulator))
    msgraph_emulator.stop()
    with override_settings(MSGRAPH_MAIL=msgraph_emulator.settings(MAX_RETRIES=0, MAX_RETRY_WAIT=2)):
        first = deliver(envelope, attempt=1, store=store)
        assert first.status == "retry"
        assert 2 <= first.delay <= 2.4
        assert 8 <= classify(first.exception, envelope, 3, load_settings()).delay <= 9.6
    msgraph_emulator.start()
    assert deliver(envelope, attempt=2, store=store).status == "sent"
    assert len(msgraph_emulator.sent) == 1


def test_a_passing_failure_fails_after_queue_max_age(msgraph_emulator, store):
    old = (datetime.now(timezone.utc) - timedelta(hours=2)).isoformat()
    fresh = envelope_of(msgraph_emulator).to_dict()
    envelope = queued(store, Envelope(**{**fresh, "enqueued_at": old}))
    msgraph_emulator.fail_next("unavailable", times=10)
    settings = msgraph_emulator.settings(MAX_RETRIES=0, QUEUE_MAX_AGE=3600)
    with override_settings(MSGRAPH_MAIL=settings):
        outcome = deliver(envelope, attempt=5, store=store)
    assert outcome.status == "failed"
    assert "QUEUE_MAX_AGE" in (outcome.error or "")
    assert store.get(envelope.message_id).status == "failed"


def test_an_unknown_sender_fails_at_once(msgraph_emulator, store):
    envelope = queued(store, envelope_of(msgraph_emulator, message(sender="nobody@contoso.com")))
    outcome = deliver(envelope, attempt=1, store=store)
    assert outcome.status == "failed"
    assert "nobody@contoso.com" in (outcome.error or "")
    assert store.get(envelope.message_id).status == "failed"
    assert msgraph_emulator.count("sendMail") == 0


def test_a_lost_answer_is_unknown_and_never_sent_again(msgraph_emulator, store):
    envelope = queued(store, envelope_of(msgraph_emulator))
    msgraph_emulator.fail_next("gateway_timeout")  # delivered, then 504
    assert deliver(envelope, attempt=1, store=store).status == "unknown"
    assert store.get(envelope.message_id).status == "unknown"
    assert deliver(envelope, attempt=1, store=store).claimed is False
    assert len(msgraph_emulator.sent) == 1


def test_single_mailbox_resolves_from_the_envelope(msgraph_emulator, store):
    extra = {"MODE": "single_mailbox", "MAILBOX": "noreply@contoso.com"}
    msg = message(headers={"X-MSGraph-Mailbox": "alice@contoso.com"})
    envelope = queued(store, envelope_of(msgraph_emulator, msg, **extra))
    with override_settings(MSGRAPH_MAIL=msgraph_emulator.settings(**extra)):
        outcome = deliver(envelope, attempt=1, store=store)
    assert outcome.status == "failed"  # the override names another mailbox: lasting
    assert "single_mailbox" in (outcome.error or "")


# the store ------------------------------------------------------------------------------


def test_claim_is_taken_once(msgraph_emulator, store):
    envelope = queued(store, envelope_of(msgraph_emulator))
    assert store.claim(envelope.message_id) is True
    assert store.claim(envelope.message_id) is False
    store.defer(envelope.message_id, datetime.now(timezone.utc) + timedelta(seconds=60))
    assert [m.message_id for m in store.list("queued")] == [envelope.message_id]
    assert store.claim(envelope.message_id) is True
    assert store.get(envelope.message_id).attempts == 2


def test_a_stale_claim_is_reaped_as_unknown(msgraph_emulator, store):
    envelope = queued(store, envelope_of(msgraph_emulator))
    assert store.claim(envelope.message_id)
    assert store.reap(60) == 0  # fresh: a worker may still be sending it
    OutboxMessage.objects.update(updated_at=datetime.now(timezone.utc) - timedelta(seconds=61))
    assert store.reap(60) == 1
    assert store.get(envelope.message_id).status == "unknown"
    assert claim_timeout(load_settings()) > 60  # the defaults: 60 s of waits, 30 s timeouts


# QueuedEmailBackend ---------------------------------------------------------------------


def test_backend_queues_and_returns_at_once(msgraph_emulator, dummy_tasks, store):
    messages = [message(f"M{i}") for i in range(3)]
    assert mail.get_connection().send_messages(messages) == 3
    assert msgraph_emulator.count() == 0  # nothing reached Graph from the caller
    assert [m.msgraph_status.status for m in messages] == ["queued"] * 3
    ids = [m.msgraph_status.message_id for m in messages]
    assert [m.message_id for m in store.list()] == ids
    assert [r.args for r in dummy_tasks.results] == [[i, 1] for i in ids]


def test_backend_raises_for_a_bad_message_in_the_caller(msgraph_emulator, dummy_tasks, store):
    with pytest.raises(InvalidMessage):
        mail.send_mail("Bad", "Body", "not an address", ["a@example.com"])
    assert mail.send_mail("Bad", "Body", "x", ["a@example.com"], fail_silently=True) == 0
    assert store.list() == []
    assert dummy_tasks.results == []


def test_immediate_backend_sends_in_the_caller(msgraph_emulator, store):
    with override_settings(EMAIL_BACKEND=QUEUED, TASKS=IMMEDIATE):
        assert mail.send_mail("Now", "Body", "noreply@contoso.com", ["a@example.com"]) == 1
    assert [m.subject for m in msgraph_emulator.sent] == ["Now"]
    assert [m.status for m in store.list()] == ["sent"]


# checks ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tasks", "expected"),
    [
        ({}, ["msgraph_mail.W009"]),
        (IMMEDIATE, ["msgraph_mail.W009"]),
        (DUMMY, ["msgraph_mail.W010"]),
        ({"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}, []),
    ],
)
def test_checks_name_a_tasks_backend_that_runs_no_worker(msgraph_emulator, tasks, expected):
    from msgraph_mail.checks import check_queue

    with override_settings(EMAIL_BACKEND=QUEUED, TASKS=tasks):
        assert [m.id for m in check_queue()] == expected
    assert check_queue() == []  # EmailBackend: nothing to check


def test_checks_name_a_missing_engine(msgraph_emulator, monkeypatch):
    import importlib.util

    from msgraph_mail.checks import check_queue

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with override_settings(EMAIL_BACKEND=QUEUED, MSGRAPH_MAIL=msgraph_emulator.settings()):
        found = check_queue()
    assert [m.id for m in found] == ["msgraph_mail.E016"]
    assert "[tasks]" in (found[0].hint or "")
