"""System checks: each misconfiguration named, with its fix, never showing the secret."""

from __future__ import annotations

from io import StringIO
from typing import Any

import django
import pytest
from django.core.checks import run_checks
from django.core.management import call_command
from django.test import override_settings

from msgraph_mail import checks

TENANT = "11111111-2222-3333-4444-555555555555"
CLIENT = "66666666-7777-8888-9999-000000000000"
SECRET = "Zq8~check-secret-that-must-never-leak"
GOOD = {"TENANT_ID": TENANT, "CLIENT_ID": CLIENT, "CLIENT_SECRET": SECRET}
BACKEND = "msgraph_mail.backend.EmailBackend"
CONTOSO = {"DEFAULT_FROM_EMAIL": "noreply@contoso.com", "SERVER_EMAIL": "noreply@contoso.com"}


def ids(deploy: bool = False, **overrides: Any) -> list[str]:
    """Run every registered check (as manage.py check does) under these settings."""
    values = {"EMAIL_BACKEND": BACKEND, **CONTOSO, **overrides}
    if django.VERSION >= (6, 1) and "MAILERS" not in values:
        values["MAILERS"] = {"default": {"BACKEND": values.pop("EMAIL_BACKEND")}}
    with override_settings(**values):
        found = run_checks(include_deployment_checks=deploy, tags=["mail"])
    output = " ".join(f"{m} {m.hint}" for m in found)
    assert SECRET not in output
    return [m.id for m in found if m.id and m.id.startswith("msgraph_mail.")]


def test_good_settings_pass() -> None:
    assert ids(MSGRAPH_MAIL=GOOD) == []


def test_not_our_backend_is_not_checked() -> None:
    with override_settings(EMAIL_BACKEND="django.core.mail.backends.locmem.EmailBackend"):
        if django.VERSION >= (6, 1):
            assert checks.check_settings() == []
        else:
            assert run_checks(tags=["mail"]) == []


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"CLIENT_ID": CLIENT, "CLIENT_SECRET": SECRET}, "msgraph_mail.E001"),
        ({**GOOD, "TENANT_ID": ""}, "msgraph_mail.E001"),
        ({**GOOD, "TENANT_ID": "common"}, "msgraph_mail.E002"),
        ({**GOOD, "TENANT_ID": "Organizations"}, "msgraph_mail.E002"),
        ({"TENANT_ID": TENANT, "CLIENT_SECRET": SECRET}, "msgraph_mail.E003"),
        ({**GOOD, "CLIENT_ID": "my-app"}, "msgraph_mail.E004"),
        ({"TENANT_ID": TENANT, "CLIENT_ID": CLIENT}, "msgraph_mail.E005"),
        ({**GOOD, "CLIENT_SECRET": ""}, "msgraph_mail.E005"),
        ({**GOOD, "MODE": "everything"}, "msgraph_mail.E006"),
        ({**GOOD, "MODE": "single_mailbox"}, "msgraph_mail.E007"),
        ({**GOOD, "MAILBOXES": ["a@contoso.com"]}, "msgraph_mail.E008"),
        ({**GOOD, "TIMEOUT": "soon"}, "msgraph_mail.E009"),
        ({**GOOD, "GRAPH_URL": "http://graph.microsoft.com"}, "msgraph_mail.E010"),
        ({**GOOD, "AUTHORITY_URL": "http://login.example"}, "msgraph_mail.E010"),
    ],
)
def test_errors(settings: dict[str, Any], expected: str) -> None:
    assert expected in ids(MSGRAPH_MAIL=settings)


def test_every_problem_is_reported_at_once() -> None:
    found = ids(MSGRAPH_MAIL={"TENANT_ID": "common", "CLIENT_ID": "x", "FOO": 1})
    assert set(found) >= {
        "msgraph_mail.E002",
        "msgraph_mail.E004",
        "msgraph_mail.E005",
        "msgraph_mail.E008",
    }


def test_invalid_value_message_names_the_key_and_its_source() -> None:
    with override_settings(EMAIL_BACKEND=BACKEND, MSGRAPH_MAIL={**GOOD, "TIMEOUT": -3}, **CONTOSO):
        [message] = [m for m in checks.check_settings() if m.id == "msgraph_mail.E009"]
    assert message.msg.startswith("TIMEOUT is invalid")
    assert "MSGRAPH_MAIL['TIMEOUT']" in message.hint
    assert len(message.msg) < 80 or "\n" not in message.msg


