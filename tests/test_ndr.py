"""Non-delivery reports read with the standard library.

A corpus of real-shaped reports (tests/ndr_samples/, written by hand from the documented
shapes: Exchange Online's NDRs in English, German and French, a delayed DSN, an expired
message, a base64-encoded status part, a Postfix DSN, a Gmail DSN, an SMTPUTF8 report, one
without the original headers), what is not a report (an auto-reply, a reply, a read receipt,
a legacy plain-text bounce, a "relayed" DSN), malformed reports, and hostile input that must
never crash the tracker nor keep it busy.
"""

from __future__ import annotations

import base64
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from msgraph_mail.tracking.events import DeliveryEvent
from msgraph_mail.tracking.ndr import (
    MAX_DEPTH,
    MAX_HEADER,
    MAX_PARTS,
    TRACKING_HEADER,
    MalformedReport,
    NotAReport,
    Report,
    parse,
)

SAMPLES = Path(__file__).parent / "ndr_samples"
MAILBOX = "noreply@contoso.com"
UTC = timezone.utc


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def cut(name: str, before: bytes) -> bytes:
    """A sample truncated just before ``before``."""
    data = sample(name)
    return data[: data.index(before)]


def read(name: str) -> Report:
    return parse(sample(name), mailbox=MAILBOX)


def only(report: Report) -> DeliveryEvent:
    [event] = report.events
    return event


def report(
    *groups: str, head: str = "", original: str = "", date: str = "Thu, 3 Dec 2026 08:00:00 +0000"
) -> bytes:
    """A minimal delivery report: ``groups`` are the recipient field groups (CRLF-joined)."""
    status = "Reporting-MTA: dns;mta.example.net\r\n" + head + "\r\n" + "\r\n".join(groups)
    parts = [
        "Content-Type: text/plain\r\n\r\nDelivery has failed.\r\n",
        f"Content-Type: message/delivery-status\r\n\r\n{status}\r\n",
    ]
    if original:
        parts.append(f"Content-Type: text/rfc822-headers\r\n\r\n{original}\r\n")
    date_line = f"Date: {date}\r\n" if date else ""
    return (
        f"{date_line}Subject: Undeliverable: test\r\nMIME-Version: 1.0\r\n"
        "Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n"
        + "".join(f"--b\r\n{part}" for part in parts)
        + "--b--\r\n"
    ).encode()


FAILED = "Final-Recipient: rfc822;a@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\n"


# the corpus: bounces --------------------------------------------------------------------------

