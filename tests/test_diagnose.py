"""manage.py msgraph_diagnose against the emulator: every finding, with its fix."""

from __future__ import annotations

import json
from io import StringIO
from typing import Any

import django
import pytest
from django.core import mail
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from msgraph_mail.emulator import CLIENT_SECRET, GraphEmulator
from msgraph_mail.exceptions import SenderNotFound
from tests.conftest import mode_settings


def diagnose(*args: str, expect_error: bool = False) -> str:
    out = StringIO()
    if expect_error:
        with pytest.raises(CommandError, match="found"):
            call_command("msgraph_diagnose", *args, stdout=out)
    else:
        call_command("msgraph_diagnose", *args, stdout=out)
    text = out.getvalue()
    assert CLIENT_SECRET not in text
    return text


def findings(*args: str, expect_error: bool = False) -> list[dict[str, Any]]:
    return json.loads(diagnose("--json", *args, expect_error=expect_error))


def levels(found: list[dict[str, Any]], level: str) -> list[str]:
    return [f"{f['topic']}: {f['message']}" for f in found if f["level"] == level]


def test_healthy_permissive_setup(emulator: GraphEmulator) -> None:
    text = diagnose()
    assert "[ok] token: acquired for app" in text
    assert "[ok] sender noreply@contoso.com: resolves to mailbox noreply@contoso.com" in text
    assert "ERROR" not in text
    assert "WARNING" not in text
    assert emulator.count("sendMail") == 0


ADMIN = ["Ops <ops@contoso.com>"] if django.VERSION >= (6, 0) else [("Ops", "ops@contoso.com")]


def test_server_email_is_not_diagnosed_without_admins(emulator: GraphEmulator) -> None:
    """Django's default SERVER_EMAIL is harmless while nobody is mailed from it."""
    with override_settings(SERVER_EMAIL="root@localhost", ADMINS=[], MANAGERS=[]):
        found = findings()  # exit status 0
        assert levels(found, "error") == []
        [note] = [f for f in found if f["topic"] == "SERVER_EMAIL"]
        assert note["level"] == "info"
        assert "ADMINS and MANAGERS are empty" in note["message"]
        assert emulator.count("user_list") == 1  # DEFAULT_FROM_EMAIL only
        # and Django indeed sends nothing from it: mail_admins without ADMINS is a no-op
        mail.mail_admins("boom", "traceback")
        mail.mail_managers("boom", "traceback")
    assert emulator.count("sendMail") == 0


@pytest.mark.parametrize("setting", ["ADMINS", "MANAGERS"])
def test_server_email_that_cannot_send_is_an_error_with_admins(
    emulator: GraphEmulator, setting: str
) -> None:
    values = {"ADMINS": [], "MANAGERS": [], setting: ADMIN}
    with override_settings(SERVER_EMAIL="root@localhost", **values):
        found = findings(expect_error=True)
        [error] = [f for f in found if f["level"] == "error"]
        assert error["topic"] == "sender root@localhost"
        assert "SERVER_EMAIL is the From of mail_admins()" in error["fix"]
        assert "set SERVER_EMAIL to an address that can send" in error["fix"]
        assert not [f for f in found if f["topic"] == "SERVER_EMAIL"]
        text = diagnose(expect_error=True)
        assert "[ERROR] sender root@localhost" in text
        # the error is real: Django's own admin mail from root@localhost fails
        with pytest.raises(SenderNotFound, match="root@localhost"):
            getattr(mail, "mail_admins" if setting == "ADMINS" else "mail_managers")("x", "y")
    assert emulator.count("sendMail") == 0


def test_tokens_never_printed(emulator: GraphEmulator) -> None:
    text = diagnose("--send-test", "alice@contoso.com")
    for token in emulator.issued_tokens:
        assert token not in text


