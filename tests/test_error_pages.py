"""An HTML error page is an error like any other (issue 16).

Exchange's front end can answer 503 with an HTML page and no Retry-After; a gateway can answer
502 with plain text. Each gets the typed error and the retry decision its status calls for,
and the message quotes a short, clean excerpt of the page: no markup, no header, no token.
"""

from __future__ import annotations

from typing import Any

import pytest
import requests
from django.core import mail
from django.test import override_settings

from msgraph_mail.emulator import ALL_FAULTS, FAULTS, PAGE_FAULT_NAMES, GraphEmulator
from msgraph_mail.exceptions import AuthenticationError, DeliveryUnknown, GraphAPIError
from msgraph_mail.values import EXCERPT_LENGTH, body_excerpt

UNAVAILABLE = "HTTP Error 503. The service is unavailable."


def send(subject: str = "Hello") -> mail.EmailMessage:
    message = mail.EmailMessage(subject, "Body.", "noreply@contoso.com", ["c@example.com"])
    message.send()
    return message


def secrets_of(emulator: GraphEmulator) -> list[str]:
    return [*emulator.issued_tokens, emulator.settings()["CLIENT_SECRET"]]


def test_the_new_faults_are_known() -> None:
    assert PAGE_FAULT_NAMES == ("html_unavailable", "bad_gateway")
    assert set(PAGE_FAULT_NAMES) <= set(ALL_FAULTS)
    assert not set(PAGE_FAULT_NAMES) & set(FAULTS)  # a fault_rate over FAULTS is unchanged
    with GraphEmulator() as emulator, pytest.raises(ValueError, match="bad_gateway"):
        emulator.fail_next("bad_gatway")


def test_the_emulator_serves_the_pages_as_a_front_end_would(emulator: GraphEmulator) -> None:
    emulator.fail_next("html_unavailable", retry_after=5)
    emulator.fail_next("bad_gateway", on="user_list")
    token = requests.post(
        f"{emulator.url}/{emulator.settings()['TENANT_ID']}/oauth2/v2.0/token",
        data={
            "grant_type": "client_credentials",
            "client_id": emulator.settings()["CLIENT_ID"],
            "client_secret": emulator.settings()["CLIENT_SECRET"],
            "scope": "https://graph.microsoft.com/.default",
        },
        timeout=30,
    ).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "text/plain"}
    page = requests.post(
        f"{emulator.url}/v1.0/users/noreply@contoso.com/sendMail",
        data=b"aGk=",
        headers=headers,
        timeout=30,
    )
    assert page.status_code == 503
    assert page.headers["Content-Type"] == "text/html"
    assert "Retry-After" not in page.headers  # whatever retry_after said: the page has none
    assert "<h2>Service Unavailable</h2>" in page.text
    gateway = requests.get(f"{emulator.url}/v1.0/users", headers=headers, timeout=30)
    assert gateway.status_code == 502
    assert gateway.headers["Content-Type"] == "text/plain"
    assert gateway.text.startswith("502 Bad Gateway")
    assert [f.fault for f in emulator.faults_injected] == ["html_unavailable", "bad_gateway"]


def test_an_html_503_is_retried_with_backoff(emulator: GraphEmulator) -> None:
    emulator.fail_next("html_unavailable", times=2)
    message = send()
    assert message.msgraph_status.status == "sent"
    assert emulator.count("sendMail") == 3
    assert len(emulator.sent) == 1


def test_an_html_503_that_stays_is_a_graph_error_quoting_the_page(
    emulator: GraphEmulator,
) -> None:
    emulator.fail_next("html_unavailable", times=10)
    with (
        override_settings(MSGRAPH_MAIL=emulator.settings(MAX_RETRIES=2)),
        pytest.raises(GraphAPIError) as raised,
    ):
        send()
    error = raised.value
    assert type(error) is GraphAPIError
    assert error.status == 503
    assert emulator.count("sendMail") == 3  # the first try and MAX_RETRIES retries
    assert emulator.sent == []
    text = str(error)
    assert "HTTP 503 Service Unavailable, an HTML page" in text
    assert f'"Service Unavailable {UNAVAILABLE}"' in text  # the title and style are gone
    assert "<" not in text
    assert "font-family" not in text
    assert "gave up after 2 retries" in text
    assert not any(secret in text for secret in secrets_of(emulator))


