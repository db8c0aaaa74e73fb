"""The HTTP client for Graph: one kept-alive session, bearer tokens, Graph errors as exceptions."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import requests

from .auth import tokens
from .conf import MSGraphMailSettings
from .exceptions import (
    DeliveryUnknown,
    GraphAPIError,
    GraphConnectionError,
    MSGraphMailError,
)

logger = logging.getLogger("msgraph_mail")

#: Graph refuses requests larger than this (GRAPH_NOTES A.1: "maximum request length 4MB").
MAX_REQUEST_BYTES = 4 * 1024 * 1024

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
    """Talks to one tenant's Graph with one ``requests.Session`` (kept-alive connections)."""

    def __init__(self, settings: MSGraphMailSettings) -> None:
        self.settings = settings
        self.session = requests.Session()
        self.session.headers["User-Agent"] = _user_agent()

    def __repr__(self) -> str:
        return f"<GraphClient {self.settings.graph_url} tenant={self.settings.tenant_id}>"

    def close(self) -> None:
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

    def find_user(self, address: str) -> dict[str, Any] | None:
        """Find the user whose primary address, any alias or UPN is ``address``."""
        literal = address.replace("'", "''")
        query = (
            f"mail eq '{literal}' or userPrincipalName eq '{literal}' "
            f"or proxyAddresses/any(p:p eq 'smtp:{literal}')"
        )
        body = self.request("GET", "/users", params={"$filter": query, "$select": USER_FIELDS}).body
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
        """Send one Graph request; a token Graph no longer accepts is renewed once.

        ``kwargs`` go to ``requests`` (``params``, ``data``, ``headers``).
        """
        token = tokens.get(self.settings, self.session)
        response = self._send(method, path, token, dict(kwargs))
        if response.status_code == 401 and _error_code(response) == "InvalidAuthenticationToken":
            logger.warning("Graph rejected the access token; fetching a new one and retrying")
            tokens.invalidate(self.settings, token)
            token = tokens.get(self.settings, self.session)
            response = self._send(method, path, token, dict(kwargs))
        client_request_id = response.request.headers["client-request-id"]
        if response.status_code >= 400:
            raise graph_error(response, str(client_request_id))
        return Response(
            status=response.status_code,
            body=response.json() if response.content else None,
            request_id=response.headers.get("request-id"),
            client_request_id=str(client_request_id),
        )

    def _send(
        self, method: str, path: str, token: str, kwargs: dict[str, Any]
    ) -> requests.Response:
        headers = {
            "Authorization": f"Bearer {token}",
            "client-request-id": str(uuid.uuid4()),
            **kwargs.pop("headers", {}),
        }
        url = f"{self.settings.graph_url}/v1.0{path}"
        try:
            return self.session.request(
                method, url, headers=headers, timeout=self.settings.timeout, **kwargs
            )
        except (requests.ConnectTimeout, requests.ConnectionError) as exc:
            if isinstance(exc, requests.ConnectTimeout) or _before_sending(exc):
                raise GraphConnectionError(
                    f"Cannot reach Graph at {self.settings.graph_url}"
                ) from (_scrub(exc))
            raise DeliveryUnknown(
                f"The connection to Graph broke after {method} {path} was sent; "
                "it may or may not have been processed",
                client_request_id=headers["client-request-id"],
            ) from _scrub(exc)
        except requests.Timeout as exc:
            raise DeliveryUnknown(
                f"Graph did not answer {method} {path} within {self.settings.timeout:g} s; "
                "it may or may not have been processed",
                client_request_id=headers["client-request-id"],
            ) from _scrub(exc)


def graph_error(response: requests.Response, client_request_id: str) -> MSGraphMailError:
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


def _error_body(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}


def _error_code(response: requests.Response) -> str | None:
    return _error_body(response).get("code")


def _before_sending(exc: requests.ConnectionError) -> bool:
    """Whether a connection error happened before any byte of the request left."""
    text = repr(exc.args)
    return any(
        marker in text
        for marker in ("NewConnectionError", "Failed to establish", "NameResolutionError")
    )


def _scrub(exc: requests.RequestException) -> requests.RequestException:
    """Drop the prepared request from the exception: its headers hold the bearer token."""
    exc.request = None
    return exc


def _user_agent() -> str:
    from . import __version__

    return f"msgraph_mail/{__version__} python-requests/{requests.__version__}"
