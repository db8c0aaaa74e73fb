"""LARGE_MESSAGES under faults: no orphan drafts, and uploads that resume (issue 16, item 6).

Each test breaks one request of the draft route with the emulator's faults and sends through
``django.core.mail``: a draft creation whose answer was lost (the draft exists, its id is
unknown) and a chunk PUT whose connection broke after all, part or none of it was stored.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from django.core.mail import EmailMessage
from django.test import override_settings

from msgraph_mail.conf import load_settings
from msgraph_mail.emulator import GraphEmulator
from msgraph_mail.exceptions import GraphAPIError, GraphConnectionError
from msgraph_mail.graph import GraphClient
from msgraph_mail.large import CHUNK_BYTES, MAX_POSTED_BYTES

MB = 1024 * 1024
ROLES = ["Mail.Send", "User.Read.All", "Mail.ReadWrite"]
SIZE = 2 * CHUNK_BYTES + 12345  # three chunks: first, middle, last


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def large(emulator: GraphEmulator) -> Iterator[GraphEmulator]:
    emulator.roles = ROLES
    with override_settings(MSGRAPH_MAIL=emulator.settings(LARGE_MESSAGES=True)):
        yield emulator


def message(**kwargs: Any) -> EmailMessage:
    defaults: dict[str, Any] = {
        "subject": "Quarterly report",
        "body": "See the attachment.",
        "from_email": "noreply@contoso.com",
        "to": ["alice@contoso.com"],
    }
    return EmailMessage(**{**defaults, **kwargs})


def starts(emulator: GraphEmulator) -> list[int]:
    """The first byte of every chunk PUT, in order (whatever its answer)."""
    return [
        int(r.headers["Content-Range"].removeprefix("bytes ").split("-")[0])
        for r in emulator.requests
        if r.kind == "upload_chunk"
    ]


# no orphan drafts ---------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["reset_after", "gateway_timeout"])
def test_unanswered_draft_is_found_by_message_id_and_deleted(
    large: GraphEmulator, fault: str
) -> None:
    large.fail_next(fault, on="draft_create")
    email = message()
    email.attach("report.pdf", os.urandom(4 * MB), "application/pdf")
    assert email.send(fail_silently=True) == 0

    status = email.msgraph_status
    assert (status.status, status.route) == ("failed", "draft")
    assert isinstance(status.error, GraphConnectionError)
    text = str(status.error)
    assert "Large message not sent: creating the draft failed" in text
    assert "found by its Message-ID" in text
    assert "deleted" in text
    assert large.drafts == []  # no orphan in the Drafts folder
    assert large.sent == []
    assert [f.fault for f in large.faults_injected] == [fault]
    [lookup] = [r for r in large.requests if r.kind == "message_list"]
    message_id = status.message_id
    assert message_id
    assert lookup.query["$filter"] == f"internetMessageId eq '{message_id}'"
    assert lookup.query["$select"] == "id,isDraft"
    assert large.count("draft_delete") == 1
    assert large.count("upload_session") == 0


def test_message_id_with_a_quote_is_escaped_and_percent_encoded(large: GraphEmulator) -> None:
    large.fail_next("reset_after", on="draft_create")
    email = message(headers={"Message-ID": "<o'brien+1.x@example.com>"})
    email.attach("report.pdf", os.urandom(4 * MB), "application/pdf")
    assert email.send(fail_silently=True) == 0
    assert large.drafts == []
    [lookup] = [r for r in large.requests if r.kind == "message_list"]
    assert lookup.query["$filter"] == "internetMessageId eq '<o''brien+1.x@example.com>'"
    assert "found by its Message-ID" in str(email.msgraph_status.error)


def test_draft_never_created_is_looked_for_briefly(large: GraphEmulator) -> None:
    large.fail_next("gateway_timeout_lost", on="draft_create")  # 504, nothing stored
    email = message()
    email.attach("report.pdf", os.urandom(4 * MB), "application/pdf")
    assert email.send(fail_silently=True) == 0
    text = str(email.msgraph_status.error)
    assert "no draft with the Message-ID" in text
    assert "if one appears in its Drafts folder, delete it" in text
    assert 2 <= large.count("message_list") <= 5  # polled, with a bounded backoff
    assert large.count("draft_delete") == 0
    assert large.drafts == []


def test_only_the_unanswered_draft_is_deleted(large: GraphEmulator) -> None:
    """Only drafts with this message's Message-ID are deleted; other drafts stay."""
    other = message(subject="Other")
    other.attach("a.bin", os.urandom(4 * MB), "application/octet-stream")
    large.fail_next("gateway_timeout_lost", on="draft_send")
    assert other.send(fail_silently=True) == 0  # the draft is kept: outcome unknown
    [kept] = large.drafts

    large.fail_next("reset_after", on="draft_create")
    email = message()
    email.attach("report.pdf", os.urandom(4 * MB), "application/pdf")
    assert email.send(fail_silently=True) == 0
    assert large.drafts == [kept]


# uploads that resume ------------------------------------------------------------------------


def send_with_attachment(data: bytes) -> EmailMessage:
    email = message()
    email.attach("video.mp4", data, "video/mp4")
    assert email.send() == 1
    assert email.msgraph_status.status == "sent"
    return email


