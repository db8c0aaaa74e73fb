"""pytest plugin: the bundled Graph emulator as a fixture for your own tests.

Installed with the package (``pytest11`` entry point), so a Django project's tests can write::

    def test_welcome_mail(msgraph_emulator):
        signup("new@example.com")
        [sent] = msgraph_emulator.sent
        assert sent.to == ["new@example.com"]

The fixture starts a fresh emulator on 127.0.0.1 for the test and points
``EMAIL_BACKEND`` and ``MSGRAPH_MAIL`` at it (permissive mode, the emulator's contoso
directory); ``msgraph_emulator.settings(MODE=..., MAILBOX=...)`` gives other settings to use
with ``override_settings``. Nothing here talks to a real tenant. The emulator is strict
(``GraphEmulator(strict=True)``, the default): only its own tenant, application and users,
unlike the dev inbox of ``python -m msgraph_mail.emulator``, which takes any.

Options of the emulator (Graph's per-mailbox ``limits`` and their ``time_scale``) come from a
marker::

    @pytest.mark.msgraph_emulator(limits={"RECIPIENTS_PER_24_HOURS": 3}, time_scale=0.001)
    def test_daily_cap(msgraph_emulator): ...

or at run time: ``msgraph_emulator.set_limits(...)``, ``msgraph_emulator.time_scale = ...``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .emulator import GraphEmulator

BACKEND = "msgraph_mail.backend.EmailBackend"
MARKER = "msgraph_emulator"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(limits=None, time_scale=1.0): options of the msgraph_emulator fixture's "
        "GraphEmulator (Graph's per-mailbox limits and the time scale of their windows)",
    )


@pytest.fixture
def msgraph_emulator(request: pytest.FixtureRequest) -> Iterator[GraphEmulator]:
    """A running Graph emulator; Django's mail goes to it for the duration of the test."""
    from django.conf import settings
    from django.test import override_settings

    from .emulator import GraphEmulator

    marker = request.node.get_closest_marker(MARKER)
    options = dict(marker.kwargs) if marker is not None else {}
    unknown = set(options) - {"limits", "time_scale"}
    if unknown or (marker is not None and marker.args):
        raise TypeError(f"@pytest.mark.{MARKER} takes limits= and time_scale= only")
    with GraphEmulator(**options) as emulator:
        if not settings.configured:
            yield emulator
            return
        overrides = {"EMAIL_BACKEND": BACKEND, "MSGRAPH_MAIL": emulator.settings()}
        if hasattr(settings, "MAILERS"):  # Django 6.1: every configured mailer uses Graph
            overrides["MAILERS"] = {
                alias: {"BACKEND": BACKEND} for alias in settings.MAILERS or {"default": {}}
            }
        with override_settings(**overrides):
            yield emulator


def clear_caches() -> None:
    """Forget the process's cached tokens and sender lookups, as a new process would.

    For tests that stub Graph at the ``requests`` level (``responses``, ``requests-mock``):
    each such test then sees the token request and the sender lookup it registered.
    """
    from .auth import tokens
    from .resolvers import sender_cache

    tokens.clear()
    sender_cache.clear()
