"""The dev inbox in a real headless Chromium (Debian's chromium + chromium-driver, Selenium).

Run by ``nox -s browser``; the ordinary sessions deselect them (``-m "not browser"``). A
missing browser, driver or Selenium is a failure here, never a skip: CI installs them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from django.core.mail import EmailMultiAlternatives

from msgraph_mail.emulator import GraphEmulator
from tests.helpers import inline_image

pytestmark = pytest.mark.browser

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
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)
WAIT = 10


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium with a fresh profile; fails loudly when it is not installed."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.exists():
            pytest.fail(f"{path} is missing: apt-get install chromium chromium-driver")
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


@pytest.fixture
def remote_images() -> Iterator[tuple[str, list[str]]]:
    """A stand-in for a tracking-pixel host on another origin; records every request."""
    hits: list[str] = []

    class Pixel(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(PNG)))
            self.end_headers()
            self.wfile.write(PNG)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Pixel)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/pixel.png", hits
    finally:
        server.shutdown()
        server.server_close()


def send_order(remote_image: str) -> None:
    """Text, HTML with an inline logo, a remote image and a script, and a PDF."""
    message = EmailMultiAlternatives(
        subject="Your order #1001 is confirmed",
        body="Hello Alice,\nthank you for your order.\n",
        from_email="Contoso Shop <shop@contoso.com>",
        to=["alice@contoso.com"],
        bcc=["audit@contoso.com"],
    )
    message.attach_alternative(
        '<p id="greeting">Hello <b>Alice</b></p><img id="logo" src="cid:logo">'
        f'<img id="remote" src="{remote_image}"><p id="marker">untouched</p>'
        "<script>document.getElementById('marker').textContent = 'script ran'</script>",
        "text/html",
    )
    message.attach(inline_image(PNG, "logo.png", "logo"))
    message.attach("invoice-1001.pdf", b"%PDF-1.4 invoice", "application/pdf")
    message.send()


def wait_for(browser: Any, condition: Any) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, WAIT).until(condition)


def image_loaded(browser: Any, element_id: str) -> bool:
    script = "const i = document.getElementById(arguments[0]); return i.complete && i.naturalWidth"
    return bool(browser.execute_script(script, element_id))


def test_message_appears_opens_and_renders_safely(
    browser: Any, emulator: GraphEmulator, remote_images: tuple[str, list[str]]
) -> None:
    from selenium.webdriver.common.by import By

    remote_image, hits = remote_images
    browser.get(f"{emulator.url}/")
    assert "No messages yet" in browser.find_element(By.TAG_NAME, "main").text
    send_order(remote_image)  # no reload: the page's polling must pick it up
    link = wait_for(
        browser, lambda b: b.find_elements(By.LINK_TEXT, "Your order #1001 is confirmed")
    )
    row = browser.find_element(By.CSS_SELECTOR, "table.messages tbody tr").text
    assert "noreply@contoso.com" in row
    assert "Bcc audit@contoso.com" in row
    link[0].click()

    wait_for(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "iframe.html-body"))
    assert "thank you for your order." in browser.find_element(By.CSS_SELECTOR, "pre").text
    browser.switch_to.frame(browser.find_element(By.CSS_SELECTOR, "iframe.html-body"))
    assert browser.find_element(By.ID, "greeting").text == "Hello Alice"
    wait_for(browser, lambda b: image_loaded(b, "logo"))  # cid: image shown
    assert browser.find_element(By.ID, "marker").text == "untouched"  # no script ran
    assert not image_loaded(browser, "remote")
    browser.switch_to.default_content()
    assert hits == []  # remote images are blocked by default

    attachment = browser.find_element(By.LINK_TEXT, "invoice-1001.pdf")
    assert requests.get(attachment.get_attribute("href"), timeout=5).content == b"%PDF-1.4 invoice"
    eml = browser.find_element(By.LINK_TEXT, "Download .eml").get_attribute("href")
    assert requests.get(eml, timeout=5).content == emulator.sent[0].raw


def test_remote_images_on_request(
    browser: Any, emulator: GraphEmulator, remote_images: tuple[str, list[str]]
) -> None:
    from selenium.webdriver.common.by import By

    remote_image, hits = remote_images
    send_order(remote_image)
    browser.get(f"{emulator.url}/messages/{emulator.sent[0].id}")
    browser.find_element(By.LINK_TEXT, "Show remote images").click()
    wait_for(browser, lambda b: b.find_elements(By.LINK_TEXT, "Block remote images"))
    browser.switch_to.frame(browser.find_element(By.CSS_SELECTOR, "iframe.html-body"))
    wait_for(browser, lambda b: image_loaded(b, "remote"))
    assert browser.find_element(By.ID, "marker").text == "untouched"
    assert hits == ["/pixel.png"]


def test_clear_button_empties_the_inbox(browser: Any, emulator: GraphEmulator) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions

    EmailMultiAlternatives("Hello", "hi", to=["bob@contoso.com"]).send()
    browser.get(f"{emulator.url}/")
    assert browser.find_elements(By.LINK_TEXT, "Hello")
    browser.find_element(By.CSS_SELECTOR, "form.clear button").click()
    wait_for(browser, expected_conditions.alert_is_present()).accept()
    wait_for(browser, lambda b: "No messages yet" in b.find_element(By.TAG_NAME, "main").text)
    assert emulator.sent == []