BOUNCES = {
    # name: recipient, status code, reason (start), original Message-ID, tracking id, time
    "exchange_recipient_not_found.eml": (
        "former.employee@contoso.com",
        "5.1.10",
        "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
        "<170001.42.1234@web-1.contoso.com>",
        "6f1e2d3c4b5a69788796a5b4c3d2e1f0",
        datetime(2026, 12, 3, 9, 14, 3, tzinfo=UTC),  # Arrival-Date
    ),
    "exchange_remote_user_unknown.eml": (
        "nobody@fabrikam.example",  # Nobody@Fabrikam.example, lower-cased
        "5.1.1",
        "550 5.1.1 <nobody@fabrikam.example>: Recipient address rejected: User unknown in",
        "<170002.7.99@web-2.contoso.com>",
        "0a1b2c3d4e5f60718293a4b5c6d7e8f9",
        datetime(2026, 12, 3, 10, 2, 10, tzinfo=UTC),  # Last-Attempt-Date
    ),
    "exchange_mailbox_full.eml": (
        "busy@contoso.com",
        "5.2.2",
        "554 5.2.2 mailbox full; STOREDRV.Deliver.Exception:QuotaExceededException",
        "<170003.1.1@web-1.contoso.com>",
        None,
        datetime(2026, 12, 3, 11, 0, 0, tzinfo=UTC),  # no Arrival-Date: the report's Date
    ),
    "exchange_expired.eml": (
        "slow@tailspin.example",
        "4.4.7",  # Action: failed, so bounced (final) although a 4.x.x code
        "550 4.4.7 QUEUE.Expired; message expired",
        "<170004.3.3@web-1.contoso.com>",
        "11112222333344445555666677778888",
        datetime(2026, 12, 3, 12, 0, 0, tzinfo=UTC),
    ),
    "exchange_base64_status.eml": (
        "hours@amateur.example",
        "5.7.350",
        "550 5.7.350 Remote server returned message detected as spam -> 554 5.7.1",
        "<170010.1.1@web-1.contoso.com>",  # from the attached message/rfc822
        "feedfacefeedfacefeedfacefeedface",
        datetime(2026, 12, 3, 19, 29, 57, tzinfo=UTC),
    ),
    "exchange_german.eml": (
        "kunde@beispiel.example",
        "5.1.1",
        "550 5.1.1 Recipient address rejected: unknown user",
        "<170008.8.8@web-1.contoso.com>",
        "abcdefabcdefabcdefabcdefabcdefab",
        datetime(2026, 12, 3, 14, 59, 58, tzinfo=UTC),
    ),
    "exchange_french.eml": (
        "client@exemple.example",
        "5.2.2",
        "554 5.2.2 mailbox full; STOREDRV.Deliver.Exception",
        "<170011.2.2@web-1.contoso.com>",
        "0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f",
        datetime(2026, 12, 3, 15, 30, 0, tzinfo=UTC),
    ),
    "postfix_dsn.eml": (
        "gone@tailspin.example",
        "5.1.1",
        "550 5.1.1 <gone@tailspin.example>: Recipient address rejected: User unknown",
        "<170006.6.6@web-1.contoso.com>",  # from the attached message/rfc822
        "99998888777766665555444433332222",
        datetime(2026, 12, 3, 12, 59, 58, tzinfo=UTC),  # 13:59:58 +0100 (CET)
    ),
    "gmail_dsn.eml": (
        "missing.person@gmail.com",
        "5.1.1",
        "550-5.1.1 The email account that you tried to reach does not exist. Please try "
        "double-checking",
        "<170007.7.7@web-1.contoso.com>",
        None,
        datetime(2026, 12, 3, 13, 10, 0, tzinfo=UTC),  # 05:10:00 -0800 (PST)
    ),
    "smtputf8_global_dsn.eml": (
        "jörg@bücher.example",  # utf-8 address type, message/global-delivery-status
        "5.1.1",  # Status 5.0.0 is generic: the diagnostic's code
        "550 5.1.1 Postfach jörg@bücher.example unbekannt",
        "<170012.3.3@web-1.contoso.com>",  # from message/global-headers
        "12121212121212121212121212121212",
        datetime(2026, 12, 3, 18, 59, 58, tzinfo=UTC),
    ),
}


@pytest.mark.parametrize(("name", "expected"), list(BOUNCES.items()), ids=list(BOUNCES))
def test_each_bounce_in_the_corpus_is_read(name: str, expected: tuple[object, ...]) -> None:
    recipient, code, reason, message_id, tracking_id, timestamp = expected
    report = read(name)
    event = only(report)
    assert event.event_type == "bounced"
    assert event.recipient == recipient
    assert event.status_code == code
    assert (event.reason or "").startswith(str(reason))
    assert event.sender_problem is False
    assert event.source == "ndr"
    assert event.mailbox == MAILBOX
    assert report.original_message_id == message_id
    assert event.message_id == message_id
    assert report.tracking_id == tracking_id
    assert event.tracking_id == tracking_id
    assert event.timestamp == timestamp
    assert event.timestamp.tzinfo == UTC


def test_an_exchange_ndr_for_a_recipient_not_found_in_the_tenant() -> None:
    report = read("exchange_recipient_not_found.eml")
    event = only(report)
    assert report.reporting_mta == "EM1PR00MB0001.namprd00.prod.outlook.com"
    assert report.subject == "Undeliverable: Your invoice"
    # Original-Recipient equals Final-Recipient: not repeated in the details
    assert event.details == {"x-display-name": "Former Employee"}
    assert event.final
    assert event.fix is None


