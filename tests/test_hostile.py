"""Hostile and broken input: a typed error for that message, nothing sent for it.

Each case is sent next to a good message in one ``send_messages`` call through the real
backend and the emulator, so the corpus also proves that one bad message costs the others
nothing, and that a refused message costs no sendMail request.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.core.mail import EmailMessage, EmailMultiAlternatives, get_connection

from msgraph_mail.emulator import GraphEmulator
from msgraph_mail.exceptions import (
    InvalidMailboxHeader,
    InvalidMessage,
    MessageTooLarge,
    MSGraphMailError,
    SenderNotFound,
)

FROM = "noreply@contoso.com"
TO = ["to@example.com"]


def message(**kwargs: Any) -> EmailMessage:
    values: dict[str, Any] = {"subject": "s", "body": "b", "from_email": FROM, "to": TO}
    values.update(kwargs)
    return EmailMessage(**values)


def big() -> EmailMessage:
    mail = EmailMultiAlternatives("big", "b", FROM, TO)
    mail.attach("big.bin", b"\x01" * 3_200_000, "application/octet-stream")
    return mail


# (case id, message factory, expected exception type, phrase in its message)
CORPUS: list[tuple[str, Any, type[MSGraphMailError], str]] = [
    ("crlf-subject", lambda: message(subject="Hi\r\nBcc: evil@x.com"), InvalidMessage, "subject"),
    ("lf-subject", lambda: message(subject="Hi\nBcc: evil@x.com"), InvalidMessage, "subject"),
    ("cr-subject", lambda: message(subject="Hi\rBcc: evil@x.com"), InvalidMessage, "subject"),
    ("nul-subject", lambda: message(subject="Hi\x00there"), InvalidMessage, "control"),
    ("crlf-to", lambda: message(to=["a@x.com\r\nBcc: evil@x.com"]), InvalidMessage, "to="),
    ("crlf-cc", lambda: message(cc=["a@x.com\nBcc: evil@x.com"]), InvalidMessage, "cc="),
    ("crlf-bcc", lambda: message(bcc=["a@x.com\r\nX-Evil: 1"]), InvalidMessage, "bcc="),
    (
        "crlf-reply-to",
        lambda: message(reply_to=["r@x.com\r\nBcc: e@x.com"]),
        InvalidMessage,
        "reply_to=",
    ),
    (
        "crlf-from",
        lambda: message(from_email="noreply@contoso.com\r\nBcc: e@x.com"),
        InvalidMessage,
        "From",
    ),
    (
        "crlf-header-value",
        lambda: message(headers={"X-Tag": "a\r\nBcc: e@x.com"}),
        InvalidMessage,
        "X-Tag",
    ),
    ("lf-header-value", lambda: message(headers={"X-Tag": "a\nb"}), InvalidMessage, "X-Tag"),
    (
        "crlf-header-name",
        lambda: message(headers={"X-A\r\nBcc": "e@x.com"}),
        InvalidMessage,
        "header name",
    ),
    ("colon-header-name", lambda: message(headers={"X-A: b": "c"}), InvalidMessage, "header name"),
    ("space-header-name", lambda: message(headers={"X A": "c"}), InvalidMessage, "header name"),
    (
        "smuggled-recipient",
        lambda: message(to=["a@x.com>, <b@y.com"]),
        InvalidMessage,
        "not one valid",
    ),
    (
        "two-in-one-entry",
        lambda: message(to=["a@x.com, b@y.com"]),
        InvalidMessage,
        "own list entry",
    ),
    (
        "unquoted-comma-name",
        lambda: message(to=["Doe, John <j@x.com>"]),
        InvalidMessage,
        "quote display",
    ),
    ("no-at", lambda: message(to=["not-an-address"]), InvalidMessage, "not one valid"),
    ("two-ats", lambda: message(to=["a@b@c.com"]), InvalidMessage, "not one valid"),
    ("empty-local", lambda: message(cc=["@example.com"]), InvalidMessage, "not one valid"),
    ("bad-domain", lambda: message(bcc=["a@-example-.com"]), InvalidMessage, "not one valid"),
    ("space-in-address", lambda: message(to=["a b@example.com"]), InvalidMessage, "not one valid"),
    (
        "non-ascii-local",
        lambda: message(to=["jörg@example.com"]),
        InvalidMessage,
        "non-ASCII local part",
    ),
    ("bad-reply-to", lambda: message(reply_to=["support"]), InvalidMessage, "reply_to="),
    ("from-not-address", lambda: message(from_email="nobody"), InvalidMessage, "From address"),
    (
        "from-two",
        lambda: message(from_email="a@contoso.com, b@contoso.com"),
        InvalidMessage,
        "From",
    ),
    ("bcc-header", lambda: message(headers={"Bcc": "e@x.com"}), InvalidMessage, "bcc"),
    ("to-header-mismatch", lambda: message(headers={"To": "other@x.com"}), InvalidMessage, "To"),
    (
        "cc-header-mismatch",
        lambda: message(cc=["c@x.com"], headers={"Cc": "d@x.com"}),
        InvalidMessage,
        "Cc",
    ),
    (
        "override-two",
        lambda: message(headers={"X-MSGraph-Mailbox": "a@contoso.com, b@contoso.com"}),
        InvalidMailboxHeader,
        "X-MSGraph-Mailbox",
    ),
    (
        "override-garbage",
        lambda: message(headers={"X-MSGraph-Mailbox": "???"}),
        InvalidMailboxHeader,
        "X-MSGraph-Mailbox",
    ),
    (
        "override-empty",
        lambda: message(headers={"X-MSGraph-Mailbox": ""}),
        InvalidMailboxHeader,
        "X-MSGraph-Mailbox",
    ),
    (
        "override-crlf",
        lambda: message(headers={"X-MSGraph-Mailbox": "a@contoso.com\r\nX: y"}),
        InvalidMessage,
        "X-MSGraph-Mailbox",
    ),
    ("oversized", big, MessageTooLarge, "4,194,304"),
    (
        "unknown-sender",
        lambda: message(from_email="ghost@contoso.com"),
        SenderNotFound,
        "ghost@contoso.com",
    ),
]


@pytest.mark.parametrize(
    ("factory", "error", "phrase"),
    [case[1:] for case in CORPUS],
    ids=[case[0] for case in CORPUS],
)
def test_hostile_message_fails_alone(
    emulator: GraphEmulator, factory: Any, error: type[MSGraphMailError], phrase: str
) -> None:
    bad = factory()
    good = message(subject="good")
    with pytest.raises(error, match=None) as info:
        get_connection().send_messages([bad, good])
    assert phrase.lower() in str(info.value).lower()
    assert info.value.email_message is bad
    assert bad.msgraph_status.status == "failed"
    assert bad.msgraph_status.error is info.value
    assert [m.subject for m in emulator.sent] == ["good"]
    assert emulator.count("sendMail") == 1


def test_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 30


def test_oversized_message_costs_no_request(emulator: GraphEmulator) -> None:
    with pytest.raises(MessageTooLarge, match="accepts at most"):
        get_connection().send_messages([big()])
    assert emulator.count() == 0


def test_no_recipients_is_skipped_not_counted(emulator: GraphEmulator) -> None:
    nobody = message(to=[])
    assert get_connection().send_messages([nobody]) == 0
    assert emulator.count() == 0
    assert nobody.msgraph_status.status == "failed"


def test_idn_domains_are_delivered_in_ascii(emulator: GraphEmulator) -> None:
    mail = message(
        to=["Müller <mueller@bücher.example>"], cc=["x@例え.jp"], bcc=["y@bücher.example"]
    )
    assert mail.send() == 1
    [sent] = emulator.sent
    assert sent.to == ["mueller@xn--bcher-kva.example"]
    assert sent.cc == ["x@xn--r8jz45g.jp"]
    assert sent.bcc == ["y@xn--bcher-kva.example"]


def test_quoted_display_name_with_comma_is_one_recipient(emulator: GraphEmulator) -> None:
    assert message(to=['"Doe, John" <j@example.com>']).send() == 1
    assert emulator.sent[0].to == ["j@example.com"]
