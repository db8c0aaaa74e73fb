"""The client for Graph: kept-alive connections, bearer tokens, Graph errors as exceptions."""

from __future__ import annotations

import json
import logging
import os
import platform
import time
import uuid
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote, urlencode, urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.utils import get_environ_proxies
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from .auth import tokens
from .conf import MSGraphMailSettings
from .exceptions import (
    DeliveryUnknown,
    GraphAPIError,
    GraphConnectionError,
    MSGraphMailError,
)
from .retry import RetryBudget, parse_retry_after
from .transport import ConnectFailed, ConnectionPool, Reply, ReplyLost, ReplyTimeout

logger = logging.getLogger("msgraph_mail")


#: Refused before any work was done: always safe to send again (GRAPH_NOTES B.3).
RETRIED_STATUSES = frozenset({429, 503})
#: The gateway gave up; the work behind it may have been done.
AMBIGUOUS_STATUSES = frozenset({504})
#: Graph's code for a token it no longer accepts (expired, revoked).
AUTH_EXPIRED = "InvalidAuthenticationToken"
#: How many rejected tokens one request may replace.
MAX_TOKEN_RENEWALS = 3

#: The user properties a lookup needs; nothing more is asked of the directory.
USER_FIELDS = "id,mail,userPrincipalName"


class _Headers(Protocol):
    def get(self, name: str, /) -> Any: ...


class HTTPAnswer(Protocol):
    """What error handling reads of an answer: a transport Reply or a requests.Response."""

    @property
    def status_code(self) -> int: ...

    @property
    def reason(self) -> str | None: ...

    @property
    def headers(self) -> _Headers: ...

    def json(self) -> Any: ...


@dataclass(frozen=True)
class Response:
    """What the backend keeps of a Graph answer."""

    status: int
    body: Any
    request_id: str | None
    client_request_id: str