def test_a_remote_rejection_relayed_by_exchange_names_the_remote_server() -> None:
    event = only(read("exchange_remote_user_unknown.eml"))
    assert event.details == {
        "remote-mta": "mx1.fabrikam.example",
        "x-supplementary-info": "<mx1.fabrikam.example #550 5.1.1 Recipient address rejected>",
    }


def test_a_full_mailbox_is_a_bounce_not_a_sender_problem() -> None:
    event = only(read("exchange_mailbox_full.eml"))
    assert (event.event_type, event.status_code, event.sender_problem) == (
        "bounced",
        "5.2.2",
        False,
    )
    assert event.fix is None


def test_an_expired_message_is_final_with_its_4xx_code() -> None:
    event = only(read("exchange_expired.eml"))
    assert event.event_type == "bounced"
    assert event.status_code == "4.4.7"
    assert event.details == {"remote-mta": "mail.tailspin.example"}


def test_a_delayed_dsn_is_deferred() -> None:
    report = read("exchange_delayed.eml")
    event = only(report)
    assert report.subject == "Delivery delayed: Order confirmation"
    assert event.event_type == "deferred"
    assert not event.final
    assert event.status_code == "4.4.7"
    assert event.recipient == "slow@tailspin.example"
    assert event.reason == "451 4.4.7 Message delayed"
    assert event.sender_problem is False
    assert event.timestamp == datetime(2026, 12, 3, 12, 0, tzinfo=UTC)  # Arrival-Date
    assert event.tracking_id == "11112222333344445555666677778888"


def test_sender_problems_are_told_apart() -> None:
    report = read("exchange_terrl.eml")
    assert [
        (e.event_type, e.recipient, e.status_code, e.sender_problem) for e in report.events
    ] == [
        ("bounced", "reader@example.org", "5.7.233", True),
        ("bounced", "other@example.org", "5.1.8", True),
    ]
    assert "external recipient rate limit" in (report.events[0].fix or "")
    assert "outbound spam" in (report.events[1].fix or "")
    assert (report.events[0].reason or "").endswith("(tenant external recipient rate limit)")
    assert report.original_message_id == "<170005.5.5@web-3.contoso.com>"


def test_a_postfix_dsn_returns_the_whole_original() -> None:
    report = read("postfix_dsn.eml")
    event = only(report)
    assert report.subject == "Undelivered Mail Returned to Sender"
    assert report.reporting_mta == "mx1.tailspin.example"
    assert event.details == {"remote-mta": "mail.tailspin.example"}
    assert event.reason == (
        "550 5.1.1 <gone@tailspin.example>: Recipient address rejected: User unknown"
    )


def test_a_gmail_multiline_reply_becomes_one_line() -> None:
    report = read("gmail_dsn.eml")
    event = only(report)
    assert report.subject == "Delivery Status Notification (Failure)"
    assert report.reporting_mta == "googlemail.com"
    assert event.reason == (
        "550-5.1.1 The email account that you tried to reach does not exist. Please try "
        "double-checking the recipient's email address for typos or unnecessary spaces. For "
        "more information, go to https://support.google.com/mail/?p=NoSuchUser a1b2c3d4e5f6 "
        "- gsmtp"
    )
    assert event.details["remote-mta"].startswith("gmail-smtp-in.l.google.com.")


@pytest.mark.parametrize(
    ("name", "subject", "display_name"),
    [
        ("exchange_german.eml", "Unzustellbar: Ihre Rechnung für Dezember", "Jürgen König"),
        ("exchange_french.eml", "Non remis : Votre facture de décembre", None),
    ],
)
def test_a_localised_ndr_is_read_like_an_english_one(
    name: str, subject: str, display_name: str | None
) -> None:
    report = read(name)
    event = only(report)
    assert report.subject == subject
    assert event.event_type == "bounced"
    assert event.details.get("x-display-name") == display_name


def test_a_base64_encoded_status_part_is_decoded() -> None:
    event = only(read("exchange_base64_status.eml"))
    assert event.details == {"x-display-name": "Hours Desk"}
    assert event.sender_problem is False


def test_an_smtputf8_report_decodes_utf8_addresses() -> None:
    report = read("smtputf8_global_dsn.eml")
    event = only(report)
    assert report.reporting_mta == "mx.example.net"
    # Original-Recipient is written with \x{F6} escapes (RFC 6533): decoded, it is the same
    # address, so the details do not repeat it
    assert "original-recipient" not in event.details