def test_django_default_senders_warn() -> None:
    found = ids(
        MSGRAPH_MAIL=GOOD, DEFAULT_FROM_EMAIL="webmaster@localhost", SERVER_EMAIL="root@localhost"
    )
    assert found == ["msgraph_mail.W001", "msgraph_mail.W002"]


ADMIN = ["Ops <ops@contoso.com>"] if django.VERSION >= (6, 0) else [("Ops", "ops@contoso.com")]


def test_server_email_counts_only_when_admins_or_managers_are_set() -> None:
    default = {"MSGRAPH_MAIL": GOOD, "SERVER_EMAIL": "root@localhost"}
    assert ids(**default, ADMINS=[], MANAGERS=[]) == []
    assert ids(**default, ADMINS=ADMIN, MANAGERS=[]) == ["msgraph_mail.W002"]
    assert ids(**default, ADMINS=[], MANAGERS=ADMIN) == ["msgraph_mail.W002"]
    rbac = {**GOOD, "MODE": "rbac", "ALLOWED_SENDERS": ["@contoso.com"]}
    outside = {"MSGRAPH_MAIL": rbac, "SERVER_EMAIL": "ops@fabrikam.com"}
    assert ids(**outside, ADMINS=[], MANAGERS=[]) == []
    assert ids(**outside, ADMINS=ADMIN, MANAGERS=[]) == ["msgraph_mail.W003"]
    # and manage.py check agrees: nothing to say about SERVER_EMAIL without ADMINS
    values: dict[str, Any] = {**default, **CONTOSO, "SERVER_EMAIL": "root@localhost"}
    values.update(ADMINS=[], MANAGERS=[])
    if django.VERSION >= (6, 1):
        values["MAILERS"] = {"default": {"BACKEND": BACKEND}}
    else:
        values["EMAIL_BACKEND"] = BACKEND
    err = StringIO()
    with override_settings(**values):
        call_command("check", stderr=err)
    assert "msgraph_mail" not in err.getvalue()


def test_rbac_default_senders_must_be_allowed() -> None:
    settings = {**GOOD, "MODE": "rbac", "ALLOWED_SENDERS": ["@contoso.com"]}
    assert ids(MSGRAPH_MAIL=settings) == []
    found = ids(MSGRAPH_MAIL=settings, SERVER_EMAIL="Ops <ops@fabrikam.com>")
    assert found == ["msgraph_mail.W003"]
    with override_settings(
        EMAIL_BACKEND=BACKEND,
        MSGRAPH_MAIL=settings,
        **{**CONTOSO, "SERVER_EMAIL": "ops@fabrikam.com"},
    ):
        [message] = checks.check_settings()
    assert "SERVER_EMAIL (ops@fabrikam.com)" in message.msg


def test_rbac_without_allowed_senders_is_a_warning_not_an_error() -> None:
    found = ids(MSGRAPH_MAIL={**GOOD, "MODE": "rbac"})
    assert found == ["msgraph_mail.W007"]
    with override_settings(EMAIL_BACKEND=BACKEND, MSGRAPH_MAIL={**GOOD, "MODE": "rbac"}, **CONTOSO):
        [message] = checks.check_settings()
    assert "ALLOWED_SENDERS" in message.hint
    assert "MailboxOutOfScope" in message.hint
    # manage.py check passes: a warning is printed, nothing stops the command
    values: dict[str, Any] = {"MSGRAPH_MAIL": {**GOOD, "MODE": "rbac"}, **CONTOSO}
    if django.VERSION >= (6, 1):
        values["MAILERS"] = {"default": {"BACKEND": BACKEND}}
    else:
        values["EMAIL_BACKEND"] = BACKEND
    err = StringIO()
    with override_settings(**values):
        call_command("check", stderr=err)
    assert "msgraph_mail.W007" in err.getvalue()


def test_retired_ids_are_not_reused() -> None:
    assert not hasattr(checks, "E011")


def test_allowed_senders_outside_rbac_is_ignored() -> None:
    found = ids(MSGRAPH_MAIL={**GOOD, "ALLOWED_SENDERS": ["@contoso.com"]})
    assert found == ["msgraph_mail.W004"]


