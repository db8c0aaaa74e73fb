"""Kept-alive HTTP/1.1 connections to Graph, through the standard library's ``http.client``.

Why not ``requests`` for Graph calls: on this path it costs about 1 ms of CPU per request,
five times what ``http.client`` costs and more than Django spends building the message, so
for bulk sends it was most of the backend's CPU (docs/performance.md). ``requests`` still
fetches tokens (once an hour) and uploads large attachments to their pre-authenticated URLs.

What this module keeps of ``requests``: the proxy from the environment (``HTTPS_PROXY``,
``NO_PROXY``: tunnelled with CONNECT), the CA bundle (``REQUESTS_CA_BUNDLE``, else certifi's,
as requests), a pool of one connection per concurrent sender, and the distinction the retry
rules need: did the failure happen before the request left (:class:`ConnectFailed`) or after
(:class:`ReplyLost`)?
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import select
import socket
import ssl
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from requests.utils import DEFAULT_CA_BUNDLE_PATH, get_environ_proxies


class ConnectFailed(Exception):
    """No connection could be made: nothing of the request left this process."""


class ReplyLost(Exception):
    """The request left (or may have), but no complete answer came back."""


class ReplyTimeout(ReplyLost):
    """The request left and the answer did not come within the timeout."""


@dataclass(frozen=True)
class Reply:
    """An HTTP answer, with the attribute names of ``requests.Response`` the client reads."""

    status_code: int
    reason: str
    headers: http.client.HTTPMessage
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content)


class ConnectionPool:
    """Connections to one origin; at most ``size`` idle ones are kept for reuse."""

    def __init__(self, base_url: str, size: int, timeout: float) -> None:
        url = urlsplit(base_url)
        self.scheme = url.scheme
        self.host = url.hostname or ""
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.size = size
        self.timeout = timeout
        self.proxy = _proxy(base_url, url.scheme)
        self._origin = f"{url.scheme}://{url.netloc}"
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._context: ssl.SSLContext | None = None  # made with the first https connection

    def __repr__(self) -> str:
        return f"<ConnectionPool {self._origin} size={self.size}>"

    def request(
        self, method: str, target: str, headers: dict[str, str], body: bytes | None
    ) -> Reply:
        """Send one request (``target``: path and query) and read the whole answer."""
        connection = self._take()
        try:
            connection.request(method, self._target(target), body=body, headers=headers)
            response = connection.getresponse()
            content = response.read()
        except TimeoutError as exc:
            connection.close()
            raise ReplyTimeout(f"no answer within {self.timeout:g} s") from exc
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise ReplyLost(_describe(exc)) from exc
        if response.will_close:
            connection.close()
        else:
            self._give(connection)
        return Reply(response.status, response.reason, response.headers, content)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    def _take(self) -> http.client.HTTPConnection:
        """An idle connection the server has not closed, else a new one, connected."""
        while True:
            with self._lock:
                connection = self._idle.pop() if self._idle else None
            if connection is None:
                break
            if connection.sock is not None and not _dropped(connection.sock):
                return connection
            connection.close()
        connection = None
        try:
            connection = self._new()
            connection.connect()
        except (OSError, http.client.HTTPException) as exc:
            if connection is not None:
                connection.close()
            raise ConnectFailed(_describe(exc)) from exc
        return connection

    def _give(self, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < self.size:
                self._idle.append(connection)
                return
        connection.close()

    def _new(self) -> http.client.HTTPConnection:
        if self.scheme == "https" and self._context is None:
            self._context = _tls_context()
        if self.proxy is None:
            if self._context is not None:
                return http.client.HTTPSConnection(
                    self.host, self.port, timeout=self.timeout, context=self._context
                )
            return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        proxy = urlsplit(self.proxy)
        if self._context is None:  # plain HTTP through a proxy: absolute URLs, no tunnel
            return http.client.HTTPConnection(proxy.hostname or "", proxy.port or 80, self.timeout)
        connection = http.client.HTTPSConnection(
            proxy.hostname or "", proxy.port or 80, timeout=self.timeout, context=self._context
        )
        connection.set_tunnel(
            self.host, self.port, headers=_proxy_headers(proxy.username, proxy.password)
        )
        return connection

    def _target(self, target: str) -> str:
        if self.proxy is not None and self.scheme == "http":
            return self._origin + target
        return target


def _proxy(url: str, scheme: str) -> str | None:
    """The proxy requests would use for ``url`` (environment, NO_PROXY honoured)."""
    proxies = get_environ_proxies(url)
    proxy = proxies.get(scheme) or proxies.get("all")
    if not proxy:
        return None
    if "://" not in proxy:
        proxy = f"http://{proxy}"
    if urlsplit(proxy).scheme != "http":
        raise ValueError(
            f"The proxy for {scheme} ({urlsplit(proxy).scheme}://...) is not supported: "
            "msgraph_mail tunnels through an http:// proxy (CONNECT); set HTTPS_PROXY to one"
        )
    return proxy


def _proxy_headers(username: str | None, password: str | None) -> dict[str, str]:
    if username is None:
        return {}
    credentials = f"{unquote(username)}:{unquote(password or '')}".encode()
    return {"Proxy-Authorization": f"Basic {base64.b64encode(credentials).decode('ascii')}"}


def _tls_context() -> ssl.SSLContext:
    """Verify Graph's certificate against the bundle requests would use."""
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    bundle = bundle or DEFAULT_CA_BUNDLE_PATH
    try:
        if os.path.isdir(bundle):
            return ssl.create_default_context(capath=bundle)
        return ssl.create_default_context(cafile=bundle)
    except OSError as exc:  # ssl.SSLError is one too
        raise OSError(f"the CA bundle {bundle} cannot be loaded ({exc.strerror or exc})") from exc


def _dropped(sock: socket.socket) -> bool:
    """Whether the server closed an idle kept-alive connection (it reads as ready: EOF)."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([sock], [], [], 0)[0])


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
