"""Django's own email backend contract, run against the emulator.

Django's test suite has one mixin every mail backend passes: ``BaseEmailBackendTests`` in
``tests/mail/tests.py`` (Django 5.2 and 6.0), ``SharedEmailBackendTests`` in
``tests/mail/test_backends.py`` (6.1). It is not installed with Django, so the source
distribution of the installed version is downloaded (``pip download``, else PyPI's JSON
API) into a cache directory, once; the tests are skipped, saying why, when that fails.

The mailbox is read back from the MIME the emulator received, with CRLF turned to LF as
Django's own SMTP test handler does. Tests that cannot apply to Graph are skipped by name
with the reason (:data:`NOT_APPLICABLE`).
"""

from __future__ import annotations

import email.policy
import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import unittest
import urllib.request
from collections.abc import Iterator
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import django
import pytest
from django.test import SimpleTestCase, override_settings

from msgraph_mail.backend import EmailBackend
from msgraph_mail.emulator import GraphEmulator

#: Where the sources are unpacked: one directory per Django version, kept between runs.
CACHE = Path(
    os.environ.get("MSGRAPH_MAIL_DJANGO_SOURCE_CACHE")
    or Path(tempfile.gettempdir()) / "msgraph_mail-django-source"
)
#: The contract's module and mixin for the installed Django.
if django.VERSION >= (6, 1):
    MODULE, MIXIN = "test_backends", "SharedEmailBackendTests"
else:
    MODULE, MIXIN = "tests", "BaseEmailBackendTests"

DOMAINLESS = (
    "sends to an address without a domain; Graph's sendMail cannot deliver it, and the "
    "backend refuses such a recipient before any request (InvalidMessage)"
)
#: Django's tests that cannot apply to this backend, and why.
NOT_APPLICABLE = {
    "test_recipient_without_domain": DOMAINLESS,
    "test_lazy_addresses": DOMAINLESS + " (the lazy addresses are 'tester', 'django', ...)",
    "test_fail_silently_arg_accepted": (
        "Django asks backends that keep supporting fail_silently to override this test; "
        "this backend keeps it (see tests/test_tokens.py and tests/test_send.py)"
    ),
}

#: Senders Django's tests use, added to the emulator's directory as mailboxes of their own.
SENDERS = {
    "from@example.com": (),
    "sender@example.com": (),
    "from@xn--4ca9at.com": ("from@öäü.com",),
}


def _download(version: str, target: Path) -> Path:
    """Django's sdist for ``version`` in ``target``: pip first, then PyPI's JSON API."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
    command += ["--disable-pip-version-check", "-q", "-d", str(target), f"django=={version}"]
    subprocess.run(command, capture_output=True, timeout=300, check=False)  # noqa: S603
    found = sorted(target.glob("[Dd]jango-*.tar.gz"))
    if found:
        return found[0]
    url = f"https://pypi.org/pypi/Django/{version}/json"
    with urllib.request.urlopen(url, timeout=60) as response:
        release = json.load(response)
    [sdist] = [f for f in release["urls"] if f["packagetype"] == "sdist"]
    archive = target / sdist["filename"]
    with urllib.request.urlopen(sdist["url"], timeout=300) as response:  # noqa: S310
        archive.write_bytes(response.read())
    return archive


def django_mail_tests() -> Path:
    """The ``tests/mail`` directory of the installed Django's source distribution."""
    version = django.__version__
    unpacked = CACHE / f"django-{version}" / "mail"
    if (unpacked / f"{MODULE}.py").is_file():
        return unpacked
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as scratch:
        archive = _download(version, Path(scratch))
        prefix = f"{archive.name.removesuffix('.tar.gz')}/tests/mail/"
        out = Path(scratch) / "out"
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
            for member in members:
                member.name = member.name[len(prefix) :]
            kwargs: dict[str, Any] = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(out, members=[m for m in members if m.name], **kwargs)  # noqa: S202
        if not (out / f"{MODULE}.py").is_file():
            raise FileNotFoundError(f"no tests/mail/{MODULE}.py in {archive.name}")
        unpacked.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(out, unpacked)  # atomic: a concurrent run may have won the race
        except OSError:
            if not (unpacked / f"{MODULE}.py").is_file():
                raise
    return unpacked


def load_mixin() -> type:
    """Django's mixin, from its test package imported under a name of its own."""
    directory = django_mail_tests()
    package = "django_contract_mail_tests"
    if package not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            package, directory / "__init__.py", submodule_search_locations=[str(directory)]
        )
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[package] = module
        spec.loader.exec_module(module)
    return getattr(importlib.import_module(f"{package}.{MODULE}"), MIXIN)


try:
    Mixin = load_mixin()
except Exception as exc:  # no network, no index, a changed layout: say so, do not fail
    shutil.rmtree(CACHE / f"django-{django.__version__}", ignore_errors=True)
    pytest.skip(
        f"Django {django.__version__}'s source distribution (tests/mail/{MODULE}.py) could "
        f"not be downloaded or loaded: {type(exc).__name__}: {exc}",
        allow_module_level=True,
    )


class GraphBackendContractTests(Mixin, SimpleTestCase):  # type: ignore[misc,valid-type]
    """Django's backend contract; every message goes through the emulator's sendMail."""

    email_backend = "msgraph_mail.backend.EmailBackend"  # Django 5.2 and 6.0
    backend_class = EmailBackend  # Django 6.1

    emulator: GraphEmulator

    @pytest.fixture(autouse=True)
    def _graph(self, msgraph_emulator: GraphEmulator) -> Iterator[None]:
        self.emulator = msgraph_emulator
        for upn, aliases in SENDERS.items():
            msgraph_emulator.add_user(upn, aliases=aliases)
        # Django's test_send_many reads the mailbox in the order the messages were given, as
        # an SMTP server receives them. The backend sends a list concurrently (MAX_CONCURRENCY
        # threads), so Graph accepts them in any order; one thread keeps the given order.
        with override_settings(MSGRAPH_MAIL=msgraph_emulator.settings(MAX_CONCURRENCY=1)):
            yield

    def get_mailbox_content(self) -> list[Message]:
        return [
            message_from_bytes(sent.raw.replace(b"\r\n", b"\n"), policy=email.policy.default)
            for sent in self.emulator.sent
        ]

    def flush_mailbox(self) -> None:
        self.emulator.clear_messages()


def _not_applicable(name: str, reason: str) -> Any:
    @unittest.skip(f"Django's {name} does not apply to Graph: {reason}")
    def test(self: Any) -> None:
        """Skipped: does not apply to Graph."""

    return test


for _name, _reason in NOT_APPLICABLE.items():
    if hasattr(Mixin, _name):
        setattr(GraphBackendContractTests, _name, _not_applicable(_name, _reason))


def test_the_contract_is_django_s_and_only_the_named_tests_are_skipped() -> None:
    """The mixin really holds Django's tests, and the skipped ones are only those named."""
    tests = {name for name in dir(Mixin) if name.startswith("test_")}
    assert {"test_send", "test_send_many", "test_send_unicode"} <= tests
    skipped = {
        name
        for name in tests
        if getattr(getattr(GraphBackendContractTests, name), "__unittest_skip__", False)
    }
    assert skipped == set(NOT_APPLICABLE) & tests
