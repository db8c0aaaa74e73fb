"""The emulator's injected faults, latency and per-mailbox concurrency limit, over real HTTP.

These are the failures a reliable sender has to survive (GRAPH_NOTES B.1, B.3): each one must
look to a client exactly as it would from Graph, and the server must stay healthy after it.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from msgraph_mail.emulator import (
    ALICE_ID,
    CLIENT_ID,
    NOREPLY_ID,
    TENANT_ID,
    GraphEmulator,
    InjectedFault,
)
from tests.helpers import get_token, graph_error, mime, token_form

SEND_URL = "/v1.0/users/noreply@contoso.com/sendMail"


@pytest.fixture
def token(emu: GraphEmulator, http: requests.Session) -> str:
    return get_token(emu, http)


def send(
    emu: GraphEmulator,
    http: requests.Session,
    token: str,
    mailbox: str = "noreply@contoso.com",
    **kwargs: Any,
) -> requests.Response:
    """One small MIME sendMail with a known token (no token request per send)."""
    sender = "alice@contoso.com" if mailbox in ("alice@contoso.com", ALICE_ID) else None
    message = mime(sender=sender) if sender else mime()
    return http.post(
        f"{emu.url}/v1.0/users/{mailbox}/sendMail",
        data=base64.b64encode(message.as_bytes()),
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "text/plain",
            "client-request-id": "crid-1",
        },
        **kwargs,
    )


def token_request(emu: GraphEmulator, http: requests.Session, **changes: str) -> Any:
    return http.post(
        f"{emu.url}/{TENANT_ID}/oauth2/v2.0/token",
        data=token_form(emu, **changes),
        headers={"client-request-id": "corr-9"},
    )


def injected(response: requests.Response | None, fault: str, delivered: bool) -> InjectedFault:
    """The record a sendMail fault should leave (request id known only with a response)."""
    request_id = response.headers["request-id"] if response is not None else ""
    return InjectedFault(fault, "sendMail", SEND_URL, delivered, "crid-1", request_id)


# faults answered over HTTP -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "status", "code", "retry_after"),
    [
        ("throttle", 429, "TooManyRequests", "0.01"),
        ("unavailable", 503, "serviceNotAvailable", "0.01"),
        ("gateway_timeout_lost", 504, "GatewayTimeout", None),
    ],
)
def test_faults_that_deliver_nothing(
    emu: GraphEmulator,
    http: requests.Session,
    token: str,
    fault: str,
    status: int,
    code: str,
    retry_after: str | None,
) -> None:
    emu.fail_next(fault)
    response = send(emu, http, token)
    graph_error(response, status, code)
    assert response.headers.get("Retry-After") == retry_after
    assert response.headers["client-request-id"] == "crid-1"
    assert emu.sent == []
    assert emu.faults_injected == [injected(response, fault, delivered=False)]
    assert send(emu, http, token).status_code == 202
    assert [r.status for r in emu.requests if r.kind == "sendMail"] == [status, 202]
    assert emu.connections == 1


def test_throttle_body_and_retry_after_forms(
    emu: GraphEmulator, http: requests.Session, token: str
) -> None:
    emu.fail_next("throttle", retry_after=2.128)
    emu.fail_next("throttle", retry_after=None)
    emu.fail_next("unavailable", retry_after=3)
    first = send(emu, http, token)
    assert first.headers["Retry-After"] == "2.128"
    error = first.json()["error"]
    assert error["innerError"]["code"] == "429"
    assert error["innerError"]["client-request-id"] == "crid-1"
    assert "Retry-After" not in send(emu, http, token).headers
    assert send(emu, http, token).headers["Retry-After"] == "3"


def test_gateway_timeout_delivers_then_answers_504(
    emu: GraphEmulator, http: requests.Session, token: str
) -> None:
    emu.fail_next("gateway_timeout")
    response = send(emu, http, token)
    graph_error(response, 504, "GatewayTimeout")
    [sent] = emu.sent
    assert sent.request_id == response.headers["request-id"]
    assert emu.faults_injected == [injected(response, "gateway_timeout", delivered=True)]


@pytest.mark.parametrize("fault", ["gateway_timeout", "reset_after", "slow"])
def test_processing_fault_on_a_refused_request_returns_the_refusal(
    emu: GraphEmulator, http: requests.Session, token: str, fault: str
) -> None:
    emu.fail_next(fault)
    started = time.monotonic()
    refused = send(emu, http, token, mailbox="nobody@contoso.com")
    graph_error(refused, 404, "ErrorInvalidUser")
    assert time.monotonic() - started < 1.0  # "slow" does not wait: nothing was done
    [record] = emu.faults_injected
    assert (record.fault, record.delivered) == (fault, False)
    assert emu.sent == []
    assert send(emu, http, token).status_code == 202  # the fault was used up


def test_expired_token_revokes_the_presented_token(
    emu: GraphEmulator, http: requests.Session, token: str
) -> None:
    emu.fail_next("expired_token")
    response = send(emu, http, token)
    message = graph_error(response, 401, "InvalidAuthenticationToken")
    assert message == "Access token has expired or is not yet valid."
    assert response.headers["WWW-Authenticate"].startswith("Bearer ")
    again = send(emu, http, token)  # no fault left: refused because the token is revoked
    assert "expired" in graph_error(again, 401, "InvalidAuthenticationToken")
    assert send(emu, http, get_token(emu, http)).status_code == 202
    assert [f.fault for f in emu.faults_injected] == ["expired_token"]
    assert len(emu.sent) == 1


def test_queued_faults_count_times_and_kind(
    emu: GraphEmulator, http: requests.Session, token: str
) -> None:
    emu.fail_next("throttle", 2)
    emu.fail_next("unavailable", on="user_get")
    headers = {"Authorization": f"Bearer {token}"}
    assert [send(emu, http, token).status_code for _ in range(3)] == [429, 429, 202]
    user = http.get(f"{emu.url}/v1.0/users/{ALICE_ID}", headers=headers)
    graph_error(user, 503, "serviceNotAvailable")
    assert http.get(f"{emu.url}/v1.0/users/{ALICE_ID}", headers=headers).ok
    assert [(f.fault, f.kind) for f in emu.faults_injected] == [
        ("throttle", "sendMail"),
        ("throttle", "sendMail"),
        ("unavailable", "user_get"),
    ]


# faults on the token endpoint ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "status", "error", "code", "retry_after"),
    [
        ("throttle", 429, "too_many_requests", 90055, "0.01"),
        ("unavailable", 503, "temporarily_unavailable", 90006, "0.01"),
        ("gateway_timeout_lost", 504, "temporarily_unavailable", 90012, None),
    ],
)
def test_token_endpoint_faults_are_entra_shaped(
    emu: GraphEmulator,
    http: requests.Session,
    fault: str,
    status: int,
    error: str,
    code: int,
    retry_after: str | None,
) -> None:
    emu.fail_next(fault, on="token")
    response = token_request(emu, http)
    assert response.status_code == status
    assert response.headers.get("Retry-After") == retry_after
    body = response.json()
    assert (body["error"], body["error_codes"]) == (error, [code])
    assert body["error_description"].startswith(f"AADSTS{code}: ")
    assert body["correlation_id"] == "corr-9"
    assert emu.issued_tokens == []
    assert token_request(emu, http).status_code == 200
    assert [(f.fault, f.kind, f.delivered) for f in emu.faults_injected] == [
        (fault, "token", False)
    ]


def test_token_gateway_timeout_issues_the_token_it_loses(
    emu: GraphEmulator, http: requests.Session
) -> None:
    emu.fail_next("gateway_timeout", on="token")
    assert token_request(emu, http).status_code == 504
    assert len(emu.issued_tokens) == 1
    emu.fail_next("reset_before", on="token")
    with pytest.raises(requests.ConnectionError):
        token_request(emu, http)
    assert token_request(emu, http).status_code == 200


def test_fault_arguments_are_checked(emu: GraphEmulator) -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        emu.fail_next("throttled")
    with pytest.raises(ValueError, match="cannot inject faults on 'send_mail'"):
        emu.fail_next("throttle", on="send_mail")
    with pytest.raises(ValueError, match="bearer token"):
        emu.fail_next("expired_token", on="token")
    with pytest.raises(ValueError, match="between 0 and 1"):
        emu.fault_rate(1.5, ["throttle"])
    with pytest.raises(ValueError, match="at least one fault"):
        emu.fault_rate(0.1, [])
    with pytest.raises(TypeError):
        emu.fault_rate(0.1, "throttle")
    with pytest.raises(ValueError, match="retry_after"):
        emu.fail_next("throttle", retry_after=-1)


# connection-level faults ---------------------------------------------------------------------


@pytest.mark.parametrize(("fault", "delivered"), [("reset_before", False), ("reset_after", True)])
def test_connection_reset_without_response(
    emu: GraphEmulator, http: requests.Session, token: str, fault: str, delivered: bool
) -> None:
    emu.fail_next(fault)
    with pytest.raises(requests.ConnectionError) as caught:
        send(emu, http, token)
    reason = caught.value.args[0]  # urllib3's ProtocolError("Connection aborted.", <reset>)
    assert isinstance(reason.args[1], ConnectionResetError)
    assert len(emu.sent) == int(delivered)
    [record] = emu.faults_injected
    assert (record.fault, record.delivered, record.path) == (fault, delivered, SEND_URL)
    assert [r.status for r in emu.requests if r.kind == "sendMail"] == [0]
    # the same session reconnects; a brand-new client is served too
    assert send(emu, http, token).status_code == 202
    with requests.Session() as other:
        assert send(emu, other, token).status_code == 202
    assert emu.connections == 3  # the token's connection was reset; then one per session
    assert len(emu.sent) == int(delivered) + 2


def test_slow_delivers_then_answers_late(
    emu: GraphEmulator, http: requests.Session, token: str
) -> None:
    assert emu.slow_seconds == 2.0
    emu.slow_seconds = 0.4
    emu.fail_next("slow")
    started = time.monotonic()
    with pytest.raises(requests.ReadTimeout):
        send(emu, http, token, timeout=0.1)
    assert time.monotonic() - started < 0.35
    assert len(emu.sent) == 1  # delivered before the wait: a retry would duplicate it
    assert [(f.fault, f.delivered) for f in emu.faults_injected] == [("slow", True)]
    emu.fail_next("slow")
    started = time.monotonic()
    assert send(emu, http, token, timeout=2).status_code == 202
    assert time.monotonic() - started >= 0.4
    assert send(emu, http, token, timeout=2).status_code == 202


# random faults -------------------------------------------------------------------------------


def statuses(emu: GraphEmulator, http: requests.Session, token: str, n: int) -> list[int]:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    body = json.dumps({"message": {"toRecipients": [{"emailAddress": {"address": "a@x.com"}}]}})
    return [http.post(emu.url + SEND_URL, data=body, headers=headers).status_code for _ in range(n)]


def test_fault_rate_is_seeded_and_close_to_the_rate(
    emu: GraphEmulator, http: requests.Session, token: str
) -> None:
    emu.fault_rate(0.1, ["throttle", "unavailable"], seed=7, retry_after=None)
    first = statuses(emu, http, token, 300)
    faulted = sum(status != 202 for status in first)
    assert 15 <= faulted <= 45
    assert {429, 503} <= set(first) <= {202, 429, 503}
    assert len(emu.sent) == 300 - faulted
    assert [f.fault for f in emu.faults_injected] == [
        {429: "throttle", 503: "unavailable"}[s] for s in first if s != 202
    ]
    emu.fault_rate(0.1, ["throttle", "unavailable"], seed=7)
    assert statuses(emu, http, token, 300) == first
    emu.fault_rate(0.1, ["throttle", "unavailable"], seed=8)
    assert statuses(emu, http, token, 100) != first[:100]
    emu.fault_rate(0, [])
    assert set(statuses(emu, http, token, 20)) == {202}


def test_queued_faults_come_before_random_ones(
    emu: GraphEmulator, http: requests.Session, token: str
) -> None:
    emu.fault_rate(1.0, ["throttle"])
    emu.fail_next("gateway_timeout_lost")
    assert statuses(emu, http, token, 3) == [504, 429, 429]
    assert len(emu.requests) == 4  # token + 3: the token endpoint was not faulted
    emu.reset()
    assert emu.faults_injected == []


# latency and the per-mailbox concurrency limit -----------------------------------------------


def test_latency_delays_graph_and_token_answers(
    emu: GraphEmulator, http: requests.Session, token: str
) -> None:
    emu.latency = 0.15
    started = time.monotonic()
    assert token_request(emu, http).status_code == 200
    assert http.get(f"{emu.url}/v1.0/users/{ALICE_ID}", headers={"Authorization": "x"}).status_code
    assert send(emu, http, token).status_code == 202
    assert time.monotonic() - started >= 0.45
    assert emu.max_in_flight() == 1  # directory reads are not mailbox requests
    assert emu.max_in_flight("alice@contoso.com") == 0


def send_at_once(emu: GraphEmulator, token: str, mailboxes: list[str]) -> list[requests.Response]:
    """Each mailbox entry is one client thread; all post at the same moment."""
    barrier = threading.Barrier(len(mailboxes))

    def one(mailbox: str) -> requests.Response:
        with requests.Session() as session:
            barrier.wait()
            return send(emu, session, token, mailbox)

    with ThreadPoolExecutor(len(mailboxes)) as pool:
        return list(pool.map(one, mailboxes))


def test_fifth_concurrent_request_for_a_mailbox_is_throttled(
    emu: GraphEmulator, token: str
) -> None:
    emu.latency = 0.1
    responses = send_at_once(emu, token, ["noreply@contoso.com"] * 8)
    throttled = [r for r in responses if r.status_code == 429]
    assert throttled
    assert sorted({r.status_code for r in responses}) == [202, 429]
    for response in throttled:
        message = graph_error(response, 429, "ApplicationThrottled")
        assert message == "Application is over its MailboxConcurrency limit."
        assert response.headers["Retry-After"] == "0.05"
    assert len(emu.sent) == 8 - len(throttled)
    assert emu.max_in_flight() == 4
    assert emu.max_in_flight(NOREPLY_ID) == emu.max_in_flight("SHOP@contoso.com") == 4
    assert emu.max_in_flight("alice@contoso.com") == 0
    assert emu.faults_injected == []  # the limit is Graph's own rule, not an injected fault
    emu.reset()
    assert emu.max_in_flight() == 0


def test_mailboxes_do_not_limit_each_other(emu: GraphEmulator, token: str) -> None:
    emu.latency = 0.15
    responses = send_at_once(emu, token, ["noreply@contoso.com", ALICE_ID] * 4)
    assert [r.status_code for r in responses] == [202] * 8
    assert emu.max_in_flight() <= 4
    assert emu.max_in_flight("alice@contoso.com") >= 2


def test_concurrency_limit_can_be_lifted(emu: GraphEmulator, token: str) -> None:
    emu.latency = 0.15
    emu.mailbox_concurrency = None
    responses = send_at_once(emu, token, ["noreply@contoso.com"] * 6)
    assert [r.status_code for r in responses] == [202] * 6
    assert emu.max_in_flight("noreply@contoso.com") > 4


# Entra knobs ---------------------------------------------------------------------------------


def test_expired_client_secret(emu: GraphEmulator, http: requests.Session) -> None:
    emu.secret_expired = True
    response = token_request(emu, http)
    assert response.status_code == 401
    body = response.json()
    assert (body["error"], body["error_codes"]) == ("invalid_client", [7000222])
    assert body["error_description"].startswith(
        f"AADSTS7000222: The provided client secret keys for app '{CLIENT_ID}' are expired."
    )
    wrong = token_request(emu, http, client_secret="wrong-secret-value").json()
    assert wrong["error_codes"] == [7000215]
    assert emu.issued_tokens == []
    emu.secret_expired = False
    assert token_request(emu, http).status_code == 200
