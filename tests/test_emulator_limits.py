"""The emulator's per-mailbox limits (GRAPH_NOTES B.1, B.2), over real HTTP.

Per application and mailbox: 4 requests in flight, 10,000 requests per 10 minutes, 150 MB of
upload per 5 minutes; per mailbox: 10,000 recipients per 24 hours. Each refusal is a 429 with
Retry-After in Graph's error shape; the windows slide, and ``time_scale`` shrinks them so a
test sees them free again. The tests assert on counts, not on wall-clock bounds.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from msgraph_mail.emulator import ALICE_ID, NOREPLY_ID, TENANT_ID, GraphEmulator
from tests.helpers import get_token, graph_error, mime, token_form

MB = 1024 * 1024
NOREPLY = "noreply@contoso.com"
DEFAULTS = {
    "CONCURRENT_REQUESTS": 4,
    "REQUESTS_PER_10_MINUTES": 10_000,
    "UPLOAD_MB_PER_5_MINUTES": 150,
    "RECIPIENTS_PER_24_HOURS": 10_000,
}
NONE_THROTTLED = {"concurrency": 0, "requests": 0, "upload": 0, "recipients": 0}


@pytest.fixture
def token(emu: GraphEmulator, http: requests.Session) -> str:
    return get_token(emu, http)


def auth(token: str, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **headers}


def send(
    emu: GraphEmulator,
    http: requests.Session,
    token: str,
    mailbox: str = NOREPLY,
    **headers: str,
) -> requests.Response:
    """One MIME sendMail; ``headers`` go into the message (To, Cc, Bcc...)."""
    sender = "alice@contoso.com" if mailbox in ("alice@contoso.com", ALICE_ID) else NOREPLY
    message = mime(sender=sender, **headers) if headers else mime(sender=sender)
    return http.post(
        f"{emu.url}/v1.0/users/{mailbox}/sendMail",
        data=base64.b64encode(message.as_bytes()),
        headers=auth(token, **{"Content-Type": "text/plain"}),
    )


def send_json(
    emu: GraphEmulator, http: requests.Session, token: str, **recipients: list[str]
) -> requests.Response:
    def addresses(values: list[str]) -> list[dict[str, Any]]:
        return [{"emailAddress": {"address": a}} for a in values]

    message = {
        "subject": "JSON",
        "body": {"contentType": "Text", "content": "hi"},
        **{f"{kind}Recipients": addresses(values) for kind, values in recipients.items()},
    }
    return http.post(
        f"{emu.url}/v1.0/users/{NOREPLY}/sendMail",
        json={"message": message},
        headers=auth(token),
    )


def retry_after(response: requests.Response) -> float:
    return float(response.headers["Retry-After"])


def other_app_token(emu: GraphEmulator, http: requests.Session) -> str:
    client_id, secret = emu.add_application()
    form = token_form(emu, client_id=client_id, client_secret=secret)
    response = http.post(f"{emu.url}/{TENANT_ID}/oauth2/v2.0/token", data=form)
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


# configuration -------------------------------------------------------------------------------


def test_graphs_limits_by_default(emu: GraphEmulator) -> None:
    assert emu.limits == DEFAULTS
    assert emu.time_scale == 1.0
    assert emu.mailbox_concurrency == 4
    assert emu.throttled() == NONE_THROTTLED
    usage = emu.usage(NOREPLY)
    assert usage["concurrency"] == {"used": 0, "limit": 4}
    assert usage["requests"] == {"used": 0, "limit": 10_000}
    assert usage["upload"] == {"used": 0, "limit": 150 * MB}
    assert usage["recipients"] == {"used": 0, "limit": 10_000}


def test_limits_and_time_scale_from_the_constructor_and_at_run_time() -> None:
    with GraphEmulator(limits={"REQUESTS_PER_10_MINUTES": 5}, time_scale=0.001) as emu:
        assert emu.limits == {**DEFAULTS, "REQUESTS_PER_10_MINUTES": 5}
        assert emu.time_scale == 0.001
        emu.set_limits({"UPLOAD_MB_PER_5_MINUTES": 0.5}, RECIPIENTS_PER_24_HOURS=None)
        assert emu.limits == {
            **DEFAULTS,
            "REQUESTS_PER_10_MINUTES": 5,
            "UPLOAD_MB_PER_5_MINUTES": 0.5,
            "RECIPIENTS_PER_24_HOURS": None,
        }
        emu.mailbox_concurrency = None
        assert emu.limits["CONCURRENT_REQUESTS"] is None
        emu.time_scale = 2
        assert emu.time_scale == 2.0
        emu.reset_limits()
        assert emu.limits == DEFAULTS
    with pytest.raises(ValueError, match="unknown limit"):
        GraphEmulator(limits={"REQUESTS_PER_MINUTE": 1})
    with pytest.raises(ValueError, match="time_scale"):
        GraphEmulator(time_scale=0)
    with pytest.raises(ValueError, match=">= 0"):
        GraphEmulator().set_limits(RECIPIENTS_PER_24_HOURS=-1)


# the 10-minute request budget ----------------------------------------------------------------


def test_request_budget_refuses_the_next_request_with_retry_after(
    emu: GraphEmulator, http: requests.Session, token: str
) -> None:
    emu.set_limits(REQUESTS_PER_10_MINUTES=3)
    assert [send(emu, http, token).status_code for _ in range(3)] == [202] * 3
    refused = send(emu, http, token)
    message = graph_error(refused, 429, "ApplicationThrottled")
    assert message == "Application is over its MailboxRequests limit."
    assert 500 < retry_after(refused) <= 600.01  # the oldest request leaves the window
    assert len(emu.sent) == 3
    assert emu.throttled(NOREPLY) == {**NONE_THROTTLED, "requests": 1}
    assert emu.throttled("shop@contoso.com") == emu.throttled(NOREPLY_ID)  # any address
    assert emu.usage(NOREPLY)["requests"] == {"used": 3, "limit": 3}
    assert emu.faults_injected == []  # Graph's own rule, not an injected fault
    emu.reset()
    assert emu.throttled() == NONE_THROTTLED
    assert send(emu, http, token).status_code == 202


def test_every_mail_endpoint_counts_but_tokens_and_directory_reads_do_not(
    emu: GraphEmulator, http: requests.Session, token: str
) -> None:
    emu.set_limits(REQUESTS_PER_10_MINUTES=2)
    for _ in range(5):
        get_token(emu, http)
        assert http.get(f"{emu.url}/v1.0/users/{NOREPLY}", headers=auth(token)).ok
        assert http.get(f"{emu.url}/v1.0/users", headers=auth(token)).ok
    assert emu.usage(NOREPLY)["requests"]["used"] == 0
    # A refused mail request still reached the mailbox: it counts (403 here).
    emu.roles = ["User.Read.All"]
    denied = send(emu, http, get_token(emu, http))
    assert graph_error(denied, 403, "ErrorAccessDenied")
    assert send(emu, http, token).status_code == 202
    throttled = send(emu, http, token)
    graph_error(throttled, 429, "ApplicationThrottled")
    # A request without a valid token is refused before Graph's budgets (401, not 429).
    bad = http.post(f"{emu.url}/v1.0/users/{NOREPLY}/sendMail", headers=auth("nope"))
    assert bad.status_code == 401
    assert emu.usage(NOREPLY)["requests"]["used"] == 2


def test_the_request_window_slides_and_frees_after_the_scaled_time(
    emu: GraphEmulator, http: requests.Session, token: str
) -> None:
    emu.time_scale = 0.001  # 10 minutes last 0.6 s
    emu.set_limits(REQUESTS_PER_10_MINUTES=2)
    statuses = [send(emu, http, token).status_code for _ in range(2)]
    refused = send(emu, http, token)
    if refused.status_code == 202:  # a very slow machine: the window slid meanwhile
        pytest.skip("more than 0.6 s passed between three requests")
    assert statuses == [202, 202]
    graph_error(refused, 429, "ApplicationThrottled")
    assert 0 < retry_after(refused) <= 0.61  # scaled like the window
    time.sleep(retry_after(refused))
    assert send(emu, http, token).status_code == 202
    time.sleep(0.61)
    assert emu.usage(NOREPLY)["requests"]["used"] == 0  # every request left the window
    assert emu.throttled()["requests"] == 1


# isolation -----------------------------------------------------------------------------------


def test_another_mailbox_keeps_its_own_budget(
    emu: GraphEmulator, http: requests.Session, token: str
) -> None:
    emu.set_limits(REQUESTS_PER_10_MINUTES=1)
    assert send(emu, http, token).status_code == 202
    assert send(emu, http, token).status_code == 429
    assert send(emu, http, token, "alice@contoso.com").status_code == 202
    assert send(emu, http, token, ALICE_ID).status_code == 429  # the same mailbox by id
    assert emu.throttled(NOREPLY)["requests"] == 1
    assert emu.throttled("alice@contoso.com")["requests"] == 1
    assert emu.throttled("bob@contoso.com") == NONE_THROTTLED
    assert emu.throttled()["requests"] == 2


def test_another_application_keeps_its_own_budget(
    emu: GraphEmulator, http: requests.Session, token: str
) -> None:
    emu.set_limits(REQUESTS_PER_10_MINUTES=2)
    assert [send(emu, http, token).status_code for _ in range(3)] == [202, 202, 429]
    other = other_app_token(emu, http)
    claims = json.loads(base64.urlsafe_b64decode(other.split(".")[1] + "=="))
    assert claims["appid"] != emu.settings()["CLIENT_ID"]
    assert [send(emu, http, other).status_code for _ in range(3)] == [202, 202, 429]
    assert emu.usage(NOREPLY)["requests"]["used"] == 2
    assert emu.usage(NOREPLY, app=claims["appid"])["requests"]["used"] == 2
    assert emu.throttled(NOREPLY)["requests"] == 2
    apps = {row["app"] for row in emu.budgets() if row["mailbox"] == NOREPLY}
    assert apps == {emu.settings()["CLIENT_ID"], claims["appid"]}


def test_a_second_application_needs_its_own_secret(
    emu: GraphEmulator, http: requests.Session
) -> None:
    client_id, _ = emu.add_application("11111111-2222-3333-4444-555555555555", "s3cret")
    url = f"{emu.url}/{TENANT_ID}/oauth2/v2.0/token"
    wrong = http.post(url, data=token_form(emu, client_id=client_id))  # the first app's secret
    assert (wrong.status_code, wrong.json()["error_codes"]) == (401, [7000215])
    right = http.post(url, data=token_form(emu, client_id=client_id, client_secret="s3cret"))
    assert right.status_code == 200


# the 5-minute upload budget ------------------------------------------------------------------


def new_draft(emu: GraphEmulator, http: requests.Session, token: str) -> requests.Response:
    raw = b"From: noreply@contoso.com\r\nTo: a@example.com\r\nBcc: b@example.com\r\n\r\nhi\r\n"
    return http.post(
        f"{emu.url}/v1.0/users/{NOREPLY}/messages",
        data=base64.b64encode(raw),
        headers=auth(token, **{"Content-Type": "text/plain"}),
    )


def test_upload_budget_counts_bodies_and_upload_chunk_puts(
    emu: GraphEmulator, http: requests.Session, token: str
) -> None:
    emu.roles = ["Mail.Send", "Mail.ReadWrite"]
    token = get_token(emu, http)
    emu.set_limits(UPLOAD_MB_PER_5_MINUTES=2.5)
    draft = new_draft(emu, http, token)
    assert draft.status_code == 201
    item = {"AttachmentItem": {"attachmentType": "file", "name": "f.bin", "size": 3 * MB}}
    base = f"{emu.url}/v1.0/users/{NOREPLY}/messages/{draft.json()['id']}"
    session = http.post(f"{base}/attachments/createUploadSession", json=item, headers=auth(token))
    assert session.status_code == 201
    posted = len(draft.request.body or b"") + len(session.request.body or b"")
    assert emu.usage(NOREPLY)["upload"]["used"] == posted
    url = session.json()["uploadUrl"]

    def put(start: int, length: int) -> requests.Response:
        content_range = f"bytes {start}-{start + length - 1}/{3 * MB}"
        return http.put(url, data=b"x" * length, headers={"Content-Range": content_range})

    assert put(0, MB).status_code == 200
    assert put(MB, MB).status_code == 200
    assert emu.usage(NOREPLY)["upload"] == {"used": posted + 2 * MB, "limit": 2.5 * MB}
    refused = put(2 * MB, MB)  # 0.5 MB left: the third chunk does not fit
    message = graph_error(refused, 429, "ApplicationThrottled")
    assert message == "Application is over its IncomingBytes limit."
    assert 200 < retry_after(refused) <= 300.01
    assert emu.throttled(NOREPLY) == {**NONE_THROTTLED, "upload": 1}
    assert emu.usage(NOREPLY)["requests"]["used"] == 4  # draft, session, two chunks
    # A body-less request still fits; the draft can be sent once the upload is done.
    emu.set_limits(UPLOAD_MB_PER_5_MINUTES=None)
    assert put(2 * MB, MB).status_code == 201
    sent = http.post(f"{base}/send", headers=auth(token, **{"Content-Length": "0"}))
    assert sent.status_code == 202
    assert emu.usage(NOREPLY)["upload"] == {"used": posted + 3 * MB, "limit": None}
    assert emu.usage(NOREPLY)["recipients"]["used"] == 2  # To and Bcc of the draft


def test_the_upload_window_slides(emu: GraphEmulator, http: requests.Session, token: str) -> None:
    emu.time_scale = 0.002  # 5 minutes last 0.6 s
    body_size = len(base64.b64encode(mime().as_bytes()))
    emu.set_limits(UPLOAD_MB_PER_5_MINUTES=1.5 * body_size / MB)
    assert send(emu, http, token).status_code == 202
    refused = send(emu, http, token)
    if refused.status_code == 202:
        pytest.skip("more than 0.6 s passed between two requests")
    graph_error(refused, 429, "ApplicationThrottled")
    assert 0 < retry_after(refused) <= 0.61
    time.sleep(retry_after(refused))
    assert send(emu, http, token).status_code == 202


# the 24-hour recipient limit -----------------------------------------------------------------


def test_recipient_limit_counts_to_cc_and_bcc(
    emu: GraphEmulator, http: requests.Session, token: str
) -> None:
    emu.set_limits(RECIPIENTS_PER_24_HOURS=6)
    first = send(emu, http, token, to="a@example.com, b@example.com", Cc="c@example.com")
    assert first.status_code == 202
    assert emu.usage(NOREPLY)["recipients"]["used"] == 3
    bcc_only = send(emu, http, token, to=None, Bcc="d@example.com, e@example.com")
    assert bcc_only.status_code == 202
    assert emu.usage(NOREPLY)["recipients"]["used"] == 5
    refused = send_json(emu, http, token, to=["f@example.com"], bcc=["g@example.com"])
    message = graph_error(refused, 429, "ErrorExceededMessageLimit")
    assert "recipient rate limit" in message
    assert 86_000 < retry_after(refused) <= 86_400.01
    assert emu.throttled(NOREPLY) == {**NONE_THROTTLED, "recipients": 1}
    assert len(emu.sent) == 2  # the refused message was not delivered
    # One recipient still fits; JSON sendMail counts its Bcc too.
    assert send_json(emu, http, token, bcc=["g@example.com"]).status_code == 202
    assert emu.usage(NOREPLY)["recipients"] == {"used": 6, "limit": 6}
    assert send(emu, http, token).status_code == 429
    assert send(emu, http, token, "alice@contoso.com").status_code == 202  # another mailbox
    # Exchange's limit is the mailbox's: another application cannot send from it either.
    assert send(emu, http, other_app_token(emu, http)).status_code == 429
    assert emu.throttled(NOREPLY)["recipients"] == 3


def test_a_draft_send_over_the_recipient_limit_keeps_the_draft(
    emu: GraphEmulator, http: requests.Session
) -> None:
    emu.roles = ["Mail.Send", "Mail.ReadWrite"]
    token = get_token(emu, http)
    emu.set_limits(RECIPIENTS_PER_24_HOURS=1)
    draft = new_draft(emu, http, token)  # To and Bcc: 2 recipients
    url = f"{emu.url}/v1.0/users/{NOREPLY}/messages/{draft.json()['id']}/send"
    refused = http.post(url, headers=auth(token, **{"Content-Length": "0"}))
    graph_error(refused, 429, "ErrorExceededMessageLimit")
    assert len(emu.drafts) == 1
    emu.set_limits(RECIPIENTS_PER_24_HOURS=2)
    assert http.post(url, headers=auth(token, **{"Content-Length": "0"})).status_code == 202
    assert emu.sent[0].bcc == ["b@example.com"]


def test_the_recipient_window_slides(
    emu: GraphEmulator, http: requests.Session, token: str
) -> None:
    emu.time_scale = 1 / 86_400  # 24 hours last 1 s
    emu.set_limits(RECIPIENTS_PER_24_HOURS=1)
    assert send(emu, http, token).status_code == 202
    refused = send(emu, http, token)
    if refused.status_code == 202:
        pytest.skip("more than 1 s passed between two requests")
    assert 0 < retry_after(refused) <= 1.01
    time.sleep(retry_after(refused))
    assert send(emu, http, token).status_code == 202


# concurrency ---------------------------------------------------------------------------------


def test_concurrency_refusals_are_counted(emu: GraphEmulator, token: str) -> None:
    emu.latency = 0.1
    barrier = threading.Barrier(8)

    def one(_: int) -> requests.Response:
        with requests.Session() as session:
            barrier.wait()
            return send(emu, session, token)

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(one, range(8)))
    refused = [r for r in responses if r.status_code == 429]
    assert refused
    for response in refused:
        graph_error(response, 429, "ApplicationThrottled")
        assert response.headers["Retry-After"] == "0.05"
    assert emu.throttled(NOREPLY) == {**NONE_THROTTLED, "concurrency": len(refused)}
    assert emu.usage(NOREPLY)["requests"]["used"] == 8 - len(refused)  # only admitted ones
    assert emu.max_in_flight(NOREPLY) == 4
    assert emu.usage(NOREPLY)["concurrency"]["used"] == 0  # all answered


def test_concurrency_is_counted_per_application(emu: GraphEmulator, token: str) -> None:
    emu.latency = 0.15
    other = other_app_token(emu, requests.Session())
    tokens = [token, other] * 4
    barrier = threading.Barrier(len(tokens))

    def one(bearer: str) -> requests.Response:
        with requests.Session() as session:
            barrier.wait()
            return send(emu, session, bearer)

    with ThreadPoolExecutor(len(tokens)) as pool:
        responses = list(pool.map(one, tokens))
    assert [r.status_code for r in responses] == [202] * 8
    assert emu.max_in_flight(NOREPLY) <= 4


# the dev inbox and the command line ----------------------------------------------------------


def test_budgets_in_the_inbox_api_and_page(
    emu: GraphEmulator, http: requests.Session, token: str
) -> None:
    emu.set_limits(REQUESTS_PER_10_MINUTES=1)
    send(emu, http, token, to="a@example.com, b@example.com")
    send(emu, http, token)
    budgets = http.get(f"{emu.url}/api/budgets").json()
    assert budgets["limits"] == {**DEFAULTS, "REQUESTS_PER_10_MINUTES": 1}
    assert budgets["time_scale"] == 1.0
    assert budgets["throttled"] == {**NONE_THROTTLED, "requests": 1}
    [noreply] = [row for row in budgets["mailboxes"] if row["mailbox"] == NOREPLY]
    assert noreply["requests"] == {"used": 1, "limit": 1}
    assert noreply["recipients"] == {"used": 2, "limit": 10_000}
    assert noreply["throttled"]["requests"] == 1
    assert {row["mailbox"] for row in budgets["mailboxes"]} >= {"alice@contoso.com"}
    assert emu.count() == 3  # the inbox API is not Graph traffic
    page = http.get(f"{emu.url}/").text
    assert 'id="budgets"' in page
    assert '<meter data-budget="requests" min="0" max="1" value="1"' in page
    fragment = http.get(f"{emu.url}/?fragment=budgets").text
    assert fragment.count('<meter data-budget="recipients"') == len(budgets["mailboxes"])


def test_cli_sets_limits_and_time_scale() -> None:
    command = [sys.executable, "-m", "msgraph_mail.emulator", "--port", "0"]
    options = ["--limit", "REQUESTS_PER_10_MINUTES=7", "--limit", "recipients_per_24_hours=none"]
    with subprocess.Popen(  # noqa: S603 - this interpreter, fixed arguments
        [*command, *options, "--time-scale", "0.01"], stdout=subprocess.PIPE, text=True
    ) as process:
        assert process.stdout is not None
        lines: list[str] = []
        try:
            while not lines or "Press Ctrl-C" not in lines[-1]:
                lines.append(process.stdout.readline())
                assert lines[-1], "the emulator exited early"
            url = next(line for line in lines if "listening on" in line).split()[-1]
            budgets = requests.get(f"{url}/api/budgets", timeout=10).json()
        finally:
            process.terminate()
    assert budgets["time_scale"] == 0.01
    assert budgets["limits"]["REQUESTS_PER_10_MINUTES"] == 7
    assert budgets["limits"]["RECIPIENTS_PER_24_HOURS"] is None
    assert any(line.startswith("Limits: ") for line in lines)
    bad = subprocess.run(  # noqa: S603
        [*command, "--limit", "REQUESTS=1"], capture_output=True, text=True, check=False
    )
    assert bad.returncode == 2
    assert "KEY=VALUE" in bad.stderr


@pytest.mark.msgraph_emulator(limits={"RECIPIENTS_PER_24_HOURS": 3}, time_scale=0.5)
def test_the_fixture_takes_options_from_a_marker(msgraph_emulator: GraphEmulator) -> None:
    assert msgraph_emulator.limits["RECIPIENTS_PER_24_HOURS"] == 3
    assert msgraph_emulator.time_scale == 0.5
