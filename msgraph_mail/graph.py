"""The client for Graph: one ``requests.Session``, bearer tokens, Graph errors as exceptions.

Every HTTP request the package makes goes through :attr:`GraphClient.session`: tokens,
directory lookups, sendMail, drafts, attachments and upload sessions. So proxies
(``HTTPS_PROXY``, ``NO_PROXY``, SOCKS with ``requests[socks]``), TLS verification and the CA
bundle (``REQUESTS_CA_BUNDLE``) behave as requests makes them behave, for every request alike,
and users can stub Graph in their own tests with ``responses`` or ``requests-mock``.
"""

from __future__ import annotations

import json
import logging
import platform
import re
import ssl
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError, ProxyError, SSLError
from urllib3.util.retry import Retry

from . import telemetry
from .auth import tokens
from .conf import MSGraphMailSettings
from .exceptions import (
    DeliveryUnknown,
    GraphAPIError,
    GraphConnectionError,
    MSGraphMailError,
    SentItemsDenied,
)
from .limits import MailboxLimits, limits_for
from .retry import RetryBudget, parse_retry_after
from .values import body_excerpt

logger = logging.getLogger("msgraph_mail")


#: Refused before any work was done: always safe to send again (GRAPH_NOTES B.3), whatever
#: the body (Graph's JSON error, or an HTML page from Exchange's front end).
RETRIED_STATUSES = frozenset({429, 503})
#: A gateway answered instead of Graph: the work behind it may have been done (GRAPH_NOTES
#: B.3: after a 5xx the message "may or may not have been accepted"). 504: the gateway gave
#: up waiting. 502: the notes do not name it; a gateway that got a bad answer from upstream
#: may well have forwarded the request, so a POST is not repeated either.
AMBIGUOUS_STATUSES = frozenset({502, 504})
#: How an ambiguous status is described in DeliveryUnknown's message.
_GATEWAY_FAILURES = {502: "bad gateway", 504: "gateway timeout"}
#: Graph's code for a token it no longer accepts (expired, revoked).
AUTH_EXPIRED = "InvalidAuthenticationToken"
#: How many rejected tokens one request may replace.
MAX_TOKEN_RENEWALS = 3

#: A mailbox's mail endpoints: what Graph's per-mailbox limits count. The mailbox is a path
#: segment (``/users/{id}/...``) or an OData key (``/users('$x@y.com')/...``, see user_path).
_MAIL_PATH = re.compile(
    r"^/users(?:/(?P<segment>[^/?()']+)|\('(?P<key>(?:[^']|'')*)'\))"
    r"/(?:sendMail|messages|mailFolders)(?:[/?]|$)"
)

#: The user properties a lookup needs; nothing more is asked of the directory.
USER_FIELDS = "id,mail,userPrincipalName"


@dataclass(frozen=True)
class Response:
    """What the backend keeps of a Graph answer."""

    status: int
    body: Any
    request_id: str | None
    client_request_id: str