def test_msgraph_mail_and_legacy_names_together() -> None:
    found = ids(MSGRAPH_MAIL=GOOD, MSGRAPH_USER_ID="noreply@contoso.com")
    assert found == ["msgraph_mail.W005"]
    assert (
        ids(
            MSGRAPH_MAIL=None,
            MSGRAPH_TENANT_ID=TENANT,
            MSGRAPH_CLIENT_ID=CLIENT,
            MSGRAPH_CLIENT_SECRET=SECRET,
            MSGRAPH_USER_ID="noreply@contoso.com",
        )
        == []
    )


def test_emulator_urls_warn_under_deploy_only() -> None:
    local = {**GOOD, "GRAPH_URL": "http://127.0.0.1:8625", "AUTHORITY_URL": "http://localhost:1"}
    assert ids(MSGRAPH_MAIL=local) == []
    assert ids(deploy=True, MSGRAPH_MAIL=local) == ["msgraph_mail.W006", "msgraph_mail.W006"]


@pytest.mark.skipif(django.VERSION < (6, 1), reason="MAILERS is new in Django 6.1")
def test_each_mailer_is_checked_and_named() -> None:
    mailers = {
        "default": {"BACKEND": BACKEND},
        "billing": {"BACKEND": BACKEND, "OPTIONS": {"mode": "single_mailbox"}},
        "other": {"BACKEND": "django.core.mail.backends.locmem.EmailBackend"},
    }
    with override_settings(MAILERS=mailers, MSGRAPH_MAIL=GOOD, **CONTOSO):
        found = checks.check_settings()
    assert [(m.obj, m.id) for m in found] == [("MAILERS['billing']", "msgraph_mail.E007")]
    assert "MAILERS['billing']: (msgraph_mail.E007)" in str(found[0])


def test_manage_py_check_output(capsys: pytest.CaptureFixture[str]) -> None:
    from django.core.management.base import SystemCheckError

    values: dict[str, Any] = {"MSGRAPH_MAIL": {**GOOD, "TENANT_ID": "common"}, **CONTOSO}
    if django.VERSION >= (6, 1):
        values["MAILERS"] = {"default": {"BACKEND": BACKEND}}
    else:
        values["EMAIL_BACKEND"] = BACKEND
    with override_settings(**values), pytest.raises(SystemCheckError) as info:
        call_command("check")
    assert "msgraph_mail.E002" in str(info.value)
    assert "use your Directory (tenant) ID" in str(info.value)
    assert SECRET not in str(info.value)


def test_ids_are_unique_constants() -> None:
    constants = {
        name: value
        for name, value in vars(checks).items()
        if name[:1] in "EW" and name[1:].isdigit()
    }
    assert len({c.id for c in constants.values()}) == len(constants)
    for name, check in constants.items():
        assert check.id == f"msgraph_mail.{name}"
        assert check.hint


def test_office365_smtp_settings_left_beside_the_backend_get_a_hint() -> None:
    leftovers = {
        "EMAIL_HOST": "smtp.office365.com",
        "EMAIL_PORT": 587,
        "EMAIL_HOST_USER": "noreply@contoso.com",
        "EMAIL_HOST_PASSWORD": "mailbox-password",
    }
    found = [m for m in run_checks() if m.id == "msgraph_mail.W018"]
    assert found == []
    with override_settings(MSGRAPH_MAIL=GOOD, EMAIL_BACKEND=BACKEND, **CONTOSO, **leftovers):
        [hint] = [m for m in run_checks() if m.id == "msgraph_mail.W018"]
    assert "EMAIL_HOST_PASSWORD" in (hint.hint or "")
    assert "mailbox-password" not in hint.msg + (hint.hint or "")
    with override_settings(MSGRAPH_MAIL=GOOD, EMAIL_BACKEND="x.Other", **leftovers):
        assert [m for m in run_checks() if m.id == "msgraph_mail.W018"] == []


@pytest.mark.skipif(django.VERSION < (6, 1), reason="MAILERS is new in Django 6.1")
def test_an_office365_smtp_mailer_beside_ours_gets_a_hint() -> None:
    mailers = {
        "default": {"BACKEND": BACKEND, "OPTIONS": {k.lower(): v for k, v in GOOD.items()}},
        "old": {
            "BACKEND": "django.core.mail.backends.smtp.EmailBackend",
            "OPTIONS": {"host": "smtp.office365.com", "port": 587},
        },
    }
    with override_settings(MAILERS=mailers, **CONTOSO):
        [hint] = [m for m in run_checks() if m.id == "msgraph_mail.W018"]
    assert "MAILERS['old']" in hint.msg
