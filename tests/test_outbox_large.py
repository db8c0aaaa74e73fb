"""QueuedEmailBackend with LARGE_MESSAGES: a message too large for sendMail is queued with its
draft plan (plain JSON in the envelope) and the worker sends it through a draft, upload
sessions and send, as the synchronous backend does (issue 15, point 1)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from django.core import mail
from django.test import override_settings
from django.utils import timezone

from msgraph_mail.conf import load_settings
from msgraph_mail.emulator import GraphEmulator
from msgraph_mail.exceptions import MessageTooLarge
from msgraph_mail.large import prepare
from msgraph_mail.outbox import Envelope, build_envelope
from msgraph_mail.outbox.envelope import draft_plan
from msgraph_mail.outbox.store import DatabaseStore

from .helpers import DUMMY, IMMEDIATE, QUEUED

pytestmark = pytest.mark.django_db

MB = 1024 * 1024
ROLES = ["Mail.Send", "User.Read.All", "Mail.ReadWrite"]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def large(msgraph_emulator: GraphEmulator) -> GraphEmulator:
    msgraph_emulator.roles = ROLES  # drafts need Mail.ReadWrite
    return msgraph_emulator


def big_message(data: bytes) -> mail.EmailMessage:
    email = mail.EmailMessage(
        "Quarterly report",
        "See the attachment.",
        "noreply@contoso.com",
        ["alice@contoso.com"],
        bcc=["bob@contoso.com"],
    )
    email.attach("report.pdf", data, "application/pdf")
    email.attach("notes.txt", "small stays in the MIME", "text/plain")
    return email


def test_a_large_message_is_queued_and_sent_through_a_draft(large: GraphEmulator) -> None:
    data = os.urandom(5 * MB)
    email = big_message(data)
    settings = large.settings(LARGE_MESSAGES=True)
    with override_settings(EMAIL_BACKEND=QUEUED, TASKS=IMMEDIATE, MSGRAPH_MAIL=settings):
        assert email.send() == 1
    assert email.msgraph_status.status == "queued"
    [sent] = large.sent
    assert sent.format == "draft"
    assert sent.header("Message-ID") == email.msgraph_status.message_id
    assert (sent.to, sent.bcc) == (["alice@contoso.com"], ["bob@contoso.com"])
    by_name = {a.filename: a for a in sent.attachments}
    assert by_name["report.pdf"].sha256 == sha(data)
    assert by_name["notes.txt"].content.rstrip() == b"small stays in the MIME"
    assert large.count("sendMail") == 0
    assert large.count("draft_create") == large.count("upload_session") == 1
    assert large.count("draft_send") == 1
    assert large.drafts == []
    [row] = DatabaseStore().list()
    assert (row.message_id, row.status) == (email.msgraph_status.message_id, "sent")


def test_the_draft_plan_round_trips_as_json(large: GraphEmulator) -> None:
    data = os.urandom(4 * MB)
    email = big_message(data)
    with override_settings(MSGRAPH_MAIL=large.settings(LARGE_MESSAGES=True)):
        envelope = build_envelope(email, load_settings())
    assert envelope.mime == ""
    assert envelope.draft is not None
    back = Envelope.from_dict(json.loads(json.dumps(envelope.to_dict())))
    assert back == envelope
    plan, expected = draft_plan(back), prepare(email)
    assert plan is not None
    assert plan.message_id == envelope.message_id == expected.message_id
    assert plan.mime_size == expected.mime_size  # the same MIME, but its random boundary
    draft_mime = base64.b64decode(plan.mime_base64)
    assert f"Message-ID: {envelope.message_id}".encode() in draft_mime
    assert b"Bcc: bob@contoso.com" in draft_mime
    assert b"report.pdf" not in draft_mime  # uploaded on its own
    assert [(p.name, p.content_type, p.inline, p.content_id) for p in plan.uploads] == [
        ("report.pdf", "application/pdf", False, None)
    ]
    assert sha(bytes(plan.uploads[0].content)) == sha(data)
    assert plan.posts == expected.posts
    # an ordinary message carries no plan, and an envelope stored before the field reads back
    with override_settings(MSGRAPH_MAIL=large.settings(LARGE_MESSAGES=True)):
        small = build_envelope(
            mail.EmailMessage("Hi", "Body", "noreply@contoso.com", ["a@example.com"]),
            load_settings(),
        )
    assert small.draft is None
    assert draft_plan(small) is None
    old = {k: v for k, v in small.to_dict().items() if k != "draft"}
    assert Envelope.from_dict(old) == small


def test_without_large_messages_it_fails_in_the_caller(large: GraphEmulator) -> None:
    email = big_message(os.urandom(4 * MB))
    settings = large.settings()
    with (
        override_settings(EMAIL_BACKEND=QUEUED, TASKS=IMMEDIATE, MSGRAPH_MAIL=settings),
        pytest.raises(MessageTooLarge, match="LARGE_MESSAGES"),
    ):
        email.send()
    assert email.msgraph_status.status == "failed"
    assert DatabaseStore().list() == []
    assert large.count() == 0


@pytest.fixture
def dummy_tasks(large: GraphEmulator) -> Iterator[Any]:
    from msgraph_mail.outbox.tasks import send_envelope

    with override_settings(EMAIL_BACKEND=QUEUED, TASKS=DUMMY):
        backend = send_envelope.get_backend()
        backend.clear()
        yield backend
        backend.clear()


def test_a_throttled_upload_is_retried_later_and_sent_once(
    large: GraphEmulator, dummy_tasks: Any
) -> None:
    from msgraph_mail.outbox.tasks import send_envelope

    data = os.urandom(4 * MB)
    email = big_message(data)
    settings = large.settings(LARGE_MESSAGES=True, MAX_RETRY_WAIT=1)
    with override_settings(MSGRAPH_MAIL=settings):
        assert email.send() == 1
        message_id = email.msgraph_status.message_id
        [task] = dummy_tasks.results
        assert task.args == [message_id, 1]
        # Graph throttles the upload longer than the client waits: the task defers
        large.fail_next("throttle", on="upload_chunk", retry_after=30)
        assert send_envelope.call(*task.args) == "retry"
        assert large.sent == []
        assert large.drafts == []  # the first draft was deleted
        row = DatabaseStore().get(message_id)
        assert row is not None
        assert row.status == "queued"
        assert row.deferred
        assert "429" in (row.last_error or "")
        [_, again] = dummy_tasks.results
        assert again.args == [message_id, 2]
        wait = (again.task.run_after - timezone.now()).total_seconds()
        assert 28 <= wait <= 36  # Graph's Retry-After (30 s) plus up to 20 % jitter
        assert send_envelope.call(*again.args) == "sent"
    [sent] = large.sent
    assert sent.format == "draft"
    assert {a.filename: a.sha256 for a in sent.attachments}["report.pdf"] == sha(data)
    assert large.count("draft_create") == 2
    assert large.count("draft_send") == 1
    assert DatabaseStore().get(message_id).status == "sent"


def test_a_gateway_timeout_while_drafting_is_passing(msgraph_emulator: GraphEmulator) -> None:
    """Before the draft's send nothing can have been sent: a 504 there is retried later."""
    from msgraph_mail.exceptions import GraphConnectionError, MailboxOutOfScope
    from msgraph_mail.outbox.deliver import classify

    settings = load_settings()
    envelope = build_envelope(mail.EmailMessage("Hi", "x", None, ["a@example.com"]), settings)
    drafting = GraphConnectionError("504 while creating the draft; it was deleted", status=504)
    assert classify(drafting, envelope, 1, settings).status == "retry"
    refused = MailboxOutOfScope("out of scope", status=403)
    assert classify(refused, envelope, 1, settings).status == "failed"