class GraphClient:
    """Talks to one tenant's Graph through one ``requests.Session``.

    Its adapter keeps one connection per concurrent sender (``MAX_CONCURRENCY``), reused
    across the batch; urllib3 checks a kept-alive connection before reusing it and replaces
    one the server closed, so that never puts a message at risk. urllib3's own retries are
    off: whether a request may be sent again is decided here (:meth:`request`), because only
    we know whether it may already have been processed.
    """

    def __init__(self, settings: MSGraphMailSettings) -> None:
        self.settings = settings
        self.session = requests.Session()
        self.session.headers["User-Agent"] = _user_agent()
        adapter = HTTPAdapter(
            pool_connections=4,  # hosts: the token endpoint, Graph, upload URLs
            pool_maxsize=settings.max_concurrency,
            max_retries=Retry(total=0, read=False, redirect=False),
        )
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        self.limits: MailboxLimits = limits_for(settings)
        self.host = urlsplit(settings.graph_url).hostname

    def __repr__(self) -> str:
        return f"<GraphClient {self.settings.graph_url} tenant={self.settings.tenant_id}>"

    def close(self) -> None:
        self.session.close()

    def get_user(self, user: str) -> dict[str, Any] | None:
        """Look a user up by object id or user principal name; None when there is none."""
        try:
            response = self.request("GET", user_path(user), params={"$select": USER_FIELDS})
        except GraphAPIError as exc:
            if exc.status == 404:
                return None
            raise
        return dict(response.body)

    def find_user(self, address: str, select: str = USER_FIELDS) -> dict[str, Any] | None:
        """Find the user whose primary address, any alias or UPN is ``address``."""
        literal = address.replace("'", "''")
        query = (
            f"mail eq '{literal}' or userPrincipalName eq '{literal}' "
            f"or proxyAddresses/any(p:p eq 'smtp:{literal}')"
        )
        body = self.request("GET", "/users", params={"$filter": query, "$select": select}).body
        found = body.get("value") or []
        return found[0] if found else None

    def send_mime(self, mailbox: str, mime_base64: bytes, recipients: int = 0) -> Response:
        """POST a base64 MIME message to the mailbox's sendMail (Graph answers 202)."""
        return self._send_mail(mailbox, mime_base64, "text/plain", recipients)

    def send_json(self, mailbox: str, body: bytes, recipients: int = 0) -> Response:
        """POST a JSON sendMail body (``message`` and ``saveToSentItems``); Graph answers 202."""
        return self._send_mail(mailbox, body, "application/json; charset=utf-8", recipients)

    def _send_mail(self, mailbox: str, body: bytes, content_type: str, recipients: int) -> Response:
        """The Content-Type picks the body: text/plain is base64 MIME (GRAPH_NOTES A.1)."""
        return self.request(
            "POST",
            f"{user_path(mailbox)}/sendMail",
            recipients=recipients,
            data=body,
            headers={"Content-Type": content_type},
        )

    def find_sent(self, mailbox: str, message_id: str) -> dict[str, Any] | None:
        """The copy of a message in the mailbox's Sent Items, found by its Message-ID
        (``internetMessageId``, angle brackets included), or None when there is none (yet).

        ``GET {user}/mailFolders/sentitems/messages?$filter=internetMessageId eq '<id>'``,
        the value percent-encoded per RFC 3986 with its quotes doubled. Needs the application
        permission ``Mail.ReadBasic.All`` (or ``Mail.Read``), or the Exchange RBAC role
        "Application Mail.ReadBasic": a 403 raises :class:`SentItemsDenied`.
        """
        query = message_id_query(message_id, "id,internetMessageId,sentDateTime")
        try:
            body = self.request(
                "GET", f"{user_path(mailbox)}/mailFolders/sentitems/messages?{query}"
            ).body
        except GraphAPIError as exc:
            if exc.status != 403:
                raise
            denied = SentItemsDenied(
                f"Graph refused to list the Sent Items of {mailbox} ({exc.code or 'HTTP 403'}): "
                "looking a message up by its Message-ID needs the application permission "
                "Mail.ReadBasic.All (or Mail.Read), or the Exchange RBAC role "
                '"Application Mail.ReadBasic" scoped to this mailbox',
                **exc.context(mailbox=mailbox),
            )
            raise denied from exc
        values = body.get("value") if isinstance(body, dict) else None
        found = [item for item in values or [] if isinstance(item, dict)]
        return dict(found[0]) if found else None

    def request(self, method: str, path: str, *, recipients: int = 0, **kwargs: Any) -> Response:
        """Send one Graph request with Graph's retry rules; ``kwargs`` go to ``requests``.

        Retried: 429 and 503 (Graph refused before doing any work), connections that failed
        before the request left, and a 401 InvalidAuthenticationToken with a new token (once
        per rejected token).
        Not retried, since the work may have been done: 504, timeouts and broken connections
        after the request left (DeliveryUnknown) -- unless the request is a read (GET) or
        RETRY_AMBIGUOUS is on.

        A request to a mailbox's mail endpoints (``/users/{mailbox}/sendMail``,
        ``.../messages...``) spends from its MAILBOX_LIMITS budgets and holds one of its
        concurrent slots while it is in flight (not while it waits to be retried);
        ``recipients`` (To + Cc + Bcc) are spent once, by the request that sends the message.
        """
        budget = RetryBudget(self.settings.max_retries, self.settings.max_retry_wait)
        safe_to_repeat = method == "GET" or self.settings.retry_ambiguous
        rejected: set[str] = set()
        mailbox = mailbox_of(path)
        while True:
            token = tokens.get(self.settings, self.session)
            client_request_id = str(uuid.uuid4())
            try:
                with self.metered(
                    mailbox, budget, recipients=recipients, upload_bytes=_body_size(method, kwargs)
                ):
                    response = self._send(method, path, token, client_request_id, kwargs)
                recipients = 0  # spent by the first attempt, whatever became of it
            except GraphConnectionError as exc:
                unknown = isinstance(exc, DeliveryUnknown)
                wait = None if unknown and not safe_to_repeat else budget.next_wait(None)
                if wait is None:
                    raise
                self._pause(wait, f"{method} {path}: {exc}", mailbox, None, "connection")
                continue
            status = response.status_code
            if status == 401 and _error_code(response) == AUTH_EXPIRED and _renew(token, rejected):
                logger.warning(
                    "Graph rejected the access token; fetching a new one and retrying",
                    extra=self._log_extra(mailbox, response),
                )
                telemetry.count_retry("graph", "token_rejected", status)
                tokens.invalidate(self.settings, token)
                continue
            retriable = status in RETRIED_STATUSES or (
                status in AMBIGUOUS_STATUSES and safe_to_repeat
            )
            if retriable:
                wait = budget.next_wait(
                    parse_retry_after(response.headers.get("Retry-After")),
                    throttled=status == 429,
                )
                if wait is not None:
                    why = _error_code(response) or response.reason
                    self._pause(
                        wait,
                        f"{method} {path}: HTTP {status} {why}",
                        mailbox,
                        response,
                        telemetry.retry_reason(status),
                    )
                    continue
            return self._result(response, client_request_id, method, path, budget)

    @contextmanager
    def metered(
        self,
        mailbox: str | None,
        budget: RetryBudget,
        *,
        recipients: int = 0,
        upload_bytes: int = 0,
    ) -> Iterator[None]:
        """Spend one request (and its recipients and bytes) of the mailbox's budgets, waiting
        for room within what is left of MAX_RETRY_WAIT, then hold one of its slots."""
        if mailbox is None:
            yield
            return
        telemetry.watch_mailbox(self.limits, mailbox)
        started = time.monotonic()
        receipt = self.limits.spend(
            mailbox,
            requests=1,
            recipients=recipients,
            upload_bytes=upload_bytes,
            max_wait=budget.max_wait - budget.waited,
        )
        budget.waited += time.monotonic() - started
        # Released and settled in one step: the spend counts from the answer, as Graph's
        # windows count a request from its arrival.
        with self.limits.hold(mailbox, settle=receipt):
            yield

    def _result(
        self,
        response: requests.Response,
        client_request_id: str,
        method: str,
        path: str,
        budget: RetryBudget,
    ) -> Response:
        telemetry.note_retries(budget.retries + budget.throttled)
        if response.status_code in AMBIGUOUS_STATUSES:
            error = graph_error(response, client_request_id)
            failure = _GATEWAY_FAILURES.get(response.status_code, "gateway error")
            page = f"; {error.message}" if not _error_body(response) else ""
            raise DeliveryUnknown(
                f"Graph answered {method} {path} with HTTP {response.status_code} ({failure}): "
                f"it may or may not have been processed, so it was not repeated{page}",
                **error.context(),
            )
        if response.status_code >= 400:
            error = graph_error(response, client_request_id)
            tries = budget.retries + budget.throttled
            if tries and response.status_code in RETRIED_STATUSES:
                error.message += (
                    f" (gave up after {tries} retries and {budget.waited:.1f} s of "
                    "waiting: MAX_RETRIES / MAX_RETRY_WAIT)"
                )
            raise error
        return Response(
            status=response.status_code,
            body=_body(response),
            request_id=response.headers.get("request-id"),
            client_request_id=client_request_id,
        )

    def _pause(
        self,
        wait: float,
        reason: str,
        mailbox: str | None,
        response: requests.Response | None,
        why: str,
    ) -> None:
        """Wait before a retry: logged, counted (``msgraph_mail.retries``) and in a span."""
        status = response.status_code if response is not None else None
        logger.warning(
            "Retrying %s in %.2f s", reason, wait, extra=self._log_extra(mailbox, response)
        )
        with telemetry.retrying("graph", why, status, wait):
            time.sleep(wait)

    def _log_extra(self, mailbox: str | None, response: requests.Response | None) -> dict[str, Any]:
        return telemetry.log_extra(
            self.settings,
            request_id=response.headers.get("request-id") if response is not None else None,
            mailbox=mailbox,
            status=str(response.status_code) if response is not None else None,
        )

    def _send(
        self, method: str, path: str, token: str, client_request_id: str, kwargs: dict[str, Any]
    ) -> requests.Response:
        """One HTTP exchange; ``kwargs`` as requests takes them: params, data, json, headers."""
        headers = {
            "Accept": "application/json",
            "client-request-id": client_request_id,
            **(kwargs.get("headers") or {}),
        }
        try:
            with telemetry.http_span(method, url_template(path), self.host) as span:
                response = self.session.request(
                    method,
                    f"{self.settings.graph_url}/v1.0{path}",
                    params=kwargs.get("params"),
                    data=kwargs.get("data"),
                    json=kwargs.get("json"),
                    headers=headers,
                    auth=BearerAuth(token),
                    timeout=self.settings.timeout,
                    allow_redirects=False,
                )
                telemetry.answered(span, response.status_code, response.headers)
                return response
        except requests.RequestException as exc:
            _scrub(exc)
            if isinstance(exc, requests.ConnectionError) and before_sending(exc):
                raise GraphConnectionError(
                    f"Cannot reach Graph at {self.settings.graph_url} ({describe(exc)})"
                ) from exc
            if isinstance(exc, requests.Timeout):
                raise DeliveryUnknown(
                    f"Graph did not answer {method} {path} within {self.settings.timeout:g} s; "
                    "it may or may not have been processed",
                    client_request_id=client_request_id,
                ) from exc
            raise DeliveryUnknown(
                f"The connection to Graph broke after {method} {path} was sent "
                f"({describe(exc)}); it may or may not have been processed",
                client_request_id=client_request_id,
            ) from exc
        except OSError as exc:  # requests' own, before any connection: e.g. a bad CA bundle
            raise GraphConnectionError(
                f"Cannot reach Graph at {self.settings.graph_url} ({exc})"
            ) from exc