def test_a_bad_gateway_on_sendmail_is_delivery_unknown_and_not_repeated(
    emulator: GraphEmulator,
) -> None:
    emulator.fail_next("bad_gateway")
    with pytest.raises(DeliveryUnknown) as raised:
        send()
    error = raised.value
    assert error.status == 502
    assert emulator.count("sendMail") == 1  # the gateway may have forwarded it: not repeated
    assert len(emulator.sent) == 1  # ... and here it had: a retry would have sent it twice
    text = str(error)
    assert "HTTP 502 (bad gateway): it may or may not have been processed" in text
    assert '"502 Bad Gateway: the upstream server sent an invalid response."' in text
    assert not any(secret in text for secret in secrets_of(emulator))
    assert error.email_message.msgraph_status.status == "unknown"


def test_a_bad_gateway_on_a_lookup_is_retried(emulator: GraphEmulator) -> None:
    emulator.fail_next("bad_gateway", on="user_list")
    message = send()
    assert message.msgraph_status.status == "sent"
    assert emulator.count("user_list") == 2  # a read is safe to repeat
    assert emulator.count("sendMail") == 1


def test_an_html_page_from_the_token_endpoint_is_a_readable_authentication_error(
    emulator: GraphEmulator,
) -> None:
    emulator.fail_next("html_unavailable", times=10, on="token")
    with (
        override_settings(MSGRAPH_MAIL=emulator.settings(MAX_RETRIES=1)),
        pytest.raises(AuthenticationError) as raised,
    ):
        send()
    error = raised.value
    assert error.status == 503
    assert emulator.count("token") == 2
    assert emulator.count("sendMail") == 0
    text = str(error)
    assert "Entra ID refused the token request: HTTP 503 Service Unavailable" in text
    assert f'an HTML page instead of Entra\'s JSON error: "Service Unavailable {UNAVAILABLE}"' in (
        text
    )
    assert "<" not in text
    assert emulator.settings()["CLIENT_SECRET"] not in text


def test_a_token_endpoint_that_recovers_costs_only_a_retry(emulator: GraphEmulator) -> None:
    emulator.fail_next("bad_gateway", on="token")  # a token request changes nothing: retried
    assert send().msgraph_status.status == "sent"
    assert emulator.count("token") == 2


class FakeResponse(requests.Response):
    def __init__(self, body: bytes, **headers: Any) -> None:
        super().__init__()
        self._content = body
        self.encoding = "utf-8"
        self.headers.update(headers)


def test_the_excerpt_is_short_clean_and_never_quotes_a_credential() -> None:
    body = (
        "<html><head><title>Oops</title><script>var token='eyJhbGciOi.eyJzdWIi.c2ln';</script>"
        "</head><body>\n\n  <h1>Bad&nbsp;Gateway &amp; more</h1><!-- upstream: 10.0.0.7 -->"
        "<p>Request headers: Authorization: Bearer opaque-token-value"
        " client_secret=Xk38Q~secret</p>" + "<p>filler text</p>" * 100 + "</body></html>"
    ).encode()
    excerpt = body_excerpt(FakeResponse(body, **{"Content-Type": "text/html"}))
    assert excerpt.startswith("Bad Gateway & more Request headers: [redacted] [redacted]")
    assert len(excerpt) <= EXCERPT_LENGTH
    assert excerpt.endswith("…")
    for leaked in ("eyJ", "opaque-token-value", "Xk38Q", "10.0.0.7", "<", "Oops"):
        assert leaked not in excerpt
    assert body_excerpt(FakeResponse(b"  \n ")) == ""
