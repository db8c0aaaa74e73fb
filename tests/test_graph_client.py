"""The connections to Graph: kept alive, one per concurrent sender, proxies and CA bundle
from the environment (as requests reads them), and stale connections replaced unnoticed."""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.core import mail
from django.test import override_settings

from msgraph_mail.conf import load_settings
from msgraph_mail.emulator import GraphEmulator
from msgraph_mail.exceptions import GraphConnectionError
from msgraph_mail.graph import GraphClient
from msgraph_mail.transport import ConnectFailed

BASE = {
    "TENANT_ID": "contoso.onmicrosoft.com",
    "CLIENT_ID": "66666666-7777-8888-9999-000000000000",
    "CLIENT_SECRET": "s3cret-value",
}


def client(**extra: Any) -> GraphClient:
    with override_settings(MSGRAPH_MAIL={**BASE, **extra}):
        return GraphClient(load_settings())


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in (
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
    ):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def refusing_proxy() -> Iterator[tuple[str, list[bytes]]]:
    """A proxy that records each request's head and refuses it (403), as a policy would."""
    heads: list[bytes] = []
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            with connection:
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = connection.recv(4096)
                    if not chunk:
                        break
                    head += chunk
                heads.append(head)
                connection.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")

    threading.Thread(target=serve, daemon=True).start()
    yield f"127.0.0.1:{listener.getsockname()[1]}", heads
    listener.close()


def test_https_is_tunnelled_through_the_proxy_with_its_credentials(
    no_proxy_env: pytest.MonkeyPatch, refusing_proxy: tuple[str, list[bytes]]
) -> None:
    address, heads = refusing_proxy
    no_proxy_env.setenv("HTTPS_PROXY", f"http://jo%40corp:p%3Ass@{address}")
    graph = client()
    with pytest.raises(ConnectFailed, match="403"):  # refused before anything was sent
        graph.pool.request("POST", "/v1.0/users/a@contoso.com/sendMail", {}, b"mime")
    request_line, *header_lines = heads[0].decode().split("\r\n")
    assert request_line.startswith("CONNECT graph.microsoft.com:443 HTTP/1.")
    # "jo@corp:p:ss", percent-decoded as requests does, in Basic form.
    assert "Proxy-Authorization: Basic am9AY29ycDpwOnNz" in header_lines
    assert b"sendMail" not in heads[0]  # the request itself never reached the proxy
    assert "p%3Ass" not in repr(graph.pool)
    assert "p:ss" not in repr(graph.pool)
    assert graph.session.proxies["https"].startswith("http://")  # tokens and uploads too


def test_no_proxy_is_honoured(no_proxy_env: pytest.MonkeyPatch) -> None:
    no_proxy_env.setenv("HTTPS_PROXY", "http://proxy.corp.example:3128")
    no_proxy_env.setenv("NO_PROXY", "graph.microsoft.com")
    graph = client()
    assert graph.pool.proxy is None
    assert graph.session.proxies == {}
    connection = graph.pool._new()
    assert connection.host == "graph.microsoft.com"
    assert connection._tunnel_host is None  # type: ignore[attr-defined]


def test_socks_proxy_is_refused_clearly(no_proxy_env: pytest.MonkeyPatch) -> None:
    no_proxy_env.setenv("HTTPS_PROXY", "socks5://proxy.corp.example:1080")
    with pytest.raises(ValueError, match="http:// proxy"):
        client()


def test_unreadable_ca_bundle_is_named(no_proxy_env: pytest.MonkeyPatch) -> None:
    no_proxy_env.setenv("REQUESTS_CA_BUNDLE", "/nonexistent/corp-bundle.pem")
    graph = client(GRAPH_URL="https://127.0.0.1:9", MAX_RETRIES=0)
    with pytest.raises(GraphConnectionError, match=r"/nonexistent/corp-bundle\.pem"):
        graph.request("GET", "/users", params={"$top": "1"})  # the token, through requests
    with pytest.raises(ConnectFailed, match=r"/nonexistent/corp-bundle\.pem"):
        graph.pool.request("GET", "/v1.0/users", {}, None)  # Graph, through the pool


def test_one_connection_per_sender_reused_across_the_batch(emulator: GraphEmulator) -> None:
    with mail.get_connection(max_concurrency=8) as connection:
        connection.send_messages(
            [mail.EmailMessage("Hi", "x", to=[f"u{i}@example.com"]) for i in range(3)]
        )
        emulator.reset()
        batch = [mail.EmailMessage("Hi", "x", to=[f"u{i}@example.com"]) for i in range(40)]
        assert connection.send_messages(batch) == 40
        assert connection.client is not None
        assert len(connection.client.pool._idle) <= 8
    # Graph's limit is 4 in flight per mailbox: 4 connections serve the whole batch.
    assert emulator.connections <= 4
    assert emulator.count() == 40


def test_connections_closed_by_graph_are_replaced_unnoticed(emulator: GraphEmulator) -> None:
    with mail.get_connection() as connection:
        for _ in range(3):
            assert mail.EmailMessage("Hi", "x", to=["a@example.com"], connection=connection).send()
            emulator.close_idle_connections()
    assert len(emulator.sent) == 3
    assert all(r.status in (200, 202) for r in emulator.requests)


class _ForwardingProxy(BaseHTTPRequestHandler):
    """An HTTP proxy for absolute-URI requests, as corporate proxies are for http://."""

    protocol_version = "HTTP/1.1"
    seen: list[str] = []

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _forward(self) -> None:
        self.seen.append(self.path)
        url = http.client.urlsplit(self.path)  # type: ignore[attr-defined]
        upstream = http.client.HTTPConnection(url.hostname, url.port, timeout=5)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() != "proxy-connection"}
        upstream.request(
            self.command,
            url.path + (f"?{url.query}" if url.query else ""),
            body=body,
            headers=headers,
        )
        answer = upstream.getresponse()
        content = answer.read()
        self.send_response(answer.status, answer.reason)
        for key, value in answer.getheaders():
            if key.lower() not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)
        upstream.close()

    do_GET = do_POST = do_DELETE = _forward


@pytest.fixture
def proxy() -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []
    handler = type("Handler", (_ForwardingProxy,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def test_mail_goes_through_the_proxy_of_the_environment(
    emulator: GraphEmulator, proxy: tuple[str, list[str]], no_proxy_env: pytest.MonkeyPatch
) -> None:
    url, seen = proxy
    no_proxy_env.setenv("HTTP_PROXY", url)
    assert mail.send_mail("Hi", "Through the proxy", None, ["a@example.com"]) == 1
    assert len(emulator.sent) == 1
    assert any(path.startswith(emulator.url) and path.endswith("/sendMail") for path in seen)
    assert all(path.startswith("http://127.0.0.1:") for path in seen)