class BearerAuth(requests.auth.AuthBase):
    """The bearer token, as requests' auth hook: it also keeps ``.netrc`` credentials off."""

    def __init__(self, token: str) -> None:
        self.token = token

    def __repr__(self) -> str:
        return "BearerAuth(<token>)"

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self.token}"
        return request


def user_path(user: str) -> str:
    """``/users/{user}``: the path of a user (object id or UPN) and of its mailbox.

    A user principal name starting with ``$`` goes in as an OData key,
    ``/users('$x@y.com')``, since Graph takes ``/users/$x@y.com`` for a system query option
    and answers 400 (user-get page, GRAPH_NOTES E). Every URL to a mailbox is built here.
    """
    if user.startswith("$"):
        literal = quote(user.replace("'", "''"), safe="@$'")
        return f"/users('{literal}')"
    return f"/users/{quote(user, safe='@')}"


def message_id_query(message_id: str, select: str) -> str:
    """``$filter=internetMessageId eq '<id>'&$select=...``, percent-encoded per RFC 3986
    (``'`` doubled inside the OData string literal)."""
    literal = message_id.replace("'", "''")
    expression = f"internetMessageId eq '{literal}'"
    return f"$filter={quote(expression, safe='')}&$select={quote(select, safe=',')}"


_USER = re.compile(r"^/users(?:/[^/?]+|\('(?:[^']|'')*'\))")
_ITEM = re.compile(r"/(messages|attachments)/(?!createUploadSession\b)[^/?]+")


