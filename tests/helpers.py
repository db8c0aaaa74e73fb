"""Small helpers shared by the test modules."""

from __future__ import annotations

import base64
import os
import statistics
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage, MIMEPart
from email.mime.image import MIMEImage
from typing import Any

import django
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from msgraph_mail.emulator import CLIENT_ID, CLIENT_SECRET, TENANT_ID, GraphEmulator

#: A 1x1 PNG, for inline images.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
#: The attachments of :func:`rich_message`, by file name.
RICH_ATTACHMENTS = {"report.csv": b"col1,col2\n1,2\n", "daten-ü.bin": bytes(range(256)) * 10}


def rich_message(headers: dict[str, str]) -> Any:
    """Every field a message can have, non-ASCII everywhere: names, subject, bodies, a text
    and a binary attachment (RICH_ATTACHMENTS) and an inline image (cid ``logo``)."""
    from django.core.mail import EmailMultiAlternatives

    message = EmailMultiAlternatives(
        subject="Grüße aus Köln — 東京 ✓",
        body="Text part: Grüße\n",
        from_email="Zoë Contoso <noreply@contoso.com>",
        to=["Ångström <angstrom@example.com>", "plain@example.com"],
        cc=["Çelik <celik@example.com>"],
        bcc=["blind@example.com"],
        reply_to=["Support <support@contoso.com>"],
        headers=headers,
    )
    message.attach_alternative("<p>HTML part: <b>Grüße</b> <img src='cid:logo'></p>", "text/html")
    message.attach("report.csv", RICH_ATTACHMENTS["report.csv"], "text/csv")
    message.attach("daten-ü.bin", RICH_ATTACHMENTS["daten-ü.bin"], "application/octet-stream")
    message.attach(inline_image(PNG, "logo.png", "logo"))
    return message


def inline_image(data: bytes, filename: str, cid: str) -> Any:
    """An inline image part, built the way each Django version wants it."""
    if django.VERSION >= (6, 0):  # MIMEBase attachments are deprecated from 6.0 on
        part = MIMEPart()
        part.set_content(
            data, "image", "png", disposition="inline", filename=filename, cid=f"<{cid}>"
        )
        return part
    image = MIMEImage(data, "png")
    image.add_header("Content-ID", f"<{cid}>")
    image.add_header("Content-Disposition", "inline", filename=filename)
    return image


@dataclass(frozen=True)
class Pair:
    key: str  # PEM (encrypted when made with a password)
    cert: str  # PEM
    der: bytes

    @property
    def body(self) -> str:
        """The base64 body of the key: what must never show anywhere."""
        return "".join(self.key.strip().splitlines()[1:-1])


def make_pair(
    *,
    days: float = 365,
    password: str | None = None,
    key: rsa.RSAPrivateKey | None = None,
    start: datetime | None = None,
) -> Pair:
    """A self-signed certificate and its key, as an app registration would hold them."""
    key = key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "msgraph-mail-test")])
    start = start or datetime.now(timezone.utc) - timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(minutes=5) + timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password.encode())
        if password
        else serialization.NoEncryption()
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    ).decode()
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    return Pair(key_pem, cert_pem, cert.public_bytes(serialization.Encoding.DER))


# Talking to the emulator over plain HTTP (tests of the emulator itself). ---------------


def token_form(emu: GraphEmulator, **changes: str | None) -> dict[str, str]:
    form: dict[str, str | None] = {
        "grant_type": "client_credentials",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "scope": f"{emu.url}/.default",
        **changes,
    }
    return {k: v for k, v in form.items() if v is not None}


def get_token(emu: GraphEmulator, http: requests.Session, tenant: str = TENANT_ID) -> str:
    response = http.post(f"{emu.url}/{tenant}/oauth2/v2.0/token", data=token_form(emu))
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def graph_error(response: requests.Response, status: int, code: str) -> str:
    """Assert Graph's error shape; return the message."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == code
    assert error["innerError"]["request-id"] == response.headers["request-id"]
    assert error["innerError"]["date"]
    return str(error["message"])


def mime(
    *,
    sender: str = "noreply@contoso.com",
    to: str | None = "a@example.com",
    subject: str = "Hello",
    **headers: str,
) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    if to is not None:
        message["To"] = to
    message["Subject"] = subject
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message.set_content("plain body\n")
    return message


# QueuedEmailBackend over Django's tasks framework (django.tasks on 6.0+, the backport on 5.2).
QUEUED = "msgraph_mail.backend.QueuedEmailBackend"
TASKS_PACKAGE = "django.tasks" if django.VERSION >= (6, 0) else "django_tasks"
#: A tasks backend that runs nothing: the outbox and the enqueued tasks can be inspected.
DUMMY = {"default": {"BACKEND": f"{TASKS_PACKAGE}.backends.dummy.DummyBackend"}}
#: A tasks backend that runs each task in the caller, at once.
IMMEDIATE = {"default": {"BACKEND": f"{TASKS_PACKAGE}.backends.immediate.ImmediateBackend"}}


# The dev inbox as a user runs it: python -m msgraph_mail.emulator ------------------------

#: Generous: the machine may be loaded; a healthy start takes well under a second.
START_TIMEOUT = 60


@contextmanager
def running_cli(*options: str) -> Iterator[tuple[str, str]]:
    """``python -m msgraph_mail.emulator --port 0 [options]``: its URL and start-up text,
    once it is serving."""
    command = [sys.executable, "-m", "msgraph_mail.emulator", "--port", "0", *options]
    with subprocess.Popen(  # noqa: S603 - this interpreter, fixed arguments
        command, stdout=subprocess.PIPE, text=True
    ) as process:
        watchdog = threading.Timer(START_TIMEOUT, process.kill)  # a hung start fails, not hangs
        watchdog.start()
        try:
            assert process.stdout is not None
            lines: list[str] = []
            while not lines or "Press Ctrl-C" not in lines[-1]:
                lines.append(process.stdout.readline())
                assert lines[-1], "the emulator exited early:\n" + "".join(lines)
            watchdog.cancel()
            banner = "".join(lines)
            url = next(line for line in lines if "listening on" in line).split()[-1]
            yield url, banner
        finally:
            watchdog.cancel()
            process.terminate()
            process.wait(timeout=START_TIMEOUT)


def developer_settings(url: str, **settings: Any) -> dict[str, Any]:
    """A developer's own settings (not the emulator's), with the two URLs pointed at it."""
    return {
        "TENANT_ID": "fabrikam.onmicrosoft.com",
        "CLIENT_ID": str(uuid.uuid4()),
        "CLIENT_SECRET": "fabrikam-dev~secret-of-their-own",
        **settings,
        "GRAPH_URL": url,
        "AUTHORITY_URL": url,
    }


def in_ci() -> bool:
    """``CI=true`` (as CI services set it, and .ci/run): a missing redis-server or Chromium is
    then a failure, where a developer's machine skips those tests with the reason."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def render_ms(browser: Any, url: str, times: int = 5) -> float:
    """Median milliseconds from navigation to the page parsed and shown (DOMContentLoaded),
    for the browser tests' render budgets."""
    timings = []
    for _ in range(times):
        browser.get(url)
        timings.append(
            browser.execute_script(
                "const n = performance.getEntriesByType('navigation')[0];"
                "return n.domContentLoadedEventEnd - n.startTime;"
            )
        )
    return float(statistics.median(timings))
