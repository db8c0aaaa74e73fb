"""Settings: one pydantic model, three sources, clear errors that never show the secret."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.mail import get_connection
from django.test import override_settings

from msgraph_mail.backend import EmailBackend
from msgraph_mail.conf import load_settings
from msgraph_mail.exceptions import ConfigurationError

TENANT = "11111111-2222-3333-4444-555555555555"
CLIENT = "66666666-7777-8888-9999-000000000000"
SECRET = "Zq8~sEcReT-value-that-must-never-leak"
BASE = {"TENANT_ID": TENANT, "CLIENT_ID": CLIENT, "CLIENT_SECRET": SECRET}


def error_for(**msgraph_mail: object) -> str:
    with override_settings(MSGRAPH_MAIL=msgraph_mail), pytest.raises(ConfigurationError) as info:
        load_settings()
    assert SECRET not in str(info.value)
    return str(info.value)


def test_defaults() -> None:
    with override_settings(MSGRAPH_MAIL=BASE):
        settings = load_settings()
    assert settings.mode == "permissive"
    assert settings.graph_url == "https://graph.microsoft.com"
    assert settings.authority_url == "https://login.microsoftonline.com"
    assert settings.token_url == f"https://login.microsoftonline.com/{TENANT}/oauth2/v2.0/token"
    assert settings.scope == "https://graph.microsoft.com/.default"
    assert settings.timeout == 30
    assert settings.sender_cache_ttl == 3600


def test_mailbox_makes_single_mailbox_the_default_mode() -> None:
    with override_settings(MSGRAPH_MAIL={**BASE, "MAILBOX": "noreply@contoso.com"}):
        assert load_settings().mode == "single_mailbox"
    with override_settings(MSGRAPH_MAIL={**BASE, "MAILBOX": "a@contoso.com", "MODE": "permissive"}):
        assert load_settings().mode == "permissive"


def test_django_setup_needs_no_msgraph_mail() -> None:
    # The app is installed in tests/settings.py without MSGRAPH_MAIL; only building a
    # backend reads (and validates) the settings.
    with override_settings(MSGRAPH_MAIL=None), pytest.raises(ConfigurationError, match="TENANT_ID"):
        EmailBackend()


def test_keyword_arguments_win_over_msgraph_mail_over_legacy_names() -> None:
    with override_settings(
        MSGRAPH_TENANT_ID="legacy.onmicrosoft.com",
        MSGRAPH_CLIENT_ID=CLIENT,
        MSGRAPH_CLIENT_SECRET="legacy-secret",
        MSGRAPH_MAIL={"TENANT_ID": TENANT, "TIMEOUT": 5},
    ):
        settings = load_settings({"timeout": 7})
        assert settings.tenant_id == TENANT  # MSGRAPH_MAIL over legacy
        assert settings.client_secret.get_secret_value() == "legacy-secret"  # legacy fills gaps
        assert settings.timeout == 7  # kwargs over MSGRAPH_MAIL
        backend = get_connection(BACKEND_PATH, mailbox="alice@contoso.com")
        assert backend.settings.mode == "single_mailbox"
        assert backend.settings.mailbox == "alice@contoso.com"


BACKEND_PATH = "msgraph_mail.backend.EmailBackend"


def test_legacy_django_msgraphbackend_settings_alone_mean_single_mailbox() -> None:
    with override_settings(
        MSGRAPH_MAIL=None,
        MSGRAPH_TENANT_ID=TENANT,
        MSGRAPH_CLIENT_ID=CLIENT,
        MSGRAPH_CLIENT_SECRET=SECRET,
        MSGRAPH_USER_ID="noreply@contoso.com",
    ):
        settings = load_settings()
    assert settings.mode == "single_mailbox"
    assert settings.mailbox == "noreply@contoso.com"


@pytest.mark.parametrize(
    ("missing", "phrase"),
    [
        ("TENANT_ID", "MSGRAPH_MAIL['TENANT_ID'] is required"),
        ("CLIENT_ID", "MSGRAPH_MAIL['CLIENT_ID'] is required"),
        ("CLIENT_SECRET", "MSGRAPH_MAIL['CLIENT_SECRET'] is required"),
    ],
)
def test_missing_key_is_named(missing: str, phrase: str) -> None:
    settings = {key: value for key, value in BASE.items() if key != missing}
    assert phrase in error_for(**settings)


@pytest.mark.parametrize(
    ("override", "phrase"),
    [
        ({"MODE": "anything"}, "MSGRAPH_MAIL['MODE'] Input should be 'permissive', 'rbac'"),
        ({"MODE": "single_mailbox"}, "MODE single_mailbox needs MAILBOX"),
        ({"TENANT_ID": "common"}, "'common' names no tenant"),
        ({"TENANT_ID": "organizations"}, "'organizations' names no tenant"),
        ({"CLIENT_ID": "my-app"}, "MSGRAPH_MAIL['CLIENT_ID'] must be the application (client) id"),
        ({"CLIENT_SECRET": " "}, "MSGRAPH_MAIL['CLIENT_SECRET'] must not be empty"),
        ({"GRAPH_URL": "http://graph.example.com"}, "http:// is only accepted for a loopback"),
        ({"AUTHORITY_URL": "http://10.0.0.1"}, "MSGRAPH_MAIL['AUTHORITY_URL'] http://"),
        ({"GRAPH_URL": "ftp://x"}, "must be an https:// URL"),
        ({"MAILBOX": "not an address"}, "MSGRAPH_MAIL['MAILBOX'] must be a user principal name"),
        ({"ALLOWED_SENDERS": "a@b.com"}, "must be a list"),
        ({"ALLOWED_SENDERS": ["contoso.com"]}, "'contoso.com' is neither an address nor"),
        ({"TIMEOUT": 0}, "MSGRAPH_MAIL['TIMEOUT'] Input should be greater than 0"),
        ({"SENDER_CACHE_TTL": -1}, "MSGRAPH_MAIL['SENDER_CACHE_TTL']"),
    ],
)
def test_invalid_values_are_explained(override: dict[str, object], phrase: str) -> None:
    assert phrase in error_for(**{**BASE, **override})


def test_rbac_needs_no_allowed_senders() -> None:
    with override_settings(MSGRAPH_MAIL={**BASE, "MODE": "rbac"}):
        settings = load_settings()
        assert settings.mode == "rbac"
        assert settings.allowed_senders == ()
        assert get_connection(BACKEND_PATH).settings.mode == "rbac"


def test_unknown_keys_are_errors() -> None:
    message = error_for(**BASE, USER_ID="x@contoso.com")
    assert "MSGRAPH_MAIL['USER_ID'] is not a setting" in message
    assert "MAILBOX" in message  # lists the known keys
    assert "MSGRAPH_MAIL['tenant_id'] is not a setting" in error_for(tenant_id=TENANT)


def test_secret_of_wrong_type_is_not_quoted() -> None:
    message = error_for(TENANT_ID=TENANT, CLIENT_ID=CLIENT, CLIENT_SECRET=[SECRET])
    assert "CLIENT_SECRET" in message


def test_http_is_accepted_for_loopback_only() -> None:
    for url in ("http://127.0.0.1:8000", "http://localhost:1", "http://[::1]:9"):
        with override_settings(MSGRAPH_MAIL={**BASE, "GRAPH_URL": url + "/"}):
            assert load_settings().graph_url == url


def test_configuration_error_is_improperly_configured_and_never_silenced() -> None:
    with override_settings(MSGRAPH_MAIL={"MODE": "rbac"}), pytest.raises(ImproperlyConfigured):
        get_connection(BACKEND_PATH, fail_silently=True)


def test_secret_stays_out_of_reprs() -> None:
    with override_settings(MSGRAPH_MAIL=BASE):
        backend = EmailBackend()
    assert SECRET not in repr(backend)
    assert SECRET not in repr(backend.settings)
    assert SECRET not in str(backend.settings.model_dump())
