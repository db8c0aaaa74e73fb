"""The dev inbox without a browser: JSON API, escaping and sandboxing, the .eml store, the CLI.

Mail goes through the real backend into a started emulator; the inbox is read with requests.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import time
from email import policy
from email.parser import BytesParser
from html import unescape
from pathlib import Path
from typing import Any

import django
import pytest
import requests
from django.core import mail
from django.core.mail import EmailMultiAlternatives

from msgraph_mail.emulator import CLIENT_ID, CLIENT_SECRET, NOREPLY_ID, TENANT_ID, GraphEmulator
from msgraph_mail.emulator.store import as_eml
from tests.helpers import inline_image

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)
HOSTILE = '<script>alert("x")</script>'


def send(subject: str = "Order #1001", html: str | None = None, **extra: Any) -> None:
    """A message with text, HTML, an inline image and a PDF, as a Django app sends it."""
    message = EmailMultiAlternatives(
        subject=subject,
        body="Hello Alice,\nyour order is confirmed.\n",
        from_email="Contoso Shop <shop@contoso.com>",
        to=["alice@contoso.com"],
        cc=["bob@contoso.com"],
        bcc=["audit@contoso.com"],
        **extra,
    )
    message.attach_alternative(
        html or '<p>Hello <b>Alice</b> <img src="cid:logo"></p>', "text/html"
    )
    message.attach(inline_image(PNG, "logo.png", "logo"))
    message.attach("invoice.pdf", b"%PDF-1.4 fake", "application/pdf")
    message.send()


def api(emulator: GraphEmulator, path: str = "") -> Any:
    response = requests.get(f"{emulator.url}/api/messages{path}", timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    return response.json()


# JSON API -----------------------------------------------------------------------------------


def test_api_lists_messages_newest_first(emulator: GraphEmulator) -> None:
    assert api(emulator) == {"count": 0, "messages": []}
    send("First")
    send("Second")
    listed = api(emulator)
    assert listed["count"] == 2
    assert [m["subject"] for m in listed["messages"]] == ["Second", "First"]
    first = listed["messages"][0]
    assert first["mailbox"] == "noreply@contoso.com"
    assert first["from_header"] == "Contoso Shop <shop@contoso.com>"
    assert (first["to"], first["cc"], first["bcc"]) == (
        ["alice@contoso.com"],
        ["bob@contoso.com"],
        ["audit@contoso.com"],
    )
    assert first["size"] == len(emulator.sent[1].raw)
    assert first["received"] == emulator.sent[1].received_at.isoformat()
    assert [a["filename"] for a in first["attachments"]] == ["logo.png", "invoice.pdf"]


def test_api_message_has_bodies_headers_and_links(emulator: GraphEmulator) -> None:
    send()
    [sent] = emulator.sent
    detail = api(emulator, f"/{sent.id}")
    assert detail["id"] == sent.id
    assert detail["text"] == "Hello Alice,\nyour order is confirmed.\n"
    assert "<b>Alice</b>" in detail["html"]
    assert ["Subject", "Order #1001"] in detail["headers"]
    pdf = detail["attachments"][1]
    assert pdf["content_type"] == "application/pdf"
    assert requests.get(pdf["url"], timeout=5).content == b"%PDF-1.4 fake"
    eml = requests.get(detail["eml_url"], timeout=5).content
    assert BytesParser(policy=policy.default).parsebytes(eml)["Subject"] == "Order #1001"


def test_api_unknown_message_is_404(emulator: GraphEmulator) -> None:
    response = requests.get(f"{emulator.url}/api/messages/nope", timeout=5)
    assert response.status_code == 404
    assert response.json()["error"] == "not found"


def test_api_delete_clears(emulator: GraphEmulator) -> None:
    send()
    assert requests.delete(f"{emulator.url}/api/messages", timeout=5).status_code == 204
    assert emulator.sent == []


def test_inbox_requests_are_not_graph_traffic(emulator: GraphEmulator) -> None:
    send()
    before = emulator.count()
    for path in ("/", "/api/messages", "/static/inbox.js", f"/messages/{emulator.sent[0].id}"):
        assert requests.get(emulator.url + path, timeout=5).status_code == 200
    assert emulator.count() == before
    graph = requests.get(f"{emulator.url}/beta/users", timeout=5)
    assert graph.json()["error"]["message"] == "Invalid version: beta"


# pages: escaping and sandboxing ---------------------------------------------------------------


def test_list_page_escapes_everything(emulator: GraphEmulator) -> None:
    send(subject=HOSTILE)
    page = requests.get(f"{emulator.url}/", timeout=5)
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert HOSTILE not in page.text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page.text
    assert 'Contoso Shop<small class="address">shop@contoso.com</small>' in page.text
    assert "audit@contoso.com" in page.text


def test_empty_list_shows_the_settings_snippet(emulator: GraphEmulator) -> None:
    page = requests.get(f"{emulator.url}/", timeout=5).text
    assert "No messages yet" in page
    if django.VERSION >= (6, 1):  # a MAILERS entry: EMAIL_BACKEND would stop Django 6.1
        assert f"&quot;graph_url&quot;: &quot;{emulator.url}&quot;" in page
    else:
        assert f"&#x27;GRAPH_URL&#x27;: &#x27;{emulator.url}&#x27;" in page


def test_html_body_is_sandboxed_with_remote_images_blocked(emulator: GraphEmulator) -> None:
    send(html=f'<p>Hi</p>{HOSTILE}<img src="https://tracker.example/p.gif"><img src="cid:logo">')
    [sent] = emulator.sent
    response = requests.get(f"{emulator.url}/messages/{sent.id}", timeout=5)
    page = response.text
    assert HOSTILE not in page
    desktop, phone = re.findall(r"<iframe[^>]*>", page)  # the compatibility preview
    assert 'class="html-body"' in desktop
    assert 'class="html-phone"' in phone
    for iframe in (desktop, phone):
        sandbox = re.search(r'sandbox="([^"]*)"', iframe)
        assert sandbox is not None
        assert "allow-scripts" not in sandbox.group(1)
        assert "allow-same-origin" not in sandbox.group(1)
    iframe = phone
    srcdoc = unescape(re.search(r'srcdoc="([^"]*)"', iframe).group(1))  # type: ignore[union-attr]
    attachments = f"{emulator.url}/messages/{sent.id}/attachments/"
    assert f'<img src="{attachments}0">' in srcdoc  # cid: points at the attachment
    assert "img-src data: " + attachments + '"' in srcdoc  # no http:/https: sources
    assert "http:" not in response.headers["Content-Security-Policy"]
    shown = requests.get(f"{emulator.url}/messages/{sent.id}?images=1", timeout=5)
    assert "http: https:" in shown.headers["Content-Security-Policy"]
    assert "Block remote images" in shown.text


def test_attachments_are_downloads_never_pages(emulator: GraphEmulator) -> None:
    message = EmailMultiAlternatives("x", "x", to=["alice@contoso.com"])
    message.attach("page.html", f"<h1>hi</h1>{HOSTILE}", "text/html")
    message.send()
    [sent] = emulator.sent
    response = requests.get(f"{emulator.url}/messages/{sent.id}/attachments/0", timeout=5)
    assert response.headers["Content-Disposition"].startswith('attachment; filename="page.html"')
    assert response.headers["Content-Security-Policy"].startswith("sandbox")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    missing = requests.get(f"{emulator.url}/messages/{sent.id}/attachments/9", timeout=5)
    assert missing.status_code == 404


def test_clear_button_forgets_messages(emulator: GraphEmulator) -> None:
    send()
    response = requests.post(f"{emulator.url}/clear", allow_redirects=False, timeout=5)
    assert (response.status_code, response.headers["Location"]) == (303, "/")
    assert emulator.sent == []
    assert requests.get(f"{emulator.url}/clear", timeout=5).status_code == 405


def test_cross_site_and_foreign_host_are_refused(emulator: GraphEmulator) -> None:
    send()
    evil = {"Origin": "https://evil.example"}
    assert requests.post(f"{emulator.url}/clear", headers=evil, timeout=5).status_code == 403
    assert (
        requests.delete(f"{emulator.url}/api/messages", headers=evil, timeout=5).status_code == 403
    )
    rebound = {"Host": "attacker.example:80"}
    assert (
        requests.get(f"{emulator.url}/api/messages", headers=rebound, timeout=5).status_code == 403
    )
    assert len(emulator.sent) == 1
    port = emulator.url.rpartition(":")[2]
    local = {"Host": f"localhost:{port}", "Origin": f"http://localhost:{port}"}
    assert (
        requests.post(
            f"{emulator.url}/clear", headers=local, allow_redirects=False, timeout=5
        ).status_code
        == 303
    )


# the .eml store -------------------------------------------------------------------------------


def test_store_survives_a_restart(tmp_path: Path) -> None:
    with GraphEmulator(store=tmp_path) as first:
        _send_mime(first, "Kept across restarts")
        [sent] = first.sent
    [stored] = tmp_path.glob("*.eml")
    assert stored.read_bytes().startswith(b"X-Emulator-Id: " + sent.id.encode())
    with GraphEmulator(store=tmp_path) as second:
        [loaded] = second.sent
        assert (loaded.id, loaded.received_at, loaded.subject) == (
            sent.id,
            sent.received_at,
            sent.subject,
        )
        assert loaded.mailbox == sent.mailbox
        assert loaded.raw == sent.raw  # the X-Emulator lines live in the file only
        assert requests.get(f"{second.url}/messages/{sent.id}.eml", timeout=5).content == sent.raw


def test_clear_deletes_stored_files_only(tmp_path: Path) -> None:
    foreign = tmp_path / "keep-me.eml"
    foreign.write_bytes(b"Subject: not ours\n\nhello\n")
    with GraphEmulator(store=tmp_path) as emulator:
        _send_mime(emulator, "one")
        _send_mime(emulator, "two")
        assert len(list(tmp_path.glob("*.eml"))) == 3
        assert requests.delete(f"{emulator.url}/api/messages", timeout=5).status_code == 204
    assert list(tmp_path.glob("*.eml")) == [foreign]
    with GraphEmulator(store=tmp_path) as restarted:
        assert restarted.sent == []


def test_json_sendmail_becomes_an_eml(tmp_path: Path) -> None:
    message = {
        "subject": "JSON à la carte",
        "body": {"contentType": "html", "content": "<p>hi</p>"},
        "toRecipients": [{"emailAddress": {"address": "alice@contoso.com", "name": "Alice"}}],
        "bccRecipients": [{"emailAddress": {"address": "audit@contoso.com"}}],
        "attachments": [
            {
                "@odata.type": "#microsoft.graph.fileAttachment",
                "name": "logo.png",
                "contentType": "image/png",
                "contentBytes": base64.b64encode(PNG).decode(),
                "contentId": "logo",
                "isInline": True,
            }
        ],
    }
    with GraphEmulator(store=tmp_path) as emulator:
        body = json.dumps({"message": message, "saveToSentItems": False}).encode()
        response = _graph_post(emulator, "application/json", body)
        assert response.status_code == 202
        [sent] = emulator.sent
        page = requests.get(f"{emulator.url}/messages/{sent.id}", timeout=5).text
        assert "JSON sendMail (no copy in Sent Items)" in page
        listing = requests.get(f"{emulator.url}/api/messages", timeout=5).json()
        [summary] = listing["messages"]
        assert (summary["format"], summary["saved_to_sent_items"]) == ("json", False)
    parsed = BytesParser(policy=policy.default).parsebytes(as_eml(sent))
    assert (parsed["Subject"], parsed["To"], parsed["Bcc"]) == (
        "JSON à la carte",
        "Alice <alice@contoso.com>",
        "audit@contoso.com",
    )
    with GraphEmulator(store=tmp_path) as restarted:
        [loaded] = restarted.sent
    assert (loaded.html, loaded.bcc) == ("<p>hi</p>\n", ["audit@contoso.com"])
    assert (loaded.format, loaded.save_to_sent_items) == ("json", False)
    [logo] = loaded.attachments
    assert (logo.content, logo.content_id, logo.inline) == (PNG, "logo", True)


def _graph_post(emulator: GraphEmulator, content_type: str, body: bytes) -> requests.Response:
    token = requests.post(
        f"{emulator.url}/{TENANT_ID}/oauth2/v2.0/token",
        data={
            "grant_type": "client_credentials",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "scope": f"{emulator.url}/.default",
        },
        timeout=5,
    ).json()["access_token"]
    return requests.post(
        f"{emulator.url}/v1.0/users/{NOREPLY_ID}/sendMail",
        headers={"Authorization": f"Bearer {token}", "Content-Type": content_type},
        data=body,
        timeout=5,
    )


def _send_mime(emulator: GraphEmulator, subject: str) -> None:
    mime = f"From: noreply@contoso.com\r\nTo: alice@contoso.com\r\nSubject: {subject}\r\n\r\nhi\r\n"
    response = _graph_post(emulator, "text/plain", base64.b64encode(mime.encode()))
    assert response.status_code == 202


# the command line -----------------------------------------------------------------------------


@pytest.mark.parametrize("module", [["msgraph_mail.emulator"], ["msgraph_mail", "emulator"]])
def test_cli_prints_settings_and_inbox_url(tmp_path: Path, module: list[str]) -> None:
    command = [sys.executable, "-m", *module, "--port", "0"]
    with subprocess.Popen(  # noqa: S603 - this interpreter, fixed arguments
        [*command, "--store", str(tmp_path)], stdout=subprocess.PIPE, text=True
    ) as process:
        assert process.stdout is not None
        lines: list[str] = []
        while not lines or "Press Ctrl-C" not in lines[-1]:
            lines.append(process.stdout.readline())
            assert lines[-1], "the emulator exited early"
        process.terminate()
    out = "".join(lines)
    if django.VERSION >= (6, 1):  # EMAIL_BACKEND beside MAILERS stops Django 6.1
        assert '"BACKEND": "msgraph_mail.backend.EmailBackend"' in out
        assert "EMAIL_BACKEND" not in out
    else:
        assert 'EMAIL_BACKEND = "msgraph_mail.backend.EmailBackend"' in out
    url = re.search(r"listening on (http://127\.0\.0\.1:\d+)", out).group(1)  # type: ignore[union-attr]
    assert f"Inbox: {url}/" in out
    assert f"Store: {tmp_path} (0 messages loaded)" in out


def test_the_message_page_shows_delivery_and_the_reports(emulator: GraphEmulator) -> None:
    """After the 202: each recipient's trace status and code, and the NDR as plain text."""
    emulator.delivery_delay = 0.05
    mail.send_mail(
        "<b>Hostile</b> subject", "Body", "noreply@contoso.com", ["x@nowhere.invalid", "ok@a.com"]
    )
    time.sleep(0.2)
    [message] = emulator.sent
    page = requests.get(f"{emulator.url}/messages/{message.id}", timeout=5).text
    assert "<h2>Delivery</h2>" in page
    assert re.search(r"x@nowhere\.invalid</td><td>failed</td><td>5\.1\.1 550 5\.1\.1", page)
    assert "ok@a.com</td><td>delivered</td>" in page
    assert "Undeliverable: &lt;b&gt;Hostile&lt;/b&gt; subject" in page
    [link] = re.findall(r'href="(/reports/[^"]+\.txt)"', page)
    report = requests.get(f"{emulator.url}{link}", timeout=5)
    assert report.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert report.headers["X-Content-Type-Options"] == "nosniff"
    assert b"multipart/report" in report.content
    body = requests.get(f"{emulator.url}/api/messages/{message.id}", timeout=5).json()
    states = {d["recipient"]: (d["status"], d["code"]) for d in body["delivery"]}
    assert states == {"x@nowhere.invalid": ("failed", "5.1.1"), "ok@a.com": ("delivered", None)}
    assert [r["subject"] for r in body["reports"]] == ["Undeliverable: <b>Hostile</b> subject"]