class GraphClient:
    """Talks to one tenant's Graph over a pool of kept-alive connections.

    Graph calls go through :class:`~msgraph_mail.transport.ConnectionPool` (one connection
    per concurrent sender); ``session`` (requests) fetches tokens and uploads large
    attachments to their pre-authenticated URLs, which are not on Graph's host.
    """

    def __init__(self, settings: MSGraphMailSettings) -> None:
        self.settings = settings
        self.pool = ConnectionPool(settings.graph_url, settings.max_concurrency, settings.timeout)
        self._prefix = urlsplit(settings.graph_url).path.rstrip("/") + "/v1.0"
        self._headers = {"User-Agent": _user_agent(), "Accept": "application/json"}
        self.session = requests.Session()
        self.session.headers["User-Agent"] = _user_agent()
        adapter = HTTPAdapter(pool_connections=2, pool_maxsize=settings.max_concurrency)
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        # requests re-reads the environment (proxies, CA bundle) on every request; read once.
        self.session.trust_env = False
        self.session.proxies = get_environ_proxies(settings.graph_url)
        self.session.verify = _ca_bundle()

    def __repr__(self) -> str:
        return f"<GraphClient {self.settings.graph_url} tenant={self.settings.tenant_id}>"

    def close(self) -> None:
        self.pool.close()
        self.session.close()

    def get_user(self, user: str) -> dict[str, Any] | None:
        """Look a user up by object id or user principal name; None when there is none."""
        try:
            response = self.request(
                "GET", f"/users/{quote(user, safe='@')}", params={"$select": USER_FIELDS}
            )
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

    def send_mime(self, mailbox: str, mime_base64: bytes) -> Response:
        """POST a base64 MIME message to the mailbox's sendMail (Graph answers 202)."""
        return self.request(
            "POST",
            f"/users/{quote(mailbox, safe='@')}/sendMail",
            data=mime_base64,
            headers={"Content-Type": "text/plain"},
        )

    def request(self, method: str, path: str, **kwargs: Any) -> Response:
        """Send one Graph request with Graph's retry rules; ``kwargs`` go to ``requests``.

        Retried: 429 and 503 (Graph refused before doing any work), connections that failed
        before the request left, and a 401 InvalidAuthenticationToken with a new token (once
        per rejected token).
        Not retried, since the work may have been done: 504, timeouts and broken connections
        after the request left (DeliveryUnknown) -- unless the request is a read (GET) or
        RETRY_AMBIGUOUS is on.
        """
        budget = RetryBudget(self.settings.max_retries, self.settings.max_retry_wait)
        safe_to_repeat = method == "GET" or self.settings.retry_ambiguous
        rejected: set[str] = set()
        while True:
            token = tokens.get(self.settings, self.session)
            client_request_id = str(uuid.uuid4())
            try:
                response = self._send(method, path, token, client_request_id, kwargs)
            except GraphConnectionError as exc:
                unknown = isinstance(exc, DeliveryUnknown)
                wait = None if unknown and not safe_to_repeat else budget.next_wait(None)
                if wait is None:
                    raise
                self._pause(wait, f"{method} {path}: {exc}")
                continue
            status = response.status_code
            if status == 401 and _error_code(response) == AUTH_EXPIRED and _renew(token, rejected):
                logger.warning("Graph rejected the access token; fetching a new one and retrying")
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
                    self._pause(wait, f"{method} {path}: HTTP {status} {_error_code(response)}")
                    continue
            return self._result(response, client_request_id, method, path, budget)

    def _result(
        self, reply: Reply, client_request_id: str, method: str, path: str, budget: RetryBudget
    ) -> Response:
        if reply.status_code in AMBIGUOUS_STATUSES:
            error = graph_error(reply, client_request_id)
            raise DeliveryUnknown(
                f"Graph answered {method} {path} with HTTP {reply.status_code} (gateway "
                "timeout): it may or may not have been processed, so it was not repeated",
                code=error.code,
                status=error.status,
                request_id=error.request_id,
                client_request_id=client_request_id,
            )
        if reply.status_code >= 400:
            error = graph_error(reply, client_request_id)
            tries = budget.retries + budget.throttled
            if tries and reply.status_code in RETRIED_STATUSES:
                error.message += (
                    f" (gave up after {tries} retries and {budget.waited:.1f} s of "
                    "waiting: MAX_RETRIES / MAX_RETRY_WAIT)"
                )
            raise error
        return Response(
            status=reply.status_code,
            body=reply.json() if reply.content else None,
            request_id=reply.headers.get("request-id"),
            client_request_id=client_request_id,
        )

    @staticmethod
    def _pause(wait: float, reason: str) -> None:
        logger.warning("Retrying %s in %.2f s", reason, wait)
        time.sleep(wait)

    def _send(
        self, method: str, path: str, token: str, client_request_id: str, kwargs: dict[str, Any]
    ) -> Reply:
        """One HTTP exchange; ``kwargs`` as requests takes them: params, data, json, headers."""
        headers = {
            **self._headers,
            "Authorization": f"Bearer {token}",
            "client-request-id": client_request_id,
        }
        body = kwargs.get("data")
        if "json" in kwargs:
            body = json.dumps(kwargs["json"]).encode("utf-8")
            headers["Content-Type"] = "application/json"
        headers.update(kwargs.get("headers") or {})
        target = self._prefix + path
        if kwargs.get("params"):
            target += "?" + urlencode(kwargs["params"])
        try:
            return self.pool.request(method, target, headers, body)
        except ConnectFailed as exc:
            raise GraphConnectionError(
                f"Cannot reach Graph at {self.settings.graph_url} ({exc})"
            ) from None
        except ReplyTimeout:
            raise DeliveryUnknown(
                f"Graph did not answer {method} {path} within {self.settings.timeout:g} s; "
                "it may or may not have been processed",
                client_request_id=client_request_id,
            ) from None
        except ReplyLost as exc:
            raise DeliveryUnknown(
                f"The connection to Graph broke after {method} {path} was sent ({exc}); "
                "it may or may not have been processed",
                client_request_id=client_request_id,
            ) from None


def _renew(token: str, rejected: set[str]) -> bool:
    """Retry once per rejected token: with concurrent senders a token revoked while another
    request was in flight can be rejected twice; a server rejecting every token is not
    retried forever."""
    if token in rejected or len(rejected) >= MAX_TOKEN_RENEWALS:
        return False
    rejected.add(token)
    return True


def graph_error(response: HTTPAnswer, client_request_id: str) -> MSGraphMailError:
    """Build a GraphAPIError from Graph's JSON error body; branch on code, never on message."""
    error = _error_body(response)
    message = str(error.get("message") or response.reason or "Graph request failed")
    return GraphAPIError(
        message,
        code=error.get("code"),
        status=response.status_code,
        request_id=response.headers.get("request-id")
        or (error.get("innerError") or {}).get("request-id"),
        client_request_id=client_request_id,
    )


def _error_body(response: HTTPAnswer) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}


def _error_code(response: HTTPAnswer) -> str | None:
    return _error_body(response).get("code")


def before_sending(exc: requests.ConnectionError) -> bool:
    """Whether a connection error happened before any byte of the request left."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    inner = exc.args[0] if exc.args else None
    reason = getattr(inner, "reason", inner)
    return isinstance(reason, (NewConnectionError, ConnectTimeoutError))


def _ca_bundle() -> str | bool:
    """The CA bundle requests would take from the environment, else its default."""
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True


def _user_agent() -> str:
    from . import __version__

    return f"msgraph_mail/{__version__} Python/{platform.python_version()}"
