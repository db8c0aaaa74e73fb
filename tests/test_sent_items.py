"""SAVE_TO_SENT_ITEMS: mail sent through sendMail's JSON body with saveToSentItems false,
end to end through django.core.mail in every mode; what the JSON body cannot carry falls
back to MIME with a warning, or fails, as SENT_ITEMS_FALLBACK says."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from email.message import MIMEPart
from email.mime.text import MIMEText
from typing import Any

import django
import pytest
from django.core import mail
from django.core.mail import EmailMessage, EmailMultiAlternatives, get_connection
from django.test import override_settings

from msgraph_mail.emulator import GraphEmulator
from msgraph_mail.exceptions import InvalidMessage, MessageTooLarge
from tests.conftest import mode_settings
from tests.helpers import DUMMY, PNG, QUEUED, RICH_ATTACHMENTS, rich_message

FROM = "noreply@contoso.com"


@pytest.fixture
def unsaved(emulator: GraphEmulator, mode: str) -> Iterator[str]:
    """Every mode, with SAVE_TO_SENT_ITEMS off."""
    settings = mode_settings(emulator, mode, SAVE_TO_SENT_ITEMS=False)
    with override_settings(MSGRAPH_MAIL=settings):
        yield mode


def test_a_bulk_send_leaves_no_copy_in_sent_items(emulator: GraphEmulator, unsaved: str) -> None:
    batch = [(f"Notice {i}", f"Body {i}", FROM, [f"user{i}@example.com"]) for i in range(30)]
    assert mail.send_mass_mail(batch) == 30
    assert len(emulator.sent) == 30
    assert {(m.format, m.save_to_sent_items) for m in emulator.sent} == {("json", False)}
    assert emulator.sent_items() == []
    assert emulator.count("sendMail") == 30  # one request per message, as with MIME


def test_mime_keeps_a_copy_by_default(emulator: GraphEmulator, mode: str) -> None:
    message = EmailMessage("Saved", "b", FROM, ["a@example.com"])
    assert message.send() == 1
    assert message.msgraph_status.route == "sendMail"
    [copy] = emulator.sent_items("noreply@contoso.com")
    assert copy.subject == "Saved"


def test_every_field_arrives_intact_through_json(emulator: GraphEmulator, unsaved: str) -> None:
    message = rich_message({"X-Campaign": "winter-2026 ✓", "X-Priority": "1 (Highest)"})
    assert message.send() == 1

    status = message.msgraph_status
    assert (status.status, status.route, status.message_id) == ("sent", "sendMail-json", None)
    [sent] = emulator.sent
    assert (sent.format, sent.save_to_sent_items) == ("json", False)
    assert sent.subject == "Grüße aus Köln — 東京 ✓"
    assert (sent.from_, sent.from_header) == (FROM, "Zoë Contoso <noreply@contoso.com>")
    assert sent.to == ["angstrom@example.com", "plain@example.com"]
    assert sent.header("To") == "Ångström <angstrom@example.com>, plain@example.com"
    assert (sent.cc, sent.bcc, sent.reply_to) == (
        ["celik@example.com"],
        ["blind@example.com"],
        ["support@contoso.com"],
    )
    assert sent.header("X-Campaign") == "winter-2026 ✓"
    assert sent.importance == "high"
    assert sent.header("X-MSGraph-Save-To-Sent-Items") is None
    # One body: the HTML alternative (the text alternative is left out, as documented).
    assert (sent.html or "").rstrip("\n") == "<p>HTML part: <b>Grüße</b> <img src='cid:logo'></p>"
    assert sent.text is None
    by_name = {a.filename: a for a in sent.attachments}
    # Text parts travel with CRLF line breaks, the canonical form of MIME text (RFC 2046).
    assert by_name["report.csv"].content == RICH_ATTACHMENTS["report.csv"].replace(b"\n", b"\r\n")
    assert by_name["daten-ü.bin"].content == RICH_ATTACHMENTS["daten-ü.bin"]
    logo = by_name["logo.png"]
    assert (logo.content, logo.content_id, logo.inline) == (PNG, "logo", True)
    assert emulator.sent_items() == []


def test_a_text_only_message_keeps_its_text(emulator: GraphEmulator, unsaved: str) -> None:
    assert mail.send_mail("Plain", "Nur Text: ÄÖÜ\nline 2", FROM, ["a@example.com"]) == 1
    [sent] = emulator.sent
    assert (sent.text or "").rstrip("\n") == "Nur Text: ÄÖÜ\nline 2"
    assert sent.html is None


def test_an_html_only_message(emulator: GraphEmulator, unsaved: str) -> None:
    message = EmailMessage("HTML", "<p>Hallo</p>", FROM, ["a@example.com"])
    message.content_subtype = "html"
    assert message.send() == 1
    assert (emulator.sent[0].html or "").rstrip("\n") == "<p>Hallo</p>"
    assert emulator.sent[0].text is None


def test_bcc_only_through_json(emulator: GraphEmulator, unsaved: str) -> None:
    message = EmailMessage("Bcc only", "b", FROM, bcc=["a@x.com", "b@x.com"])
    assert message.send() == 1
    [sent] = emulator.sent
    assert (sent.to, sent.bcc, sent.format) == ([], ["a@x.com", "b@x.com"], "json")


def test_the_header_turns_it_off_for_one_message(emulator: GraphEmulator, mode: str) -> None:
    header = {"X-MSGraph-Save-To-Sent-Items": "False"}
    quiet = EmailMessage("Reset link", "b", FROM, ["a@example.com"], headers=header)
    normal = EmailMessage("Invoice", "b", FROM, ["a@example.com"])
    assert get_connection().send_messages([quiet, normal]) == 2
    routes = {
        m.subject: (m.format, m.header("X-MSGraph-Save-To-Sent-Items")) for m in emulator.sent
    }
    assert routes == {"Reset link": ("json", None), "Invoice": ("mime", None)}
    assert [c.subject for c in emulator.sent_items()] == ["Invoice"]


def test_the_header_turns_it_on_for_one_message(emulator: GraphEmulator, unsaved: str) -> None:
    header = {"X-MSGraph-Save-To-Sent-Items": "true"}
    kept = EmailMessage("Contract", "b", FROM, ["a@example.com"], headers=header)
    assert kept.send() == 1
    [sent] = emulator.sent
    assert (sent.format, sent.header("X-MSGraph-Save-To-Sent-Items")) == ("mime", None)
    assert b"X-MSGraph-Save-To-Sent-Items" not in sent.raw
    assert [c.subject for c in emulator.sent_items()] == ["Contract"]


def test_a_malformed_header_is_refused(emulator: GraphEmulator) -> None:
    header = {"X-MSGraph-Save-To-Sent-Items": "nope"}
    with pytest.raises(InvalidMessage, match="must be 'true' or 'false'"):
        EmailMessage("s", "b", FROM, ["a@example.com"], headers=header).send()
    assert emulator.count("sendMail") == 0


def test_backend_keyword_argument(emulator: GraphEmulator) -> None:
    with get_connection(save_to_sent_items=False) as connection:
        assert EmailMessage("kw", "b", FROM, ["a@x.com"], connection=connection).send() == 1
    assert emulator.sent[0].format == "json"
    assert emulator.sent_items() == []


@pytest.mark.skipif(django.VERSION < (6, 1), reason="MAILERS is new in Django 6.1")
def test_mailers_option(emulator: GraphEmulator) -> None:
    backend = "msgraph_mail.backend.EmailBackend"
    mailers = {
        "default": {"BACKEND": backend},
        "bulk": {"BACKEND": backend, "OPTIONS": {"save_to_sent_items": False}},
    }
    with override_settings(MAILERS=mailers):
        mail.send_mail("kept", "b", FROM, ["a@x.com"])
        mail.send_mail("bulk", "b", FROM, ["a@x.com"], using="bulk")
    assert [(m.subject, m.format) for m in emulator.sent] == [("kept", "mime"), ("bulk", "json")]
    assert [c.subject for c in emulator.sent_items()] == ["kept"]


# What the JSON body cannot carry ----------------------------------------------------------


def _with_headers(**headers: str) -> Any:
    return lambda: EmailMessage("s", "b", FROM, ["a@example.com"], headers=headers)


def _calendar() -> EmailMultiAlternatives:
    message = EmailMultiAlternatives("Invite", "b", FROM, ["a@example.com"])
    message.attach_alternative("BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n", "text/calendar")
    return message


def _forwarded() -> EmailMessage:
    message = EmailMessage("Fwd", "see attached", FROM, ["a@example.com"])
    inner = EmailMessage("Original", "inner body", "bob@example.com", ["c@example.com"])
    message.attach("original.eml", inner.message(), "message/rfc822")
    return message


def _many_x_headers() -> EmailMessage:
    headers = {f"X-Tag-{i}": str(i) for i in range(6)}
    return EmailMessage("s", "b", FROM, ["a@example.com"], headers=headers)


def _text_attachment_without_name() -> EmailMessage:
    message = EmailMessage("Two bodies", "first", FROM, ["a@example.com"])
    if django.VERSION >= (6, 0):  # MIMEBase attachments are deprecated from 6.0 on
        part = MIMEPart()
        part.set_content("<p>second</p>", subtype="html")
        message.attach(part)
    else:
        message.attach(MIMEText("<p>second</p>", "html"))
    return message


#: (case id, message factory, what the warning and the error name)
UNSUPPORTED: list[tuple[str, Any, str]] = [
    ("list-unsubscribe", _with_headers(**{"List-Unsubscribe": "<mailto:u@x.com>"}), "List-Unsub"),
    ("in-reply-to", _with_headers(**{"In-Reply-To": "<a@x.com>"}), "In-Reply-To"),
    ("references", _with_headers(References="<a@x.com> <b@x.com>"), "References"),
    ("auto-submitted", _with_headers(**{"Auto-Submitted": "auto-generated"}), "Auto-Submitted"),
    ("message-id", _with_headers(**{"Message-ID": "<mine@contoso.com>"}), "Message-ID"),
    ("bad-importance", _with_headers(Importance="urgent"), "Importance"),
    ("six-x-headers", _many_x_headers, "6 X- headers"),
    ("calendar", _calendar, "text/calendar"),
    ("attached-message", _forwarded, "message/rfc822"),
    ("two-bodies", _text_attachment_without_name, "2 body parts"),
]


@pytest.mark.parametrize(
    ("factory", "named"), [c[1:] for c in UNSUPPORTED], ids=[c[0] for c in UNSUPPORTED]
)
def test_fallback_sends_by_mime_and_warns(
    emulator: GraphEmulator, unsaved: str, factory: Any, named: str, caplog: Any
) -> None:
    message = factory()
    with caplog.at_level(logging.WARNING, logger="msgraph_mail"):
        assert message.send() == 1
    [sent] = emulator.sent
    assert sent.format == "mime"
    assert message.msgraph_status.route == "sendMail"
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert named in warning.getMessage()
    assert message.msgraph_status.message_id in warning.getMessage()
    assert "saved to Sent Items" in warning.getMessage()
    assert len(emulator.sent_items()) == 1


@pytest.mark.parametrize(
    ("factory", "named"), [c[1:] for c in UNSUPPORTED], ids=[c[0] for c in UNSUPPORTED]
)
def test_fallback_fail_refuses_and_says_which_part(
    emulator: GraphEmulator, factory: Any, named: str
) -> None:
    settings = emulator.settings(SAVE_TO_SENT_ITEMS=False, SENT_ITEMS_FALLBACK="fail")
    message, good = factory(), EmailMessage("good", "b", FROM, ["a@example.com"])
    with override_settings(MSGRAPH_MAIL=settings), pytest.raises(InvalidMessage) as info:
        get_connection().send_messages([message, good])
    assert named in str(info.value)
    assert "without a copy in Sent Items" in str(info.value)
    assert info.value.email_message is message
    assert message.msgraph_status.status == "failed"
    assert [(m.subject, m.format) for m in emulator.sent] == [("good", "json")]
    assert emulator.sent_items() == []


def _big(size: int = 3_200_000) -> EmailMessage:
    message = EmailMessage("Big", "b", FROM, ["a@example.com"])
    message.attach("big.bin", b"\x01" * size, "application/octet-stream")
    return message


def test_above_4_mb_falls_back_to_the_draft_route(emulator: GraphEmulator, caplog: Any) -> None:
    settings = emulator.settings(SAVE_TO_SENT_ITEMS=False, LARGE_MESSAGES=True)
    emulator.roles.append("Mail.ReadWrite")
    message = _big()
    with override_settings(MSGRAPH_MAIL=settings), caplog.at_level(logging.WARNING):
        assert message.send() == 1
    assert message.msgraph_status.route == "draft"
    assert "4 MB" in caplog.text
    assert emulator.sent[0].format == "draft"


def test_above_4_mb_without_large_messages(emulator: GraphEmulator) -> None:
    with override_settings(MSGRAPH_MAIL=emulator.settings(SAVE_TO_SENT_ITEMS=False)):
        with pytest.raises(MessageTooLarge):
            _big().send()
        with (
            override_settings(
                MSGRAPH_MAIL=emulator.settings(SAVE_TO_SENT_ITEMS=False, SENT_ITEMS_FALLBACK="fail")
            ),
            pytest.raises(InvalidMessage, match="4 MB"),
        ):
            _big().send()
    assert emulator.count() == 0


def test_the_json_size_is_checked_before_sending(emulator: GraphEmulator) -> None:
    """Attachments under the MIME estimate can still make JSON above 4 MB: text bodies."""
    body = "ü" * 2_200_000  # 4.4 MB as UTF-8 JSON
    settings = emulator.settings(SAVE_TO_SENT_ITEMS=False, SENT_ITEMS_FALLBACK="fail")
    with override_settings(MSGRAPH_MAIL=settings), pytest.raises(InvalidMessage, match="4 MB"):
        EmailMessage("Long", body, FROM, ["a@example.com"]).send()
    assert emulator.count("sendMail") == 0


# Queued -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_queued_message_goes_through_json(emulator: GraphEmulator) -> None:
    from msgraph_mail.outbox.store import DatabaseStore
    from msgraph_mail.outbox.tasks import send_envelope

    settings = emulator.settings(SAVE_TO_SENT_ITEMS=False)
    with override_settings(EMAIL_BACKEND=QUEUED, TASKS=DUMMY, MSGRAPH_MAIL=settings):
        backend = send_envelope.get_backend()
        backend.clear()
        message = EmailMessage("Queued", "Grüße", FROM, ["a@example.com"], bcc=["b@x.com"])
        assert mail.get_connection().send_messages([message]) == 1
        record = DatabaseStore().get(str(message.msgraph_status.message_id))
        assert record is not None
        assert record.envelope.mime == ""
        assert record.envelope.json_body is not None
        assert '"saveToSentItems": false' in record.envelope.json_body
        assert "Message-ID" not in message.extra_headers  # the key is the outbox's own
        [result] = backend.results
        backend.clear()
        assert send_envelope.call(*result.args) == "sent"
    [sent] = emulator.sent
    assert (sent.format, sent.bcc) == ("json", ["b@x.com"])
    assert (sent.text or "").rstrip("\n") == "Grüße"  # Django 6 ends text parts with a newline
    assert emulator.sent_items() == []


@pytest.mark.django_db
def test_an_unknown_outcome_is_not_looked_up_in_sent_items(emulator: GraphEmulator) -> None:
    from msgraph_mail.outbox.store import DatabaseStore
    from msgraph_mail.outbox.tasks import send_envelope

    emulator.roles.append("Mail.ReadBasic.All")
    settings = emulator.settings(SAVE_TO_SENT_ITEMS=False, RESOLVE_UNKNOWN=0.01)
    with override_settings(EMAIL_BACKEND=QUEUED, TASKS=DUMMY, MSGRAPH_MAIL=settings):
        backend = send_envelope.get_backend()
        backend.clear()
        message = EmailMessage("Lost", "b", FROM, ["a@example.com"])
        assert mail.get_connection().send_messages([message]) == 1
        emulator.fail_next("gateway_timeout")  # delivered, then 504
        outcomes = []
        for _ in range(2):
            [result] = backend.results
            backend.clear()
            outcomes.append(send_envelope.call(*result.args))
        assert backend.results == []
    assert outcomes == ["unknown", "resolve:unknown"]
    record = DatabaseStore().get(str(message.msgraph_status.message_id))
    assert record is not None
    assert record.status == "unknown"
    assert "without a copy in Sent Items" in (record.last_error or "")
    assert [r.path for r in emulator.requests if "sentitems" in r.path.lower()] == []
    assert emulator.count("sendMail") == 1


def test_check_warns_where_unknowns_cannot_be_resolved(emulator: GraphEmulator) -> None:
    from msgraph_mail.checks import check_queue

    settings = emulator.settings(SAVE_TO_SENT_ITEMS=False, RESOLVE_UNKNOWN=5)
    tasks = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}
    with override_settings(EMAIL_BACKEND=QUEUED, TASKS=tasks, MSGRAPH_MAIL=settings):
        assert [m.id for m in check_queue()] == ["msgraph_mail.W011"]
    with override_settings(
        EMAIL_BACKEND=QUEUED, TASKS=tasks, MSGRAPH_MAIL=emulator.settings(RESOLVE_UNKNOWN=5)
    ):
        assert check_queue() == []


@pytest.mark.parametrize(
    ("key", "value"), [("SAVE_TO_SENT_ITEMS", "x"), ("SENT_ITEMS_FALLBACK", "drop")]
)
def test_settings_are_validated(emulator: GraphEmulator, key: str, value: str) -> None:
    from msgraph_mail.checks import check_settings

    with override_settings(MSGRAPH_MAIL=emulator.settings(**{key: value})):
        found = check_settings()
    assert any(key in m.msg for m in found), [m.msg for m in found]
