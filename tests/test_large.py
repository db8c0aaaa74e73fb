"""LARGE_MESSAGES: messages over 4 MB through a draft, upload sessions and send (issue 6)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from django.core.mail import EmailMessage, EmailMultiAlternatives
from django.test import override_settings

from msgraph_mail.conf import load_settings
from msgraph_mail.emulator import GraphEmulator
from msgraph_mail.exceptions import (
    GraphAPIError,
    GraphConnectionError,
    MailboxOutOfScope,
    MessageTooLarge,
)
from msgraph_mail.graph import GraphClient, mailbox_of, user_path
from msgraph_mail.large import (
    CHUNK_BYTES,
    MAX_MESSAGE_BYTES,
    MAX_POSTED_BYTES,
    UPLOAD_SESSION_MIN_BYTES,
)
from tests.helpers import inline_image

MB = 1024 * 1024
ROLES = ["Mail.Send", "User.Read.All", "Mail.ReadWrite"]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def large(emulator: GraphEmulator) -> Iterator[GraphEmulator]:
    """Permissive mode with Mail.ReadWrite and LARGE_MESSAGES on."""
    emulator.roles = ROLES
    with override_settings(MSGRAPH_MAIL=emulator.settings(LARGE_MESSAGES=True)):
        yield emulator


def message(**kwargs: Any) -> EmailMessage:
    defaults: dict[str, Any] = {
        "subject": "Quarterly report",
        "body": "See the attachment.",
        "from_email": "noreply@contoso.com",
        "to": ["alice@contoso.com"],
        "cc": ["carol@example.com"],
        "bcc": ["bob@contoso.com", "dave@example.com"],
    }
    return EmailMessage(**{**defaults, **kwargs})


def chunk_ranges(emulator: GraphEmulator) -> list[tuple[int, int, int]]:
    ranges = []
    for request in emulator.requests:
        if request.kind == "upload_chunk" and request.status in (200, 201):
            value = request.headers["Content-Range"].removeprefix("bytes ")
            span, total = value.split("/")
            start, end = span.split("-")
            ranges.append((int(start), int(end), int(total)))
    return ranges


def test_5mb_attachment_arrives_intact_with_every_recipient(large: GraphEmulator) -> None:
    data = os.urandom(5 * MB)
    email = message()
    email.attach("report.pdf", data, "application/pdf")
    email.attach("notes.txt", "small stays in the MIME", "text/plain")
    assert email.send() == 1

    [sent] = large.sent
    assert sent.format == "draft"
    assert sent.to == ["alice@contoso.com"]
    assert sent.cc == ["carol@example.com"]
    assert sent.bcc == ["bob@contoso.com", "dave@example.com"]
    assert sent.subject == "Quarterly report"
    assert sent.text is not None
    assert sent.text.strip() == "See the attachment."
    by_name = {a.filename: a for a in sent.attachments}
    assert by_name["report.pdf"].sha256 == sha(data)
    assert by_name["report.pdf"].content_type == "application/pdf"
    assert by_name["notes.txt"].content.rstrip() == b"small stays in the MIME"
    assert sent.header("Message-ID") == email.msgraph_status.message_id

    status = email.msgraph_status
    assert (status.status, status.route, status.error) == ("sent", "draft", None)
    assert large.drafts == []
    assert large.count("sendMail") == 0
    assert large.count("draft_create") == large.count("upload_session") == 1
    assert large.count("attachment") == 0  # the small one stayed in the draft's MIME
    assert large.count("draft_send") == 1
    assert chunk_ranges(large) == [
        (0, CHUNK_BYTES - 1, 5 * MB),
        (CHUNK_BYTES, 5 * MB - 1, 5 * MB),
    ]


def test_40mb_attachment_in_ordered_chunks_without_authorization(large: GraphEmulator) -> None:
    data = os.urandom(40 * MB)
    email = message(bcc=["bob@contoso.com"])
    email.attach("video.mp4", data, "video/mp4")
    assert email.send() == 1

    [sent] = large.sent
    [attachment] = sent.attachments
    assert (attachment.filename, attachment.size) == ("video.mp4", 40 * MB)
    assert attachment.sha256 == sha(data)
    assert sent.bcc == ["bob@contoso.com"]
    ranges = chunk_ranges(large)
    assert len(ranges) == -(-40 * MB // CHUNK_BYTES)
    expected = 0
    for start, end, total in ranges:
        assert (start, total) == (expected, 40 * MB)
        assert end - start + 1 <= 4 * MB
        expected = end + 1
    assert all((end + 1 - start) % (320 * 1024) == 0 for start, end, _ in ranges[:-1])
    uploads = [r for r in large.requests if r.kind == "upload_chunk"]
    assert all("Authorization" not in r.headers for r in uploads)
    assert all("authorization" not in (name.lower() for name in r.headers) for r in uploads)


def test_large_inline_image_keeps_content_id(large: GraphEmulator) -> None:
    image = os.urandom(4 * MB)
    email = EmailMultiAlternatives(
        "Newsletter",
        "Text version",
        "noreply@contoso.com",
        ["alice@contoso.com"],
        bcc=["bob@contoso.com"],
    )
    email.attach_alternative('<p>Hello <img src="cid:banner"></p>', "text/html")
    email.attach(inline_image(image, "banner.png", "banner"))
    assert email.send() == 1

    [sent] = large.sent
    assert sent.html is not None
    assert 'src="cid:banner"' in sent.html
    assert sent.text is not None
    assert "Text version" in sent.text
    [banner] = sent.attachments
    assert (banner.inline, banner.content_id, banner.filename) == (True, "banner", "banner.png")
    assert banner.content_type == "image/png"
    assert banner.sha256 == sha(image)
    assert sent.bcc == ["bob@contoso.com"]


def test_small_attachments_are_posted_when_the_draft_would_be_too_large(
    large: GraphEmulator,
) -> None:
    files = {f"part{i}.bin": os.urandom(2 * MB) for i in range(3)}
    email = message()
    for name, data in files.items():
        email.attach(name, data, "application/octet-stream")
    assert email.send() == 1

    [sent] = large.sent
    assert {a.filename: a.sha256 for a in sent.attachments} == {
        name: sha(data) for name, data in files.items()
    }
    assert large.count("attachment") == 3
    assert large.count("upload_session") == 0
    assert large.drafts == []


def test_small_message_still_uses_send_mail(large: GraphEmulator) -> None:
    email = message()
    email.attach("small.pdf", os.urandom(100_000), "application/pdf")
    assert email.send() == 1
    assert email.msgraph_status.route == "sendMail"
    assert large.count("sendMail") == 1
    assert large.count("draft_create") == 0


def test_throttled_chunk_is_retried_after_retry_after(large: GraphEmulator) -> None:
    data = os.urandom(8 * MB)
    large.fail_next("throttle", times=2, on="upload_chunk", retry_after=0.01)
    email = message()
    email.attach("report.pdf", data, "application/pdf")
    assert email.send() == 1

    [sent] = large.sent
    assert sent.attachments[0].sha256 == sha(data)
    assert [f.fault for f in large.faults_injected] == ["throttle", "throttle"]
    assert large.count("upload_chunk") == len(chunk_ranges(large)) + 2 == 3 + 2
    assert large.drafts == []


def test_failure_midway_deletes_the_draft(large: GraphEmulator) -> None:
    large.fail_next("unavailable", times=50, on="upload_chunk", retry_after=0.001)
    email = message()
    email.attach("report.pdf", os.urandom(5 * MB), "application/pdf")
    with override_settings(MSGRAPH_MAIL=large.settings(LARGE_MESSAGES=True, MAX_RETRIES=2)):
        sent = email.send(fail_silently=True)
    assert sent == 0
    status = email.msgraph_status
    assert (status.status, status.route) == ("failed", "draft")
    assert isinstance(status.error, GraphAPIError)
    assert status.error.code == "serviceNotAvailable"
    assert "uploading 'report.pdf'" in str(status.error)
    assert "the draft was deleted" in str(status.error)
    assert large.drafts == []
    assert large.sent == []
    assert large.count("draft_delete") == 1
    assert large.count("draft_send") == 0


@pytest.mark.parametrize(
    ("fault", "on"),
    [
        ("gateway_timeout_lost", "attachment"),
        ("gateway_timeout", "upload_session"),
        ("reset_after", "upload_chunk"),
        ("reset_before", "upload_chunk"),
    ],
)
def test_timeouts_before_the_send_are_plain_failures(
    large: GraphEmulator, fault: str, on: str
) -> None:
    large.fail_next(fault, on=on, times=5)
    email = message()
    email.attach("big.bin", os.urandom(4 * MB), "application/octet-stream")
    for i in range(2):
        email.attach(f"small{i}.bin", os.urandom(2 * MB), "application/octet-stream")
    with override_settings(MSGRAPH_MAIL=large.settings(LARGE_MESSAGES=True, MAX_RETRIES=1)):
        assert email.send(fail_silently=True) == 0
    status = email.msgraph_status
    assert (status.status, status.route) == ("failed", "draft")
    assert isinstance(status.error, GraphConnectionError | GraphAPIError)
    assert "Large message not sent" in str(status.error)
    assert large.drafts == []
    assert large.sent == []


def test_gateway_timeout_on_the_send_is_unknown(large: GraphEmulator) -> None:
    large.fail_next("gateway_timeout_lost", on="draft_send")
    email = message()
    email.attach("report.pdf", os.urandom(4 * MB), "application/pdf")
    assert email.send(fail_silently=True) == 0
    status = email.msgraph_status
    assert (status.status, status.route) == ("unknown", "draft")
    assert "the draft was kept" in str(status.error)
    [draft] = large.drafts  # kept: it is the proof that the message was not sent
    assert large.count("draft_delete") == 0
    assert draft.subject == "Quarterly report"


def test_off_by_default_refuses_before_any_request(emulator: GraphEmulator) -> None:
    email = message()
    email.attach("report.pdf", os.urandom(5 * MB), "application/pdf")
    with pytest.raises(MessageTooLarge) as caught:
        email.send()
    error = caught.value
    text = str(error)
    assert "4,194,304" in text
    assert "LARGE_MESSAGES" in text
    assert "Mail.ReadWrite" in text
    assert "Application Mail.ReadWrite" in text
    assert error.limit == 4 * MB
    assert error.size is not None
    assert error.size > 5 * MB
    assert emulator.requests == []
    assert email.msgraph_status.route == "sendMail"


def test_without_mail_readwrite_the_fix_is_named(emulator: GraphEmulator) -> None:
    emulator.roles = ["Mail.Send", "User.Read.All"]
    email = message()
    email.attach("report.pdf", os.urandom(4 * MB), "application/pdf")
    with (
        override_settings(MSGRAPH_MAIL=emulator.settings(LARGE_MESSAGES=True)),
        pytest.raises(MailboxOutOfScope, match=r"Mail\.ReadWrite") as caught,
    ):
        email.send()
    assert caught.value.code == "ErrorAccessDenied"
    assert "Application Mail.ReadWrite" in str(caught.value)
    assert emulator.drafts == []
    assert emulator.count("upload_session") == 0


def test_rbac_mode_needs_the_exchange_readwrite_role(emulator: GraphEmulator) -> None:
    emulator.roles = ["User.Read.All"]
    emulator.rbac_scope = {"noreply@contoso.com"}
    settings = emulator.settings(
        MODE="rbac", ALLOWED_SENDERS=["noreply@contoso.com"], LARGE_MESSAGES=True
    )
    data = os.urandom(4 * MB)
    with override_settings(MSGRAPH_MAIL=settings):
        refused = message()
        refused.attach("a.bin", data, "application/octet-stream")
        assert refused.send(fail_silently=True) == 0
        assert isinstance(refused.msgraph_status.error, MailboxOutOfScope)

        emulator.rbac_readwrite_scope = {"noreply@contoso.com"}
        accepted = message()
        accepted.attach("a.bin", data, "application/octet-stream")
        assert accepted.send() == 1
    assert emulator.sent[0].attachments[0].sha256 == sha(data)


def test_messages_over_150_mb_are_refused_before_any_request(large: GraphEmulator) -> None:
    email = message()
    email.attach("huge.bin", bytes(MAX_MESSAGE_BYTES), "application/octet-stream")
    with pytest.raises(MessageTooLarge, match="150 MB"):
        email.send()
    assert large.requests == []


@pytest.mark.parametrize(
    ("size", "route"),
    [
        (MAX_POSTED_BYTES, "attachment"),  # 3,142,656: the largest attachment POST
        (MAX_POSTED_BYTES + 1, "upload_session"),  # 3,142,657: was refused before
        (3 * MB - 1, "upload_session"),  # 3,145,727: was refused before
        (3 * MB, "upload_session"),  # 3,145,728
    ],
)
def test_every_attachment_size_goes_through(large: GraphEmulator, size: int, route: str) -> None:
    assert MAX_POSTED_BYTES == 3_142_656
    data = os.urandom(size)
    email = message()
    email.attach("a.bin", data, "application/octet-stream")
    assert email.send() == 1

    [sent] = large.sent
    [attachment] = sent.attachments
    assert (attachment.size, attachment.sha256) == (size, sha(data))
    assert large.count(route) == 1
    assert large.count("attachment") + large.count("upload_session") == 1
    posts = [r for r in large.requests if r.kind == "attachment"]
    assert all(int(r.headers["Content-Length"]) <= 4 * MB for r in posts)
    assert large.drafts == []


def test_mailbox_upn_starting_with_dollar_is_an_odata_key(emulator: GraphEmulator) -> None:
    emulator.roles = ROLES
    emulator.add_user("$svc@contoso.com")
    assert user_path("$svc@contoso.com") == "/users('$svc@contoso.com')"
    assert user_path("o'brien@contoso.com") == "/users/o%27brien@contoso.com"
    assert user_path("$o'b@contoso.com") == "/users('$o''b@contoso.com')"
    assert mailbox_of("/users('$Svc@Contoso.com')/sendMail") == "$svc@contoso.com"
    assert mailbox_of("/users('$o''b@x.com')/messages?$select=id") == "$o'b@x.com"
    assert mailbox_of("/users/Bob@Contoso.com/messages/AAMk=/send") == "bob@contoso.com"
    assert mailbox_of("/users('$svc@contoso.com')") is None  # a directory read
    # Sent Items lookups (RESOLVE_UNKNOWN) are mailbox requests too: Graph counts them.
    assert mailbox_of("/users/Bob@x.com/mailFolders/sentitems/messages") == "bob@x.com"

    settings = emulator.settings(
        MODE="single_mailbox", MAILBOX="$svc@contoso.com", LARGE_MESSAGES=True
    )
    with override_settings(MSGRAPH_MAIL=settings):
        small = message(from_email="$svc@contoso.com")
        assert small.send() == 1
        big = message(from_email="$svc@contoso.com")
        big.attach("a.bin", os.urandom(4 * MB), "application/octet-stream")
        assert big.send() == 1
    assert [m.format for m in emulator.sent][-1] == "draft"
    paths = [r.path for r in emulator.requests if r.kind in ("sendMail", "draft_create")]
    assert paths
    assert all(p.startswith("/v1.0/users('$svc@contoso.com')/") for p in paths)
    assert emulator.usage("$svc@contoso.com")["requests"]["used"] >= 4


def test_emulator_refuses_the_dollar_upn_as_a_path_segment(client: GraphClient) -> None:
    with pytest.raises(GraphAPIError) as caught:
        client.request("GET", "/users/$svc@contoso.com")
    assert caught.value.status == 400


# the emulator's rules ------------------------------------------------------------------------


@pytest.fixture
def client(emulator: GraphEmulator) -> Iterator[GraphClient]:
    emulator.roles = ROLES
    graph = GraphClient(load_settings())
    yield graph
    graph.close()


def new_draft(client: GraphClient) -> str:
    import base64

    mime = b"From: noreply@contoso.com\r\nTo: alice@contoso.com\r\nSubject: t\r\n\r\nbody\r\n"
    created = client.request(
        "POST",
        "/users/noreply@contoso.com/messages",
        data=base64.b64encode(mime),
        headers={"Content-Type": "text/plain"},
    )
    assert created.status == 201
    assert created.body["isDraft"] is True
    return str(created.body["id"])


def session_for(client: GraphClient, draft: str, size: int) -> dict[str, Any]:
    return dict(
        client.request(
            "POST",
            f"/users/noreply@contoso.com/messages/{draft}/attachments/createUploadSession",
            json={"AttachmentItem": {"attachmentType": "file", "name": "f.bin", "size": size}},
        ).body
    )


def test_emulator_refuses_upload_sessions_under_3_mb(client: GraphClient) -> None:
    draft = new_draft(client)
    assert UPLOAD_SESSION_MIN_BYTES == 3_000_000 < MAX_POSTED_BYTES
    with pytest.raises(GraphAPIError) as caught:
        session_for(client, draft, UPLOAD_SESSION_MIN_BYTES - 1)
    assert caught.value.code == "ErrorAttachmentSizeShouldNotBeLessThanMinimumSize"
    opened = session_for(client, draft, UPLOAD_SESSION_MIN_BYTES)
    assert opened["nextExpectedRanges"] == ["0-"]


def test_emulator_upload_url_rules(client: GraphClient, emulator: GraphEmulator) -> None:
    draft = new_draft(client)
    size = 5 * MB + 10
    url = session_for(client, draft, size)["uploadUrl"]
    assert url.startswith(emulator.url + "/upload/")
    chunk = b"x" * CHUNK_BYTES

    def put(body: bytes, content_range: str, **headers: str) -> requests.Response:
        return requests.put(
            url, data=body, headers={"Content-Range": content_range, **headers}, timeout=10
        )

    refused = put(chunk, f"bytes 0-{CHUNK_BYTES - 1}/{size}", Authorization="Bearer x")
    assert refused.status_code == 401
    assert put(chunk, f"bytes 5-{CHUNK_BYTES + 4}/{size}").status_code == 416  # out of order
    assert put(chunk, f"bytes 0-{CHUNK_BYTES}/{size}").status_code == 400  # length mismatch
    assert put(b"x" * (4 * MB + 1), f"bytes 0-{4 * MB}/{size}").status_code == 413
    first = put(chunk, f"bytes 0-{CHUNK_BYTES - 1}/{size}")
    assert first.status_code == 200
    assert first.json()["NextExpectedRanges"] == [str(CHUNK_BYTES)]
    rest = size - CHUNK_BYTES
    last = put(b"y" * rest, f"bytes {CHUNK_BYTES}-{size - 1}/{size}")
    assert last.status_code == 201
    assert "Attachments('" in last.headers["Location"]
    assert requests.put(url.split("?")[0], data=b"z", timeout=10).status_code == 404
    [kept] = emulator.drafts
    assert kept.attachments[0].sha256 == sha(chunk + b"y" * rest)


def test_emulator_send_needs_content_length_and_delete_removes(
    client: GraphClient, emulator: GraphEmulator
) -> None:
    draft = new_draft(client)
    base = f"/users/noreply@contoso.com/messages/{draft}"
    assert client.request("POST", f"{base}/send").status == 202  # requests sends Length: 0
    assert emulator.sent[0].format == "draft"
    other = new_draft(client)
    assert client.request("DELETE", f"/users/noreply@contoso.com/messages/{other}").status == 204
    assert emulator.drafts == []
    with pytest.raises(GraphAPIError) as caught:
        client.request("POST", f"/users/noreply@contoso.com/messages/{other}/send")
    assert caught.value.status == 404


def test_emulator_drafts_need_mail_readwrite(client: GraphClient, emulator: GraphEmulator) -> None:
    emulator.roles = ["Mail.Send"]
    with pytest.raises(GraphAPIError) as caught:
        new_draft(client)
    assert (caught.value.status, caught.value.code) == (403, "ErrorAccessDenied")
