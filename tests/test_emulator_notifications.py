"""The emulator's change notifications over HTTP, against a tiny receiver of our own: Graph's
validation, the subscription's bounds, notifications with retries, lifecycle events."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from msgraph_mail.emulator import NOREPLY_ID, GraphEmulator
from msgraph_mail.tracking.trace import _parse_time

from .helpers import get_token

RESOURCE = f"users/{NOREPLY_ID}/mailFolders('inbox')/messages"


class Receiver:
    """An endpoint that echoes validation tokens (or not) and records notifications."""

    def __init__(self) -> None:
        self.echo = True  # answer validation tokens correctly
        self.down = False  # answer notifications with 503
        self.received: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                query = parse_qs(urlsplit(self.path).query)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if "validationToken" in query:
                    token = query["validationToken"][0] if receiver.echo else "nope"
                    self._answer(200, token.encode(), "text/plain")
                elif receiver.down:
                    self._answer(503, b"", "text/plain")
                else:
                    receiver.received.append(json.loads(body))
                    self._answer(202, b"", "text/plain")

            def _answer(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.close()


@pytest.fixture
def graph() -> Iterator[tuple[GraphEmulator, requests.Session]]:
    with GraphEmulator() as emulator, requests.Session() as http:
        emulator.roles = ["Mail.Send", "Mail.Read"]
        emulator.delivery_delay = 0.05
        http.headers["Authorization"] = f"Bearer {get_token(emulator, http)}"
        yield emulator, http


def subscribe(graph: tuple[GraphEmulator, requests.Session], url: str, **body: Any) -> Any:
    emulator, http = graph
    expires = datetime.now(timezone.utc) + timedelta(days=2)
    payload = {
        "changeType": "created",
        "notificationUrl": url,
        "resource": RESOURCE,
        "expirationDateTime": expires.isoformat(),
        "clientState": "state",
        **body,
    }
    return http.post(f"{emulator.url}/v1.0/subscriptions", json=payload, timeout=15)


def wait(check: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_subscription_needs_the_endpoint_to_echo_the_token(
    graph: tuple[GraphEmulator, requests.Session], receiver: Receiver
) -> None:
    receiver.echo = False
    refused = subscribe(graph, receiver.url)
    assert refused.status_code == 400
    assert "validation request failed" in refused.json()["error"]["message"]
    receiver.echo = True
    created = subscribe(graph, receiver.url)
    assert created.status_code == 201
    assert created.json()["clientState"] == "state"
    assert graph[0].subscriptions()[0]["id"] == created.json()["id"]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"clientState": "x" * 129}, 400),
        ({"changeType": "moved"}, 400),
        ({"resource": f"users/{NOREPLY_ID}/mailFolders('sentitems')/messages"}, 400),
        ({"notificationUrl": "http://example.com/hook"}, 400),
        (
            {"expirationDateTime": (datetime.now(timezone.utc) + timedelta(days=8)).isoformat()},
            400,
        ),
    ],
    ids=["long state", "change type", "not the inbox", "plain http", "over 10080 minutes"],
)
def test_graphs_bounds(
    graph: tuple[GraphEmulator, requests.Session], receiver: Receiver, body: Any, status: int
) -> None:
    assert subscribe(graph, receiver.url, **body).status_code == status


def test_a_short_lifetime_is_raised_to_45_minutes_and_permission_is_needed(
    graph: tuple[GraphEmulator, requests.Session], receiver: Receiver
) -> None:
    soon = (datetime.now(timezone.utc) + timedelta(minutes=5)).isoformat()
    created = subscribe(graph, receiver.url, expirationDateTime=soon).json()
    expires = _parse_time(created["expirationDateTime"])
    assert expires > datetime.now(timezone.utc) + timedelta(minutes=44)
    emulator, http = graph
    emulator.roles = ["Mail.Send"]
    http.headers["Authorization"] = f"Bearer {get_token(emulator, http)}"
    assert subscribe(graph, receiver.url).status_code == 403


def test_a_bounce_is_notified_and_a_down_endpoint_gets_it_later(
    graph: tuple[GraphEmulator, requests.Session], receiver: Receiver
) -> None:
    emulator, _http = graph
    sub = subscribe(graph, receiver.url).json()
    receiver.down = True
    emulator.deliver_to_inbox("noreply@contoso.com", b"Subject: hi\r\n\r\nbody\r\n")
    wait(
        lambda: (
            len(emulator.notifications()[0].attempts) >= 2 if emulator.notifications() else False
        )
    )
    assert receiver.received == []
    receiver.down = False
    wait(lambda: receiver.received)
    [item] = receiver.received[0]["value"]
    assert (item["subscriptionId"], item["clientState"], item["changeType"]) == (
        sub["id"],
        "state",
        "created",
    )
    assert item["resourceData"]["@odata.type"] == "#Microsoft.Graph.Message"
    assert emulator.notifications()[0].delivered


def test_list_get_renew_reauthorize_delete_and_lifecycle(
    graph: tuple[GraphEmulator, requests.Session], receiver: Receiver
) -> None:
    emulator, http = graph
    sub = subscribe(graph, receiver.url, lifecycleNotificationUrl=receiver.url).json()
    base = f"{emulator.url}/v1.0/subscriptions"
    assert [s["id"] for s in http.get(base, timeout=5).json()["value"]] == [sub["id"]]
    later = (datetime.now(timezone.utc) + timedelta(days=6)).isoformat()
    renewed = http.patch(f"{base}/{sub['id']}", json={"expirationDateTime": later}, timeout=5)
    assert renewed.json()["expirationDateTime"] > sub["expirationDateTime"]
    assert http.post(f"{base}/{sub['id']}/reauthorize", timeout=5).status_code == 204
    emulator.send_lifecycle(sub["id"], "missed")
    wait(lambda: receiver.received)
    assert receiver.received[0]["value"][0]["lifecycleEvent"] == "missed"
    assert http.delete(f"{base}/{sub['id']}", timeout=5).status_code == 204
    assert http.get(f"{base}/{sub['id']}", timeout=5).status_code == 404
    assert emulator.subscriptions() == []
