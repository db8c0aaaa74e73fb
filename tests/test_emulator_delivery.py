"""After Graph's 202, in the emulator: each recipient's fate, NDRs in the sender's Inbox read by
delta and ``$value``, and Exchange message trace, over real HTTP as a tracker will see them."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from email import message_from_bytes, policy
from email.message import EmailMessage, Message
from email.utils import make_msgid
from typing import Any

import pytest
import requests

from msgraph_mail.emulator import TENANT_ID, GraphEmulator
from tests.helpers import get_token, graph_error, mime, token_form

ROLES = ["Mail.Send", "Mail.Read", "ExchangeMessageTrace.Read.All"]
DELAY = 0.05
#: A delay that outlasts any test: its messages stay short of their final state.
NEVER = 60.0
NOREPLY = "noreply@contoso.com"
NDR_SENDER = "MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e@contoso.onmicrosoft.com"
TRACES = "/v1.0/admin/exchange/tracing/messageTraces"
DELTA = "/v1.0/users/{}/mailFolders/inbox/messages/delta"


@pytest.fixture
def tenant(emu: GraphEmulator) -> GraphEmulator:
    """The emulator with the roles a tracker needs and reports due after 50 ms."""
    emu.roles = ROLES
    emu.delivery_delay = DELAY
    return emu


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def auth(emu: GraphEmulator, http: requests.Session) -> dict[str, str]:
    return {"Authorization": f"Bearer {get_token(emu, http)}"}


def send(
    emu: GraphEmulator, http: requests.Session, to: str, mailbox: str = NOREPLY, **headers: str
) -> str:
    """sendMail with MIME; returns the message's Message-ID."""
    message = mime(sender=mailbox, to=to, subject="Invoice 42", **headers)
    message["Message-ID"] = make_msgid(domain="shop.example")
    response = http.post(
        f"{emu.url}/v1.0/users/{mailbox}/sendMail",
        data=base64.b64encode(message.as_bytes()),
        headers={**auth(emu, http), "Content-Type": "text/plain"},
    )
    assert response.status_code == 202, response.text
    return str(message["Message-ID"])


def get(emu: GraphEmulator, http: requests.Session, url: str, **headers: str) -> requests.Response:
    full = url if url.startswith("http") else f"{emu.url}{url}"
    return http.get(full, headers={**auth(emu, http), **headers})


def delta(
    emu: GraphEmulator, http: requests.Session, url: str, **headers: str
) -> tuple[list[dict[str, Any]], str, int]:
    """Follow a delta round to its end: the messages, the deltaLink and the pages read."""
    found: list[dict[str, Any]] = []
    pages = 0
    while True:
        response = get(emu, http, url, **headers)
        assert response.status_code == 200, response.text
        pages += 1
        found += response.json()["value"]
        if "@odata.deltaLink" in response.json():
            return found, response.json()["@odata.deltaLink"], pages
        url = response.json()["@odata.nextLink"]


def traces(emu: GraphEmulator, http: requests.Session, **query: str) -> list[dict[str, Any]]:
    response = http.get(f"{emu.url}{TRACES}", params=query, headers=auth(emu, http))
    assert response.status_code == 200, response.text
    return list(response.json()["value"])


def statuses(rows: list[dict[str, Any]]) -> dict[str, str]:
    return {row["recipientAddress"]: row["status"] for row in rows}


def settle() -> None:
    time.sleep(DELAY + 0.02)


