"""Requests and responses as the emulator's handlers see them, and the one place that turns a
refusal (:mod:`.errors`) into Graph's or Entra's answer, headers included.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .errors import EntraError, GraphError, body_read_error

ODATA_JSON = "application/json;odata.metadata=minimal;odata.streaming=true;charset=utf-8"


@dataclass
class Request:
    """One HTTP request (body already read)."""

    method: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]
    body: bytes
    request_id: str
    client_request_id: str | None

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)

    def json(self, invalid: str = "Invalid JSON. A token was not recognized.") -> Any:
        """The body as JSON; Graph's ``RequestBodyRead`` (``invalid``) when it is not."""
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            raise body_read_error(invalid) from None

    def media_type(self) -> str:
        """The Content-Type without its parameters, lower-case ("" when absent)."""
        return (self.header("Content-Type") or "").split(";")[0].strip().lower()


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def graph_time(moment: datetime, fraction: str = "") -> str:
    """Graph's DateTimeOffset, in UTC: ``2026-12-05T18:00:00Z``; ``fraction`` formats the
    fractional seconds the resource shows (``.%f0``, ``.0000000``)."""
    return moment.astimezone(timezone.utc).strftime(f"%Y-%m-%dT%H:%M:%S{fraction}Z")


def json_response(status: int, body: object) -> Response:
    """A Graph JSON answer (OData's content type)."""
    return Response(status, json.dumps(body).encode(), {"Content-Type": ODATA_JSON})


def graph_headers(request: Request) -> dict[str, str]:
    """Graph's ``request-id``, and the client's ``client-request-id`` echoed."""
    headers = {"request-id": request.request_id}
    if request.client_request_id is not None:
        headers["client-request-id"] = request.client_request_id
    return headers


def graph_error(request: Request, error: GraphError) -> Response:
    """Graph's ``{"error": ...}`` answer for ``error``."""
    headers = {"Content-Type": "application/json", **error.headers, **graph_headers(request)}
    body = error.body(request.request_id, request.client_request_id)
    return Response(error.status, body, headers)


def new_trace_id() -> str:
    return str(uuid.uuid4())


def entra_headers(trace_id: str, request: Request) -> dict[str, str]:
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "Cache-Control": "no-store, no-cache",
        "x-ms-request-id": trace_id,
    }
    if request.client_request_id is not None:
        headers["client-request-id"] = request.client_request_id
    return headers


def entra_error(
    request: Request, error: EntraError, extra: dict[str, str] | None = None
) -> Response:
    """Entra's error answer; the correlation id echoes the client's ``client-request-id``."""
    trace_id, correlation_id = new_trace_id(), request.client_request_id or new_trace_id()
    headers = {**entra_headers(trace_id, request), **(extra or {})}
    return Response(error.status, error.body(trace_id, correlation_id), headers)
