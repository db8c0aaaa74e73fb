"""End to end through django.core.mail: every sending API, in every mode, into the emulator."""

from __future__ import annotations

import hashlib

import pytest
from django.core import mail
from django.core.mail import EmailMessage, get_connection

from msgraph_mail.emulator import GraphEmulator
from tests.helpers import PNG, RICH_ATTACHMENTS, rich_message


def test_send_mail(emulator: GraphEmulator, mode: str) -> None:
    count = mail.send_mail("Hello", "Plain body", "noreply@contoso.com", ["alice@contoso.com"])
    assert count == 1
    [sent] = emulator.sent
    assert sent.mailbox.user_principal_name == "noreply@contoso.com"
    assert sent.from_ == "noreply@contoso.com"
    assert sent.to == ["alice@contoso.com"]
    assert sent.subject == "Hello"
    assert sent.text is not None
    assert sent.text.strip() == "Plain body"


def test_send_mass_mail_reuses_connections(emulator: GraphEmulator, mode: str) -> None:
    datatuple = [
        (f"Mass {i}", f"Body {i}", "noreply@contoso.com", [f"user{i}@example.com"])
        for i in range(20)
    ]
    assert mail.send_mass_mail(datatuple) == 20
    assert sorted(m.subject for m in emulator.sent) == sorted(f"Mass {i}" for i in range(20))
    # Sent concurrently, at most 4 at a time to one mailbox: a few kept-alive connections,
    # not one per message; one token and one lookup for the whole batch.
    assert emulator.connections <= 5
    assert emulator.count("token") == 1
    assert emulator.count("user_list") == (0 if mode == "single_mailbox" else 1)


def test_mail_admins(emulator: GraphEmulator, mode: str) -> None:
    mail.mail_admins("Server down", "It is down.")
    [sent] = emulator.sent
    assert sent.to == ["alice@contoso.com"]
    assert sent.subject.endswith("Server down")


def test_bcc_recipients_are_delivered(emulator: GraphEmulator, mode: str) -> None:
    message = EmailMessage(
        "Bcc", "b", "noreply@contoso.com", ["to@example.com"], bcc=["hidden@example.com"]
    )
    assert message.send() == 1
    [sent] = emulator.sent
    assert sent.to == ["to@example.com"]
    assert sent.bcc == ["hidden@example.com"]


def test_bcc_only_message(emulator: GraphEmulator, mode: str) -> None:
    message = EmailMessage("Bcc only", "b", "noreply@contoso.com", bcc=["a@x.com", "b@x.com"])
    assert message.send() == 1
    assert emulator.sent[0].bcc == ["a@x.com", "b@x.com"]
    assert emulator.sent[0].to == []


def test_everything_arrives_intact(emulator: GraphEmulator, mode: str) -> None:
    headers = {"X-Campaign": "winter-2026", "List-Unsubscribe": "<mailto:u@contoso.com>"}
    message = rich_message(headers)
    assert message.send() == 1

    [sent] = emulator.sent
    assert sent.subject == "Grüße aus Köln — 東京 ✓"
    assert sent.from_ == "noreply@contoso.com"
    assert "Zoë Contoso" in sent.from_header
    assert sent.to == ["angstrom@example.com", "plain@example.com"]
    assert sent.cc == ["celik@example.com"]
    assert sent.bcc == ["blind@example.com"]
    assert sent.reply_to == ["support@contoso.com"]
    assert sent.header("X-Campaign") == "winter-2026"
    assert sent.header("List-Unsubscribe") == "<mailto:u@contoso.com>"
    assert sent.header("X-MSGraph-Mailbox") is None
    assert sent.text is not None
    assert "Grüße" in sent.text
    assert sent.html is not None
    assert "<b>Grüße</b>" in sent.html
    by_name = {a.filename: a for a in sent.attachments}
    # Text parts travel with CRLF line breaks, the canonical form of MIME text (RFC 2046).
    report = RICH_ATTACHMENTS["report.csv"]
    assert by_name["report.csv"].content.replace(b"\r\n", b"\n") == report
    assert by_name["daten-ü.bin"].content == RICH_ATTACHMENTS["daten-ü.bin"]
    logo = by_name["logo.png"]
    assert logo.sha256 == hashlib.sha256(PNG).hexdigest()
    assert logo.content_id == "logo"
    assert logo.inline


def test_display_name_from_is_resolved(emulator: GraphEmulator, mode: str) -> None:
    assert mail.send_mail("Hi", "b", "Shop <noreply@contoso.com>", ["a@example.com"]) == 1
    assert emulator.sent[0].from_header == "Shop <noreply@contoso.com>"