def mime_of(emu: GraphEmulator, http: requests.Session, message_id: str) -> EmailMessage:
    response = get(emu, http, f"/v1.0/users/{NOREPLY}/messages/{message_id}/$value")
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "text/plain"
    parsed = message_from_bytes(response.content, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def part(message: EmailMessage, content_type: str) -> Message:
    return next(p for p in message.walk() if p.get_content_type() == content_type)


# fate of each recipient, in message trace -----------------------------------------------------


def test_each_recipient_meets_the_fate_its_rule_gives(
    tenant: GraphEmulator, http: requests.Session
) -> None:
    tenant.set_delivery("capped@example.org", "bounced", code="5.7.233")
    tenant.set_delivery("@slow.example", "deferred")
    tenant.set_delivery("held@example.com", "quarantined")
    tenant.set_delivery("junk@example.com", "filtered_as_spam")
    recipients = [
        "ok@example.com",
        "someone@fabrikam.com",  # a guest's domain is not the tenant's
        "ghost@contoso.com",
        "bad@nowhere.invalid",
        "capped@example.org",
        "late@slow.example",
        "held@example.com",
        "junk@example.com",
    ]
    tenant.delivery_delay = NEVER  # read on acceptance: this message stays undecided
    undecided = send(tenant, http, ", ".join(recipients))
    assert statuses(traces(tenant, http)) == dict.fromkeys(recipients, "gettingStatus")

    tenant.delivery_delay = DELAY
    message_id = send(tenant, http, ", ".join(recipients))
    settle()
    rows = [r for r in traces(tenant, http) if r["messageId"] != undecided]
    assert statuses(rows) == {
        "ok@example.com": "delivered",
        "someone@fabrikam.com": "delivered",
        "ghost@contoso.com": "failed",
        "bad@nowhere.invalid": "failed",
        "capped@example.org": "failed",
        "late@slow.example": "pending",  # deferred: never final
        "held@example.com": "quarantined",
        "junk@example.com": "filteredAsSpam",
    }
    assert {row["messageId"] for row in rows} == {message_id}
    assert len({row["id"] for row in rows}) == 1  # one trace id per message
    row = rows[0]
    assert (row["senderAddress"], row["subject"]) == (NOREPLY, "Invoice 42")
    assert row["size"] > 0
    assert row["fromIP"] == ""
    assert row["receivedDateTime"].endswith("Z")


def test_status_is_pending_halfway_to_the_delay(
    tenant: GraphEmulator, http: requests.Session
) -> None:
    tenant.delivery_delay = 1.0
    send(tenant, http, "ok@example.com")
    time.sleep(0.55)
    assert statuses(traces(tenant, http)) == {"ok@example.com": "pending"}


def test_details_by_recipient_tell_how_it_ended(
    tenant: GraphEmulator, http: requests.Session
) -> None:
    tenant.delivery_delay = NEVER
    pending = send(tenant, http, "bad@nowhere.invalid", mailbox="alice@contoso.com")
    tenant.delivery_delay = DELAY
    send(tenant, http, "bad@nowhere.invalid, ok@contoso.com", mailbox="alice@contoso.com")
    tenant.add_user("ok@contoso.com")  # too late: the outcome was decided on acceptance
    ids = {row["messageId"]: row["id"] for row in traces(tenant, http)}
    trace_id = next(id_ for message_id, id_ in ids.items() if message_id != pending)

    def events(recipient: str, trace: str = trace_id) -> list[dict[str, Any]]:
        url = f"{TRACES}/{trace}/getDetailsByRecipient(recipientAddress='{recipient}')"
        response = get(tenant, http, url)
        assert response.status_code == 200, response.text
        return list(response.json()["value"])

    settle()
    assert [e["event"] for e in events("bad@nowhere.invalid", ids[pending])] == ["Receive"]
    failed = events("bad@nowhere.invalid")
    assert [e["event"] for e in failed] == ["Receive", "Fail"]
    assert "550 5.1.1 user unknown" in failed[1]["description"]
    assert {e["id"] for e in failed} == {trace_id}
    assert "5.1.10" in events("ok@contoso.com")[1]["description"]
    assert events("nobody@example.com") == []


# NDRs in the sender's Inbox ----------------------------------------------------------------


def test_ndrs_arrive_by_delta_and_the_delta_link_returns_only_new_ones(
    tenant: GraphEmulator, http: requests.Session
) -> None:
    url = DELTA.format(NOREPLY)
    tenant.delivery_delay = NEVER
    send(tenant, http, "never@nowhere.invalid")
    found, delta_link, _ = delta(tenant, http, url)
    assert found == []  # not yet due

    tenant.delivery_delay = DELAY
    send(tenant, http, "ghost@contoso.com, bad@nowhere.invalid, ok@example.com")
    settle()
    found, delta_link, _ = delta(tenant, http, delta_link)
    [ndr] = found
    assert ndr["subject"] == "Undeliverable: Invoice 42"
    assert ndr["from"]["emailAddress"] == {"name": "Microsoft Outlook", "address": NDR_SENDER}
    assert ndr["bodyPreview"].startswith("Delivery has failed to these recipients or groups:")
    assert ndr["parentFolderId"]
    assert ndr["internetMessageId"]
    assert ndr["receivedDateTime"]
    assert delta(tenant, http, delta_link)[0] == []  # nothing new

    send(tenant, http, "again@nowhere.invalid")
    settle()
    [second] = delta(tenant, http, delta_link)[0]
    assert second["id"] != ndr["id"]
    assert "again@nowhere.invalid" in second["bodyPreview"]
    # A first round from scratch sees both (the folder spelled as a key this time).
    quoted = f"/v1.0/users/{NOREPLY}/mailFolders('Inbox')/microsoft.graph.delta"
    graph_error(get(tenant, http, quoted), 400, "BadRequest")  # the delta of messages, not folders
    found = delta(tenant, http, quoted.replace("microsoft.graph.delta", "messages/delta"))[0]
    assert [m["id"] for m in found] == [ndr["id"], second["id"]]


def test_the_ndr_is_an_rfc_3464_report_with_the_original_headers(
    tenant: GraphEmulator, http: requests.Session
) -> None:
    tenant.set_delivery("bob@contoso.com", "bounced")  # a 5.1.1 from inside: no remote MTA
    message_id = send(
        tenant,
        http,
        "ghost@contoso.com, bad@nowhere.invalid, bob@contoso.com, ok@example.com",
        X_Campaign="winter",
        Bcc="hidden@example.com",
    )
    settle()
    [ndr] = tenant.inbox_messages(NOREPLY)
    report = mime_of(tenant, http, ndr.id)

    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    assert report["Subject"] == "Undeliverable: Invoice 42"
    per_message, *per_recipient = part(report, "message/delivery-status").get_payload()
    assert per_message["Reporting-MTA"].startswith("dns;")
    assert per_message["Arrival-Date"]
    by_recipient = {block["Final-Recipient"]: block for block in per_recipient}
    assert set(by_recipient) == {
        "rfc822;ghost@contoso.com",
        "rfc822;bad@nowhere.invalid",
        "rfc822;bob@contoso.com",
    }
    assert by_recipient["rfc822;bob@contoso.com"]["Remote-MTA"] is None
    remote = by_recipient["rfc822;bad@nowhere.invalid"]
    assert (remote["Action"], remote["Status"]) == ("failed", "5.1.1")
    assert remote["Diagnostic-Code"] == "smtp;550 5.1.1 user unknown"
    assert remote["Remote-MTA"] == "dns;mx.nowhere.invalid"
    local = by_recipient["rfc822;ghost@contoso.com"]
    assert local["Status"] == "5.1.10"
    assert "RecipientNotFound" in local["Diagnostic-Code"]
    assert local["Remote-MTA"] is None  # Exchange answered itself

    original = message_from_bytes(
        part(report, "text/rfc822-headers").get_payload(decode=True), policy=policy.default
    )
    assert original["Message-ID"] == message_id
    assert (original["X-Campaign"], original["Subject"]) == ("winter", "Invoice 42")
    assert original["Bcc"] is None


def test_the_ndr_carries_the_message_id_exchange_gave(
    tenant: GraphEmulator, http: requests.Session
) -> None:
    tenant.rewrite_message_ids = True
    ours = send(tenant, http, "bad@nowhere.invalid")
    settle()
    [ndr] = tenant.inbox_messages(NOREPLY)
    headers = part(mime_of(tenant, http, ndr.id), "text/rfc822-headers").get_payload(decode=True)
    delivered = message_from_bytes(headers, policy=policy.default)["Message-ID"]
    [copy] = tenant.sent_items(NOREPLY)
    assert delivered == copy.internet_message_id != ours
    assert traces(tenant, http)[0]["messageId"] == delivered


def test_json_sends_and_draft_sends_bounce_to_their_mailbox(
    tenant: GraphEmulator, http: requests.Session
) -> None:
    tenant.roles = [*ROLES, "Mail.ReadWrite"]
    headers = auth(tenant, http)
    message = {
        "subject": "By JSON",
        "toRecipients": [{"emailAddress": {"address": "json@nowhere.invalid"}}],
        "internetMessageHeaders": [{"name": "X-Outbox-Id", "value": "17"}],
    }
    response = http.post(
        f"{tenant.url}/v1.0/users/alice@contoso.com/sendMail",
        json={"message": message, "saveToSentItems": False},
        headers=headers,
    )
    assert response.status_code == 202, response.text
    draft = mime(sender="alice@contoso.com", to="draft@nowhere.invalid", subject="By draft")
    created = http.post(
        f"{tenant.url}/v1.0/users/alice@contoso.com/messages",
        data=base64.b64encode(draft.as_bytes()),
        headers={**headers, "Content-Type": "text/plain"},
    )
    assert created.status_code == 201, created.text
    sent = http.post(
        f"{tenant.url}/v1.0/users/alice@contoso.com/messages/{created.json()['id']}/send",
        data=b"",
        headers=headers,
    )
    assert sent.status_code == 202, sent.text
    settle()

    assert tenant.inbox_messages(NOREPLY) == []
    by_subject = {m.subject: m for m in tenant.inbox_messages("alice@contoso.com")}
    assert set(by_subject) == {"Undeliverable: By JSON", "Undeliverable: By draft"}
    report = message_from_bytes(by_subject["Undeliverable: By JSON"].raw, policy=policy.default)
    assert isinstance(report, EmailMessage)
    headers_part = part(report, "text/rfc822-headers").get_payload(decode=True)
    assert b"X-Outbox-Id: 17" in headers_part


def test_a_deferred_recipient_gets_a_delayed_dsn_and_quarantine_none(
    tenant: GraphEmulator, http: requests.Session
) -> None:
    tenant.set_delivery("late@example.com", "deferred", diagnostic="451 4.7.500 Try later")
    tenant.set_delivery("@quarantine.example", "quarantined")
    send(tenant, http, "late@example.com, x@quarantine.example")
    settle()
    [dsn] = tenant.inbox_messages(NOREPLY)
    assert dsn.subject == "Delivery delayed: Invoice 42"
    report = mime_of(tenant, http, dsn.id)
    [_, block] = part(report, "message/delivery-status").get_payload()
    assert (block["Action"], block["Status"]) == ("delayed", "4.4.7")
    assert block["Diagnostic-Code"] == "smtp;451 4.7.500 Try later"
    assert statuses(traces(tenant, http)) == {
        "late@example.com": "pending",
        "x@quarantine.example": "quarantined",
    }


def test_rules_are_checked(tenant: GraphEmulator) -> None:
    with pytest.raises(ValueError, match="unknown outcome"):
        tenant.set_delivery("a@example.com", "lost")
    with pytest.raises(ValueError, match=r"5\.x\.x"):
        tenant.set_delivery("a@example.com", "bounced", code="4.4.7")
    with pytest.raises(ValueError, match="no status code"):
        tenant.set_delivery("a@example.com", "delivered", code="5.1.1")
    with pytest.raises(ValueError, match="neither an address"):
        tenant.set_delivery("example.com", "bounced")


def test_cleared_rules_give_way_to_the_built_in_ones(
    tenant: GraphEmulator, http: requests.Session
) -> None:
    tenant.set_delivery("bad@nowhere.invalid", "delivered")
    tenant.clear_delivery_rules()
    send(tenant, http, "bad@nowhere.invalid")
    settle()
    assert statuses(traces(tenant, http)) == {"bad@nowhere.invalid": "failed"}


# reading the Inbox ---------------------------------------------------------------------------


def raw_message(subject: str, body: str = "Hello there") -> bytes:
    message = mime(sender="mailer-daemon@example.net", to=NOREPLY, subject=subject)
    message.set_content(body)
    return message.as_bytes()


def test_delta_pages_select_and_top(tenant: GraphEmulator, http: requests.Session) -> None:
    for n in range(3):
        tenant.deliver_to_inbox(NOREPLY, raw_message(f"Note {n}"))
    url = DELTA.format(NOREPLY)

    found, _, pages = delta(tenant, http, url, Prefer="odata.maxpagesize=2")
    assert ([m["subject"] for m in found], pages) == (["Note 0", "Note 1", "Note 2"], 2)
    first = get(tenant, http, url, Prefer="odata.maxpagesize=2")
    assert first.headers["Preference-Applied"] == "odata.maxpagesize=2"

    found, _, pages = delta(tenant, http, f"{url}?$select=subject&$top=1")
    assert pages == 3
    assert [set(m) for m in found] == [{"@odata.type", "id", "subject"}] * 3

    response = get(tenant, http, f"{url}?$select=nonsense")
    graph_error(response, 400, "RequestBroker--ParseUri")


def test_delta_tokens_not_issued_are_gone(tenant: GraphEmulator, http: requests.Session) -> None:
    url = DELTA.format(NOREPLY)
    response = get(tenant, http, f"{url}?$deltatoken=garbage")
    graph_error(response, 410, "SyncStateNotFound")
    _, delta_link, _ = delta(tenant, http, url)
    other = delta_link.replace(tenant.user(NOREPLY).id, "alice@contoso.com")  # type: ignore[union-attr]
    graph_error(get(tenant, http, other), 410, "SyncStateNotFound")
    graph_error(
        get(tenant, http, DELTA.format(NOREPLY).replace("inbox", "drafts")), 400, "BadRequest"
    )


def test_get_a_message_and_its_mime(tenant: GraphEmulator, http: requests.Session) -> None:
    raw = b"not: really\r\n\r\n\x00\xff a malformed report"
    injected = tenant.deliver_to_inbox(NOREPLY, raw)
    dsn = tenant.deliver_to_inbox(NOREPLY, raw_message("Mail delivery failed", "Postfix says no"))

    response = get(tenant, http, f"/v1.0/users/{NOREPLY}/messages/{injected.id}/$value")
    assert (response.status_code, response.content) == (200, raw)
    response = get(tenant, http, f"/v1.0/users/{NOREPLY}/messages/{dsn.id}?$select=bodyPreview")
    assert response.status_code == 200, response.text
    assert {k: v for k, v in response.json().items() if k != "@odata.context"} == {
        "id": dsn.id,
        "bodyPreview": "Postfix says no",
    }
    missing = get(tenant, http, f"/v1.0/users/{NOREPLY}/messages/AAMkNoSuchThing/$value")
    graph_error(missing, 404, "ErrorItemNotFound")
    # Another mailbox's message is not in this one.
    graph_error(
        get(tenant, http, f"/v1.0/users/alice@contoso.com/messages/{dsn.id}"),
        404,
        "ErrorItemNotFound",
    )
    assert tenant.count("message_value") == 2
    assert tenant.count("message_get") == 2


def test_read_permissions_are_graphs(tenant: GraphEmulator, http: requests.Session) -> None:
    message = tenant.deliver_to_inbox(NOREPLY, raw_message("Hi"))
    value_url = f"/v1.0/users/{NOREPLY}/messages/{message.id}/$value"

    tenant.roles = ["Mail.ReadBasic.All"]  # basic properties only: no body, no MIME
    [listed] = delta(tenant, http, DELTA.format(NOREPLY))[0]
    assert "subject" in listed
    assert "bodyPreview" not in listed
    graph_error(get(tenant, http, value_url), 403, "ErrorAccessDenied")

    tenant.roles = ["Mail.Send"]
    graph_error(get(tenant, http, DELTA.format(NOREPLY)), 403, "ErrorAccessDenied")
    tenant.rbac_read_scope = {"alice@contoso.com"}  # Exchange RBAC: Application Mail.ReadBasic
    assert get(tenant, http, DELTA.format("alice@contoso.com")).status_code == 200
    graph_error(get(tenant, http, DELTA.format(NOREPLY)), 403, "ErrorAccessDenied")


# message trace: refusals, filters, paging, throttling ------------------------------------------


def test_trace_needs_its_permission_and_service_principal(
    tenant: GraphEmulator, http: requests.Session
) -> None:
    tenant.roles = ["Mail.Send", "Mail.Read"]
    graph_error(get(tenant, http, TRACES), 403, "Forbidden")
    tenant.roles = ROLES
    tenant.trace_service_principal = False
    message = graph_error(get(tenant, http, TRACES), 401, "Unauthorized")
    assert "8bd644d1-64a1-4d4b-ae52-2e0cbf64e373" in message


def test_trace_filters(tenant: GraphEmulator, http: requests.Session) -> None:
    first = send(tenant, http, "a@example.com, b@example.com")
    second = send(tenant, http, "a@example.com", mailbox="alice@contoso.com")
    now = datetime.now(timezone.utc)
    since = (now - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    until = now.strftime("%Y-%m-%dT%H:%M:%SZ")

    def rows(expression: str) -> set[tuple[str, str]]:
        return {
            (r["messageId"], r["recipientAddress"])
            for r in traces(tenant, http, **{"$filter": expression})
        }

    assert rows(f"messageId eq '{first}'") == {(first, "a@example.com"), (first, "b@example.com")}
    assert rows("senderAddress eq 'alice@contoso.com'") == {(second, "a@example.com")}
    assert rows(
        "recipientAddress eq 'A@example.com' and senderAddress eq 'noreply@contoso.com'"
    ) == {(first, "a@example.com")}
    window = f"receivedDateTime ge {since} and receivedDateTime le {until}"
    assert len(rows(window)) == 3
    assert rows(
        f"{window} and startsWith(subject, 'invoice') and recipientAddress eq 'b@example.com'"
    ) == {(first, "b@example.com")}
    old = (now - timedelta(days=20)).strftime("%Y-%m-%dT%H:%M:%SZ")
    for refused in (
        f"receivedDateTime ge {since}",  # both bounds or none
        f"receivedDateTime ge {old} and receivedDateTime le {until}",  # over 10 days
        "senderAddress eq 'a@example.com' or senderAddress eq 'b@example.com'",
        "size eq 5",
    ):
        response = http.get(
            f"{tenant.url}{TRACES}", params={"$filter": refused}, headers=auth(tenant, http)
        )
        assert response.status_code == 400, refused


def test_trace_pages_with_top(tenant: GraphEmulator, http: requests.Session) -> None:
    send(tenant, http, ", ".join(f"r{n}@example.com" for n in range(5)))
    url = f"{TRACES}?$top=2"
    seen: list[str] = []
    while url:
        response = get(tenant, http, url)
        assert response.status_code == 200, response.text
        assert len(response.json()["value"]) <= 2
        seen += [r["recipientAddress"] for r in response.json()["value"]]
        url = response.json().get("@odata.nextLink", "")
        assert not url or "%24top=2" in url or "$top=2" in url
    assert sorted(seen) == [f"r{n}@example.com" for n in range(5)]
    for top in ("0", "5001", "ten"):
        graph_error(get(tenant, http, f"{TRACES}?$top={top}"), 400, "BadRequest")


def test_trace_allows_100_requests_per_5_minutes_per_tenant(
    tenant: GraphEmulator, http: requests.Session
) -> None:
    tenant.time_scale = 0.01  # the 5-minute window lasts 3 s
    other_id, other_secret = tenant.add_application()
    mine = auth(tenant, http)
    theirs_token = http.post(
        f"{tenant.url}/{TENANT_ID}/oauth2/v2.0/token",
        data=token_form(tenant, client_id=other_id, client_secret=other_secret),
    ).json()["access_token"]
    theirs = {"Authorization": f"Bearer {theirs_token}"}
    detail = f"{TRACES}/0/getDetailsByRecipient(recipientAddress='a@example.com')"
    for n in range(100):  # list and detail calls, by two applications, share one budget
        path, headers = (TRACES, mine) if n % 2 else (detail, theirs)
        assert http.get(f"{tenant.url}{path}", headers=headers).status_code == 200

    refused = http.get(f"{tenant.url}{TRACES}", headers=mine)
    graph_error(refused, 429, "TooManyRequests")
    assert 0 < float(refused.headers["Retry-After"]) <= 3.0  # scaled, not 300 s
    assert tenant.count("message_trace") + tenant.count("message_trace_detail") == 101

    tenant.time_scale = 0.0001  # the window is now 30 ms: the budget is back soon
    time.sleep(0.05)
    assert http.get(f"{tenant.url}{TRACES}", headers=theirs).status_code == 200