def url_template(path: str) -> str:
    """A Graph path with its identifiers replaced, for telemetry: ``/users/{id}/sendMail``,
    ``/users/{id}/messages/{id}/send``; the query (a lookup's ``$filter``) left out. Never
    an address."""
    path = path.split("?", 1)[0]
    path = _USER.sub("/users/{id}", path)
    return _ITEM.sub(lambda found: f"/{found.group(1)}/{{id}}", path)


def mailbox_of(path: str) -> str | None:
    """The mailbox whose mail endpoints ``path`` is on, or None (tokens, directory lookups)."""
    found = _MAIL_PATH.match(path)
    if found is None:
        return None
    segment, key = found.group("segment", "key")
    mailbox = unquote(segment) if segment is not None else unquote(key).replace("''", "'")
    return mailbox.lower()


def _body(response: requests.Response) -> Any:
    """JSON as Python data; any other content (a message's ``$value``: its MIME) as bytes."""
    if not response.content:
        return None
    content_type = response.headers.get("Content-Type", "")
    if content_type and "json" not in content_type.lower():
        return response.content
    return response.json()


def _body_size(method: str, kwargs: dict[str, Any]) -> int:
    """The bytes a request uploads: Graph counts POST, PUT and PATCH bodies (GRAPH_NOTES B.1)."""
    if method not in ("POST", "PUT", "PATCH"):
        return 0
    if kwargs.get("json") is not None:
        return len(json.dumps(kwargs["json"]))
    data = kwargs.get("data")
    return len(data) if isinstance(data, (bytes, bytearray, memoryview, str)) else 0


