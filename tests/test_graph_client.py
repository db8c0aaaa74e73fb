"""The connections to Graph: one requests.Session for every request, kept alive, one per
concurrent sender; proxies and CA bundle from the environment exactly as requests reads them;
stale connections replaced unnoticed."""

from __future__ import annotations

import http.client
import select
import socket
import socketserver
import struct
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


def test_token_and_graph_are_tunnelled_through_the_same_proxy(
    no_proxy_env: pytest.MonkeyPatch, refusing_proxy: tuple[str, list[bytes]]
) -> None:
    address, heads = refusing_proxy
    no_proxy_env.setenv("HTTPS_PROXY", f"http://jo%40corp:p%3Ass@{address}")
    graph = client(MAX_RETRIES=0)
    with pytest.raises(GraphConnectionError) as refused:  # the token, through the proxy
        graph.request("POST", "/users/a@contoso.com/sendMail", data=b"mime")
    with pytest.raises(GraphConnectionError, match="ProxyError"):  # Graph, the same way
        graph._send("POST", "/users/a@contoso.com/sendMail", "t0ken", "id", {"data": b"mime"})
    targets = [head.decode().split("\r\n")[0] for head in heads]
    assert targets[0].startswith("CONNECT login.microsoftonline.com:443 HTTP/1.")
    assert targets[-1].startswith("CONNECT graph.microsoft.com:443 HTTP/1.")
    for head in heads:
        # "jo@corp:p:ss", percent-decoded by requests, in Basic form.
        assert "Proxy-Authorization: Basic am9AY29ycDpwOnNz" in head.decode().split("\r\n")
        assert b"sendMail" not in head  # nothing but CONNECT reached the proxy
        assert b"t0ken" not in head
    assert "p:ss" not in str(refused.value)
    assert "p%3Ass" not in str(refused.value)


def test_no_proxy_is_honoured(
    emulator: GraphEmulator,
    no_proxy_env: pytest.MonkeyPatch,
    refusing_proxy: tuple[str, list[bytes]],
) -> None:
    address, heads = refusing_proxy
    no_proxy_env.setenv("HTTP_PROXY", f"http://{address}")
    no_proxy_env.setenv("NO_PROXY", "127.0.0.1")
    assert mail.send_mail("Hi", "Not through the proxy", None, ["a@example.com"]) == 1
    assert heads == []


def test_unreadable_ca_bundle_is_named(no_proxy_env: pytest.MonkeyPatch) -> None:
    no_proxy_env.setenv("REQUESTS_CA_BUNDLE", "/nonexistent/corp-bundle.pem")
    graph = client(GRAPH_URL="https://127.0.0.1:9", MAX_RETRIES=0)
    with pytest.raises(GraphConnectionError, match=r"/nonexistent/corp-bundle\.pem"):
        graph.request("GET", "/users", params={"$top": "1"})  # the token
    with pytest.raises(GraphConnectionError, match=r"/nonexistent/corp-bundle\.pem"):
        graph._send("GET", "/users", "t0ken", "id", {})  # Graph, the same way


def test_one_session_carries_every_request(emulator: GraphEmulator) -> None:
    with mail.get_connection(max_concurrency=8) as connection:
        assert connection.client is not None
        adapter = connection.client.session.get_adapter(emulator.url)
        assert adapter._pool_maxsize == 8  # type: ignore[attr-defined]
        assert adapter.max_retries.total == 0  # type: ignore[attr-defined]
        sent = []
        original = connection.client.session.send

        def counting_send(request: Any, **kwargs: Any) -> Any:
            sent.append(request.url)
            return original(request, **kwargs)

        connection.client.session.send = counting_send  # type: ignore[method-assign]
        assert mail.EmailMessage("Hi", "x", to=["a@example.com"], connection=connection).send()
    # The token, the sender's lookup and the sendMail: all through the one session.
    assert len(sent) == len(emulator.requests) == 3
    assert sent[0].endswith("/oauth2/v2.0/token")
    assert "/v1.0/users" in sent[1]
    assert sent[2].endswith("/sendMail")


def test_one_connection_per_sender_reused_across_the_batch(emulator: GraphEmulator) -> None:
    with mail.get_connection(max_concurrency=8) as connection:
        connection.send_messages(
            [mail.EmailMessage("Hi", "x", to=[f"u{i}@example.com"]) for i in range(3)]
        )
        emulator.reset()
        batch = [mail.EmailMessage("Hi", "x", to=[f"u{i}@example.com"]) for i in range(40)]
        assert connection.send_messages(batch) == 40
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
    assert emulator.connections == 3  # each replaced, none of the messages at risk


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
    # The token and the sendMail take the same route: both through the proxy.
    assert any(path.endswith("/oauth2/v2.0/token") for path in seen)
    assert any(path.startswith(emulator.url) and path.endswith("/sendMail") for path in seen)
    assert all(path.startswith("http://127.0.0.1:") for path in seen)


class _Socks5(socketserver.ThreadingTCPServer):
    """A SOCKS5 proxy (RFC 1928: no authentication, CONNECT), relaying to loopback."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        self.targets: list[tuple[str, int]] = []
        super().__init__(("127.0.0.1", 0), _Socks5Handler)


class _Socks5Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        client: socket.socket = self.request
        _version, methods = client.recv(2)
        client.recv(methods)
        client.sendall(b"\x05\x00")  # no authentication
        _version, _command, _reserved, kind = client.recv(4)
        if kind == 1:
            host = socket.inet_ntoa(client.recv(4))
        else:
            host = client.recv(client.recv(1)[0]).decode()
        (port,) = struct.unpack("!H", client.recv(2))
        self.server.targets.append((host, port))  # type: ignore[attr-defined]
        upstream = socket.create_connection((host, port), timeout=5)
        client.sendall(b"\x05\x00\x00\x01" + socket.inet_aton("127.0.0.1") + b"\0\0")
        with upstream:
            sockets = [client, upstream]
            while True:
                ready, _, _ = select.select(sockets, [], [], 5)
                if not ready:
                    return
                for source in ready:
                    data = source.recv(65536)
                    if not data:
                        return
                    (upstream if source is client else client).sendall(data)


def test_socks_proxy_through_requests_socks_extra(
    emulator: GraphEmulator, no_proxy_env: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("socks", reason="requests[socks] (PySocks) is not installed")
    server = _Socks5()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        no_proxy_env.setenv("ALL_PROXY", f"socks5://127.0.0.1:{server.server_address[1]}")
        assert mail.send_mail("Hi", "Through SOCKS", None, ["a@example.com"]) == 1
    finally:
        server.shutdown()
        server.server_close()
    assert len(emulator.sent) == 1
    port = int(emulator.url.rsplit(":", 1)[1])
    assert server.targets
    assert all(target == ("127.0.0.1", port) for target in server.targets)
