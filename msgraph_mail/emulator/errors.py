"""Errors the emulator answers with, shaped exactly like Graph's and Entra's.

Route code raises these; the HTTP layer turns them into bodies so that every refusal has the
same shape a client would see from the real services (clients branch on ``code``/``error``).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

ENTRA_ERROR_URI = "https://login.microsoftonline.com/error?code={code}"
_WWW_AUTHENTICATE = (
    'Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/'
    'authorize", client_id="00000003-0000-0000-c000-000000000000"'
)


def utc_now_iso() -> str:
    """Graph's ``innerError.date`` format: ISO 8601, seconds precision, no offset."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


class GraphError(Exception):
    """A Graph refusal: HTTP status, ``error.code`` and ``error.message``.

    ``inner`` adds fields to ``innerError`` (throttling answers carry ``code: "429"`` there).
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
        *,
        inner: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.inner = inner or {}

    def body(self, request_id: str, client_request_id: str | None) -> bytes:
        """``{"error": {"code", "message", "innerError": {...}}}`` as Graph sends it."""
        inner: dict[str, str] = {**self.inner, "date": utc_now_iso(), "request-id": request_id}
        if client_request_id is not None:
            inner["client-request-id"] = client_request_id
        error = {"code": self.code, "message": self.message, "innerError": inner}
        return json.dumps({"error": error}).encode()


def bad_request(message: str) -> GraphError:
    return GraphError(400, "BadRequest", message)


def bad_segment(segment: str) -> GraphError:
    """A path Graph has no resource for, naming the first segment it does not know."""
    return bad_request(f"Resource not found for the segment '{segment}'.")


def method_not_allowed() -> GraphError:
    return GraphError(
        405, "Request_BadRequest", "Specified HTTP method is not allowed for the request target."
    )


def body_read_error(message: str) -> GraphError:
    return GraphError(400, "RequestBodyRead", message)


def unsupported_query() -> GraphError:
    return GraphError(400, "Request_UnsupportedQuery", "Unsupported Query.")


def item_not_found() -> GraphError:
    return GraphError(404, "ErrorItemNotFound", "The specified object was not found in the store.")


def unauthenticated(message: str) -> GraphError:
    """Graph's 401, with the challenge naming Entra and Graph's application id."""
    return GraphError(
        401, "InvalidAuthenticationToken", message, {"WWW-Authenticate": _WWW_AUTHENTICATE}
    )


def access_denied() -> GraphError:
    """Neither an Entra grant nor an Exchange RBAC scope lets the app use the mailbox."""
    return GraphError(
        403, "ErrorAccessDenied", "Access is denied. Check credentials and try again."
    )


def send_as_denied() -> GraphError:
    """The mailbox may not put the message's From address in its From."""
    return GraphError(
        403,
        "ErrorSendAsDenied",
        "The user account which was used to submit this request does not have the right to "
        "send mail on behalf of the specified sending account., Cannot submit message.",
    )


class EntraError(Exception):
    """A token-endpoint refusal: OAuth ``error``, AADSTS number and description."""

    def __init__(self, status: int, error: str, code: int, description: str) -> None:
        super().__init__(f"{status} {error}: AADSTS{code}")
        self.status = status
        self.error = error
        self.code = code
        self.description = description

    def body(self, trace_id: str, correlation_id: str) -> bytes:
        """Entra's error body; the description ends with trace/correlation ids like Entra's."""
        now = datetime.now(timezone.utc)
        stamp = now.strftime("%Y-%m-%d %H:%M:%SZ")
        description = (
            f"AADSTS{self.code}: {self.description} Trace ID: {trace_id} "
            f"Correlation ID: {correlation_id} Timestamp: {stamp}"
        )
        return json.dumps(
            {
                "error": self.error,
                "error_description": description,
                "error_codes": [self.code],
                "timestamp": stamp,
                "trace_id": trace_id,
                "correlation_id": correlation_id,
                "error_uri": ENTRA_ERROR_URI.format(code=self.code),
            }
        ).encode()
