"""The HTTP side: a keep-alive HTTP/1.1 server on 127.0.0.1 and the ``GraphEmulator`` facade.

One server answers both hosts a client talks to (Entra's token endpoint and Graph), so a test
needs a single URL. Every request is recorded before its response is written (and before any
``latency`` or ``slow`` wait), so a client that has its answer, or gave up waiting for it, can
already see the request in ``emulator.requests``.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import struct
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from operator import attrgetter
from pathlib import Path
from types import TracebackType
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, cast
from urllib.parse import parse_qsl, unquote

from .delivery import Deliveries, Delivery, checked_outcome
from .directory import CLIENT_ID, CLIENT_SECRET, TENANT_DOMAIN, TENANT_ID, Tenant, User
from .drafts import UPLOAD_PREFIX, Draft, DraftStore
from .entra import (
    EmulatorCredential,
    RegisteredCertificate,
    TokenStore,
    check_tenant,
    grant_token,
    register,
)
from .errors import EntraError, GraphError, bad_request
from .events import EventHub
from .faults import (
    PAGE_FAULTS,
    PROCESSING_FAULTS,
    FaultPlan,
    InjectedFault,
    PlannedFault,
    entra_fault,
    graph_fault,
    page_fault,
)
from .http import (
    Request,
    Response,
    entra_error,
    entra_headers,
    graph_error,
    graph_headers,
    new_trace_id,
)
from .inbox import EVENTS_PATH, Inbox, serves
from .inbox_folder import InboxMessage
from .limits import (
    CONCURRENCY_RETRY_AFTER,
    MailboxBudgets,
    MailboxGate,
    Owner,
    throttled_error,
)
from .mail import Screened, SentMessage
from .request_log import RecordedRequest, draft_of, error_code
from .routes import KINDS, MAX_REQUEST_BYTES, TOKEN_PATH, GraphApi, bearer_token, kind_of, user_key
from .sent_items import SentItem
from .store import EmlStore
from .subscriptions import Subscriptions

HOST = "127.0.0.1"
_DRAIN_CHUNK = 64 * 1024
_G = TypeVar("_G")
_S = TypeVar("_S")
_R = TypeVar("_R")
_P = ParamSpec("_P")


class _Knob(Generic[_G, _S]):
    """A ``GraphEmulator`` attribute kept by one of its parts: read with ``get``, assigned
    with ``put``; the attribute's type says what it holds and what it may be assigned."""

    def __init__(self, get: Callable[[Any], _G], put: Callable[[Any, _S], None], doc: str) -> None:
        self.get, self.put, self.__doc__ = get, put, doc

    def __get__(self, emulator: object, owner: object = None) -> _G:
        return self.get(emulator) if emulator is not None else cast(_G, self)

    def __set__(self, emulator: object, value: _S) -> None:
        self.put(emulator, value)


def _kept(path: str, doc: str, check: Callable[[Any], Any] = lambda v: v) -> _Knob[Any, Any]:
    """The part's attribute at ``path`` from the emulator (``"_tenant.roles"``); what is
    assigned goes through ``check`` first."""
    parent, _, name = path.rpartition(".")

    def put(emulator: object, value: object) -> None:
        setattr(attrgetter(parent)(emulator), name, check(value))

    return _Knob(attrgetter(path), put, doc)


def _rbac(role: str, note: str) -> _Knob[set[str] | None, Iterable[str] | None]:
    """Where the app holds an Exchange RBAC role; None: nowhere."""
    doc = f'Mailboxes (ids or addresses) the app holds Exchange "Application {role}" on{note}'
    return _Knob(lambda e: e._tenant.rbac[role], lambda e, s: e._tenant.set_rbac(role, s), doc)


def _delay(seconds: float) -> float:
    if seconds < 0:
        raise ValueError("delivery_delay is seconds: >= 0")
    return float(seconds)


class _Forward(Generic[_P, _R]):
    """A ``GraphEmulator`` method that is one of its parts' methods: same signature, same doc."""

    def __init__(self, part: str, method: Callable[Concatenate[Any, _P], _R]) -> None:
        self.function, self.__doc__ = method, method.__doc__
        self.bound = attrgetter(f"{part}.{method.__name__}")

    def __get__(self, emulator: object, owner: object = None) -> Callable[_P, _R]:
        """The part's bound method; on the class, its function (for help() and signatures)."""
        found = self.function if emulator is None else self.bound(emulator)
        return cast(Callable[_P, _R], found)