def test_a_report_without_the_original_headers_still_names_the_recipient() -> None:
    report = read("exchange_without_original.eml")
    event = only(report)
    assert report.original_message_id is None
    assert report.tracking_id is None
    assert (event.message_id, event.tracking_id) == (None, None)
    assert event.recipient == "ghost@example.net"
    assert event.status_code == "5.4.1"  # Status 5.0.0: the diagnostic's specific code
    assert event.reason == "550 5.4.1 Recipient address rejected: Access denied"
    assert event.timestamp == datetime(2026, 12, 3, 16, 0, tzinfo=UTC)  # the report's Date


def test_several_recipients_one_failed_one_delayed_one_delivered() -> None:
    report = read("mixed_failed_and_delayed.eml")
    assert [(e.event_type, e.recipient, e.status_code) for e in report.events] == [
        ("bounced", "a@example.net", "5.1.1"),
        ("deferred", "b@example.net", "4.4.1"),
    ]
    assert {e.message_id for e in report.events} == {"<170009.9.9@web-1.contoso.com>"}


def test_the_corpus_has_both_line_endings() -> None:
    assert b"\r\n" in sample("exchange_recipient_not_found.eml")
    assert b"\r\n" not in sample("postfix_dsn.eml")


# what is not a report -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("outlook_auto_reply.eml", "automatic reply"),
        ("plain_reply.eml", "text/plain message"),
        ("qmail_legacy_bounce.eml", "text/plain message"),  # only standard reports are read
        ("read_receipt.eml", "disposition-notification"),
        ("relayed_dsn.eml", "no failed or delayed recipient"),
    ],
)
def test_what_is_not_a_delivery_report(name: str, why: str) -> None:
    with pytest.raises(NotAReport, match=why):
        read(name)


def test_an_automatic_reply_is_known_by_its_subject_alone() -> None:
    raw = b"From: a@b.example\r\nSubject: Automatic reply: Your invoice\r\n\r\nAway.\r\n"
    with pytest.raises(NotAReport, match="automatic reply"):
        parse(raw)


# the rules ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "diagnostic", "code"),
    [
        ("5.0.0", "smtp; 550 5.1.1 user unknown", "5.1.1"),  # generic: the specific one
        ("5.1.2", "smtp; 550 5.1.1 user unknown", "5.1.2"),  # specific: kept
        ("5.0.0", "smtp; 451 4.4.1 no answer", "5.0.0"),  # another class: not taken
        ("", "smtp; 550 5.2.1 mailbox disabled", "5.2.1"),  # no Status: the diagnostic's
        ("5.1.1 (bad destination mailbox)", "", "5.1.1"),  # a comment after the code
    ],
)
def test_which_status_code(status: str, diagnostic: str, code: str) -> None:
    fields = "Final-Recipient: rfc822;a@example.net\r\nAction: failed\r\n"
    fields += f"Status: {status}\r\n" if status else ""
    fields += f"Diagnostic-Code: {diagnostic}\r\n" if diagnostic else ""
    assert only(parse(report(fields))).status_code == code


@pytest.mark.parametrize(
    ("fields", "event_type"),
    [
        ("Action: failed\r\nStatus: 5.1.1", "bounced"),
        ("Action: FAILED\r\nStatus: 4.4.7", "bounced"),
        ("Action: delayed\r\nStatus: 4.4.1", "deferred"),
        ("Action: delayed\r\nStatus: 5.0.0", "deferred"),
        ("Status: 5.1.1", "bounced"),  # no Action: the status class
        ("Status: 4.2.2", "deferred"),
    ],
)
def test_action_decides_the_event_type(fields: str, event_type: str) -> None:
    raw = report(f"Final-Recipient: rfc822;a@example.net\r\n{fields}\r\n")
    assert only(parse(raw)).event_type == event_type


