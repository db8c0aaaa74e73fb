"""What each mode of operation promises: lookups, allow-lists, scopes, overrides."""

from __future__ import annotations

import pytest
from django.core import mail
from django.core.mail import EmailMessage
from django.test import override_settings

from msgraph_mail.backend import EmailBackend
from msgraph_mail.emulator import GraphEmulator
from msgraph_mail.exceptions import (
    InvalidMailboxHeader,
    MailboxNotEnabled,
    MailboxOutOfScope,
    SendAsDenied,
    SenderNotAllowed,
    SenderNotFound,
)
from msgraph_mail.resolvers import (
    DirectoryResolver,
    RbacResolver,
    SenderResolver,
    SingleMailboxResolver,
)
from tests.conftest import mode_settings


def send(subject: str = "s", from_email: str = "noreply@contoso.com", **kwargs: object) -> int:
    message = EmailMessage(subject, "body", from_email, ["to@example.com"], **kwargs)  # type: ignore[arg-type]
    return message.send()


@pytest.mark.parametrize(
    ("mode", "resolver"),
    [
        ("permissive", DirectoryResolver),
        ("rbac", RbacResolver),
        ("single_mailbox", SingleMailboxResolver),
    ],
)
def test_mode_picks_its_strategy(emulator: GraphEmulator, mode: str, resolver: type) -> None:
    with override_settings(MSGRAPH_MAIL=mode_settings(emulator, mode)):
        backend = EmailBackend()
        backend.open()
        assert type(backend.resolver) is resolver
        assert isinstance(backend.resolver, SenderResolver)
        backend.close()


# permissive ---------------------------------------------------------------------------------


def test_permissive_resolves_an_alias_to_its_mailbox(emulator: GraphEmulator) -> None:
    assert send(from_email="Contoso Shop <shop@contoso.com>") == 1
    [sent] = emulator.sent
    assert sent.mailbox.user_principal_name == "noreply@contoso.com"
    assert sent.from_ == "shop@contoso.com"


def test_permissive_lookup_is_case_insensitive_and_cached(emulator: GraphEmulator) -> None:
    send(from_email="Alice@Contoso.com")
    send(from_email="alice@contoso.com")
    assert emulator.count("user_list") == 1
    assert [m.mailbox.user_principal_name for m in emulator.sent] == ["alice@contoso.com"] * 2


def test_permissive_sender_cache_expires(emulator: GraphEmulator) -> None:
    with override_settings(MSGRAPH_MAIL=emulator.settings(SENDER_CACHE_TTL=0)):
        send()
        send()
    assert emulator.count("user_list") == 2


def test_permissive_unknown_sender_names_the_address(emulator: GraphEmulator) -> None:
    with pytest.raises(SenderNotFound, match=r"nobody@contoso\.com") as info:
        send(from_email="nobody@contoso.com")
    assert info.value.mailbox == "nobody@contoso.com"
    assert emulator.count("sendMail") == 0


def test_permissive_override_header_picks_the_mailbox(emulator: GraphEmulator) -> None:
    emulator.add_user("sales@contoso.com", send_as=["noreply@contoso.com"])
    send(from_email="noreply@contoso.com", headers={"X-MSGraph-Mailbox": "sales@contoso.com"})
    [sent] = emulator.sent
    assert sent.mailbox.user_principal_name == "sales@contoso.com"
    assert sent.from_ == "noreply@contoso.com"
    assert sent.header("X-MSGraph-Mailbox") is None


def test_override_header_by_user_id(emulator: GraphEmulator) -> None:
    alice = emulator.user("alice@contoso.com")
    assert alice is not None
    send(from_email="alice@contoso.com", headers={"X-MSGraph-Mailbox": alice.id})
    assert emulator.count("user_get") == 1
    assert emulator.sent[0].mailbox.id == alice.id


def test_malformed_override_header_fails_that_message_only(emulator: GraphEmulator) -> None:
    bad = EmailMessage("bad", "b", "noreply@contoso.com", ["a@x.com"])
    bad.extra_headers["X-MSGraph-Mailbox"] = "alice@contoso.com, bob@contoso.com"
    good = EmailMessage("good", "b", "noreply@contoso.com", ["a@x.com"])
    with pytest.raises(InvalidMailboxHeader):
        mail.get_connection().send_messages([bad, good])
    assert [m.subject for m in emulator.sent] == ["good"]


def test_send_as_denied_is_explained(emulator: GraphEmulator) -> None:
    with pytest.raises(SendAsDenied, match=r"may not send as noreply@contoso\.com") as info:
        send(headers={"X-MSGraph-Mailbox": "bob@contoso.com"})
    assert info.value.code == "ErrorSendAsDenied"
    assert info.value.status == 403
    assert info.value.request_id


def test_guest_without_mailbox_is_explained(emulator: GraphEmulator) -> None:
    with pytest.raises(MailboxNotEnabled, match="no Exchange Online mailbox"):
        send(from_email="guest@fabrikam.com")


