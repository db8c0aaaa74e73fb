"""The HTTP side: a keep-alive HTTP/1.1 server on 127.0.0.1 and the ``GraphEmulator`` facade.

One server answers both hosts a client talks to (Entra's token endpoint and Graph), so a test
needs a single URL. Every request is recorded before its response is written, so a client that
has its answer can already see the request in ``emulator.requests``.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import traceback
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, unquote

from .directory import CLIENT_ID, CLIENT_SECRET, TENANT_ID, Tenant, User
from .entra import TokenStore, check_tenant, grant_token, new_trace_id
from .errors import EntraError, GraphError
from .mail import SentMessage
from .routes import MAX_REQUEST_BYTES, GraphApi, Request, Response, kind_of

HOST = "127.0.0.1"
_TOKEN_PATH = re.compile(r"/([^/]+)/oauth2/v2\.0/token/?")
_DRAIN_CHUNK = 64 * 1024
KINDS = ("token", "user_get", "user_list", "sendMail", "other")


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the emulator saw it; the Authorization value is never kept."""

    method: str
    path: str
    query: dict[str, str]
    status: int
    kind: str
    client_request_id: str | None
    headers: dict[str, str] = field(repr=False)
    request_id: str = ""


class _Server(ThreadingHTTPServer):
    """Counts and tracks connections so ``stop()`` can cut idle keep-alive ones."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, emulator: GraphEmulator, port: int) -> None:
        self.emulator = emulator
        self.open_connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__((HOST, port), _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, address = super().get_request()
        with self.connections_lock:
            self.open_connections.add(connection)
        self.emulator._connection_accepted()
        return connection, address

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.open_connections.discard(request)
        super().shutdown_request(request)

    def cut_connections(self) -> None:
        with self.connections_lock:
            connections = list(self.open_connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet: clients dropping connections is normal; real bugs answer 500 instead."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes: avoid 40 ms stalls
    server_version = "GraphEmulator/1.0"
    sys_version = ""
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """No per-request logging: the emulator runs inside test suites."""

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        emulator = self.server.emulator
        path, _, query = self.path.partition("?")
        headers = {name: value for name, value in self.headers.items()}
        request = Request(
            method=self.command,
            path=path,
            query=parse_qsl(query, keep_blank_values=True),
            headers=headers,
            body=b"",
            request_id=str(uuid.uuid4()),
            client_request_id=self.headers.get("client-request-id"),
        )
        kind = emulator._kind(request)
        response = self._read_body(request, kind == "token")
        if response is None:
            response = emulator._respond(request, kind)
        emulator._record(request, kind, response.status)
        self._write(response)

    def _read_body(self, request: Request, is_token: bool) -> Response | None:
        """Read the body fully (keep-alive); refuse > 4 MB for Graph without buffering it."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            request.body = self._read_chunked()
            length = len(request.body)
        else:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                self.close_connection = True
                return _graph_error(
                    request, GraphError(400, "BadRequest", "Invalid Content-Length.")
                )
            if length > MAX_REQUEST_BYTES and not is_token:
                self._drain(length)
                error = GraphError(
                    413, "BadRequest", "The maximum request length supported is 4MB."
                )
                return _graph_error(request, error)
            request.body = self.rfile.read(length) if length > 0 else b""
        if length > MAX_REQUEST_BYTES and not is_token:
            error = GraphError(413, "BadRequest", "The maximum request length supported is 4MB.")
            return _graph_error(request, error)
        return None

    def _drain(self, length: int) -> None:
        while length > 0:
            chunk = self.rfile.read(min(length, _DRAIN_CHUNK))
            if not chunk:
                break
            length -= len(chunk)

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.readline()

    def _write(self, response: Response) -> None:
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if response.body:
            self.wfile.write(response.body)
        self.wfile.flush()


def _graph_error(request: Request, error: GraphError) -> Response:
    headers = {"Content-Type": "application/json", **error.headers}
    headers.update(_graph_headers(request))
    return Response(
        error.status, error.body(request.request_id, request.client_request_id), headers
    )


def _graph_headers(request: Request) -> dict[str, str]:
    headers = {"request-id": request.request_id}
    if request.client_request_id is not None:
        headers["client-request-id"] = request.client_request_id
    return headers


