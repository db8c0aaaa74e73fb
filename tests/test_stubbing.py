"""Users can stub Graph with `responses` alone: every request goes through requests."""

from __future__ import annotations

import base64
import json
from urllib.parse import parse_qs, urlsplit

import pytest
from django.core import mail
from django.test import override_settings

responses = pytest.importorskip("responses")

LOGIN = "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
GRAPH = "https://graph.microsoft.com/v1.0"
SETTINGS = {
    "TENANT_ID": "contoso.onmicrosoft.com",
    "CLIENT_ID": "66666666-7777-8888-9999-000000000000",
    "CLIENT_SECRET": "s3cret-value",
    "MODE": "permissive",
}


@override_settings(EMAIL_BACKEND="msgraph_mail.backend.EmailBackend", MSGRAPH_MAIL=SETTINGS)
def test_token_lookup_and_send_mail_with_responses_alone() -> None:
    user = {"id": "1d3f0000-0000-0000-0000-000000000001", "mail": "shop@contoso.com"}
    with responses.RequestsMock() as graph:
        token = graph.post(
            LOGIN, json={"access_token": "t0ken", "expires_in": 3599, "token_type": "Bearer"}
        )
        lookup = graph.get(f"{GRAPH}/users", json={"value": [{**user, "userPrincipalName": "s"}]})
        send = graph.post(f"{GRAPH}/users/{user['id']}/sendMail", status=202)
        message = mail.EmailMessage(
            "Order", "Shipped", "Shop <shop@contoso.com>", ["a@example.com"], bcc=["b@example.com"]
        )
        assert message.send() == 1
        assert message.send() == 1  # token and lookup cached: one request
    assert (len(token.calls), len(lookup.calls), len(send.calls)) == (1, 1, 2)
    form = parse_qs(str(token.calls[0].request.body))
    assert form["grant_type"] == ["client_credentials"]
    query = parse_qs(urlsplit(lookup.calls[0].request.url).query)
    assert "shop@contoso.com" in query["$filter"][0]
    request = send.calls[0].request
    assert request.headers["Authorization"] == "Bearer t0ken"
    assert request.headers["Content-Type"] == "text/plain"
    mime = base64.b64decode(request.body)
    assert b"Bcc: b@example.com" in mime
    assert message.msgraph_status.status == "sent"


@override_settings(EMAIL_BACKEND="msgraph_mail.backend.EmailBackend", MSGRAPH_MAIL=SETTINGS)
def test_a_stubbed_graph_error_is_the_typed_error() -> None:
    from msgraph_mail.exceptions import MailboxOutOfScope

    error = {"error": {"code": "ErrorAccessDenied", "message": "Access is denied."}}
    with responses.RequestsMock() as graph:
        graph.post(LOGIN, json={"access_token": "t", "expires_in": 3599})
        graph.get(f"{GRAPH}/users", json={"value": [{"id": "u1", "mail": "shop@contoso.com"}]})
        graph.post(f"{GRAPH}/users/u1/sendMail", status=403, body=json.dumps(error))
        with pytest.raises(MailboxOutOfScope) as raised:
            mail.send_mail("Hi", "x", "shop@contoso.com", ["a@example.com"])
    assert raised.value.code == "ErrorAccessDenied"
    assert "shop@contoso.com" in str(raised.value)