@dataclass
class _Outcome:
    """What to do with a served request: answer ``response`` after ``delay``, or reset."""

    response: Response | None
    delay: float = 0.0

    @property
    def status(self) -> int:
        """The recorded status; 0 means the connection was reset without a response."""
        return self.response.status if self.response is not None else 0


class _Server(ThreadingHTTPServer):
    """Counts and tracks connections so ``stop()`` can cut idle keep-alive ones."""

    daemon_threads = True
    block_on_close = False
    # socketserver's default backlog of 5 drops SYNs when many clients connect at once; the
    # client then retries after a 1 s timeout, which would distort concurrency benchmarks.
    request_queue_size = 128

    def __init__(self, emulator: GraphEmulator, port: int) -> None:
        self.emulator = emulator
        self.open_connections: set[socket.socket] = set()
        self.resetting: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__((HOST, port), _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, address = super().get_request()
        with self.connections_lock:
            self.open_connections.add(connection)
        self.emulator._connection_accepted()
        return connection, address

    def reset_on_close(self, connection: socket.socket) -> None:
        """Close ``connection`` with a bare RST: no FIN first, as a crashed peer would."""
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with self.connections_lock:
            self.resetting.add(connection)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.open_connections.discard(request)
            reset = request in self.resetting
            self.resetting.discard(request)
        if reset:  # shutdown(SHUT_WR) would send a FIN: the client would see a clean close
            self.close_request(request)
        else:
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

    def _dispatch(self) -> None:
        emulator = self.server.emulator
        started = time.monotonic()
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
        kind = kind_of(request.method, request.path)
        refusal = self._read_body(request, kind == "token")
        if refusal is None and serves(request.path):  # the dev inbox: not Graph, not recorded
            if request.path == EVENTS_PATH and request.method == "GET":
                self._stream(emulator, request)
            else:
                self._write(emulator.inbox.handle(request))
            return
        if refusal is not None:
            outcome = _Outcome(refusal, emulator._latency_left(started))
            emulator._record(request, kind, outcome, started)
            self._answer(outcome)
            return
        with emulator._in_flight(request) as throttled:
            if throttled is not None:
                outcome = _Outcome(throttled)
            else:
                outcome = emulator._serve(request, kind)
                outcome.delay += emulator._latency_left(started)
            emulator._record(request, kind, outcome, started)
            time.sleep(outcome.delay)  # the request stays in flight while it "works"
            outcome.delay = 0.0
        # The slot is free once the work is done, before the answer travels back: a client
        # that starts its next request on receipt must not find the slot still taken.
        self._answer(outcome)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch

    def _stream(self, emulator: GraphEmulator, request: Request) -> None:
        """``/api/events``: server-sent events until the page or the emulator goes away."""
        refusal = emulator.inbox.refuse(request)
        if refusal is not None:
            self._write(refusal)
            return
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        try:
            for frame in emulator.events.stream():
                self.wfile.write(frame)
                self.wfile.flush()
        except OSError:
            pass  # the page closed or reloaded

    def _answer(self, outcome: _Outcome) -> None:
        """Wait (holding the request in flight), then answer or reset the connection."""
        if outcome.delay > 0:
            time.sleep(outcome.delay)
        if outcome.response is None:
            self.close_connection = True
            self.server.reset_on_close(self.connection)
        else:
            self._write(outcome.response)

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
                return graph_error(request, bad_request("Invalid Content-Length."))
            too_large = length > MAX_REQUEST_BYTES and not is_token
            if too_large:
                self._drain(length)
            else:
                request.body = self.rfile.read(length) if length > 0 else b""
        if length > MAX_REQUEST_BYTES and not is_token:
            error = GraphError(413, "BadRequest", "The maximum request length supported is 4MB.")
            return graph_error(request, error)
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


class GraphEmulator:
    """Microsoft Graph (users, sendMail) and Entra (client credentials) on 127.0.0.1.

    Strict where Graph is strict, so code that passes here does not fail on first contact
    with the real service. ``with GraphEmulator() as emu:`` starts and stops it.

    Knobs (plain attributes, read per request): ``token_lifetime`` (seconds);
    ``latency`` (seconds every answer takes, the emulator's own work included);
    ``mailbox_concurrency`` (Graph's 4 in-flight requests per mailbox, None: unlimited) and
    ``concurrency_retry_after``; ``limits`` and ``time_scale`` (Graph's and Exchange's
    per-mailbox budgets, see ``set_limits``);
    ``slow_seconds`` (the ``"slow"`` fault's wait); ``secret_expired`` (Entra refuses the right
    secret with AADSTS7000222); ``parse_on_delivery`` (parse each MIME message as it arrives,
    as the dev inbox does, so its page never waits for thousands at once; off, a message is
    parsed when first read, and a benchmark measures the backend, not the emulator).

    ``strict=False`` is the dev inbox's mode (``python -m msgraph_mail.emulator`` without
    ``--strict``): any tenant (id or domain), any client id with any secret or any well-formed
    signed client assertion, tokens with ``PERMISSIVE_ROLES`` (Mail.Send, User.Read.All,
    Mail.ReadWrite: every MODE works), and any address becomes a mailbox on first use
    (looked up, or sent through), allowed to send as any From. Tests keep the default,
    ``strict=True``: the contoso tenant, its application and its users only.
    """

    def __init__(
        self,
        port: int = 0,
        *,
        store: str | Path | None = None,
        limits: Mapping[str, float | None] | None = None,
        time_scale: float = 1.0,
        strict: bool = True,
    ) -> None:
        self._port = port
        self.strict = strict
        self._tenant = Tenant(permissive=not strict)
        self._tokens = TokenStore()
        self._lock = threading.Lock()
        self._sent: list[SentMessage | Screened] = []
        self._requests: list[RecordedRequest] = []
        self.events = EventHub()  # the dev inbox's live updates (/api/events)
        self._connections = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._graph = GraphApi(self._tenant, self._tokens, lambda: self.url, self._deliver)
        self._faults = FaultPlan()
        self._faults.changed = lambda: self.events.publish("faults", {})
        self._gate = MailboxGate()
        self._budgets = MailboxBudgets(limits, time_scale)
        self._graph.before_send = self._graph.drafts.before_send = self._spend_recipients
        self._graph.time_scale = lambda: self._budgets.time_scale
        self._applications: dict[str, str] = {}
        self.token_lifetime = 3599
        self.latency: float = 0.0
        self.concurrency_retry_after: float | None = CONCURRENCY_RETRY_AFTER
        self.slow_seconds: float = 2.0
        self.secret_expired: bool = False
        self.parse_on_delivery: bool = False
        self._certificates: list[RegisteredCertificate] = []
        self._store = EmlStore(store) if store is not None else None
        if self._store is not None:  # the dev inbox's .eml directory: a restart keeps mail
            self._sent = list(self._store.load(self._tenant.user))
        self.inbox = Inbox(self)

    # lifecycle ----------------------------------------------------------------------------

    def start(self) -> GraphEmulator:
        """Listen on 127.0.0.1 (``port=0``: a free port, kept for ``url`` after ``stop()``)."""
        if self._server is not None:
            return self
        server = _Server(self, self._port)
        self._port = server.server_address[1]
        self.events.open()
        self._graph.subscriptions.start()
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
        self.events.close()
        self._graph.subscriptions.stop()
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

    roles: _Knob[list[str], Iterable[str]] = _kept(
        "_tenant.roles", "Application roles put into tokens issued from now on."
    )
    rbac_scope = _rbac("Mail.Send", ".")
    rbac_readwrite_scope = _rbac("Mail.ReadWrite", " (drafts).")
    rbac_read_scope = _rbac(
        "Mail.ReadBasic", ": their Sent Items may be listed without Mail.ReadBasic.All."
    )
    rewrite_message_ids: _Knob[bool, object] = _kept(
        "_graph.sent_items.rewrite_message_ids",
        """Messages travel with a Message-ID of Exchange's own, not the MIME's: in Sent Items,
        in NDRs and in message trace (a tenant that rewrites it; whether Exchange keeps it is
        UNCONFIRMED).""",
        bool,
    )

    def sent_items(self, mailbox: str | None = None) -> list[SentItem]:
        """The Sent Items copies of every mailbox, or of one (an address or id), oldest first."""
        return self._graph.sent_items.items(None if mailbox is None else self._mailbox_id(mailbox))

    @property
    def drafts(self) -> list[Draft]:
        """Drafts still in the mailboxes (created, not yet sent or deleted)."""
        return self._graph.drafts.drafts

    store_partial_chunks = _Forward("_graph.drafts", DraftStore.store_partial)

    # after the 202: delivery, reports, message trace ------------------------------------

    def delivery_of(self, request_id: str) -> list[dict[str, Any]]:
        """What became of each recipient of the message sent by request ``request_id``, as the
        message trace shows it now: status, and the code and diagnostic of a bounce or a
        deferral (the dev inbox's message page and ``/api/messages/<id>``)."""
        now, delivery = time.monotonic(), self._delivery(request_id)
        if delivery is None:
            return []
        return [
            {
                "recipient": address,
                "status": delivery.status(outcome, now),
                "outcome": outcome.kind,
                "code": outcome.code,
                "diagnostic": outcome.diagnostic,
                "final_at": delivery.finished.isoformat(),
            }
            for address, outcome in delivery.recipients
        ]

    def reports_of(self, request_id: str) -> list[InboxMessage]:
        """The NDRs and delayed DSNs that message brought into its sender's Inbox."""
        delivery = self._delivery(request_id)
        if delivery is None:
            return []
        wanted = f"Message-ID: {delivery.message_id}".encode()
        return [m for m in self.inbox_messages(delivery.message.mailbox.id) if wanted in m.raw]

    def _delivery(self, request_id: str) -> Delivery | None:
        """The delivery of the message sent by request ``request_id``."""
        found = self._graph.deliveries.deliveries
        return next((d for d in found if d.message.request_id == request_id), None)

    subscriptions = _Forward("_graph.subscriptions", Subscriptions.listed)
    notifications = _Forward("_graph.subscriptions", Subscriptions.deliveries)
    send_lifecycle = _Forward("_graph.subscriptions", Subscriptions.send_lifecycle)

    def set_delivery(
        self,
        target: str,
        outcome: str,
        *,
        code: str | None = None,
        diagnostic: str | None = None,
    ) -> None:
        """What becomes of messages to ``target`` (an address, or ``"@domain"`` for every
        address at exactly that domain) accepted from now on, before the built-in rules
        (unknown users of the tenant's domains bounce with 5.1.10, ``.invalid`` domains with
        5.1.1; see delivery.py).

        ``outcome``: ``"delivered"``, ``"bounced"`` (``code`` 5.1.1 by default; a sender's
        problem such as 5.7.233 or 5.1.8 too), ``"deferred"`` (4.4.7 by default: a "Delivery
        delayed" report and trace status ``pending``, never final), ``"quarantined"`` or
        ``"filtered_as_spam"`` (no report). ``diagnostic`` is the SMTP reply the report and
        the trace quote (Exchange's own for its codes, "550 5.1.1 user unknown" by default).
        """
        self._graph.deliveries.set_rule(target, checked_outcome(outcome, code, diagnostic))

    clear_delivery_rules = _Forward("_graph.deliveries", Deliveries.clear_rules)
    delivery_delay: _Knob[float, float] = _kept(
        "_graph.deliveries.delay",
        """Seconds from a message's acceptance to its recipients' final state and its reports
        in the sender's Inbox (half of it: trace status ``pending``). 5 by default; read when
        a message is accepted; not scaled by ``time_scale``.""",
        _delay,
    )

    def deliver_to_inbox(self, mailbox: str, raw: bytes) -> InboxMessage:
        """Put ``raw`` (any bytes: a foreign DSN, an auto-reply, a malformed report) into the
        Inbox of ``mailbox`` (an id or any of its addresses), as arrived now."""
        user = self._user(mailbox)
        if user is None:
            raise ValueError(f"no mailbox {mailbox!r}")
        return self._graph.inboxes.add(user, raw)

    def inbox_messages(self, mailbox: str | None = None) -> list[InboxMessage]:
        """The Inbox of ``mailbox`` (an id or address; None: every mailbox), oldest first,
        reports that are due included."""
        return self._graph.inboxes.messages(None if mailbox is None else self._mailbox_id(mailbox))

    trace_service_principal: _Knob[bool, object] = _kept(
        "_graph.traces.service_principal",
        "The tenant holds the service principal message trace needs (False: Graph's 401).",
        bool,
    )
    add_user = _Forward("_tenant", Tenant.add_user)

    @property
    def users(self) -> list[User]:
        return self._tenant.users

    user = _Forward("_tenant", Tenant.user)
    expire_tokens = _Forward("_tokens", TokenStore.expire_all)

    def register_certificate(self, cert_pem: str | bytes) -> str:
        """Upload a PEM certificate to the app registration (Certificates & secrets), so
        client assertions signed with its key are accepted; returns its SHA-1 thumbprint, as
        the portal shows it. Needs ``cryptography``."""
        registered = register(cert_pem)
        with self._lock:
            self._certificates.append(registered)
        return registered.thumbprint

    def remove_certificates(self) -> None:
        """Delete every registered certificate: assertions fail with AADSTS700027."""
        with self._lock:
            self._certificates.clear()

    def token_credential(self) -> EmulatorCredential:
        """A stand-in for azure-identity's ManagedIdentityCredential, for TOKEN_CREDENTIAL:
        its ``get_token(scope)`` hands out this tenant's tokens without a request."""
        return EmulatorCredential(
            self._tokens, self.url, lambda: self.roles, lambda: self.token_lifetime
        )

    @property
    def issued_tokens(self) -> list[str]:
        """Every access token issued so far (to prove none leaks into logs or errors)."""
        return self._tokens.tokens()

    # faults and limits --------------------------------------------------------------------

    fail_next = _Forward("_faults", FaultPlan.fail_next)
    pending_faults = _Forward("_faults", FaultPlan.pending)
    clear_faults = _Forward("_faults", FaultPlan.clear)
    fault_rate = _Forward("_faults", FaultPlan.fault_rate)

    @property
    def faults_injected(self) -> list[InjectedFault]:
        """Every fault served so far, in order, with whether the message was delivered."""
        return self._faults.injected

    mailbox_concurrency: _Knob[int | None, int | None] = _Knob(
        lambda e: None if (n := e._budgets.limit("CONCURRENT_REQUESTS")) is None else int(n),
        lambda e, limit: e._budgets.set_limits(CONCURRENT_REQUESTS=limit),
        """Graph's 4 requests in flight per app + mailbox (``limits["CONCURRENT_REQUESTS"]``).""",
    )

    @property
    def limits(self) -> dict[str, float | None]:
        """The limits in force, keyed like the backend's setting (None: no limit)."""
        return self._budgets.limits

    set_limits = _Forward("_budgets", MailboxBudgets.set_limits)

    def reset_limits(self) -> None:
        """Graph's default limits again, every window empty and ``throttled()`` at zero."""
        self._budgets.reset()
        self._graph.traces.window.clear()

    def clear_budgets(self) -> None:
        """Empty every window (message trace's too) and zero ``throttled()``; the limits
        stay (``reset()`` too)."""
        self._budgets.clear()
        self._graph.traces.window.clear()

    time_scale: _Knob[float, float] = _kept(
        "_budgets.time_scale",
        """How long the emulator's windows last, as a fraction of Graph's: 0.001 makes the
        10-minute window 0.6 s and the 24-hour one 86.4 s; Retry-After is scaled alike.""",
    )

    def throttled(self, mailbox: str | None = None) -> dict[str, int]:
        """429s answered for the limits so far, by reason: ``"concurrency"``,
        ``"requests"``, ``"upload"`` and ``"recipients"`` (every key present), for
        ``mailbox`` (an id or any address) or all mailboxes. Injected faults are not here."""
        return self._budgets.throttled(None if mailbox is None else self._mailbox_id(mailbox))

    def usage(self, mailbox: str, *, app: str = CLIENT_ID) -> dict[str, dict[str, float | None]]:
        """What ``app`` has used of ``mailbox``'s budgets now, each ``{"used", "limit"}``.

        Keys: ``"concurrency"`` (requests in flight), ``"requests"`` (10 minutes),
        ``"upload"`` (bytes in 5 minutes, ``limit`` in bytes too) and ``"recipients"`` (24
        hours; Exchange counts them per mailbox, whatever application sent).
        """
        owner = (app.lower(), self._mailbox_id(mailbox))
        concurrency = self._budgets.limit("CONCURRENT_REQUESTS")
        return {
            "concurrency": {"used": self._gate.in_flight(owner), "limit": concurrency},
            **self._budgets.usage(owner),
        }

    def budgets(self) -> list[dict[str, Any]]:
        """Each mailbox's use of its budgets, for the dev inbox: the emulator's own app on
        every mailbox, and any other application that spent something."""
        owners: list[Owner] = [(CLIENT_ID, u.id) for u in self.users if u.mailbox_enabled]
        owners += [o for o in self._budgets.owners() if o not in owners]
        rows = []
        for app, mailbox_id in owners:
            user = self._tenant.user(mailbox_id)
            rows.append(
                {
                    "mailbox": user.user_principal_name if user is not None else mailbox_id,
                    "app": app,
                    **self.usage(mailbox_id, app=app),
                    "throttled": self._budgets.throttled(mailbox_id),
                }
            )
        return rows

    def add_application(
        self, client_id: str | None = None, secret: str | None = None
    ) -> tuple[str, str]:
        """Register another application in the tenant (same roles as the emulator's own);
        returns its ``(client_id, secret)``. Its tokens carry its ``appid``, so Outlook's
        limits count its requests apart from the first application's."""
        client_id = (client_id or str(uuid.uuid4())).lower()
        secret = secret or secrets.token_urlsafe(30)
        if client_id == CLIENT_ID:
            raise ValueError("that is the emulator's own application")
        with self._lock:
            self._applications[client_id] = secret
        return client_id, secret

    def max_in_flight(self, mailbox: str | None = None) -> int:
        """Most requests in flight at once under ``/users/{mailbox}/...`` (None: any mailbox).

        ``mailbox`` is an id or any of its addresses; requests refused with 429
        ``ApplicationThrottled`` never counted. ``reset()`` starts a new measurement.
        """
        return self._gate.peak(None if mailbox is None else self._mailbox_id(mailbox))

    def _user(self, mailbox: str) -> User | None:
        """The user with this id or address, in any case."""
        return self._tenant.user(mailbox) or self._tenant.user(mailbox.lower())

    def _mailbox_id(self, mailbox: str) -> str:
        user = self._user(mailbox)
        return user.id if user is not None else mailbox.lower()

    # records ------------------------------------------------------------------------------

    @property
    def sent(self) -> list[SentMessage]:
        """Every delivered message; MIME ones are fully parsed here, on first reading."""
        with self._lock:
            self._sent = [_complete(entry) for entry in self._sent]
            return cast(list[SentMessage], list(self._sent))

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def connections(self) -> int:
        """TCP connections accepted so far (keep-alive reuse keeps this at 1)."""
        with self._lock:
            return self._connections

    def close_idle_connections(self) -> None:
        """Close the kept-alive connections, as Graph's front end does to idle ones.

        Call it between requests: a request in flight on a closed connection is cut.
        """
        if self._server is not None:
            self._server.cut_connections()

    def count(self, kind: str | None = None) -> int:
        """Requests so far of one kind ("token", "user_get", "user_list", "sendMail",
        "message_trace", "message_trace_detail", "inbox_delta", ...: ``KINDS``) or all."""
        if kind is not None and kind not in KINDS:
            raise ValueError(f"unknown request kind {kind!r}; one of {', '.join(KINDS)}")
        with self._lock:
            return sum(1 for r in self._requests if kind is None or r.kind == kind)

    def clear_messages(self) -> None:
        """Forget the captured messages only (and delete their ``.eml`` files, if stored)."""
        with self._lock:
            self._sent.clear()
        self._graph.sent_items.clear()
        self._graph.deliveries.clear()
        self._graph.inboxes.clear()
        if self._store is not None:
            self._store.clear()

    def reset(self) -> None:
        """Forget messages (their trace and reports, every Inbox), drafts, requests,
        connections, served faults, in-flight peaks, what the budgets spent and the 429s
        counted by ``throttled()``.

        Configuration stays: users, grants, tokens, knobs, limits, delivery rules, and faults
        not yet served.
        """
        self.clear_messages()
        with self._lock:
            self._requests.clear()
            self._connections = 0
        self._faults.forget_served()
        self._graph.drafts.clear()
        self._gate.forget_peaks()
        self.clear_budgets()

    # called by the server -----------------------------------------------------------------

    def _connection_accepted(self) -> None:
        with self._lock:
            self._connections += 1

    def _deliver(self, message: SentMessage | Screened) -> None:
        if self._store is not None or self.parse_on_delivery:  # the dev inbox: parse now
            message = _complete(message)
            if self._store is not None:
                self._store.save(message)
        with self._lock:
            self._sent.append(message)
        self.events.publish("message", {"id": message.id})

    def _latency_left(self, started: float) -> float:
        """``latency`` is the whole time Graph takes to answer: the emulator's own work
        counts toward it, so its speed does not change what a client measures."""
        return max(0.0, self.latency - (time.monotonic() - started))

    def _record(self, request: Request, kind: str, outcome: _Outcome, started: float) -> None:
        """Log the request (request_log.py): what the dev inbox shows, never a secret."""
        headers = {
            name: ("[redacted]" if name.lower() == "authorization" else value)
            for name, value in request.headers.items()
        }
        recorded = RecordedRequest(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            status=outcome.status,
            kind=kind,
            client_request_id=request.client_request_id,
            headers=headers,
            request_id=request.request_id,
            duration=time.monotonic() - started + outcome.delay,
            mailbox=self._log_mailbox(request),
            error=error_code(outcome.status, outcome.response),
            app_id=self._log_app(request, kind),
            draft=self._graph.drafts.session_draft(request.path)
            or draft_of(request.path, kind, outcome.response),
        )
        with self._lock:
            self._requests.append(recorded)
        self.events.publish("request", {"request_id": recorded.request_id})

    def _log_mailbox(self, request: Request) -> str | None:
        """The mailbox a request went to, by its principal name, for the request log."""
        if request.path.startswith(UPLOAD_PREFIX):
            owner = self._graph.drafts.session_owner(request.path)
            key = owner[1] if owner is not None else None
        else:
            key = user_key(request.path)
        user = self._tenant.by_id_or_upn(key) if key else None
        return user.user_principal_name if user is not None else key

    def _log_app(self, request: Request, kind: str) -> str | None:
        """The caller's application id: the token's ``appid`` claim, never the token; for
        the token endpoint, the client_id of its form."""
        if kind == "token":
            form = dict(parse_qsl(request.body.decode("utf-8", "replace")))
            return form.get("client_id") or None
        issued = self._tokens.lookup(bearer_token(request))
        return issued.app_id if issued is not None else None

    @contextlib.contextmanager
    def _in_flight(self, request: Request) -> Iterator[Response | None]:
        """Hold one of the mailbox's concurrency slots while the body runs, and spend from
        its budgets; yields the 429 instead when a limit refuses the request."""
        owner = self._owner(request)
        if owner is None:
            yield None
            return
        if not self._gate.enter(owner, self._budgets.limit("CONCURRENT_REQUESTS")):
            refusal = self._budgets.refused_concurrency(owner[1], self.concurrency_retry_after)
            yield graph_error(request, throttled_error(refusal))
            return
        try:
            refused = None
            if owner[0]:  # an authenticated request: Graph's budgets count per application
                uploaded = len(request.body) if request.method in ("POST", "PUT", "PATCH") else 0
                refused = self._budgets.spend_request(owner, uploaded)
            yield None if refused is None else graph_error(request, throttled_error(refused))
        finally:
            self._gate.leave(owner)

    def _owner(self, request: Request) -> Owner | None:
        """(application id, mailbox id) whose limits ``request`` counts against, if any.

        The mailbox's mail endpoints and its upload URLs count; the application is the
        token's (a request without a valid token has "" and only takes a concurrency slot,
        as before), or the one that opened the upload session.
        """
        if request.path.startswith(UPLOAD_PREFIX):
            return self._graph.drafts.session_owner(request.path)
        key = user_key(request.path, mailbox=True)
        if key is None:
            return None
        issued = self._tokens.lookup(bearer_token(request))
        app = issued.app_id if issued is not None and issued.valid(time.time()) else ""
        user = self._tenant.by_id_or_upn(key)
        if user is None and app:  # permissive: the mailbox exists before its budgets count
            user = self._tenant.adopt(key)
        return app, user.id if user is not None else key.lower()

    def _spend_recipients(self, mailbox: User, count: int) -> None:
        """Exchange's recipient rate limit, per mailbox: raise its 429 when over it."""
        refused = self._budgets.spend_recipients(mailbox.id, count)
        if refused is not None:
            raise throttled_error(refused)

    def _serve(self, request: Request, kind: str) -> _Outcome:
        """Process the request normally, unless a fault is planned for it."""
        fault = self._faults.draw(kind)
        if fault is None:
            return _Outcome(self._respond(request, kind))
        if fault.name in PROCESSING_FAULTS:
            return self._process_then_fail(request, kind, fault)
        self._served(fault, request, kind, delivered=False)
        if fault.name == "reset_before":
            return _Outcome(None)
        if fault.name == "expired_token":
            self._tokens.revoke(bearer_token(request))
        return _Outcome(self._fault_response(request, kind, fault))

    def _process_then_fail(self, request: Request, kind: str, fault: PlannedFault) -> _Outcome:
        """The work is done (a message delivered), then the answer is lost or late.

        A request refused by normal processing gets that refusal: nothing was done to lose.
        """
        response = self._respond(request, kind)
        done = response.status < 400
        self._served(fault, request, kind, delivered=done and kind in ("sendMail", "draft_send"))
        if not done:
            return _Outcome(response)
        if fault.name == "reset_after":
            return _Outcome(None)
        if fault.name == "slow":
            return _Outcome(response, self.slow_seconds)
        return _Outcome(self._fault_response(request, kind, fault))

    def _fault_response(self, request: Request, kind: str, fault: PlannedFault) -> Response:
        if fault.name in PAGE_FAULTS:  # a front end's page: no Graph or Entra headers either
            status, body, headers = page_fault(fault)
            return Response(status, body, headers)
        if kind == "token":
            error, headers = entra_fault(fault)
            return entra_error(request, error, headers)
        return graph_error(request, graph_fault(fault))

    def _served(self, fault: PlannedFault, request: Request, kind: str, delivered: bool) -> None:
        record = InjectedFault(
            fault=fault.name,
            kind=kind,
            path=request.path,
            delivered=delivered,
            client_request_id=request.client_request_id,
            request_id=request.request_id,
        )
        self._faults.served(record)

    def _respond(self, request: Request, kind: str) -> Response:
        """Route to Entra or Graph; an emulator bug answers 500, never a hung client."""
        try:
            token_path = TOKEN_PATH.fullmatch(request.path)
            if token_path:
                return self._token(request, unquote(token_path.group(1)))
            if request.path.startswith(UPLOAD_PREFIX):
                response = self._graph.drafts.upload(request)
                response.headers.update(graph_headers(request))
                return response
            if request.path.split("/")[1:2] != ["v1.0"]:
                segment = unquote(request.path.split("/")[1]) if "/" in request.path else ""
                raise bad_request(f"Invalid version: {segment}")
            response = self._graph.handle(request)
            response.headers.update(graph_headers(request))
            return response
        except GraphError as error:
            return graph_error(request, error)
        except Exception:
            traceback.print_exc()
            failure = GraphError(500, "generalException", "An internal emulator error occurred.")
            return graph_error(request, failure)

    def _token(self, request: Request, tenant: str) -> Response:
        try:
            if request.method != "POST":
                raise EntraError(
                    405, "invalid_request", 900561, "The endpoint only accepts POST requests."
                )
            check_tenant(tenant, strict=self.strict)
            form = dict(parse_qsl(request.body.decode("utf-8", "replace"), keep_blank_values=True))
            with self._lock:
                certificates, applications = list(self._certificates), dict(self._applications)
            body = grant_token(
                form,
                request.header("Authorization"),
                graph_url=self.url,
                roles=self.roles,
                lifetime=self.token_lifetime,
                store=self._tokens,
                secret_expired=self.secret_expired,
                certificates=certificates,
                audiences=[
                    f"{self.url}/{name}/oauth2/v2.0/token"
                    for name in {tenant, TENANT_ID, TENANT_DOMAIN}
                ],
                applications=applications,
                strict=self.strict,
            )
        except EntraError as error:
            return entra_error(request, error)
        return Response(200, json.dumps(body).encode(), entra_headers(new_trace_id(), request))


def _complete(entry: SentMessage | Screened) -> SentMessage:
    return entry.complete() if isinstance(entry, Screened) else entry
