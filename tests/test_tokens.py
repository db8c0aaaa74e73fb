"""Tokens: fetched once per process, renewed ahead of expiry, Entra's refusals explained."""

from __future__ import annotations

import logging
import time

import pytest
from django.core import mail
from django.test import override_settings

from msgraph_mail.auth import tokens
from msgraph_mail.emulator import CLIENT_SECRET, GraphEmulator
from msgraph_mail.exceptions import AuthenticationError, GraphConnectionError


def send() -> int:
    return mail.send_mail("t", "b", "noreply@contoso.com", ["a@x.com"])


def test_token_request_is_well_formed(emulator: GraphEmulator) -> None:
    send()
    token_request = next(r for r in emulator.requests if r.kind == "token")
    assert token_request.method == "POST"
    assert token_request.path.endswith("/oauth2/v2.0/token")


def test_token_is_renewed_ahead_of_expiry(emulator: GraphEmulator) -> None:
    emulator.token_lifetime = 2  # renewed a tenth of its lifetime early: after 1.8 s
    send()
    send()
    assert emulator.count("token") == 1
    time.sleep(1.9)
    send()
    assert emulator.count("token") == 2
    assert emulator.count("sendMail") == 3


def test_rejected_token_is_replaced_once(
    emulator: GraphEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    send()
    emulator.expire_tokens()
    with caplog.at_level(logging.WARNING, logger="msgraph_mail"):
        assert send() == 1
    assert emulator.count("token") == 2
    assert len(emulator.sent) == 2
    assert "fetching a new one" in caplog.text


@pytest.mark.parametrize(
    ("override", "code", "hint"),
    [
        ({"CLIENT_SECRET": "wrong-secret-value"}, "AADSTS7000215", "not its Secret ID"),
        ({"CLIENT_ID": "00000000-0000-0000-0000-000000000001"}, "AADSTS700016", "CLIENT_ID"),
        ({"TENANT_ID": "fabrikam.onmicrosoft.com"}, "AADSTS90002", "tenant was not found"),
    ],
)
def test_entra_errors_are_explained(
    emulator: GraphEmulator, override: dict[str, str], code: str, hint: str
) -> None:
    with (
        override_settings(MSGRAPH_MAIL=emulator.settings(**override)),
        pytest.raises(AuthenticationError, match=hint) as info,
    ):
        send()
    assert info.value.code == code
    assert "wrong-secret-value" not in str(info.value)
    assert CLIENT_SECRET not in str(info.value)
    assert emulator.count("sendMail") == 0


def test_fail_silently_swallows_authentication_errors(emulator: GraphEmulator) -> None:
    with override_settings(MSGRAPH_MAIL=emulator.settings(CLIENT_SECRET="wrong")):
        assert mail.send_mail("t", "b", "noreply@contoso.com", ["a@x.com"], fail_silently=True) == 0


def test_unreachable_graph_is_a_connection_error(emulator: GraphEmulator) -> None:
    url = emulator.url
    emulator.stop()
    with (
        override_settings(MSGRAPH_MAIL={**emulator.settings(), "GRAPH_URL": url}),
        pytest.raises(GraphConnectionError, match="Cannot reach"),
    ):
        send()


def test_tokens_never_reach_logs_or_errors(
    emulator: GraphEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        send()
        emulator.expire_tokens()
        send()
        with (
            override_settings(MSGRAPH_MAIL=emulator.settings(CLIENT_SECRET="bad")),
            pytest.raises(AuthenticationError) as info,
        ):
            send()
    issued = [t for t in emulator.issued_tokens]
    assert issued
    for secret in [CLIENT_SECRET, *issued]:
        assert secret not in caplog.text
        assert secret not in str(info.value)
        assert secret not in repr(tokens._tokens)
