"""Sender lookups and (with SHARE_TOKEN) the access token, shared through REDIS_URL.

The process-wide caches (``resolvers.sender_cache``, ``auth.tokens``) stay the first place
to look; these functions are the second, so that a fleet of processes makes one directory
lookup per address and, with ``SHARE_TOKEN``, asks Entra for one token per credential
instead of one per process. Every function is a no-op (``get_*`` returns None) when
REDIS_URL is not set, so callers need no ``if``.

They are caches: a Redis failure is logged and treated as a miss, never as a failed send
(the limits in :mod:`msgraph_mail.limits` are the part that must not degrade).

- Sender: key ``msgraph_mail:sender:<sha256 of GRAPH_URL, TENANT_ID, CLIENT_ID and the
  address lower-cased>``, value the JSON of ``Mailbox`` (``id``, ``address``), TTL
  SENDER_CACHE_TTL (0: not shared, like the process cache).
- Token (opt-in, SHARE_TOKEN): key ``msgraph_mail:token:<sha256 of the token cache's key>``
  (itself built from a hash of the secret, the certificate's thumbprint or the credential's
  dotted path; never the secret), value the token, TTL its remaining life before renewal.
  A TOKEN_CREDENTIAL given as an object is never shared: its identity means nothing in
  another process. Anyone who can read this Redis can use the token until it expires:
  protect it like the client secret (password, TLS with ``rediss://``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time

from . import telemetry
from .conf import MSGraphMailSettings
from .exceptions import ConfigurationError
from .limits import redis_client
from .values import AccessToken, Mailbox, credential_key

logger = logging.getLogger("msgraph_mail")

__all__ = [
    "drop_token",
    "get_sender",
    "get_token",
    "put_sender",
    "put_token",
    "sender_key",
    "token_key",
]


def sender_key(settings: MSGraphMailSettings, wanted: str) -> str:
    """The Redis key of one address's lookup for one application."""
    identity = "\n".join(
        (settings.graph_url, settings.tenant_id.lower(), settings.client_id, wanted.lower())
    )
    return f"msgraph_mail:sender:{hashlib.sha256(identity.encode()).hexdigest()}"


def get_sender(settings: MSGraphMailSettings, wanted: str) -> Mailbox | None:
    """The shared lookup of ``wanted`` (an address or user id), or None."""
    if not settings.redis_url or settings.sender_cache_ttl <= 0:
        return None
    try:
        raw = redis_client(settings).get(sender_key(settings, wanted))
    except Exception as exc:  # a cache: any failure is a miss
        _miss("read a sender lookup", exc)
        return None
    if raw is None:
        return None
    try:
        fields = json.loads(raw)
        return Mailbox(id=str(fields["id"]), address=str(fields["address"]))
    except (ValueError, KeyError, TypeError):
        return None


def put_sender(settings: MSGraphMailSettings, wanted: str, mailbox: Mailbox) -> None:
    """Share a lookup for SENDER_CACHE_TTL seconds."""
    if not settings.redis_url or settings.sender_cache_ttl <= 0:
        return
    value = json.dumps({"id": mailbox.id, "address": mailbox.address})
    ttl_ms = max(1, round(settings.sender_cache_ttl * 1000))
    try:
        redis_client(settings).set(sender_key(settings, wanted), value, px=ttl_ms)
    except Exception as exc:
        _miss("store a sender lookup", exc)


def token_key(settings: MSGraphMailSettings) -> str | None:
    """The Redis key of the credential's token; None when it cannot be shared."""
    if settings.token_credential is not None and not isinstance(settings.token_credential, str):
        return None
    return f"msgraph_mail:token:{hashlib.sha256(credential_key(settings).encode()).hexdigest()}"


def get_token(settings: MSGraphMailSettings) -> AccessToken | None:
    """The shared token of this credential while it is fresh, or None (also without
    SHARE_TOKEN or REDIS_URL)."""
    key = _token_key_if_shared(settings)
    if key is None:
        return None
    try:
        pipe = redis_client(settings).pipeline(transaction=False)
        pipe.get(key)
        pipe.pttl(key)
        raw, ttl_ms = pipe.execute()
    except Exception as exc:
        _miss("read the shared token", exc)
        return None
    if raw is None or ttl_ms is None or ttl_ms <= 0:
        return None
    return AccessToken(value=raw.decode(), renew_at=time.monotonic() + ttl_ms / 1000)


def put_token(settings: MSGraphMailSettings, token: AccessToken) -> None:
    """Share a token until it is due for renewal (nothing without SHARE_TOKEN)."""
    key = _token_key_if_shared(settings)
    if key is None:
        return
    ttl_ms = round((token.renew_at - time.monotonic()) * 1000)
    if ttl_ms <= 0:
        return
    try:
        redis_client(settings).set(key, token.value, px=ttl_ms)
    except Exception as exc:
        _miss("store the shared token", exc)


def drop_token(settings: MSGraphMailSettings, value: str) -> None:
    """Forget the shared token if it is ``value`` (Graph rejected it: revoked or expired)."""
    key = _token_key_if_shared(settings)
    if key is None:
        return
    try:
        client = redis_client(settings)
        if client.get(key) == value.encode():
            client.delete(key)  # a race with a new token only costs one more token request
    except Exception as exc:
        _miss("drop the shared token", exc)


def _token_key_if_shared(settings: MSGraphMailSettings) -> str | None:
    if not (settings.share_token and settings.redis_url):
        return None
    return token_key(settings)


def _miss(action: str, exc: Exception) -> None:
    if isinstance(exc, ConfigurationError):
        raise exc  # redis-py missing: a misconfiguration stays loud
    logger.warning(
        "msgraph_mail: could not %s in Redis (%s); going on without it",
        action,
        type(exc).__name__,
        extra=telemetry.log_extra(),
    )