def test_the_time_falls_back_from_the_attempt_to_now() -> None:
    received = datetime(2026, 12, 3, 9, 30, tzinfo=UTC)
    attempt = "Last-Attempt-Date: Thu, 3 Dec 2026 07:55:00 -0100\r\n"
    arrival = "Arrival-Date: Thu, 3 Dec 2026 07:50:00 +0000\r\n"
    assert only(parse(report(FAILED + attempt, head=arrival))).timestamp == datetime(
        2026, 12, 3, 8, 55, tzinfo=UTC
    )
    assert only(parse(report(FAILED, head=arrival))).timestamp == datetime(
        2026, 12, 3, 7, 50, tzinfo=UTC
    )
    assert only(parse(report(FAILED), received=received)).timestamp == datetime(
        2026, 12, 3, 8, 0, tzinfo=UTC
    )
    assert only(parse(report(FAILED, date=""), received=received)).timestamp == received
    naive = datetime(2026, 12, 3, 9, 30)  # taken as UTC
    assert only(parse(report(FAILED, date=""), received=naive)).timestamp == received
    assert only(parse(report(FAILED, date="not a date"), received=received)).timestamp == received
    before = datetime.now(UTC)
    now = only(parse(report(FAILED, date=""))).timestamp
    assert before <= now <= datetime.now(UTC)


def test_addresses_are_lowercased_and_unwrapped() -> None:
    raw = report(
        "Final-Recipient: RFC822; <Ann.Lee@Example.NET>\r\nAction: failed\r\nStatus: 5.1.1"
    )
    assert only(parse(raw)).recipient == "ann.lee@example.net"


def test_an_original_recipient_that_differs_is_kept_in_the_details() -> None:
    raw = report(
        "Original-Recipient: rfc822;sales@example.net\r\n"
        "Final-Recipient: rfc822;bob@mail.example.net\r\nAction: failed\r\nStatus: 5.2.2"
    )
    event = only(parse(raw))
    assert event.recipient == "bob@mail.example.net"
    assert event.details == {"original-recipient": "sales@example.net"}


def test_ids_longer_than_ours_can_be_are_not_returned() -> None:
    original = f"Message-ID: <{'m' * 300}@example.net>\r\n{TRACKING_HEADER}: {'t' * 65}\r\n"
    result = parse(report(FAILED, original=original))
    assert (result.original_message_id, result.tracking_id) == (None, None)
    original = f"Message-ID:\r\n <short@example.net>\r\n{TRACKING_HEADER}: {'t' * 32}\r\n"
    result = parse(report(FAILED, original=original))
    assert (result.original_message_id, result.tracking_id) == ("<short@example.net>", "t" * 32)


def test_control_characters_never_reach_an_event() -> None:
    raw = report(FAILED + "Diagnostic-Code: smtp;550 5.1.1 bad\x00 user\x01\r\n")
    assert only(parse(raw)).reason == "550 5.1.1 bad user"


# malformed and hostile input ------------------------------------------------------------------

MALFORMED = {
    "malformed_no_status_part.eml": "no message/delivery-status part",
    "malformed_no_recipient_group.eml": "no per-recipient field group",
    "malformed_no_final_recipient.eml": "without a Final-Recipient",
    "malformed_no_status.eml": "without a Status",
}


@pytest.mark.parametrize(("name", "why"), list(MALFORMED.items()), ids=list(MALFORMED))
def test_a_malformed_report_says_what_is_wrong(name: str, why: str) -> None:
    with pytest.raises(MalformedReport, match=why) as raised:
        read(name)
    assert "Delivery has failed" not in str(raised.value)  # never the body


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (
            cut("exchange_recipient_not_found.eml", b"Content-Type: message/delivery-status"),
            "no message/delivery-status part",
        ),
        (cut("exchange_recipient_not_found.eml", b"Final-Recipient:"), "without a Final-Recipient"),
        (
            b"Content-Type: multipart/report; report-type=delivery-status\r\n\r\nno boundary",
            "has no parts",
        ),
        (
            report("Final-Recipient: rfc822;" + "a" * 400 + "@example.net\r\nAction: failed"),
            "without a Final-Recipient",
        ),
        (
            report(
                "Final-Recipient: x400;/C=US/O=Example/S=Lee\r\nAction: failed\r\nStatus: 5.1.1"
            ),
            "without a Final-Recipient",
        ),
    ],
    ids=["truncated before the status", "truncated in a group", "no boundary", "long", "x400"],
)
def test_broken_reports_are_malformed(raw: bytes, why: str) -> None:
    with pytest.raises(MalformedReport, match=why):
        parse(raw)


