"""The dev inbox takes the developer's own settings (issue 16).

``python -m msgraph_mail.emulator`` is run as a user runs it, in a subprocess; Django's mail
then goes to it with settings of a tenant the emulator has never heard of, only GRAPH_URL and
AUTHORITY_URL pointing at it, and the message is read back from the inbox's JSON API.
``--strict`` keeps the emulator's own tenant only, refusing others as Entra does.
"""

from __future__ import annotations

import uuid
from typing import Any

import django
import pytest
import requests
from django.core import mail
from django.test import override_settings

from msgraph_mail.emulator import TENANT_ID, GraphEmulator
from msgraph_mail.exceptions import AuthenticationError

from .helpers import developer_settings, make_pair, running_cli

BACKEND = "msgraph_mail.backend.EmailBackend"


def inbox(url: str) -> list[dict[str, Any]]:
    body = requests.get(f"{url}/api/messages", timeout=30).json()
    return list(body["messages"])


def test_the_cli_takes_a_developers_own_settings_in_every_mode() -> None:
    with running_cli() as (url, banner):
        assert "Permissive" in banner
        assert "Mail.Send, User.Read.All, Mail.ReadWrite" in banner
        # The form of the installed Django: MAILERS OPTIONS on 6.1 (EMAIL_BACKEND stops it).
        assert ('"graph_url": "' if django.VERSION >= (6, 1) else '"GRAPH_URL": "') + url in banner
        assert TENANT_ID not in banner  # none of the emulator's own settings to copy

        permissive = developer_settings(url, MODE="permissive")
        with override_settings(EMAIL_BACKEND=BACKEND, MSGRAPH_MAIL=permissive):
            sent = mail.send_mail("Order", "Thanks.", "sales@fabrikam.com", ["c@example.com"])
        assert sent == 1
        [message] = inbox(url)
        assert message["mailbox"] == "sales@fabrikam.com"
        assert message["from"] == "sales@fabrikam.com"
        assert message["to"] == ["c@example.com"]
        assert message["subject"] == "Order"

        single = developer_settings(
            url,
            TENANT_ID=str(uuid.uuid4()),  # a tenant id works as well as a domain
            MODE="single_mailbox",
            MAILBOX="noreply@fabrikam.com",
        )
        with override_settings(EMAIL_BACKEND=BACKEND, MSGRAPH_MAIL=single):
            sent = mail.send_mail("Reset", "Link.", "sales@fabrikam.com", ["d@example.com"])
        assert sent == 1
        newest = inbox(url)[0]
        assert newest["mailbox"] == "noreply@fabrikam.com"
        assert newest["from"] == "sales@fabrikam.com"  # Send As is the tenant's business
        assert newest["subject"] == "Reset"

        rbac = developer_settings(url, MODE="rbac")
        with override_settings(EMAIL_BACKEND=BACKEND, MSGRAPH_MAIL=rbac):
            sent = mail.send_mail("Rbac", "Hi.", "support@fabrikam.com", ["e@example.com"])
        assert sent == 1
        assert inbox(url)[0]["mailbox"] == "support@fabrikam.com"


def test_the_cli_takes_a_certificate_it_never_saw() -> None:
    pair = make_pair()
    with running_cli() as (url, _):
        settings = developer_settings(
            url, CLIENT_CERTIFICATE={"PRIVATE_KEY": pair.key, "CERTIFICATE": pair.cert}
        )
        del settings["CLIENT_SECRET"]
        with override_settings(EMAIL_BACKEND=BACKEND, MSGRAPH_MAIL=settings):
            sent = mail.send_mail("Cert", "Signed.", "ops@fabrikam.com", ["f@example.com"])
        assert sent == 1
        assert inbox(url)[0]["mailbox"] == "ops@fabrikam.com"


