"""Django 6.1 MAILERS: OPTIONS are the backend's keyword arguments, one mailer per mailbox."""

from __future__ import annotations

import django
import pytest
from django.core import mail
from django.test import override_settings

from msgraph_mail.emulator import GraphEmulator

pytestmark = pytest.mark.skipif(django.VERSION < (6, 1), reason="MAILERS is new in Django 6.1")

BACKEND = "msgraph_mail.backend.EmailBackend"


def test_one_mailer_per_mailbox(emulator: GraphEmulator) -> None:
    mailers = {
        "default": {"BACKEND": BACKEND},
        "billing": {"BACKEND": BACKEND, "OPTIONS": {"mailbox": "alice@contoso.com"}},
    }
    with override_settings(MAILERS=mailers):
        mail.send_mail("default", "b", "noreply@contoso.com", ["a@x.com"])
        mail.send_mail("billing", "b", "alice@contoso.com", ["a@x.com"], using="billing")
        backend = mail.mailers["billing"]
        assert backend.alias == "billing"
        assert backend.settings.mode == "single_mailbox"
    assert [(m.subject, m.mailbox.user_principal_name) for m in emulator.sent] == [
        ("default", "noreply@contoso.com"),
        ("billing", "alice@contoso.com"),
    ]
    # A new backend object per use, one token for the process.
    assert emulator.count("token") == 1


def test_unknown_option_is_refused(emulator: GraphEmulator) -> None:
    mailers = {"default": {"BACKEND": BACKEND, "OPTIONS": {"mailboxx": "a@contoso.com"}}}
    with override_settings(MAILERS=mailers), pytest.raises(mail.InvalidMailer, match="mailboxx"):
        mail.mailers.default  # noqa: B018


def test_invalid_option_value_is_improperly_configured(emulator: GraphEmulator) -> None:
    from django.core.exceptions import ImproperlyConfigured

    mailers = {"default": {"BACKEND": BACKEND, "OPTIONS": {"mode": "everyone"}}}
    with (
        override_settings(MAILERS=mailers),
        pytest.raises(ImproperlyConfigured, match=r"backend option 'mode'"),
    ):
        mail.mailers.default  # noqa: B018