class GraphEmulator:
    """Microsoft Graph (users, sendMail) and Entra (client credentials) on 127.0.0.1.

    Strict where Graph is strict, so code that passes here does not fail on first contact
    with the real service. ``with GraphEmulator() as emu:`` starts and stops it.
    """

    def __init__(self, port: int = 0) -> None:
        self._port = port
        self._tenant = Tenant()
        self._tokens = TokenStore()
        self._lock = threading.Lock()
        self._sent: list[SentMessage] = []
        self._requests: list[RecordedRequest] = []
        self._connections = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._graph = GraphApi(self._tenant, self._tokens, lambda: self.url, self._deliver)
        self.token_lifetime = 3599

    # lifecycle ----------------------------------------------------------------------------

    def start(self) -> GraphEmulator:
        """Listen on 127.0.0.1 (``port=0``: a free port, kept for ``url`` after ``stop()``)."""
        if self._server is not None:
            return self
        server = _Server(self, self._port)
        self._port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name=f"graph-emulator-{self._port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut open connections; calling it again does nothing."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.cut_connections()
        server.server_close()
        if thread is not None:
            thread.join()

    def __enter__(self) -> GraphEmulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL for both Graph and the token endpoint (no trailing slash)."""
        if self._port == 0:
            raise RuntimeError("GraphEmulator(port=0) has no URL before start()")
        return f"http://{HOST}:{self._port}"

    def settings(self, **overrides: Any) -> dict[str, Any]:
        """An ``MSGRAPH_MAIL`` dict pointing at this emulator, with ``overrides`` applied."""
        return {
            "TENANT_ID": TENANT_ID,
            "CLIENT_ID": CLIENT_ID,
            "CLIENT_SECRET": CLIENT_SECRET,
            "GRAPH_URL": self.url,
            "AUTHORITY_URL": self.url,
            **overrides,
        }

    # tenant -------------------------------------------------------------------------------

    @property
    def roles(self) -> list[str]:
        """Application roles put into tokens issued from now on."""
        return self._tenant.roles

    @roles.setter
    def roles(self, roles: Iterable[str]) -> None:
        self._tenant.roles = list(roles)

    @property
    def rbac_scope(self) -> set[str] | None:
        """Mailboxes (ids or addresses) the app holds Exchange "Application Mail.Send" on."""
        return self._tenant.rbac_scope

    @rbac_scope.setter
    def rbac_scope(self, scope: Iterable[str] | None) -> None:
        self._tenant.rbac_scope = scope

    def add_user(
        self,
        upn: str,
        *,
        mail: str | None = None,
        aliases: Iterable[str] = (),
        id: str | None = None,
        display_name: str | None = None,
        mailbox_enabled: bool = True,
        send_as: Iterable[str] = (),
    ) -> User:
        """Add a user (and mailbox unless ``mailbox_enabled=False``) to the directory."""
        return self._tenant.add_user(
            upn,
            mail=mail,
            aliases=aliases,
            id=id,
            display_name=display_name,
            mailbox_enabled=mailbox_enabled,
            send_as=send_as,
        )

    @property
    def users(self) -> list[User]:
        return self._tenant.users

    def user(self, address_or_id: str) -> User | None:
        """The user with this id or any of these SMTP addresses."""
        return self._tenant.user(address_or_id)

    def expire_tokens(self) -> None:
        """Every token issued so far is refused from now on (401 InvalidAuthenticationToken)."""
        self._tokens.expire_all()

    @property
    def issued_tokens(self) -> list[str]:
        """Every access token issued so far (to prove none leaks into logs or errors)."""
        return self._tokens.tokens()

    # records ------------------------------------------------------------------------------

    @property
    def sent(self) -> list[SentMessage]:
        with self._lock:
            return list(self._sent)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def connections(self) -> int:
        """TCP connections accepted so far (keep-alive reuse keeps this at 1)."""
        with self._lock:
            return self._connections

    def count(self, kind: str | None = None) -> int:
        """Requests so far: "token", "user_get", "user_list", "sendMail", "other" or all."""
        if kind is not None and kind not in KINDS:
            raise ValueError(f"unknown request kind {kind!r}; one of {', '.join(KINDS)}")
        with self._lock:
            return sum(1 for r in self._requests if kind is None or r.kind == kind)

    def reset(self) -> None:
        """Forget messages, requests and connections; users, grants and tokens stay."""
        with self._lock:
            self._sent.clear()
            self._requests.clear()
            self._connections = 0

    # called by the server -----------------------------------------------------------------

    def _connection_accepted(self) -> None:
        with self._lock:
            self._connections += 1

    def _deliver(self, message: SentMessage) -> None:
        with self._lock:
            self._sent.append(message)

    def _kind(self, request: Request) -> str:
        if _TOKEN_PATH.fullmatch(request.path):
            return "token" if request.method == "POST" else "other"
        if request.path.split("/")[1:2] == ["v1.0"]:
            return kind_of(request.method, request.path)
        return "other"

    def _record(self, request: Request, kind: str, status: int) -> None:
        headers = {
            name: ("[redacted]" if name.lower() == "authorization" else value)
            for name, value in request.headers.items()
        }
        recorded = RecordedRequest(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            status=status,
            kind=kind,
            client_request_id=request.client_request_id,
            headers=headers,
            request_id=request.request_id,
        )
        with self._lock:
            self._requests.append(recorded)

    def _respond(self, request: Request, kind: str) -> Response:
        """Route to Entra or Graph; an emulator bug answers 500, never a hung client."""
        try:
            token_path = _TOKEN_PATH.fullmatch(request.path)
            if token_path:
                return self._token(request, unquote(token_path.group(1)))
            if request.path.split("/")[1:2] != ["v1.0"]:
                segment = unquote(request.path.split("/")[1]) if "/" in request.path else ""
                raise GraphError(400, "BadRequest", f"Invalid version: {segment}")
            response = self._graph.handle(request)
            response.headers.update(_graph_headers(request))
            return response
        except GraphError as error:
            return _graph_error(request, error)
        except Exception:
            traceback.print_exc()
            failure = GraphError(500, "generalException", "An internal emulator error occurred.")
            return _graph_error(request, failure)

    def _token(self, request: Request, tenant: str) -> Response:
        trace_id, correlation_id = new_trace_id(), request.client_request_id or new_trace_id()
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "Cache-Control": "no-store, no-cache",
            "x-ms-request-id": trace_id,
        }
        if request.client_request_id is not None:
            headers["client-request-id"] = request.client_request_id
        try:
            if request.method != "POST":
                raise EntraError(
                    405, "invalid_request", 900561, "The endpoint only accepts POST requests."
                )
            check_tenant(tenant)
            form = dict(parse_qsl(request.body.decode("utf-8", "replace"), keep_blank_values=True))
            body = grant_token(
                form,
                request.header("Authorization"),
                graph_url=self.url,
                roles=self.roles,
                lifetime=self.token_lifetime,
                store=self._tokens,
            )
        except EntraError as error:
            return Response(error.status, error.body(trace_id, correlation_id), headers)
        return Response(200, json.dumps(body).encode(), headers)
