"""The MIME payload: Bcc added, override header removed, envelope mismatches refused."""

from __future__ import annotations

import base64
import email
import email.policy

import pytest
from django.core.mail import EmailMessage, EmailMultiAlternatives

from msgraph_mail.exceptions import InvalidMailboxHeader, InvalidMessage, MessageTooLarge
from msgraph_mail.mime import (
    MAX_REQUEST_BYTES,
    build_mime,
    encode,
    mailbox_override,
    sender_address,
)

from .helpers import inline_image


def parse(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[return-value]


def test_bcc_is_written_into_the_mime() -> None:
    message = EmailMessage("Hi", "Body", "noreply@contoso.com", ["a@x.com"], bcc=["b@x.com"])
    parsed = parse(build_mime(message))
    assert parsed["Bcc"] == "b@x.com"
    assert parsed["To"] == "a@x.com"


def test_bcc_only_message_keeps_its_recipients() -> None:
    message = EmailMessage("Hi", "Body", "noreply@contoso.com", bcc=["Jörg <j@x.com>", "k@x.com"])
    parsed = parse(build_mime(message))
    assert parsed["To"] is None
    assert [a.addr_spec for a in parsed["Bcc"].addresses] == ["j@x.com", "k@x.com"]
    assert parsed["Bcc"].addresses[0].display_name == "Jörg"


def test_idn_domain_in_bcc_is_punycoded() -> None:
    message = EmailMessage("Hi", "Body", "noreply@contoso.com", bcc=["ann@bücher.example"])
    assert b"ann@xn--bcher-kva.example" in build_mime(message)


def test_lines_end_in_crlf() -> None:
    raw = build_mime(EmailMessage("Hi", "one\ntwo", "noreply@contoso.com", ["a@x.com"]))
    assert b"\r\n" in raw
    assert b"\n" not in raw.replace(b"\r\n", b"")


def test_override_header_is_removed_and_read() -> None:
    message = EmailMessage(
        "Hi", "Body", "a@contoso.com", ["x@y.com"], headers={"x-msgraph-mailbox": "b@contoso.com"}
    )
    assert mailbox_override(message) == "b@contoso.com"
    raw = build_mime(message)
    assert b"msgraph-mailbox" not in raw.lower()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Shop <shop@contoso.com>", "shop@contoso.com"),
        (" shop@contoso.com ", "shop@contoso.com"),
        ("0b5e2d0c-7a1e-4f53-9b8e-3f2a3c7d9e11", "0b5e2d0c-7a1e-4f53-9b8e-3f2a3c7d9e11"),
    ],
)
def test_override_header_forms(value: str, expected: str) -> None:
    message = EmailMessage("Hi", "", "a@contoso.com", ["x@y.com"])
    message.extra_headers["X-MSGraph-Mailbox"] = value
    assert mailbox_override(message) == expected


@pytest.mark.parametrize(
    "value", ["", "two@a.com, three@a.com", "not-an-address", "a@b.com\r\nBcc: evil@x.com"]
)
def test_malformed_override_header(value: str) -> None:
    message = EmailMessage("Hi", "", "a@contoso.com", ["x@y.com"])
    message.extra_headers["X-MSGraph-Mailbox"] = value
    with pytest.raises(InvalidMailboxHeader, match="X-MSGraph-Mailbox"):
        mailbox_override(message)


def test_sender_address_takes_from_header_over_from_email() -> None:
    message = EmailMessage("Hi", "", "a@contoso.com", ["x@y.com"], headers={"From": "B <b@c.com>"})
    assert sender_address(message) == "b@c.com"
    assert sender_address(EmailMessage(from_email="Shop <shop@contoso.com>")) == "shop@contoso.com"


@pytest.mark.parametrize("value", ["@contoso.com", "nobody", "a@b.com, c@d.com"])
def test_sender_address_must_be_one_address(value: str) -> None:
    with pytest.raises(InvalidMessage, match="From address"):
        sender_address(EmailMessage(from_email=value))


def test_to_header_that_differs_from_to_list_is_refused() -> None:
    message = EmailMessage(
        "Hi", "", "a@contoso.com", ["real@x.com"], headers={"To": "Everyone <list@x.com>"}
    )
    with pytest.raises(InvalidMessage, match=r"extra_headers\['To'\]"):
        build_mime(message)
    same = EmailMessage("Hi", "", "a@contoso.com", ["real@x.com"], headers={"To": "R <real@x.com>"})
    assert b"To: R <real@x.com>" in build_mime(same)


def test_bcc_in_headers_is_refused_on_every_django_version() -> None:
    message = EmailMessage("Hi", "", "a@contoso.com", ["x@y.com"], headers={"Bcc": "b@x.com"})
    with pytest.raises(InvalidMessage, match="bcc"):
        build_mime(message)


