"""QueuedEmailBackend refuses in the caller what EmailBackend refuses without a request:
a From outside rbac's ALLOWED_SENDERS, a mailbox override single_mailbox cannot use."""

from __future__ import annotations

from typing import Any

import pytest
from django.core import mail
from django.test import override_settings

from msgraph_mail.emulator import GraphEmulator
from msgraph_mail.exceptions import SenderNotAllowed
from msgraph_mail.outbox.store import DatabaseStore

from .conftest import mode_settings

pytestmark = pytest.mark.django_db


def test_rbac_allow_list_refuses_in_the_caller(
    msgraph_emulator: GraphEmulator, dummy_tasks: Any
) -> None:
    with override_settings(MSGRAPH_MAIL=mode_settings(msgraph_emulator, "rbac")):
        with pytest.raises(SenderNotAllowed, match="ALLOWED_SENDERS"):
            mail.send_mail("Hi", "x", "shop@example.net", ["a@example.com"])
        assert mail.send_mail("Hi", "x", "alice@contoso.com", ["a@example.com"]) == 1
    assert [m.envelope.from_address for m in DatabaseStore().list()] == ["alice@contoso.com"]
    assert len(dummy_tasks.results) == 1
    assert msgraph_emulator.count() == 0  # no request from the caller, either way


def test_single_mailbox_override_refuses_in_the_caller(
    msgraph_emulator: GraphEmulator, dummy_tasks: Any
) -> None:
    with override_settings(MSGRAPH_MAIL=mode_settings(msgraph_emulator, "single_mailbox")):
        other = mail.EmailMessage(
            "Hi", "x", None, ["a@example.com"], headers={"X-MSGraph-Mailbox": "bob@contoso.com"}
        )
        with pytest.raises(SenderNotAllowed, match="single_mailbox"):
            other.send()
        assert other.msgraph_status.status == "failed"
    assert DatabaseStore().list() == []
    assert dummy_tasks.results == []