def test_strict_cli_refuses_an_unknown_tenant_as_entra_does() -> None:
    with running_cli("--strict") as (url, banner):
        assert "Strict" in banner
        assert TENANT_ID in banner  # the emulator's own settings to paste
        settings = developer_settings(url, MODE="permissive")
        with (
            override_settings(EMAIL_BACKEND=BACKEND, MSGRAPH_MAIL=settings),
            pytest.raises(AuthenticationError) as raised,
        ):
            mail.send_mail("No", "Refused.", "sales@fabrikam.com", ["c@example.com"])
        assert raised.value.code == "AADSTS90002"
        assert "fabrikam.onmicrosoft.com" in str(raised.value)

        answer = requests.post(
            f"{url}/fabrikam.onmicrosoft.com/oauth2/v2.0/token",
            data={"grant_type": "client_credentials", "client_id": settings["CLIENT_ID"]},
            timeout=30,
        )
        assert answer.status_code == 400
        body = answer.json()
        assert body["error"] == "invalid_request"
        assert body["error_codes"] == [90002]
        assert body["error_description"].startswith("AADSTS90002: Tenant 'fabrikam")
        assert {"timestamp", "trace_id", "correlation_id", "error_uri"} <= set(body)
        assert inbox(url) == []


def test_the_emulator_object_stays_strict_unless_asked() -> None:
    with GraphEmulator() as strict, GraphEmulator(strict=False) as open_:
        for emulator, status in ((strict, 400), (open_, 200)):
            answer = requests.post(
                f"{emulator.url}/fabrikam.onmicrosoft.com/oauth2/v2.0/token",
                data={
                    "grant_type": "client_credentials",
                    "client_id": str(uuid.uuid4()),
                    "client_secret": "anything",
                    "scope": "https://graph.microsoft.com/.default",
                },
                timeout=30,
            )
            assert answer.status_code == status, answer.text
        assert strict.strict
        assert not open_.strict
        assert "Mail.ReadWrite" not in strict.roles
        assert "Mail.ReadWrite" in open_.roles


def test_permissive_lookups_create_the_mailbox_once() -> None:
    with GraphEmulator(strict=False) as emulator:
        token = requests.post(
            f"{emulator.url}/{uuid.uuid4()}/oauth2/v2.0/token",
            data={
                "grant_type": "client_credentials",
                "client_id": str(uuid.uuid4()),
                "client_secret": "anything",
                "scope": "https://graph.microsoft.com/.default",
            },
            timeout=30,
        ).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        found = requests.get(
            f"{emulator.url}/v1.0/users",
            params={"$filter": "proxyAddresses/any(p:p eq 'smtp:New.Person@Fabrikam.com')"},
            headers=headers,
            timeout=30,
        ).json()["value"]
        assert [user["mail"] for user in found] == ["new.person@fabrikam.com"]
        again = requests.get(
            f"{emulator.url}/v1.0/users/new.person@fabrikam.com", headers=headers, timeout=30
        ).json()
        assert again["id"] == found[0]["id"]
        alias = requests.get(  # an alias of a known user is not a UPN: Graph's 404 stays
            f"{emulator.url}/v1.0/users/shop@contoso.com", headers=headers, timeout=30
        )
        assert alias.status_code == 404
        by_id = requests.get(
            f"{emulator.url}/v1.0/users/{uuid.uuid4()}", headers=headers, timeout=30
        )
        assert by_id.status_code == 404
        assert [u.mail for u in emulator.users].count("new.person@fabrikam.com") == 1


def test_a_large_message_needs_nothing_more_of_the_permissive_emulator() -> None:
    """LARGE_MESSAGES goes through a draft and an upload session: Mail.ReadWrite is there."""
    with GraphEmulator(strict=False) as emulator:
        settings = developer_settings(emulator.url, MODE="permissive", LARGE_MESSAGES=True)
        message = mail.EmailMessage("Report", "Attached.", "reports@fabrikam.com", ["g@x.com"])
        message.attach("report.bin", bytes(range(256)) * (5 * 1024 * 4), "application/octet-stream")
        with override_settings(EMAIL_BACKEND=BACKEND, MSGRAPH_MAIL=settings):
            assert message.send() == 1
        assert emulator.count("draft_create") == 1
        assert emulator.count("sendMail") == 0
        [sent] = emulator.sent
        assert sent.mailbox.mail == "reports@fabrikam.com"
        assert sent.attachments[0].size == 5 * 1024 * 1024
