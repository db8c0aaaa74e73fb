"""The request log: every request the emulator answered, as the dev inbox shows it.

A record keeps what a developer needs to follow a send through Graph — method, path, status,
how long the answer took, the mailbox, Graph's request-id and, for errors, Graph's or Entra's
error code — and never a secret: the ``Authorization`` value is redacted, no body is kept,
and the caller is named by its token's application id (the ``appid`` claim), never by the
token itself.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .http import Response

_DRAFT = re.compile(r"/messages/([^/]+)")


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the emulator saw it; the Authorization value is never kept.

    ``status`` 0: no response, the connection was reset (the "reset_*" faults).
    """

    method: str
    path: str
    query: dict[str, str]
    status: int
    kind: str
    client_request_id: str | None
    headers: dict[str, str] = field(repr=False)
    request_id: str = ""
    started: datetime = field(default_factory=lambda: datetime.now(timezone.utc), compare=False)
    duration: float = 0.0  # seconds until the answer was sent (or the connection reset)
    mailbox: str | None = None  # the mailbox it went to (its user principal name)
    error: str | None = None  # Graph's error code, Entra's AADSTS code, "connection reset"
    app_id: str | None = None  # the application (token ``appid`` or the token form's client_id)
    draft: str | None = None  # the draft it worked on (the draft route)

    def as_json(self, message: str | None = None) -> dict[str, Any]:
        """The record in ``/api/requests``; ``message`` is the id of the message it carried."""
        return {
            "request_id": self.request_id,
            "client_request_id": self.client_request_id,
            "started": self.started.isoformat(),
            "duration_ms": round(self.duration * 1000, 1),
            "method": self.method,
            "path": self.path,
            "kind": self.kind,
            "status": self.status,
            "error": self.error,
            "mailbox": self.mailbox,
            "app_id": self.app_id,
            "message": message,
        }


def error_code(status: int, response: Response | None) -> str | None:
    """What went wrong, in the answer's own words: Graph's ``error.code`` or Entra's AADSTS
    number; ``HTTP 503`` for a page that is not JSON; None for a success."""
    if response is None:
        return "connection reset"
    if status < 400:
        return None
    try:
        body = json.loads(response.body)
    except (ValueError, UnicodeDecodeError):
        return f"HTTP {status}"
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("code"):
        return str(error["code"])
    codes = body.get("error_codes") if isinstance(body, dict) else None
    if isinstance(codes, list) and codes:
        return f"AADSTS{codes[0]}"
    return str(error) if error else f"HTTP {status}"


def draft_of(path: str, kind: str, response: Response | None) -> str | None:
    """The draft a draft-route request worked on: in its path, or the one it created."""
    if kind in ("inbox_delta", "message_get", "message_value"):  # Inbox paths name no draft
        return None
    found = _DRAFT.search(path)
    if found is not None:
        return found.group(1)
    if kind == "draft_create" and response is not None and response.status == 201:
        try:
            created = json.loads(response.body)
        except (ValueError, UnicodeDecodeError):
            return None
        return str(created.get("id")) if isinstance(created, dict) else None
    return None