@pytest.mark.parametrize(
    ("override", "phrase"),
    [
        ({"CLIENT_SECRET": "secret-id-instead-of-value"}, "not its Secret ID"),
        ({"CLIENT_ID": "00000000-0000-0000-0000-0000000000ff"}, "not known in this tenant"),
        ({"TENANT_ID": "fabrikam.onmicrosoft.com"}, "tenant was not found"),
        ({"GRAPH_URL": "https://graph.microsoft.us"}, "scope was refused"),
    ],
)
def test_entra_errors_explained(
    emulator: GraphEmulator, override: dict[str, str], phrase: str
) -> None:
    with override_settings(MSGRAPH_MAIL=emulator.settings(**override)):
        found = findings(expect_error=True)
    [error] = levels(found, "error")
    assert error.startswith("token:")
    assert phrase in json.dumps(found)
    assert "secret-id-instead-of-value" not in json.dumps(found)


def test_expired_secret(emulator: GraphEmulator) -> None:
    emulator.secret_expired = True
    found = findings(expect_error=True)
    assert "AADSTS7000222" in levels(found, "error")[0]
    assert "expired" in json.dumps(found)


def test_permissive_without_permissions(emulator: GraphEmulator) -> None:
    emulator.roles = []
    found = findings(expect_error=True)
    errors = levels(found, "error")
    assert any("User.Read.All is missing" in e for e in errors)
    assert any("Mail.Send, which is missing" in e for e in errors)
    assert any("no application permission" in i for i in levels(found, "info"))


def test_rbac_with_entra_mail_send_is_warned(emulator: GraphEmulator) -> None:
    settings = mode_settings(emulator, "rbac")
    emulator.roles = ["User.Read.All", "Mail.Send"]
    with override_settings(MSGRAPH_MAIL=settings):
        found = findings()
    [warning] = levels(found, "warning")
    assert "RBAC scope restricts nothing" in warning
    assert "Remove-MgServicePrincipalAppRoleAssignment" in json.dumps(found)


def test_rbac_sender_outside_allow_list(emulator: GraphEmulator) -> None:
    with override_settings(MSGRAPH_MAIL=mode_settings(emulator, "rbac")):
        found = findings("--from", "bob@contoso.com", expect_error=True)
    [error] = levels(found, "error")
    assert error.startswith("sender bob@contoso.com: not allowed by ALLOWED_SENDERS")
    assert emulator.count("user_list") == 1  # noreply only: bob cost no request


def test_single_mailbox_over_privileged(emulator: GraphEmulator) -> None:
    settings = mode_settings(emulator, "single_mailbox")
    emulator.roles = ["Mail.Send", "User.Read.All"]
    with override_settings(MSGRAPH_MAIL=settings):
        found = findings("--from", "alice@contoso.com")
    warnings = levels(found, "warning")
    assert any("any mailbox in the tenant could be used" in w for w in warnings)
    assert any("single_mailbox never uses" in w for w in warnings)
    assert any(w.startswith("sender alice@contoso.com: is not MAILBOX") for w in warnings)
    assert emulator.count("user_list") == 0


def test_single_mailbox_least_privilege(emulator: GraphEmulator) -> None:
    settings = mode_settings(emulator, "single_mailbox")
    emulator.roles = []
    emulator.rbac_scope = {"noreply@contoso.com"}
    with override_settings(MSGRAPH_MAIL=settings):
        found = findings("--send-test", "alice@contoso.com")
    assert levels(found, "warning") == []
    assert levels(found, "error") == []
    assert any("Test-ServicePrincipalAuthorization" in f["fix"] for f in found)
    [sent] = emulator.sent
    assert sent.to == ["alice@contoso.com"]


def test_unknown_and_guest_senders(emulator: GraphEmulator) -> None:
    found = findings(
        "--from", "ghost@contoso.com", "--from", "guest@fabrikam.com", expect_error=True
    )
    errors = levels(found, "error")
    assert any(e.startswith("sender ghost@contoso.com: no mailbox") for e in errors)
    assert any("guest" in e and "MailboxNotEnabledForRESTAPI" in e for e in errors)


def test_lookup_refused_without_directory_permission(emulator: GraphEmulator) -> None:
    emulator.roles = ["Mail.Send"]
    found = findings(expect_error=True)
    assert any("lookup was refused" in e for e in levels(found, "error"))


def test_send_test_prints_request_id(emulator: GraphEmulator) -> None:
    text = diagnose("--send-test", "alice@contoso.com")
    [sent] = emulator.sent
    assert f"request-id {sent.request_id}" in text


