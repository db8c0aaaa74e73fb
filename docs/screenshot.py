"""Screenshots of the dev inbox for the docs: ``python docs/screenshot.py``.

Starts the emulator, sends three realistic messages through the real backend (Django
configured in memory, as the demo does), and photographs the inbox and one message in
Debian's headless Chromium (``apt-get install chromium chromium-driver``; ``pip install
selenium``). Writes ``docs/_static/inbox.png`` and ``docs/_static/message.png``.
"""

from __future__ import annotations

import struct
import sys
import tempfile
import time
import zlib
from email.mime.image import MIMEImage
from pathlib import Path

import django
from django.conf import settings
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from msgraph_mail.emulator import GraphEmulator

STATIC = Path(__file__).parent / "_static"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
)
ORDER_HTML = """\
<div style="font-family: Helvetica, Arial, sans-serif; max-width: 560px; color: #222">
  <img src="cid:logo" alt="Contoso" width="48" height="48">
  <h2 style="color: #0a5bd3">Thank you for your order, Alice!</h2>
  <p>Order <b>#1001</b> is confirmed and will ship within two business days.</p>
  <table style="border-collapse: collapse; width: 100%">
    <tr><td style="padding: 4px 0">Espresso beans, 1 kg</td><td align="right">24.00 EUR</td></tr>
    <tr><td style="padding: 4px 0">Milk frother</td><td align="right">18.00 EUR</td></tr>
    <tr style="border-top: 1px solid #ccc; font-weight: bold">
      <td style="padding: 4px 0">Total</td><td align="right">42.00 EUR</td></tr>
  </table>
  <p>Your invoice is attached. <img src="https://tracker.example.com/open.gif" alt=""></p>
</div>"""


def main() -> int:
    STATIC.mkdir(exist_ok=True)
    with GraphEmulator() as emulator:
        _configure_django(emulator)
        _send_all()
        _photograph(emulator.url, emulator.sent[0].id)
    print(f"wrote {STATIC / 'inbox.png'} and {STATIC / 'message.png'}")
    return 0


def _configure_django(emulator: GraphEmulator) -> None:
    settings.configure(
        EMAIL_BACKEND="msgraph_mail.backend.EmailBackend",
        MSGRAPH_MAIL=emulator.settings(MODE="permissive"),
        DEFAULT_FROM_EMAIL="Contoso Shop <shop@contoso.com>",
        SERVER_EMAIL="Contoso Ops <noreply@contoso.com>",
        # Django 6.0 takes addresses; 5.2 wants (name, address) pairs.
        ADMINS=["Ops <alice@contoso.com>"]
        if django.VERSION >= (6, 0)
        else [("Ops", "alice@contoso.com")],
        INSTALLED_APPS=["msgraph_mail"],
        USE_TZ=True,
    )
    django.setup()


def _send_all() -> None:
    from django.core.mail import EmailMultiAlternatives, mail_admins, send_mail

    order = EmailMultiAlternatives(
        subject="Your order #1001 is confirmed",
        body="Hello Alice,\n\nthank you for your order #1001 (42.00 EUR).\n"
        "Your invoice is attached.\n\nContoso Shop\n",
        to=["Alice Example <alice@contoso.com>"],
        bcc=["audit@contoso.com"],
        reply_to=["support@contoso.com"],
    )
    order.attach_alternative(ORDER_HTML, "text/html")
    logo = MIMEImage(_png(48, 48, (10, 91, 211)), "png")
    logo.add_header("Content-ID", "<logo>")
    logo.add_header("Content-Disposition", "inline", filename="logo.png")
    order.attach(logo)
    order.attach("invoice-1001.pdf", b"%PDF-1.4\n% demo invoice\n", "application/pdf")
    order.send()
    time.sleep(1.1)
    send_mail(
        "Reset your password",
        "Someone asked to reset the password of bob@contoso.com.\n"
        "Open https://shop.contoso.com/reset/7f3a9c/ within 24 hours.\n",
        "Contoso Accounts <no-reply@contoso.com>",
        ["Bob Example <bob@contoso.com>"],
    )
    time.sleep(1.1)
    mail_admins("Nightly export finished", "42 orders exported to orders-2026-05-04.csv.")


def _photograph(url: str, message_id: str) -> None:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    with tempfile.TemporaryDirectory() as profile:
        for flag in (*FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
        try:
            driver.set_window_size(1200, 480)
            driver.get(f"{url}/")
            driver.find_element(By.CSS_SELECTOR, "table.messages")
            driver.save_screenshot(str(STATIC / "inbox.png"))
            driver.set_window_size(1200, 1400)
            driver.get(f"{url}/messages/{message_id}")
            time.sleep(0.5)  # the inline logo
            driver.save_screenshot(str(STATIC / "message.png"))
        finally:
            driver.quit()


def _png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A solid-colour PNG, so the inline ``cid:`` image is visible in the screenshot."""
    row = b"\x00" + bytes(rgb) * width
    raw = zlib.compress(row * height)

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


if __name__ == "__main__":
    sys.exit(main())
