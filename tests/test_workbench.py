"""The dev inbox as a Graph workbench, over HTTP: the request log, faults armed through
``/api/faults`` and ``--fault``, the message search and the live event stream. The same
features in a real browser: test_inbox_browser.py."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta
from typing import Any

import pytest
import requests
from django.core import mail
from django.core.mail import EmailMessage
from django.test import override_settings

from msgraph_mail.emulator import CLIENT_ID, CLIENT_SECRET, GraphEmulator
from tests.helpers import developer_settings, get_token, running_cli

FROM = "noreply@contoso.com"
BACKEND = "msgraph_mail.backend.EmailBackend"


def api(emulator: GraphEmulator, path: str, **params: Any) -> Any:
    response = requests.get(f"{emulator.url}{path}", params=params, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def arm(emulator: GraphEmulator, body: Any) -> requests.Response:
    return requests.post(f"{emulator.url}/api/faults", json=body, timeout=10)


# the request log --------------------------------------------------------------------------


def test_every_request_is_logged_newest_first_and_linked_to_its_message(
    emulator: GraphEmulator,
) -> None:
    mail.send_mail("Logged", "b", FROM, ["a@example.com"])
    [sent] = emulator.sent
    log = api(emulator, "/api/requests")
    kinds = [entry["kind"] for entry in log["requests"]]
    assert kinds == ["sendMail", "user_list", "token"]  # newest first
    send, lookup, token = log["requests"]
    assert (send["method"], send["status"], send["error"]) == ("POST", 202, None)
    assert send["path"] == f"/v1.0/users/{sent.mailbox.id}/sendMail"
    assert send["mailbox"] == "noreply@contoso.com"
    assert send["request_id"] == sent.request_id
    assert send["message"] == sent.id
    assert send["app_id"] == token["app_id"] == CLIENT_ID
    assert send["duration_ms"] >= 0
    assert datetime.fromisoformat(send["started"]) >= datetime.fromisoformat(token["started"])
    assert lookup["message"] is None
    # A message links to the requests that carried it, a request to its message.
    page = requests.get(f"{emulator.url}/messages/{sent.id}", timeout=10).text
    assert sent.request_id in page
    only = api(emulator, "/api/requests", message=sent.id)
    assert [entry["request_id"] for entry in only["requests"]] == [sent.request_id]
    log_page = requests.get(f"{emulator.url}/requests", timeout=10).text
    assert f'href="/messages/{sent.id}"' in log_page


def test_errors_show_graphs_code(emulator: GraphEmulator) -> None:
    with pytest.raises(Exception, match="ghost"):
        mail.send_mail("s", "b", "ghost@contoso.com", ["a@example.com"])
    codes = {
        e["kind"]: (e["status"], e["error"]) for e in api(emulator, "/api/requests")["requests"]
    }
    assert codes["user_list"] == (200, None)  # found nobody: not an error for Graph
    wrong = emulator.settings(CLIENT_SECRET="wrong")
    with override_settings(MSGRAPH_MAIL=wrong), pytest.raises(Exception, match="AADSTS7000215"):
        mail.send_mail("s", "b", FROM, ["a@example.com"])
    token = api(emulator, "/api/requests")["requests"][0]
    assert (token["kind"], token["status"], token["error"]) == ("token", 401, "AADSTS7000215")


def test_the_log_never_shows_a_secret_or_a_token(emulator: GraphEmulator) -> None:
    mail.send_mail("Secret-free", "b", FROM, ["a@example.com"])
    with requests.Session() as http:
        token = get_token(emulator, http)
        headers = {"Authorization": f"Bearer {token}"}
        http.get(f"{emulator.url}/v1.0/users/{FROM}", headers=headers, params={"t": "x"})
    texts = [
        requests.get(f"{emulator.url}/api/requests", timeout=10).text,
        requests.get(f"{emulator.url}/requests", timeout=10).text,
        requests.get(f"{emulator.url}/messages/{emulator.sent[0].id}", timeout=10).text,
    ]
    for text in texts:
        assert CLIENT_SECRET not in text
        assert token not in text
        assert "Bearer" not in text
    assert CLIENT_ID in texts[0]  # the application is named by its id


def test_the_draft_route_links_every_request_of_the_message(emulator: GraphEmulator) -> None:
    emulator.roles.append("Mail.ReadWrite")
    message = EmailMessage("Large", "b", FROM, ["a@example.com"])
    message.attach("big.bin", b"\x01" * 3_300_000, "application/octet-stream")
    with override_settings(MSGRAPH_MAIL=emulator.settings(LARGE_MESSAGES=True)):
        assert message.send() == 1
    [sent] = emulator.sent
    carried = api(emulator, "/api/requests", message=sent.id)["requests"]
    kinds = [entry["kind"] for entry in reversed(carried)]
    assert kinds[0] == "draft_create"
    assert kinds[-1] == "draft_send"
    assert "upload_session" in kinds
    assert "upload_chunk" in kinds


# faults -----------------------------------------------------------------------------------


def test_an_armed_429_is_retried_by_the_app_and_logged(emulator: GraphEmulator) -> None:
    answer = arm(emulator, {"fault": "429", "count": 2, "seconds": 0.01})
    assert answer.status_code == 201
    [armed] = answer.json()["armed"]
    assert (armed["fault"], armed["count"], armed["seconds"]) == ("429", 2, 0.01)
    assert mail.send_mail("Retried", "b", FROM, ["a@example.com"]) == 1
    sends = [e for e in api(emulator, "/api/requests")["requests"] if e["kind"] == "sendMail"]
    assert [(e["status"], e["error"]) for e in reversed(sends)] == [
        (429, "TooManyRequests"),
        (429, "TooManyRequests"),
        (202, None),
    ]
    assert api(emulator, "/api/faults")["armed"] == []  # served: nothing armed any more
    assert len(emulator.sent) == 1


@pytest.mark.parametrize(
    ("fault", "status", "delivered"),
    [("503", 503, 0), ("504", 504, 1), ("drop", 0, 0), ("drop-after", 0, 1)],
)
def test_each_fault_is_what_it_says(
    emulator: GraphEmulator, fault: str, status: int, delivered: int
) -> None:
    assert arm(emulator, {"fault": fault}).status_code == 201
    with override_settings(MSGRAPH_MAIL=emulator.settings(MAX_RETRIES=0)):
        assert mail.send_mail("s", "b", FROM, ["a@example.com"], fail_silently=True) == 0
    [send] = [e for e in api(emulator, "/api/requests")["requests"] if e["kind"] == "sendMail"]
    assert send["status"] == status
    if status == 0:
        assert send["error"] == "connection reset"
    assert len(emulator.sent) == delivered


def test_latency_is_added_and_switched_off(emulator: GraphEmulator) -> None:
    assert arm(emulator, {"fault": "latency", "seconds": 0.3}).status_code == 201
    assert api(emulator, "/api/faults")["armed"][0]["fault"] == "latency"
    started = time.monotonic()
    mail.send_mail("Slow", "b", FROM, ["a@example.com"])
    assert time.monotonic() - started >= 0.3 * 3  # token, lookup and sendMail each
    assert min(e["duration_ms"] for e in api(emulator, "/api/requests")["requests"]) >= 300
    off = requests.delete(f"{emulator.url}/api/faults", timeout=10)
    assert (off.status_code, off.json()["armed"], emulator.latency) == (200, [], 0.0)


@pytest.mark.parametrize(
    ("body", "phrase"),
    [
        ({"fault": "418"}, "unknown fault '418'"),
        ({"fault": "429", "count": 0}, "count must be 1"),
        ({"fault": "429", "count": 1.5}, "whole number"),
        ({"fault": "429", "seconds": -1}, "seconds must be 0"),
        ({"fault": "latency"}, "latency needs seconds"),
        ({"fault": "429", "times": 2}, "unknown field 'times'"),
        ([1, 2], "JSON object"),
    ],
)
def test_bad_faults_are_refused_with_the_reason(
    emulator: GraphEmulator, body: Any, phrase: str
) -> None:
    answer = arm(emulator, body)
    assert answer.status_code == 400
    assert phrase in answer.json()["error"]
    assert api(emulator, "/api/faults")["armed"] == []


def test_another_site_cannot_arm_faults(emulator: GraphEmulator) -> None:
    answer = requests.post(
        f"{emulator.url}/api/faults",
        json={"fault": "503"},
        headers={"Origin": "https://evil.example"},
        timeout=10,
    )
    assert answer.status_code == 403
    assert api(emulator, "/api/faults")["armed"] == []


def test_the_command_line_arms_faults() -> None:
    with running_cli("--fault", "429:1:0.01", "--fault", "latency:0.05") as (url, banner):
        assert "Armed: 429 x1" in banner
        assert "Armed: latency" in banner
        settings = developer_settings(url, MAILBOX=FROM)
        with override_settings(EMAIL_BACKEND=BACKEND, MSGRAPH_MAIL=settings):
            assert mail.send_mail("From the CLI", "b", FROM, ["a@example.com"]) == 1
        log = requests.get(f"{url}/api/requests", timeout=10).json()["requests"]
        statuses = [e["status"] for e in reversed(log) if e["kind"] == "sendMail"]
        assert statuses == [429, 202]
        assert requests.get(f"{url}/api/faults", timeout=10).json()["armed"][0]["seconds"] == 0.05


def test_the_command_line_refuses_a_bad_fault() -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "msgraph_mail.emulator", "--fault", "429:many"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "count must be a number" in result.stderr


# search -----------------------------------------------------------------------------------


def test_search_by_subject_address_mailbox_route_and_date(emulator: GraphEmulator) -> None:
    unsaved = {"X-MSGraph-Save-To-Sent-Items": "false"}
    messages = [
        EmailMessage("Invoice 1001", "b", FROM, ["Bob Builder <bob@example.com>"]),
        EmailMessage("Welcome", "b", FROM, ["carol@example.com"], bcc=["audit@example.com"]),
        EmailMessage("Reset", "b", "alice@contoso.com", ["dave@example.com"], headers=unsaved),
    ]
    mail.get_connection(max_concurrency=1).send_messages(messages)

    def subjects(**params: str) -> list[str]:
        return sorted(m["subject"] for m in api(emulator, "/api/messages", **params)["messages"])

    assert subjects(q="invoice") == ["Invoice 1001"]
    assert subjects(q="BUILDER") == ["Invoice 1001"]  # display names too
    assert subjects(q="audit@") == ["Welcome"]  # Bcc too
    assert subjects(mailbox="alice@contoso.com") == ["Reset"]
    assert subjects(route="json") == ["Reset"]
    assert subjects(route="mime", q="e") == ["Invoice 1001", "Welcome"]
    today = datetime.now().date()
    assert len(subjects(since=str(today), until=str(today))) == 3
    assert subjects(until=str(today - timedelta(days=1))) == []
    assert subjects(since=datetime.now().isoformat(timespec="seconds"), q="zzz") == []
    limited = api(emulator, "/api/messages", route="mime", limit="1")
    assert (limited["count"], len(limited["messages"])) == (2, 1)
    page = requests.get(f"{emulator.url}/", params={"q": "welcome"}, timeout=10).text
    assert "Welcome" in page
    assert "Invoice 1001" not in page
    assert 'value="welcome"' in page


@pytest.mark.parametrize(
    ("params", "phrase"),
    [({"route": "smtp"}, "route must be one of"), ({"since": "yesterday"}, "since must be")],
)
def test_a_bad_search_is_refused(
    emulator: GraphEmulator, params: dict[str, str], phrase: str
) -> None:
    answer = requests.get(f"{emulator.url}/api/messages", params=params, timeout=10)
    assert answer.status_code == 400
    assert phrase in answer.json()["error"]
    page = requests.get(f"{emulator.url}/", params=params, timeout=10)
    assert page.status_code == 200
    assert phrase in page.text


# live updates -----------------------------------------------------------------------------


def test_the_event_stream_announces_messages_requests_and_faults(emulator: GraphEmulator) -> None:
    seen: list[str] = []
    ready = threading.Event()

    def listen() -> None:
        with requests.get(f"{emulator.url}/api/events", stream=True, timeout=10) as stream:
            assert stream.headers["Content-Type"].startswith("text/event-stream")
            ready.set()
            for line in stream.iter_lines(chunk_size=1, decode_unicode=True):
                if line.startswith("event: "):
                    seen.append(line[len("event: ") :])
                if "message" in seen and "faults" in seen:
                    return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert ready.wait(10)
    deadline = time.monotonic() + 10
    while emulator.events.subscribers == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    mail.send_mail("Live", "b", FROM, ["a@example.com"])
    arm(emulator, {"fault": "503"})
    listener.join(10)
    assert not listener.is_alive()
    assert {"request", "message", "faults"} <= set(seen)


def test_stopping_the_emulator_ends_the_streams() -> None:
    with GraphEmulator() as emulator:
        stream = requests.get(f"{emulator.url}/api/events", stream=True, timeout=10)
        deadline = time.monotonic() + 10
        while emulator.events.subscribers == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert emulator.events.subscribers == 1
    started = time.monotonic()
    assert b"retry:" in b"".join(stream.iter_content(chunk_size=None))
    assert time.monotonic() - started < 5