def test_send_test_failure_is_an_error(emulator: GraphEmulator) -> None:
    emulator.roles = ["User.Read.All"]
    found = findings("--send-test", "alice@contoso.com", expect_error=True)
    assert any(e.startswith("test message to alice@contoso.com") for e in levels(found, "error"))


def test_invalid_settings_are_reported(emulator: GraphEmulator) -> None:
    with override_settings(MSGRAPH_MAIL={**emulator.settings(), "MODE": "single_mailbox"}):
        found = findings(expect_error=True)
    assert "MODE single_mailbox needs MAILBOX" in levels(found, "error")[0]
    assert emulator.count() == 0


def test_rbac_without_allowed_senders_is_not_an_error(emulator: GraphEmulator) -> None:
    settings = mode_settings(emulator, "rbac")
    del settings["ALLOWED_SENDERS"]
    with override_settings(MSGRAPH_MAIL=settings):
        found = findings("--from", "bob@contoso.com")  # exit status 0: no CommandError
    assert levels(found, "error") == []
    assert levels(found, "warning") == []
    [note] = [f for f in found if f["topic"] == "senders"]
    assert note["level"] == "info"
    assert "no ALLOWED_SENDERS" in note["message"]
    assert "Test-ServicePrincipalAuthorization" in note["fix"]
    assert any(o.startswith("sender bob@contoso.com: resolves") for o in levels(found, "ok"))


@pytest.mark.skipif(django.VERSION < (6, 1), reason="MAILERS is new in Django 6.1")
def test_using_a_mailer_alias(emulator: GraphEmulator) -> None:
    backend = "msgraph_mail.backend.EmailBackend"
    mailers = {
        "default": {"BACKEND": backend},
        "billing": {"BACKEND": backend, "OPTIONS": {"mailbox": "alice@contoso.com"}},
    }
    with override_settings(MAILERS=mailers):
        found = findings("--using", "billing", "--from", "alice@contoso.com")
        assert any(f["message"] == "is MAILBOX itself" for f in found)
        with pytest.raises(CommandError, match="No mailer 'nope'"):
            call_command("msgraph_diagnose", "--using", "nope", stdout=StringIO())


def test_large_messages_with_mail_readwrite(emulator: GraphEmulator) -> None:
    emulator.roles = ["Mail.Send", "User.Read.All", "Mail.ReadWrite"]
    with override_settings(MSGRAPH_MAIL=emulator.settings(LARGE_MESSAGES=True)):
        found = findings()
    assert any("LARGE_MESSAGES: the token grants Mail.ReadWrite" in o for o in levels(found, "ok"))
    assert levels(found, "warning") == []


def test_large_messages_without_mail_readwrite_says_rbac_would_not_show(
    emulator: GraphEmulator,
) -> None:
    with override_settings(MSGRAPH_MAIL=emulator.settings(LARGE_MESSAGES=True)):
        found = findings()  # a warning, not an error: an Exchange grant may exist
    [warning] = levels(found, "warning")
    assert "LARGE_MESSAGES needs Mail.ReadWrite" in warning
    assert "would not show in a token" in warning
    assert "Test-ServicePrincipalAuthorization" in json.dumps(found)
    assert "Application Mail.ReadWrite" in json.dumps(found)


def test_large_messages_in_rbac_mode(emulator: GraphEmulator) -> None:
    settings = mode_settings(emulator, "rbac", LARGE_MESSAGES=True)
    with override_settings(MSGRAPH_MAIL=settings):
        found = findings()
    assert levels(found, "warning") == []
    assert any("LARGE_MESSAGES needs Mail.ReadWrite" in i for i in levels(found, "info"))
    emulator.roles = ["User.Read.All", "Mail.ReadWrite"]
    with override_settings(MSGRAPH_MAIL=settings):
        found = findings()
    [warning] = levels(found, "warning")
    assert "tenant-wide Mail.ReadWrite" in warning


def test_large_messages_off_says_nothing_about_mail_readwrite(emulator: GraphEmulator) -> None:
    assert "LARGE_MESSAGES" not in diagnose()