REPORT_HEAD = b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\r\n\r\n"
STATUS_HEAD = REPORT_HEAD + b"--x\r\nContent-Type: message/delivery-status\r\n\r\n"
NESTED_HEAD = REPORT_HEAD.replace(b"boundary=x", b"boundary=b0")


def nested(depth: int) -> bytes:
    return b"".join(
        b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i, i + 1)
        for i in range(depth)
    )


def outcome(raw: bytes) -> str:
    """What reading ``raw`` came to: the refusal's message, or the recipients read."""
    try:
        result = parse(raw)
    except (NotAReport, MalformedReport) as exc:
        return f"{type(exc).__name__}: {exc}"
    return "read: " + " ".join(event.recipient for event in result.events)


GARBAGE = {
    # name: (input, what reading it comes to)
    "empty": (b"", "NotAReport: a text/plain message"),
    "binary": (bytes(range(256)) * 64, "NotAReport: a text/plain message"),
    "nul bytes": (b"\x00" * 4096, "NotAReport: a text/plain message"),
    "header only": (
        b"Content-Type: multipart/report; report-type=delivery-status",
        "MalformedReport: the multipart/report has no parts",
    ),
    "bad rfc2231": (
        b"Content-Type: multipart/report; report-type*=bogus''%ff%fe\r\n\r\nx",
        "NotAReport: a report of type unknown",
    ),
    "nested comments": (
        b"Content-Type: multipart/report; report-type=" + b"(" * 50_000 + b"\r\n\r\n",
        "NotAReport: a report of type ((((((((((((((((((((((((((((((((((((((((...,",
    ),
    "bad base64 status": (
        REPORT_HEAD + b"--x\r\nContent-Type: message/delivery-status\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n!!!not base64!!!\r\n--x--\r\n",
        "MalformedReport: the delivery-status part has no per-recipient field group",
    ),
    "odd message ids": (
        STATUS_HEAD + b"Reporting-MTA: dns;a\r\n\r\n" + FAILED.encode() + b"--x\r\n"
        b"Content-Type: text/rfc822-headers\r\n\r\nMessage-ID: <@>\r\nMessage-ID: <[>\r\n--x--",
        "read: a@example.net",
    ),
    "bad dates": (
        STATUS_HEAD + b"Reporting-MTA: dns;a\r\nArrival-Date: Thu, 99 Foo 99999 99:99 +9999\r\n"
        b"\r\n" + FAILED.encode() + b"Last-Attempt-Date: 1 Jan 0001 00:00:00 +2300\r\n--x--",
        "read: a@example.net",
    ),
    "bad utf-8 escapes": (
        REPORT_HEAD + b"--x\r\nContent-Type: message/global-delivery-status\r\n\r\n"
        b"Reporting-MTA: dns;a\r\n\r\nFinal-Recipient: utf-8;\\x{D800}\\x{FFFFFF}@b\r\n"
        b"Action: failed\r\nStatus: 5.1.1\r\n--x--\r\n",
        "MalformedReport: a recipient field group without a Final-Recipient address",
    ),
    "invalid utf-8": (
        STATUS_HEAD + b"Reporting-MTA: dns;\xff\xfe\r\n\r\nFinal-Recipient: rfc822;\xc3(@b.example"
        b"\r\nAction: failed\r\nStatus: 5.1.1\r\n--x--\r\n",
        "MalformedReport: a recipient field group without a Final-Recipient address",
    ),
}


@pytest.mark.parametrize(("raw", "expected"), list(GARBAGE.values()), ids=list(GARBAGE))
def test_garbage_never_raises_anything_else(raw: bytes, expected: str) -> None:
    assert outcome(raw).startswith(expected)