def test_header_injection_is_refused() -> None:
    message = EmailMessage("Hi\r\nBcc: evil@x.com", "", "a@contoso.com", ["x@y.com"])
    with pytest.raises(InvalidMessage):
        build_mime(message)


def test_encode_refuses_what_graph_would_refuse() -> None:
    message = EmailMultiAlternatives("Big", "", "a@contoso.com", ["x@y.com"])
    message.attach("big.bin", b"\0" * (3 * 1024 * 1024 + 200_000), "application/octet-stream")
    raw = build_mime(message)
    with pytest.raises(MessageTooLarge, match="accepts at most 4,194,304 bytes"):
        encode(raw, message)
    small = encode(b"x" * 1000)
    assert base64.b64decode(small) == b"x" * 1000
    assert len(encode(b"x" * (MAX_REQUEST_BYTES // 4 * 3))) == MAX_REQUEST_BYTES


# The standard generator writes every shape Django builds, with CRLF line ends. ----------


def _corpus() -> list[EmailMessage]:
    """Messages of every shape Django builds, with the headers that need folding."""
    long_subject = "Your invoice for the subscription period from 1 November to 30 November 2026"
    plain = EmailMessage("Hello", "Hi,\nthere.\n", "noreply@contoso.com", ["a@example.com"])
    alternatives = EmailMultiAlternatives(
        long_subject, "Text\r\nwith CRLF\rand CR", "Shop <shop@contoso.com>", ["b@example.com"]
    )
    alternatives.attach_alternative("<p>Grüße, 日本</p>", "text/html")
    unicode = EmailMessage(
        "Grüße aus Köln " * 6,
        "Body with ünïcödé and a very long line " + "x" * 1200,
        '"Doe, Jo" <jo@contoso.com>',
        ["Jo  Doe <c@example.com>", "Ünïcode Name <d@example.com>"],
        cc=["e@example.com"],
        bcc=["f@example.com", "g@bücher.example"],
        reply_to=["Reply (desk) <desk@contoso.com>"],
        headers={
            "X-Campaign": "november =?utf-8?q?literal?=",
            "X-Long": "word " * 40,
            "X-Tabbed": "a\tb",
            "Message-ID": "<custom.id@contoso.com>",
            "Date": "Fri, 27 Nov 2026 10:00:00 +0100",
        },
    )
    attachments = EmailMultiAlternatives(
        "Files", "See attached.", "noreply@contoso.com", ["h@example.com"]
    )
    attachments.attach_alternative("<p>See attached.</p>", "text/html")
    attachments.attach("report.pdf", b"%PDF-1.4 " + bytes(range(256)) * 40, "application/pdf")
    attachments.attach("notes.txt", "plain notes\n", "text/plain")
    attachments.attach("Überblick März.csv", "a,b\n1,2\n", "text/csv")
    attachments.attach(inline_image(b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "logo.png", "logo@x"))
    forwarded = EmailMessage("Fwd", "See below", "noreply@contoso.com", ["i@example.com"])
    forwarded.attach("original.eml", plain, "message/rfc822")  # the generator writes it
    return [plain, alternatives, unicode, attachments, forwarded]


@pytest.mark.parametrize("index", range(5))
def test_every_shape_is_written_with_crlf_and_reads_back(index: int) -> None:
    message = _corpus()[index]
    raw = build_mime(message)
    assert b"\n" not in raw.replace(b"\r\n", b"")  # no bare LF anywhere, body included
    assert b"\r" not in raw.replace(b"\r\n", b"")
    parsed = parse(raw)
    assert parsed["Message-ID"]
    assert [a.addr_spec for a in parsed["To"].addresses] == [
        a.rpartition("<")[2].rstrip(">") for a in message.to
    ]
    attached = {
        part.get_filename(): part.get_payload(decode=True)
        for part in parsed.walk()
        if part.get_filename()
    }
    for attachment in message.attachments:
        if isinstance(attachment, tuple) and isinstance(attachment[1], bytes):
            assert attached[attachment[0]] == attachment[1]
    if index == 4:  # a forwarded message: the generator writes the message/rfc822 part
        inner = next(p for p in parsed.walk() if p.get_content_type() == "message/rfc822")
        assert inner.get_payload(0)["Subject"] == "Hello"


def test_every_header_is_on_its_own_folded_lines() -> None:
    raw = build_mime(_corpus()[2])
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert all(len(line) <= 78 for line in head.split(b"\r\n"))
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["X-Long"].strip() == ("word " * 40).strip()
    assert parsed["Bcc"].addresses[1].domain == "xn--bcher-kva.example"
    assert parsed["Subject"].strip().startswith("Grüße aus Köln")
    assert parsed["Message-ID"] == "<custom.id@contoso.com>"
