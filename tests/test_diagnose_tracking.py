"""msgraph_diagnose with DELIVERY_TRACKING: permissions, the trace's service principal, each
sending mailbox's Inbox, and whether the tenant keeps our Message-ID in the trace."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.test import override_settings

from msgraph_mail.emulator import GraphEmulator

from .test_diagnose import findings, levels

ROLES = ["Mail.Send", "User.Read.All", "Mail.Read", "ExchangeMessageTrace.Read.All"]


@pytest.fixture
def tracking(emulator: GraphEmulator) -> Iterator[GraphEmulator]:
    emulator.roles = ROLES
    graph = emulator.settings(DELIVERY_TRACKING=["trace", "bounces"])
    with override_settings(MSGRAPH_MAIL=graph):
        yield emulator


def topic(found: list[dict[str, Any]], name: str) -> dict[str, Any]:
    [finding] = [f for f in found if f["topic"] == name]
    return finding


def test_a_healthy_tracking_setup(tracking: GraphEmulator) -> None:
    found = findings()
    assert topic(found, "message trace")["level"] == "ok"
    assert topic(found, "bounces in noreply@contoso.com")["level"] == "ok"
    # tenant-wide Mail.Read reaches every mailbox: scope it
    [wide] = [f for f in found if f["topic"] == "tracking" and f["level"] == "warning"]
    assert "Application Mail.Read" in wide["fix"]


def test_a_missing_service_principal_gives_the_command_that_creates_it(
    tracking: GraphEmulator,
) -> None:
    tracking.trace_service_principal = False
    found = findings(expect_error=True)
    trace = topic(found, "message trace")
    assert trace["level"] == "error"
    assert "New-MgServicePrincipal -AppId 8bd644d1-64a1-4d4b-ae52-2e0cbf64e373" in trace["fix"]


def test_missing_permissions_are_named(tracking: GraphEmulator) -> None:
    tracking.roles = ["Mail.Send", "User.Read.All"]
    found = findings(expect_error=True)
    assert any("ExchangeMessageTrace.Read.All" in line for line in levels(found, "error"))
    inbox = topic(found, "bounces in noreply@contoso.com")
    assert inbox["level"] == "error"
    assert "Application Mail.Read" in inbox["fix"]


@pytest.mark.django_db  # the test message is tracked like any other
@pytest.mark.parametrize("rewrite", [False, True])
def test_send_test_tells_whether_the_tenant_keeps_our_message_id(
    tracking: GraphEmulator, rewrite: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("msgraph_mail.diagnose.SENT_ITEMS_WAITS", (0.05,))
    tracking.rewrite_message_ids = rewrite
    found = findings("--send-test", "alice@contoso.com")
    trace = topic(found, "test message in the trace")
    if rewrite:
        assert trace["level"] == "info"
        assert "rewrites Message-IDs" in trace["message"]
    else:
        assert trace["level"] == "ok"
        assert "Exchange keeps it" in trace["message"]
