"""Hostile and broken input: a typed error for that message, nothing sent for it.

Each case is sent next to a good message in one ``send_messages`` call through the real
backend and the emulator, so the corpus also proves that one bad message costs the others
nothing, and that a refused message costs no sendMail request.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.core.mail import EmailMessage, EmailMultiAlternatives, get_connection, send_mail

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
    # Entries Python's strict parser rejects, or that older releases' forgiving parser reads
    # as another address than written: refused on every Python release, never guessed.
    (
        "unclosed-angle-to",
        lambda: message(to=["Victim <victim@example.com"]),
        InvalidMessage,
        "'Victim <victim@example.com' in to=",
    ),
    (
        "unclosed-angle-cc",
        lambda: message(cc=["Victim <victim@example.com"]),
        InvalidMessage,
        "in cc= is not one valid address (unbalanced angle brackets)",
    ),
    (
        "unclosed-angle-bcc",
        lambda: message(bcc=["<victim@example.com"]),
        InvalidMessage,
        "'<victim@example.com' in bcc=",
    ),
    (
        "unclosed-angle-reply-to",
        lambda: message(reply_to=["Desk <desk@example.com"]),
        InvalidMessage,
        "'Desk <desk@example.com' in reply_to=",
    ),
    (
        "unclosed-angle-from",
        lambda: message(from_email="Shop <noreply@contoso.com"),
        InvalidMessage,
        "'Shop <noreply@contoso.com' in from_email= (the From address)",
    ),
    (
        "unopened-angle",
        lambda: message(to=["victim@example.com>"]),
        InvalidMessage,
        "unbalanced angle brackets",
    ),
    (
        "text-after-angle",
        lambda: message(to=["Victim <victim@example.com> junk"]),
        InvalidMessage,
        "text after the closing '>'",
    ),
    (
        "doubled-angle",
        lambda: message(to=["Victim <victim@example.com>>"]),
        InvalidMessage,
        "unbalanced angle brackets",
    ),
    (
        "unclosed-quote",
        lambda: message(to=['"Victim <victim@example.com>']),
        InvalidMessage,
        "in to= is not one valid address",
    ),
    (
        "stray-quote",
        lambda: message(cc=['Vic"tim <victim@example.com>']),
        InvalidMessage,
        "unbalanced double quote",
    ),
    (
        "unbalanced-comment",
        lambda: message(to=["Victim (x <victim@example.com>"]),
        InvalidMessage,
        "unbalanced parenthesis",
    ),
    (
        "group-syntax",
        lambda: message(to=["Friends: <victim@example.com>"]),
        InvalidMessage,
        "special character in the display name",
    ),
    (
        "trailing-semicolon",
        lambda: message(to=["Victim <victim@example.com>;"]),
        InvalidMessage,
        "text after the closing '>'",
    ),
    (
        "address-then-comment",
        lambda: message(to=["victim@example.com (Victim)"]),
        InvalidMessage,
        "text around the address",
    ),
    (
        "unclosed-angle-to-header",
        lambda: message(to=["victim@example.com"], headers={"To": "Victim <victim@example.com"}),
        InvalidMessage,
        "'Victim <victim@example.com' in extra_headers['To']",
    ),
    (
        "unclosed-angle-cc-header",
        lambda: message(
            cc=["a@example.com", "victim@example.com"],
            headers={"Cc": "a@example.com, Victim <victim@example.com"},
        ),
        InvalidMessage,
        "in extra_headers['Cc']",
    ),
    (
        "unclosed-angle-reply-to-header",
        lambda: message(headers={"Reply-To": "Desk <desk@example.com"}),
        InvalidMessage,
        "'Desk <desk@example.com' in extra_headers['Reply-To']",
    ),
    (
        "unclosed-angle-from-header",
        lambda: message(headers={"From": "Shop <noreply@contoso.com"}),
        InvalidMessage,
        "'Shop <noreply@contoso.com' in extra_headers['From']",
    ),
    ("oversized", big, MessageTooLarge, "4,194,304"),
    (
        "unknown-sender",
        lambda: message(from_email="ghost@contoso.com"),
        SenderNotFound,
        "ghost@contoso.com",
    ),
]


@pytest.mark.parametrize("save", [True, False], ids=["mime", "json"])
@pytest.mark.parametrize(
    ("factory", "error", "phrase"),
    [case[1:] for case in CORPUS],
    ids=[case[0] for case in CORPUS],
)
def test_hostile_message_fails_alone(
    emulator: GraphEmulator, factory: Any, error: type[MSGraphMailError], phrase: str, save: bool
) -> None:
    """Through both sendMail bodies: MIME, and JSON (SAVE_TO_SENT_ITEMS off)."""
    bad = factory()
    good = message(subject="good")
    with pytest.raises(error, match=None) as info:
        get_connection(save_to_sent_items=save).send_messages([bad, good])
    assert phrase.lower() in str(info.value).lower()
    assert info.value.email_message is bad
    assert bad.msgraph_status.status == "failed"
    assert bad.msgraph_status.error is info.value
    assert [m.subject for m in emulator.sent] == ["good"]
    assert [m.format for m in emulator.sent] == ["mime" if save else "json"]
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


@pytest.mark.parametrize(
    "field", ["from_email", "to", "cc", "bcc", "reply_to", "From", "To", "Cc", "Reply-To"]
)
def test_unbalanced_angle_bracket_is_refused_through_send_mail(
    emulator: GraphEmulator, field: str
) -> None:
    """django.core.mail end to end: no request at all, the field and the entry named."""
    entry = "Victim <victim@example.com"
    kwargs: dict[str, Any] = {}
    if field == "from_email":
        kwargs["from_email"] = entry
    elif field.islower():
        kwargs[field] = [entry]
    else:
        lists = {"To": "to", "Cc": "cc"}
        if field in lists:
            kwargs[lists[field]] = ["victim@example.com"]  # the envelope agrees with the header
        kwargs["headers"] = {field: entry}
    mail = message(**kwargs)
    with pytest.raises(InvalidMessage) as info:
        get_connection().send_messages([mail])
    label = f"extra_headers[{field!r}]" if field[0].isupper() else f"{field}="
    assert f"{entry!r} in {label}" in str(info.value)
    assert emulator.count() == 0  # not even a token or a directory lookup
    with pytest.raises(InvalidMessage):
        send_mail("s", "b", entry if field == "from_email" else FROM, [entry])
    assert emulator.count() == 0


@pytest.mark.parametrize(
    "entry",
    [
        "victim@example.com",
        "<victim@example.com>",
        "Victim <victim@example.com>",
        '"Victim, The" <victim@example.com>',
        '"Vic \\"the\\" tim" <victim@example.com>',
        '"<victim@example.com>" <victim@example.com>',
        "J. R. Victim <victim@example.com>",
        "Victim (work) <victim@example.com>",
        "=?utf-8?q?V=C3=ADctim?= <victim@example.com>",
        "Víctim <victim@example.com>",
    ],
)
@pytest.mark.parametrize("save", [True, False], ids=["mime", "json"])
def test_well_formed_entries_still_send(emulator: GraphEmulator, entry: str, save: bool) -> None:
    connection = get_connection(save_to_sent_items=save)
    assert message(to=[entry], cc=[entry], reply_to=[entry], connection=connection).send() == 1
    [sent] = emulator.sent
    assert (sent.to, sent.cc, sent.reply_to) == (["victim@example.com"],) * 3


#: Entries whose verdict must not depend on the Python release (3.10 to 3.13: before and
#: after the CVE-2023-27043 fix to email.utils), with the address sent for those accepted.
SAME_ON_EVERY_PYTHON = [
    ("Victim <victim@example.com", None),
    ("victim@example.com>", None),
    ("Victim <victim@example.com> junk", None),
    ('"Victim <victim@example.com', None),
    ('Vic"tim <victim@example.com>', None),
    ("victim@example.com (comment)", None),
    ("(comment) victim@example.com", None),
    ("Vic <victim@example.com> <b@example.com>", None),
    ("alice@example.com <victim@example.com>", None),
    ("<victim@example.com", None),
    ("Name <<victim@example.com>>", None),
    ("Name <victim@example.com>x", None),
    ("victim@example.com)", None),
    ("(victim@example.com", None),
    ('Name "<victim@example.com>"', None),
    ("Name <victim@example.com> (c)", None),
    ("<victim@example.com>:", None),
    ("Name: <victim@example.com>", None),
    ("Group: victim@example.com;", None),
    ("victim@example.com; b@example.com", None),
    ("Nam\\e <victim@example.com>", None),
    ("victim@[192.0.2.1]", None),
    ("Name <victim@example.com>;", None),
    ("Name (a, b) <victim@example.com>", None),
    ("Name <victim@example.com (c)>", None),
    ("<>", None),
    ("Name <>", None),
    ("victim@example.com,", None),
    ("<victim@example.com>", "victim@example.com"),
    ("Name < victim@example.com >", "victim@example.com"),
    ('"" <victim@example.com>', "victim@example.com"),
    ('"victim@example.com" <victim@example.com>', "victim@example.com"),
    ("Name (a b) <victim@example.com>", "victim@example.com"),
    ("x@例え.jp", "x@xn--r8jz45g.jp"),
]


@pytest.mark.parametrize("save", [True, False], ids=["mime", "json"])
@pytest.mark.parametrize(("entry", "delivered"), SAME_ON_EVERY_PYTHON)
def test_verdict_is_the_same_on_every_python(
    emulator: GraphEmulator, entry: str, delivered: str | None, save: bool
) -> None:
    connection = get_connection(save_to_sent_items=save)
    if delivered is None:
        with pytest.raises(InvalidMessage, match="in to= is not one valid address"):
            message(to=[entry], connection=connection).send()
        assert emulator.count() == 0
    else:
        assert message(to=[entry], connection=connection).send() == 1
        assert emulator.sent[0].to == [delivered]


def test_quoted_display_name_with_comma_is_one_recipient(emulator: GraphEmulator) -> None:
    assert message(to=['"Doe, John" <j@example.com>']).send() == 1
    assert emulator.sent[0].to == ["j@example.com"]
