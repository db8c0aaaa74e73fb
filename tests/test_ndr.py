"""Non-delivery reports read with the standard library: a corpus of real-shaped samples
(tests/ndr_samples/: Exchange Online's NDRs, a Postfix DSN, a Gmail DSN, a German NDR, one
without the original headers, an auto-reply, a read receipt) and hostile input that must
never crash the tracker."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from msgraph_mail.tracking.ndr import MalformedReport, NotAReport, parse

SAMPLES = Path(__file__).parent / "ndr_samples"


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def one(name: str) -> tuple[object, object]:
    report = parse(sample(name), mailbox="noreply@contoso.com")
    [event] = report.events
    return report, event


@pytest.mark.parametrize(
    ("name", "recipient", "code", "reason", "message_id"),
    [
        (
            "exchange_recipient_not_found.eml",
            "former.employee@contoso.com",
            "5.1.10",
            "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
            "<170001.42.1234@web-1.contoso.com>",
        ),
        (
            "exchange_remote_user_unknown.eml",
            "nobody@fabrikam.example",
            "5.1.1",
            "550 5.1.1 <nobody@fabrikam.example>: Recipient address rejected: User unknown",
            "<170002.7.99@web-2.contoso.com>",
        ),
        (
            "exchange_mailbox_full.eml",
            "busy@contoso.com",
            "5.2.2",
            "554 5.2.2 mailbox full",
            "<170003.1.1@web-1.contoso.com>",
        ),
        (
            "postfix_dsn.eml",
            "gone@tailspin.example",
            "5.1.1",
            "550 5.1.1 <gone@tailspin.example>: Recipient address rejected: User unknown",
            "<170006.6.6@web-1.contoso.com>",
        ),
        (
            "gmail_dsn.eml",
            "missing.person@gmail.com",
            "5.1.1",
            "550-5.1.1 The email account that you tried to reach does not exist.",
            "<170007.7.7@web-1.contoso.com>",
        ),
        (
            "exchange_german.eml",
            "kunde@beispiel.example",
            "5.1.1",
            "550 5.1.1 Recipient address rejected: unknown user",
            "<170008.8.8@web-1.contoso.com>",
        ),
    ],
)
def test_hard_bounces(name: str, recipient: str, code: str, reason: str, message_id: str) -> None:
    report, event = one(name)
    assert event.event_type == "bounced"  # type: ignore[attr-defined]
    assert event.recipient == recipient  # type: ignore[attr-defined]
    assert event.status_code == code  # type: ignore[attr-defined]
    assert event.reason.startswith(reason)  # type: ignore[attr-defined]
    assert not event.sender_problem  # type: ignore[attr-defined]
    assert event.source == "ndr"  # type: ignore[attr-defined]
    assert event.mailbox == "noreply@contoso.com"  # type: ignore[attr-defined]
    assert report.original_message_id == message_id  # type: ignore[attr-defined]
    assert event.message_id == message_id  # type: ignore[attr-defined]


def test_our_tracking_id_and_the_times_come_back() -> None:
    report, event = one("exchange_recipient_not_found.eml")
    assert report.tracking_id == "6f1e2d3c4b5a69788796a5b4c3d2e1f0"  # type: ignore[attr-defined]
    assert event.tracking_id == report.tracking_id  # type: ignore[attr-defined]
    assert report.reporting_mta == "EM1PR00MB0001.namprd00.prod.outlook.com"  # type: ignore[attr-defined]
    assert report.subject == "Undeliverable: Your invoice"  # type: ignore[attr-defined]
    assert event.timestamp == datetime(2026, 12, 3, 9, 14, 3, tzinfo=timezone.utc)  # type: ignore[attr-defined]
    assert event.details == {"x-display-name": "Former Employee"}  # type: ignore[attr-defined]
    _, remote = one("exchange_remote_user_unknown.eml")
    assert remote.timestamp == datetime(2026, 12, 3, 10, 2, 10, tzinfo=timezone.utc)  # type: ignore[attr-defined]
    assert remote.details == {"remote-mta": "dns;mx1.fabrikam.example"}  # type: ignore[attr-defined]


def test_a_non_english_subject_does_not_matter() -> None:
    report, _ = one("exchange_german.eml")
    assert report.subject == "Unzustellbar: Ihre Rechnung"  # type: ignore[attr-defined]
    assert report.tracking_id == "abcdefabcdefabcdefabcdefabcdefab"  # type: ignore[attr-defined]


def test_a_delayed_report_is_deferred() -> None:
    _, event = one("exchange_delayed.eml")
    assert event.event_type == "deferred"  # type: ignore[attr-defined]
    assert event.status_code == "4.4.7"  # type: ignore[attr-defined]
    assert event.recipient == "slow@tailspin.example"  # type: ignore[attr-defined]


def test_sender_problems_are_told_apart() -> None:
    report = parse(sample("exchange_terrl.eml"))
    assert [(e.recipient, e.status_code, e.sender_problem) for e in report.events] == [
        ("reader@example.org", "5.7.233", True),
        ("other@example.org", "5.1.8", True),
    ]
    assert all(e.event_type == "bounced" for e in report.events)
    assert "external recipient rate limit" in (report.events[0].fix or "")


def test_a_report_without_the_original_headers_still_names_the_recipient() -> None:
    report, event = one("exchange_without_original.eml")
    assert report.original_message_id is None  # type: ignore[attr-defined]
    assert report.tracking_id is None  # type: ignore[attr-defined]
    assert event.recipient == "ghost@example.net"  # type: ignore[attr-defined]
    assert event.status_code == "5.4.1"  # the specific code of the diagnostic, not 5.0.0  # type: ignore[attr-defined]


def test_several_recipients_one_failed_one_delayed_one_delivered() -> None:
    report = parse(sample("mixed_failed_and_delayed.eml"))
    assert [(e.event_type, e.recipient, e.status_code) for e in report.events] == [
        ("bounced", "a@example.net", "5.1.1"),
        ("deferred", "b@example.net", "4.4.1"),
    ]


@pytest.mark.parametrize("name", ["outlook_auto_reply.eml", "read_receipt.eml"])
def test_replies_and_receipts_are_not_reports(name: str) -> None:
    with pytest.raises(NotAReport):
        parse(sample(name))


def test_a_plain_message_is_not_a_report() -> None:
    with pytest.raises(NotAReport):
        parse(b"From: a@b.example\r\nSubject: Undeliverable: hi\r\n\r\n550 5.1.1 user unknown\r\n")


MALFORMED = {
    "no delivery-status part": (
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\r\n\r\n"
        b"--x\r\nContent-Type: text/plain\r\n\r\nfailed\r\n--x--\r\n"
    ),
    "no recipient group": (
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\r\n\r\n"
        b"--x\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns;a\r\n--x--\r\n"
    ),
    "no final recipient": (
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\r\n\r\n"
        b"--x\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns;a\r\n\r\n"
        b"Action: failed\r\nStatus: 5.1.1\r\n--x--\r\n"
    ),
    "no status": (
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\r\n\r\n"
        b"--x\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns;a\r\n\r\n"
        b"Final-Recipient: rfc822;a@b.example\r\nAction: failed\r\n--x--\r\n"
    ),
    "truncated": sample("exchange_recipient_not_found.eml")[:700],
    "many parts": (
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\r\n\r\n"
        + b"--x\r\nContent-Type: text/plain\r\n\r\nx\r\n" * 200
        + b"--x--\r\n"
    ),
}


@pytest.mark.parametrize("raw", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_reports_are_refused_with_a_reason(raw: bytes) -> None:
    with pytest.raises(MalformedReport) as raised:
        parse(raw)
    assert len(str(raised.value)) < 200  # says what is wrong, never the body


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        bytes(range(256)) * 64,
        b"Content-Type: multipart/report; report-type=delivery-status\r\n\r\nno boundary",
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\r\n\r\n"
        + b"--x\r\nContent-Type: multipart/mixed; boundary=y\r\n\r\n" * 500,
    ],
    ids=["empty", "binary", "no boundary", "deep nesting"],
)
def test_garbage_never_raises_anything_else(raw: bytes) -> None:
    with pytest.raises((NotAReport, MalformedReport)):
        parse(raw)


def test_a_huge_body_of_junk_is_read_quickly() -> None:
    raw = (
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\r\n\r\n--x\r\n"
        b"Content-Type: text/plain\r\n\r\n" + b"junk " * 1_000_000 + b"\r\n--x--\r\n"
    )
    started = time.monotonic()
    with pytest.raises(MalformedReport):
        parse(raw)
    assert time.monotonic() - started < 2.0
