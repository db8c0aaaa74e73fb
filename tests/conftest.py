"""Shared fixtures: a fresh emulator per test, and the three modes of operation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import django
import pytest
import requests
from django.test import override_settings

from msgraph_mail import retry
from msgraph_mail.auth import tokens
from msgraph_mail.emulator import GraphEmulator
from msgraph_mail.resolvers import sender_cache

from .helpers import in_ci

BACKEND = "msgraph_mail.backend.EmailBackend"
MODES = ["permissive", "rbac", "single_mailbox"]


def pytest_configure(config: pytest.Config) -> None:
    if django.VERSION >= (6, 1):
        # The suite also proves the pre-MAILERS API (EMAIL_BACKEND, get_connection,
        # fail_silently), which Django 6.1 deprecates; our own code must not warn.
        config.addinivalue_line(
            "filterwarnings", "ignore::django.utils.deprecation.RemovedInDjango2028Warning"
        )


@pytest.fixture(autouse=True)
def _fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Backoff without Retry-After starts at 10 ms, so retry tests take milliseconds."""
    monkeypatch.setattr(retry, "BACKOFF_BASE", 0.01)


@pytest.fixture(autouse=True)
def _cold_process() -> Iterator[None]:
    """Each test starts as a new process would: no cached token, no cached sender."""
    tokens.clear()
    sender_cache.clear()
    yield
    tokens.clear()
    sender_cache.clear()


@pytest.fixture
def emulator(msgraph_emulator: GraphEmulator) -> GraphEmulator:
    """The plugin's fixture: a running emulator with Django's mail pointed at it."""
    return msgraph_emulator


def mode_settings(emulator: GraphEmulator, mode: str, **extra: Any) -> dict[str, Any]:
    """Settings and tenant state for a mode, each granted no more than it needs."""
    if mode == "permissive":
        emulator.roles = ["Mail.Send", "User.Read.All"]
        return emulator.settings(MODE="permissive", **extra)
    if mode == "rbac":
        emulator.roles = ["User.Read.All"]
        emulator.rbac_scope = {"noreply@contoso.com", "alice@contoso.com"}
        return emulator.settings(
            MODE="rbac", ALLOWED_SENDERS=["noreply@contoso.com", "alice@contoso.com"], **extra
        )
    emulator.roles = ["Mail.Send"]
    return emulator.settings(MODE="single_mailbox", MAILBOX="noreply@contoso.com", **extra)


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest, emulator: GraphEmulator) -> Iterator[str]:
    """Run a test once per mode of operation, against the emulator."""
    with override_settings(MSGRAPH_MAIL=mode_settings(emulator, request.param)):
        yield request.param


@pytest.fixture
def emu() -> Iterator[GraphEmulator]:
    """A bare emulator, for tests of the emulator itself over plain HTTP."""
    with GraphEmulator() as emulator:
        yield emulator


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real redis-server of our own on a free loopback port, for the whole session.

    Skipped where redis-server is not installed (CI installs it; there, a missing server
    fails instead of skipping).
    """
    from tests.helpers import in_ci
    from tests.redis_server import RedisServer, find_redis_server

    if find_redis_server() is None:
        reason = "redis-server is not installed (apt-get install redis-server)"
        if in_ci():
            pytest.fail(reason)
        pytest.skip(reason)
    with RedisServer() as server:
        yield server.url


@pytest.fixture
def redis(redis_url: str) -> str:
    """The session's Redis, emptied, and no limits cached in this process: every test starts
    with no slot taken and no budget spent."""
    import redis as redis_py

    from msgraph_mail import limits

    client = redis_py.Redis.from_url(redis_url)
    client.flushall()
    client.close()
    limits.clear()
    return redis_url


@pytest.fixture
def dummy_tasks(msgraph_emulator: GraphEmulator) -> Iterator[Any]:
    """QueuedEmailBackend over a tasks backend that runs nothing: what the outbox holds and
    which tasks were enqueued (``.results``) can be inspected."""
    from msgraph_mail.outbox.tasks import send_envelope
    from tests.helpers import DUMMY, QUEUED

    with override_settings(EMAIL_BACKEND=QUEUED, TASKS=DUMMY):
        backend = send_envelope.get_backend()
        backend.clear()
        yield backend
        backend.clear()


@pytest.fixture(scope="session")
def live_server(django_db_setup: Any, django_db_blocker: Any) -> Iterator[Any]:
    """pytest-django's live server, started once the test database (a file, see
    tests/settings.py) exists: its threads then open connections of their own, which wait
    for a write lock, instead of sharing the test thread's connection."""
    from pytest_django.live_server_helper import LiveServer

    with django_db_blocker.unblock():
        server = LiveServer("localhost")
    yield server
    server.stop()


CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,900",
)


# Headless Chromium for the browser tests (tests/test_inbox_browser.py, test_admin_browser.py).
@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium with a fresh profile; skipped where it is not installed, except
    under CI (``CI`` set), where that is a failure."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.exists():
            reason = f"{path} is missing: apt-get install chromium chromium-driver"
            if in_ci():  # CI installs them: there, missing is a failure
                pytest.fail(reason)
            pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()
