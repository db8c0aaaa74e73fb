"""Small values and pure helpers that the send path's layers share, below all of them.

The token cache (:mod:`.auth`), the Graph client (:mod:`.graph`), the sender resolvers
(:mod:`.resolvers`) and the caches shared through Redis (:mod:`.shared_state`) all pass these
around; keeping them here lets each of those modules import them without importing the
others (the import graph has no circle: tests/test_imports.py). Nothing here does I/O.
"""

from __future__ import annotations

import hashlib
import html
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import requests

    from .conf import MSGraphMailSettings
    from .exceptions import MSGraphMailError

__all__ = [
    "EXCERPT_LENGTH",
    "AccessToken",
    "Mailbox",
    "MessageStatus",
    "Route",
    "body_excerpt",
    "credential_key",
]

#: The request that carries a message (:mod:`.routes`): MIME to sendMail, JSON to sendMail,
#: or a draft with upload sessions.
Route = Literal["sendMail", "sendMail-json", "draft"]


@dataclass(frozen=True)
class AccessToken:
    """A bearer token and the monotonic time after which it should not be used."""

    value: str
    renew_at: float

    def __repr__(self) -> str:
        return f"AccessToken(renew_at={self.renew_at:.0f})"

    @property
    def fresh(self) -> bool:
        return time.monotonic() < self.renew_at


@dataclass(frozen=True)
class Mailbox:
    """The mailbox a message is sent through: ``id`` goes into the sendMail URL."""

    id: str
    address: str


def credential_key(settings: MSGraphMailSettings) -> str:
    """What identifies a credential's token: the token URL, client, scope and the credential
    itself (a secret only as its hash, so that the key never holds it)."""
    # The credential is part of the key (a changed secret must not reuse an old token): a
    # secret hashed, so that the key never holds it; a certificate by its thumbprint; a
    # credential object by its identity, or by its dotted path.
    if settings.client_certificate is not None:
        credential = "certificate:" + settings.client_certificate.load().thumbprint
    elif isinstance(settings.token_credential, str):
        credential = "credential:" + settings.token_credential
    elif settings.token_credential is not None:
        credential = f"credential:id:{id(settings.token_credential)}"
    else:
        assert settings.client_secret is not None
        secret = settings.client_secret.get_secret_value().encode()
        credential = "secret:" + hashlib.sha256(secret).hexdigest()
    return "|".join((settings.token_url, settings.client_id, settings.scope, credential))


#: The longest body excerpt an error message quotes.
EXCERPT_LENGTH = 200
_HIDDEN_ELEMENTS = re.compile(r"<(script|style|head)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_MARKUP = re.compile(r"<!--.*?-->|<[^>]*>", re.DOTALL)
#: What must never be quoted even if a page echoes it: bearer/basic credentials, JWTs, and
#: ``name=value`` / ``name: value`` pairs of secret-looking names.
_SECRETS = re.compile(
    r"\b(?:Bearer|Basic)\s+\S+"
    r"|\beyJ[\w-]+\.[\w-]+(?:\.[\w-]*)?"
    r"|\b(?:access_token|client_secret|client_assertion|authorization|password|secret)"
    r"\s*[=:]\s*(?:(?:Bearer|Basic)\s+)?\S+",
    re.IGNORECASE,
)


def body_excerpt(response: requests.Response, limit: int = EXCERPT_LENGTH) -> str:
    """The start of an error answer's text, for a message: markup, scripts and styles
    removed, entities decoded, whitespace collapsed, credentials redacted, at most ``limit``
    characters. Headers are never quoted."""
    text = response.content[: 64 * 1024].decode(response.encoding or "utf-8", "replace")
    text = _MARKUP.sub(" ", _HIDDEN_ELEMENTS.sub(" ", text))
    text = " ".join(html.unescape(text).split())
    text = _SECRETS.sub("[redacted]", text)
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


@dataclass
class MessageStatus:
    """What became of one message; set as ``message.msgraph_status`` by every send.

    ``status`` is ``"sent"`` (Graph accepted it: 202), ``"failed"`` (it was not sent) or
    ``"unknown"`` (the request left but no answer came back: it may have been sent);
    ``QueuedEmailBackend`` sets ``"queued"`` (in its outbox; the worker decides the rest).
    ``route`` is the request that carried it (:mod:`msgraph_mail.routes`): ``"sendMail"``
    (MIME, saved to Sent Items), ``"sendMail-json"`` (JSON, not saved: ``SAVE_TO_SENT_ITEMS``
    off; ``message_id`` is then None, as Exchange assigns the Message-ID), or ``"draft"``
    for a message too large for sendMail (``LARGE_MESSAGES``: draft, upload sessions, send).
    ``suppressed`` names the recipients left out because an earlier hard bounce put them on
    the suppression list (``SUPPRESS_BOUNCED``).
    """

    status: Literal["queued", "sent", "failed", "unknown"]
    mailbox: str | None = None
    request_id: str | None = None
    client_request_id: str | None = None
    message_id: str | None = None
    error: MSGraphMailError | None = None
    route: Route = "sendMail"
    suppressed: list[str] = field(default_factory=list)