def test_missing_mail_send_permission_is_explained(emulator: GraphEmulator) -> None:
    emulator.roles = ["User.Read.All"]
    with pytest.raises(MailboxOutOfScope, match=r"Mail\.Send") as info:
        send()
    assert info.value.code == "ErrorAccessDenied"


# rbac -----------------------------------------------------------------------------------------


@pytest.fixture
def rbac(emulator: GraphEmulator) -> GraphEmulator:
    with override_settings(MSGRAPH_MAIL=mode_settings(emulator, "rbac")):
        yield emulator


def test_rbac_refuses_a_sender_outside_the_allow_list_with_no_request(rbac: GraphEmulator) -> None:
    with pytest.raises(SenderNotAllowed, match=r"bob@contoso\.com is not in ALLOWED_SENDERS"):
        send(from_email="bob@contoso.com")
    assert rbac.count() == 0


def test_rbac_allow_list_also_applies_to_the_override(rbac: GraphEmulator) -> None:
    with pytest.raises(SenderNotAllowed):
        send(headers={"X-MSGraph-Mailbox": "bob@contoso.com"})
    assert rbac.count() == 0


def test_rbac_domain_entry(emulator: GraphEmulator) -> None:
    settings = mode_settings(emulator, "rbac")
    settings["ALLOWED_SENDERS"] = ["@contoso.com"]
    with override_settings(MSGRAPH_MAIL=settings):
        assert send(from_email="alice@contoso.com") == 1
        with pytest.raises(SenderNotAllowed):
            send(from_email="someone@fabrikam.com")


def test_rbac_out_of_scope_mailbox(emulator: GraphEmulator) -> None:
    settings = mode_settings(emulator, "rbac")
    settings["ALLOWED_SENDERS"] = ["@contoso.com"]
    with (
        override_settings(MSGRAPH_MAIL=settings),
        pytest.raises(MailboxOutOfScope, match="Test-ServicePrincipalAuthorization") as info,
    ):
        send(from_email="bob@contoso.com")
    assert "bob@contoso.com" in str(info.value)
    assert info.value.mailbox == "bob@contoso.com"
    assert info.value.request_id


def test_rbac_without_allowed_senders_tries_every_sender(emulator: GraphEmulator) -> None:
    """The Exchange scope is the authority; the allow-list only saves a request."""
    settings = mode_settings(emulator, "rbac")
    del settings["ALLOWED_SENDERS"]
    with override_settings(MSGRAPH_MAIL=settings):
        assert send(from_email="Alice <alice@contoso.com>") == 1
        with pytest.raises(MailboxOutOfScope, match="Test-ServicePrincipalAuthorization") as info:
            send(from_email="bob@contoso.com")
    assert "bob@contoso.com is outside the application's Exchange RBAC scope" in str(info.value)
    assert info.value.mailbox == "bob@contoso.com"
    assert info.value.code == "ErrorAccessDenied"
    assert [m.mailbox.user_principal_name for m in emulator.sent] == ["alice@contoso.com"]
    assert emulator.count("sendMail") == 2  # bob was tried: Graph refused his sendMail


def test_rbac_sends_within_scope_without_entra_mail_send(rbac: GraphEmulator) -> None:
    assert "Mail.Send" not in rbac.roles
    assert send(from_email="alice@contoso.com") == 1


# single_mailbox -------------------------------------------------------------------------------


@pytest.fixture
def single(emulator: GraphEmulator) -> GraphEmulator:
    with override_settings(MSGRAPH_MAIL=mode_settings(emulator, "single_mailbox")):
        yield emulator


def test_single_mailbox_makes_no_directory_request(single: GraphEmulator) -> None:
    assert single.roles == ["Mail.Send"]  # no User.Read.All at all
    for i in range(3):
        send(f"m{i}", from_email="Contoso <noreply@contoso.com>")
    assert single.count("user_get") + single.count("user_list") == 0
    assert single.count("sendMail") == 3


def test_single_mailbox_can_send_from_its_aliases(single: GraphEmulator) -> None:
    assert send(from_email="shop@contoso.com") == 1


def test_single_mailbox_send_as_denied(single: GraphEmulator) -> None:
    with pytest.raises(SendAsDenied, match=r"noreply@contoso\.com may not send as alice@contoso"):
        send(from_email="alice@contoso.com")


def test_single_mailbox_override_header(single: GraphEmulator) -> None:
    assert send(headers={"X-MSGraph-Mailbox": "NoReply@contoso.com"}) == 1
    assert single.sent[0].header("X-MSGraph-Mailbox") is None
    with pytest.raises(SenderNotAllowed, match="single_mailbox only sends through"):
        send(headers={"X-MSGraph-Mailbox": "alice@contoso.com"})
    assert single.count("sendMail") == 1


def test_single_mailbox_by_user_id(emulator: GraphEmulator) -> None:
    noreply = emulator.user("noreply@contoso.com")
    assert noreply is not None
    emulator.roles = ["Mail.Send"]
    with override_settings(MSGRAPH_MAIL=emulator.settings(MAILBOX=noreply.id)):
        assert send() == 1
    assert emulator.sent[0].mailbox.id == noreply.id