HOSTILE = {
    # name: (input, what reading it comes to), each read in well under two seconds
    "5 MB of junk": (
        REPORT_HEAD
        + b"--x\r\nContent-Type: text/plain\r\n\r\n"
        + b"junk " * 1_000_000
        + b"\r\n--x--\r\n",
        "MalformedReport: no message/delivery-status part",
    ),
    "5 MB of short lines": (
        REPORT_HEAD + b"--x\r\nContent-Type: text/plain\r\n\r\n" + b"j\n" * 2_500_000,
        "MalformedReport: no message/delivery-status part",
    ),
    "many parts": (
        REPORT_HEAD + b"--x\r\nContent-Type: text/plain\r\n\r\nx\r\n" * 50_000,
        f"MalformedReport: the report has more than {MAX_PARTS} parts",
    ),
    "many field groups": (
        STATUS_HEAD + b"Reporting-MTA: dns;a\r\n\r\n" + (FAILED.encode() + b"\r\n") * 20_000,
        f"MalformedReport: the report has more than {MAX_PARTS} parts",
    ),
    "deep nesting": (
        NESTED_HEAD + nested(5000),
        f"MalformedReport: the report is nested more than {MAX_DEPTH} levels deep",
    ),
    # the parser checks every line against each enclosing boundary: depth times lines
    "deep, then many lines": (
        NESTED_HEAD + nested(300) + b"x\n" * 400_000,
        f"MalformedReport: the report is nested more than {MAX_DEPTH} levels deep",
    ),
    "nested messages": (
        REPORT_HEAD
        + b"--x\r\nContent-Type: message/rfc822\r\n\r\n"
        + b"Content-Type: message/rfc822\r\n\r\n" * 20_000,
        f"MalformedReport: the report is nested more than {MAX_DEPTH} levels deep",
    ),
    # policy.default: seconds, and a MemoryError, on these two
    "huge parameters": (
        b"Content-Type: multipart/report; report-type=delivery-status; "
        + b"a=b; " * 200_000
        + b"boundary=x\r\n\r\n",
        "MalformedReport: the multipart/report has no parts",  # the boundary was cut off
    ),
    "many encoded words": (
        b"Subject: "
        + b"=?utf-8?q?a?= " * 60_000
        + b"\r\n"
        + STATUS_HEAD
        + b"Reporting-MTA: dns;a\r\n\r\n"
        + FAILED.encode()
        + b"--x--\r\n",
        "read: a@example.net",
    ),
    "huge diagnostic": (
        STATUS_HEAD
        + b"Reporting-MTA: dns;a\r\n\r\n"
        + FAILED.encode()
        + b"Diagnostic-Code: smtp; 550-5.1.1 x\r\n"
        + b" 550-5.1.1 y\r\n" * 60_000
        + b"--x--\r\n",
        "read: a@example.net",
    ),
}


@pytest.mark.parametrize(("raw", "expected"), list(HOSTILE.values()), ids=list(HOSTILE))
def test_hostile_input_is_read_or_refused_quickly(raw: bytes, expected: str) -> None:
    started = time.monotonic()
    assert outcome(raw).startswith(expected)
    assert time.monotonic() - started < 2.0


def test_a_diagnostic_is_cut_to_a_bounded_length() -> None:
    raw, _ = HOSTILE["huge diagnostic"]
    assert len(only(parse(raw)).reason or "") <= MAX_HEADER


def test_a_report_for_many_recipients_is_read_whole() -> None:
    groups = [
        f"Final-Recipient: rfc822;r{i}@example.net\r\nAction: failed\r\nStatus: 5.7.233\r\n"
        for i in range(1000)
    ]
    result = parse(report(*groups))
    assert len(result.events) == 1000
    assert result.events[-1].recipient == "r999@example.net"
    assert all(event.sender_problem for event in result.events)


def test_a_long_original_is_cut_but_its_headers_are_read() -> None:
    raw = sample("postfix_dsn.eml").replace(
        b"Thank you for your order.", base64.encodebytes(b"\x00" * 3_000_000)
    )
    assert len(raw) > 3_000_000
    assert parse(raw).original_message_id == "<170006.6.6@web-1.contoso.com>"
