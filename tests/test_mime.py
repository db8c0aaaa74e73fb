"""The MIME payload: Bcc added, override header removed, envelope mismatches refused."""

from __future__ import annotations

import base64
import email
import email.policy

import django
import pytest
from django.core.mail import EmailMessage, EmailMultiAlternatives

from msgraph_mail import mime as mime_module
from msgraph_mail.exceptions import InvalidMailboxHeader, InvalidMessage, MessageTooLarge
from msgraph_mail.mime import (
    MAX_REQUEST_BYTES,
    build_mime,
    encode,
    mailbox_override,
    sender_address,
    serialise,
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


# serialise() writes what the email generator writes, without its cost. -----------------


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
def test_serialise_writes_what_the_generator_writes(index: int) -> None:
    message = _corpus()[index]
    if django.VERSION >= (6, 0):
        mime = message.message(policy=email.policy.SMTP)
        expected = lambda: mime.as_bytes(policy=mime.policy.clone(linesep="\r\n"))  # noqa: E731
    else:
        mime = message.message()
        expected = lambda: mime.as_bytes(linesep="\r\n")  # noqa: E731
    mime["Bcc"] = "f@example.com"
    for part in mime.walk():
        if part.is_multipart():
            part.set_boundary(f"=_test{index}")
    written: list[bytes] = []
    fast = mime_module._flatten(mime, mime.policy.clone(linesep="\r\n"), written)
    assert fast is (index != 4)  # message/rfc822 parts are left to the generator
    assert serialise(mime) == expected()
    if fast:
        assert b"".join(written) == expected()


def test_serialise_keeps_every_header_on_its_own_folded_lines() -> None:
    raw = build_mime(_corpus()[2])
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert all(len(line) <= 78 for line in head.split(b"\r\n"))
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["X-Long"].strip() == ("word " * 40).strip()
    assert parsed["Bcc"].addresses[1].domain == "xn--bcher-kva.example"


def test_serialise_edge_trees_match_the_generator() -> None:
    from email.mime.multipart import MIMEMultipart

    def generated(mime: MIMEMultipart) -> bytes:
        return mime.as_bytes(policy=mime.policy.clone(linesep="\r\n"))

    empty = MIMEMultipart("mixed", boundary="=_empty")  # no parts: both delimiters all the same
    written: list[bytes] = []
    assert mime_module._flatten(empty, empty.policy.clone(linesep="\r\n"), written)
    assert b"".join(written) == generated(empty)
    with_preamble = MIMEMultipart("mixed", boundary="=_pre")
    with_preamble.attach(EmailMessage("s", "b", "a@contoso.com", ["b@x.com"]).message())
    with_preamble.preamble = "This is a multi-part message in MIME format."
    assert not mime_module._flatten(with_preamble, with_preamble.policy, [])
    assert serialise(with_preamble) == generated(with_preamble)