def test_steady_state_is_one_request_per_message(emulator: GraphEmulator, mode: str) -> None:
    mail.send_mail("warm-up", "b", "noreply@contoso.com", ["a@example.com"])
    lookups = 0 if mode == "single_mailbox" else 1
    assert emulator.count("token") == 1
    assert emulator.count("user_list") + emulator.count("user_get") == lookups
    emulator.reset()
    for i in range(10):  # a new backend object for each message, as send_mail does
        mail.send_mail(f"steady {i}", "b", "noreply@contoso.com", ["a@example.com"])
    assert emulator.count() == 10
    assert emulator.count("sendMail") == 10


def test_connection_reuse_with_open_and_close(emulator: GraphEmulator, mode: str) -> None:
    connection = get_connection()
    assert connection.open() is True
    assert connection.open() is False
    messages = [
        EmailMessage(f"m{i}", "b", "noreply@contoso.com", ["a@example.com"]) for i in range(3)
    ]
    assert connection.send_messages(messages[:2]) == 2
    assert connection.client is not None  # left open: the caller opened it
    opened = emulator.connections
    # The token's connection (in Azure, another host: login.microsoftonline.com) and one
    # per message sent concurrently.
    assert opened <= 3
    assert connection.send_messages(messages[2:]) == 1
    assert emulator.connections == opened  # the kept-alive connections were reused
    connection.close()
    assert connection.client is None


def test_context_manager(emulator: GraphEmulator, mode: str) -> None:
    with get_connection() as connection:
        EmailMessage("cm", "b", "noreply@contoso.com", ["a@x.com"], connection=connection).send()
        assert connection.client is not None
    assert connection.client is None
    assert len(emulator.sent) == 1


def test_empty_list_costs_no_http(emulator: GraphEmulator, mode: str) -> None:
    assert get_connection().send_messages([]) == 0
    assert emulator.count() == 0


def test_message_without_recipients_is_skipped(emulator: GraphEmulator, mode: str) -> None:
    nobody = EmailMessage("nobody", "b", "noreply@contoso.com")
    somebody = EmailMessage("somebody", "b", "noreply@contoso.com", ["a@x.com"])
    assert get_connection().send_messages([nobody, somebody]) == 1
    assert [m.subject for m in emulator.sent] == ["somebody"]
    assert emulator.count("sendMail") == 1


def test_status_is_recorded(emulator: GraphEmulator, mode: str) -> None:
    message = EmailMessage("st", "b", "noreply@contoso.com", ["a@x.com"])
    message.send()
    status = message.msgraph_status  # type: ignore[attr-defined]
    assert status.status == "sent"
    assert status.mailbox == "noreply@contoso.com"
    assert status.request_id == emulator.sent[0].request_id
    assert status.client_request_id == emulator.requests[-1].client_request_id
    assert status.error is None
    assert status.message_id == emulator.sent[0].header("Message-ID")


def test_token_is_shared_by_backend_objects_and_threads(emulator: GraphEmulator) -> None:
    import threading

    barrier = threading.Barrier(8)

    def send(i: int) -> None:
        barrier.wait()
        mail.send_mail(f"t{i}", "b", "noreply@contoso.com", ["a@x.com"])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(emulator.sent) == 8
    assert emulator.count("token") == 1


@pytest.mark.parametrize("fail_silently", [True, False])
def test_delivery_errors_and_fail_silently(emulator: GraphEmulator, fail_silently: bool) -> None:
    from msgraph_mail.exceptions import SenderNotFound

    good = EmailMessage("good", "b", "noreply@contoso.com", ["a@x.com"])
    bad = EmailMessage("bad", "b", "stranger@elsewhere.example", ["a@x.com"])
    also_good = EmailMessage("also good", "b", "alice@contoso.com", ["a@x.com"])
    connection = get_connection(fail_silently=fail_silently)
    if fail_silently:
        assert connection.send_messages([good, bad, also_good]) == 2
    else:
        with pytest.raises(SenderNotFound, match=r"stranger@elsewhere\.example") as info:
            connection.send_messages([good, bad, also_good])
        assert info.value.email_message is bad
    assert sorted(m.subject for m in emulator.sent) == ["also good", "good"]
    assert bad.msgraph_status.status == "failed"  # type: ignore[attr-defined]
    assert isinstance(bad.msgraph_status.error, SenderNotFound)  # type: ignore[attr-defined]


def test_several_failures_are_listed_together(emulator: GraphEmulator) -> None:
    from msgraph_mail.exceptions import BatchSendError, SenderNotFound

    messages = [
        EmailMessage("x", "b", "ghost1@contoso.com", ["a@x.com"]),
        EmailMessage("ok", "b", "noreply@contoso.com", ["a@x.com"]),
        EmailMessage("y", "b", "ghost2@contoso.com", ["a@x.com"]),
    ]
    with pytest.raises(BatchSendError) as info:
        get_connection().send_messages(messages)
    assert info.value.sent == 1
    assert [m for m, _ in info.value.failures] == [messages[0], messages[2]]
    assert all(isinstance(e, SenderNotFound) for _, e in info.value.failures)
    assert "ghost1@contoso.com" in str(info.value)
    assert "ghost2@contoso.com" in str(info.value)