def _renew(token: str, rejected: set[str]) -> bool:
    """Retry once per rejected token: with concurrent senders a token revoked while another
    request was in flight can be rejected twice; a server rejecting every token is not
    retried forever."""
    if token in rejected or len(rejected) >= MAX_TOKEN_RENEWALS:
        return False
    rejected.add(token)
    return True


def graph_error(response: requests.Response, client_request_id: str) -> MSGraphMailError:
    """Build a GraphAPIError from Graph's JSON error body; branch on code, never on message.

    A 429 or 503 keeps its ``Retry-After`` (seconds) as ``error.retry_after``.

    An answer that is not Graph's JSON (an HTML error page from Exchange's front end, a
    gateway's plain text) is described by its status and a short excerpt of its text.
    """
    error = _error_body(response)
    message = str(error.get("message") or "") or _not_graph_error(response)
    built = GraphAPIError(
        message,
        code=error.get("code"),
        status=response.status_code,
        request_id=response.headers.get("request-id")
        or (error.get("innerError") or {}).get("request-id"),
        client_request_id=client_request_id,
    )
    if response.status_code in RETRIED_STATUSES:  # the last Retry-After, for a queue's delay
        built.retry_after = parse_retry_after(response.headers.get("Retry-After"))
    return built


def _error_body(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}


def _not_graph_error(response: requests.Response) -> str:
    """``HTTP 503 Service Unavailable, an HTML page: "…"``: an answer without Graph's error."""
    reason = f"HTTP {response.status_code} {response.reason or ''}".strip()
    media_type = (response.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    kind = "an HTML page" if "html" in media_type else "a non-JSON answer"
    excerpt = body_excerpt(response)
    if not excerpt:
        return f"{reason} (an empty answer, not Graph's JSON error)"
    return f'{reason}, {kind} instead of Graph\'s JSON error: "{excerpt}"'


def _error_code(response: requests.Response) -> str | None:
    return _error_body(response).get("code")


def before_sending(exc: requests.ConnectionError) -> bool:
    """Whether a connection error happened before any byte of the request left.

    urllib3 (with retries off) wraps what happened while connecting in ``MaxRetryError``:
    refused, DNS, connect timeout, a proxy that refused the tunnel, a certificate that did not
    verify. What broke after the request was written (a reset, a closed connection, an
    incomplete answer) comes as ``ProtocolError`` instead: the request may have been processed.
    """
    if isinstance(exc, requests.ConnectTimeout):
        return True
    inner = exc.args[0] if exc.args else None
    reason = getattr(inner, "reason", inner)
    if isinstance(reason, (NewConnectionError, ConnectTimeoutError, ProxyError)):
        return True
    # A TLS error is sent-or-not only by when it happened: verification is in the handshake.
    cause = reason.args[0] if isinstance(reason, SSLError) and reason.args else None
    return isinstance(cause, ssl.SSLCertVerificationError)


def describe(exc: BaseException) -> str:
    """The innermost cause of a requests error, in one line (urllib3 nests several)."""
    while True:
        inner = exc.args[0] if exc.args else None
        inner = getattr(inner, "reason", inner)
        if not isinstance(inner, BaseException):
            break
        exc = inner
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _scrub(exc: requests.RequestException) -> None:
    """Drop the prepared request from the exception: its headers hold the bearer token."""
    exc.request = None
    if exc.response is not None:
        exc.response.request = None  # type: ignore[assignment]


def _user_agent() -> str:
    from . import __version__

    return (
        f"msgraph_mail/{__version__} python-requests/{requests.__version__} "
        f"Python/{platform.python_version()}"
    )