@pytest.mark.parametrize(
    ("kept", "chunk_starts", "status_requests"),
    [
        # all of the chunk stored: its re-send is refused (416), the status says go on
        (None, [0, 0, CHUNK_BYTES, 2 * CHUNK_BYTES], 1),
        # part of it stored: 416, the status says byte 1000
        (1000, [0, 0, 1000, 1000 + CHUNK_BYTES, 1000 + 2 * CHUNK_BYTES], 1),
        # nothing stored (a broken request's bytes are dropped): the re-send is taken
        (0, [0, 0, CHUNK_BYTES, 2 * CHUNK_BYTES], 0),
    ],
)
def test_chunk_broken_after_it_left_is_resumed(
    large: GraphEmulator, kept: int | None, chunk_starts: list[int], status_requests: int
) -> None:
    data = os.urandom(SIZE)
    if kept is not None:
        large.store_partial_chunks(kept)
    large.fail_next("reset_after", on="upload_chunk")
    send_with_attachment(data)

    [sent] = large.sent
    [attachment] = sent.attachments
    assert (attachment.size, attachment.sha256) == (SIZE, sha(data))
    assert large.drafts == []
    assert starts(large) == chunk_starts
    assert large.count("upload_status") == status_requests
    assert large.count("upload_session") == 1  # the same session, not a new one
    assert [f.fault for f in large.faults_injected] == ["reset_after"]


def test_chunk_taken_in_part_goes_on_from_next_expected_ranges(large: GraphEmulator) -> None:
    data = os.urandom(SIZE)
    large.store_partial_chunks(CHUNK_BYTES, CHUNK_BYTES - 7)
    send_with_attachment(data)
    assert large.sent[0].attachments[0].sha256 == sha(data)
    assert starts(large) == [0, CHUNK_BYTES, 2 * CHUNK_BYTES - 7]


def test_timed_out_chunk_is_resumed(large: GraphEmulator) -> None:
    data = os.urandom(SIZE)
    large.slow_seconds = 5.0
    large.fail_next("slow", on="upload_chunk")  # stored, answered too late
    settings = large.settings(LARGE_MESSAGES=True, TIMEOUT=2.0)
    with override_settings(MSGRAPH_MAIL=settings):
        send_with_attachment(data)
    assert large.sent[0].attachments[0].sha256 == sha(data)
    assert large.count("upload_status") == 1
    assert starts(large) == [0, 0, CHUNK_BYTES, 2 * CHUNK_BYTES]


def test_resuming_is_bounded_by_max_retries(large: GraphEmulator) -> None:
    large.store_partial_chunks(*([0] * 10))
    large.fail_next("reset_after", on="upload_chunk", times=10)
    email = message()
    email.attach("video.mp4", os.urandom(SIZE), "video/mp4")
    with override_settings(MSGRAPH_MAIL=large.settings(LARGE_MESSAGES=True, MAX_RETRIES=2)):
        assert email.send(fail_silently=True) == 0
    status = email.msgraph_status
    assert (status.status, status.route) == ("failed", "draft")
    assert isinstance(status.error, GraphConnectionError)
    text = str(status.error)
    assert "could not be resumed" in text
    assert "the draft was deleted" in text
    assert large.count("upload_chunk") == 3  # the first try and MAX_RETRIES resumes
    assert large.drafts == []
    assert large.sent == []


def test_last_chunk_broken_after_it_completed_fails_cleanly(large: GraphEmulator) -> None:
    """The session is gone with the attachment complete, which cannot be told from a session
    lost otherwise: the message is not sent and the draft is deleted (docs: known gaps)."""
    large.fail_next("reset_after", on="upload_chunk")
    email = message()
    email.attach("one-chunk.bin", os.urandom(MAX_POSTED_BYTES + 1), "application/octet-stream")
    assert email.send(fail_silently=True) == 0
    status = email.msgraph_status
    assert (status.status, status.route) == ("failed", "draft")
    assert isinstance(status.error, GraphAPIError)
    assert status.error.status == 404
    assert "the upload session is gone" in str(status.error)
    assert "the draft was deleted" in str(status.error)
    assert large.drafts == []
    assert large.sent == []


def test_upload_status_on_the_emulator(large: GraphEmulator) -> None:
    """GET on the upload URL: the session's NextExpectedRanges, without Authorization."""
    client = GraphClient(load_settings())
    try:
        mime = b"From: noreply@contoso.com\r\nTo: alice@contoso.com\r\nSubject: t\r\n\r\nb\r\n"
        draft = client.request(
            "POST",
            "/users/noreply@contoso.com/messages",
            data=base64.b64encode(mime),
            headers={"Content-Type": "text/plain"},
        ).body["id"]
        url = client.request(
            "POST",
            f"/users/noreply@contoso.com/messages/{draft}/attachments/createUploadSession",
            json={"AttachmentItem": {"attachmentType": "file", "name": "f", "size": 4 * MB}},
        ).body["uploadUrl"]
        listed = client.request("GET", "/users/noreply@contoso.com/messages").body["value"]
        assert [m["id"] for m in listed] == [draft]
        with pytest.raises(GraphAPIError) as caught:
            client.request(
                "GET", "/users/noreply@contoso.com/messages", params={"$filter": "subject eq 't'"}
            )
        assert caught.value.status == 400
    finally:
        client.close()
    assert requests.get(url, timeout=10).json()["NextExpectedRanges"] == ["0"]
    put = requests.put(
        url, data=b"x" * 100, headers={"Content-Range": f"bytes 0-99/{4 * MB}"}, timeout=10
    )
    assert put.json()["NextExpectedRanges"] == ["100"]
    assert requests.get(url, timeout=10).json()["NextExpectedRanges"] == ["100"]
    assert requests.get(url, headers={"Authorization": "Bearer x"}, timeout=10).status_code == 401
