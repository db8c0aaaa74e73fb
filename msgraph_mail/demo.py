"""The demo: real Django mail through the real backend into the bundled Graph emulator.

Run with ``python -m msgraph_mail demo``. It needs no tenant and no settings module: it
configures a minimal Django project in memory, starts the emulator on 127.0.0.1, sends a
realistic message (text and HTML, an attachment, Cc and Bcc), then shows what "Graph"
received and how many HTTP requests each message took.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import django
from django.conf import settings

if TYPE_CHECKING:
    from .emulator import SentMessage

BACKEND = "msgraph_mail.backend.EmailBackend"


def run() -> int:
    from .emulator import GraphEmulator

    with GraphEmulator() as emulator:
        _configure_django(emulator.settings(MODE="permissive"))
        print(f"Graph emulator listening on {emulator.url} (tenant contoso, permissive mode)\n")
        _send_welcome()
        first = emulator.count()
        emulator.reset()
        _send_welcome(subject="Your order #1002 has shipped")
        steady = emulator.count()
        _show(emulator.sent[-1])
        print("\nHTTP requests per message:")
        print(f"  first message : {first}  (token + sender lookup + sendMail)")
        print(f"  next message  : {steady}  (token and sender cached: sendMail only)")
    return 0


def _configure_django(graph_settings: dict[str, str]) -> None:
    if not settings.configured:
        settings.configure(
            EMAIL_BACKEND=BACKEND,
            MSGRAPH_MAIL=graph_settings,
            DEFAULT_FROM_EMAIL="Contoso Shop <shop@contoso.com>",
            INSTALLED_APPS=["msgraph_mail"],
            USE_TZ=True,
        )
        django.setup()


def _send_welcome(subject: str = "Your order #1001 is confirmed") -> None:
    from django.core.mail import EmailMultiAlternatives

    message = EmailMultiAlternatives(
        subject=subject,
        body="Hello Alice,\n\nthank you for your order. Your invoice is attached.\n",
        to=["Alice Example <alice@contoso.com>"],
        cc=["bob@contoso.com"],
        bcc=["audit@contoso.com"],
        reply_to=["support@contoso.com"],
    )
    message.attach_alternative(
        "<p>Hello Alice,</p><p>thank you for your <b>order</b>. Your invoice is attached.</p>",
        "text/html",
    )
    message.attach("invoice-1001.txt", "Invoice 1001\nTotal: 42.00 EUR\n", "text/plain")
    message.send()
    status = message.msgraph_status
    print(f"sent {subject!r}: {status.status} via {status.mailbox}, request-id {status.request_id}")


def _show(sent: SentMessage) -> None:
    print("\nWhat Graph received (last message):")
    for label, value in (
        ("mailbox", sent.mailbox.user_principal_name),
        ("From", sent.from_header),
        ("To", ", ".join(sent.to)),
        ("Cc", ", ".join(sent.cc)),
        ("Bcc", ", ".join(sent.bcc)),
        ("Subject", sent.subject),
        ("text", (sent.text or "").strip().splitlines()[0]),
        ("html", "yes" if sent.html else "no"),
    ):
        print(f"  {label:<8} {value}")
    for attachment in sent.attachments:
        print(
            f"  attached {attachment.filename} ({attachment.content_type}, "
            f"{attachment.size} bytes, sha256 {attachment.sha256[:16]}...)"
        )
