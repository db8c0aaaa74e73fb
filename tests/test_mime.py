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
