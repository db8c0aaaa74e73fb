"""msgraph_diagnose on the shared limits: is Redis reachable, how much has each mailbox used."""

from __future__ import annotations

import json
from io import StringIO
from typing import Any

import pytest
from django.core import mail
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from msgraph_mail import limits
from msgraph_mail.emulator import GraphEmulator

from .conftest import mode_settings
from .redis_server import free_port


def findings(*, expect_error: bool = False) -> list[dict[str, Any]]:
    out = StringIO()
    if expect_error:
        with pytest.raises(CommandError, match="found"):
            call_command("msgraph_diagnose", "--json", stdout=out)
    else:
        call_command("msgraph_diagnose", "--json", stdout=out)
    return list(json.loads(out.getvalue()))


def about(found: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    return [f for f in found if f["topic"].startswith(prefix)]


def test_without_redis_the_limits_are_per_process(emulator: GraphEmulator) -> None:
    limits.clear()
    with override_settings(MSGRAPH_MAIL=mode_settings(emulator, "single_mailbox")):
        found = findings()
    [where] = about(found, "limits")
    assert where["level"] == "info"
    assert "counted in each process" in where["message"]
    assert "REDIS_URL" in where["fix"]
    [budget] = about(found, "budget noreply@contoso.com")
    assert "recipients per 24 h 0/10000" in budget["message"]


def test_with_redis_each_mailbox_shows_its_use(emulator: GraphEmulator, redis: str) -> None:
    settings = mode_settings(emulator, "permissive", REDIS_URL=redis)
    with override_settings(MSGRAPH_MAIL=settings):
        mail.send_mail("Hi", "x", "noreply@contoso.com", ["a@example.com", "b@example.com"])
        found = findings()
    [where] = about(found, "limits")
    assert where["level"] == "ok"
    assert f"shared through Redis at {redis}" == where["message"]
    [budget] = about(found, "budget noreply@contoso.com")
    assert budget["level"] == "info"
    assert "in flight 0/4" in budget["message"]
    assert "requests per 10 min 1/10000" in budget["message"]
    assert "recipients per 24 h 2/10000" in budget["message"]


def test_a_nearly_spent_budget_is_a_warning(emulator: GraphEmulator, redis: str) -> None:
    settings = mode_settings(
        emulator,
        "single_mailbox",
        REDIS_URL=redis,
        MAILBOX_LIMITS={"RECIPIENTS_PER_24_HOURS": 10},
    )
    with override_settings(MSGRAPH_MAIL=settings):
        mail.send_mail("Hi", "x", None, [f"r{n}@example.com" for n in range(9)])
        found = findings()
    [budget] = about(found, "budget noreply@contoso.com")
    assert budget["level"] == "warning"
    assert "recipients per 24 h 9/10" in budget["message"]
    assert "MailboxBudgetExhausted" in budget["fix"]


def test_unreachable_redis_is_an_error_without_its_password(emulator: GraphEmulator) -> None:
    limits.clear()
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    with override_settings(MSGRAPH_MAIL=mode_settings(emulator, "single_mailbox", REDIS_URL=url)):
        found = findings(expect_error=True)
    [where] = about(found, "limits")
    assert where["level"] == "error"
    assert "does not answer" in where["message"]
    assert "hunter2" not in json.dumps(found)
    assert about(found, "budget") == []


# manage.py check, offline --------------------------------------------------------------------


def check_ids(settings: dict[str, Any]) -> list[str]:
    from django.core.checks import run_checks

    with override_settings(MSGRAPH_MAIL=settings):
        return [f"{m.id}: {m.msg}" for m in run_checks() if m.id.startswith("msgraph_mail")]


def test_check_reports_a_malformed_redis_url_without_its_password(
    emulator: GraphEmulator,
) -> None:
    found = check_ids(emulator.settings(REDIS_URL="redis://:hunter2@/0"))
    assert len(found) == 1
    assert found[0].startswith("msgraph_mail.E009: REDIS_URL is invalid: needs a host")
    assert "hunter2" not in found[0]
    [scheme] = check_ids(emulator.settings(REDIS_URL="http://localhost:6379/0"))
    assert "must be a redis://, rediss:// (TLS) or unix:// URL" in scheme


def test_check_reports_redis_py_missing(
    emulator: GraphEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "redis" else real(name, *a)
    )
    found = check_ids(emulator.settings(REDIS_URL="redis://localhost:6379/0"))
    assert found == ["msgraph_mail.E015: REDIS_URL needs redis-py, which is not installed."]


def test_check_warns_of_share_token_without_redis(emulator: GraphEmulator) -> None:
    found = check_ids(emulator.settings(SHARE_TOKEN=True))
    assert [f.split(":")[0] for f in found] == ["msgraph_mail.W008"]
    assert check_ids(emulator.settings(SHARE_TOKEN=True, REDIS_URL="rediss://h:6380/0")) == []
