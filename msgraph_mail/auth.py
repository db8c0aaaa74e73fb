"""Client-credentials tokens from Entra ID, cached for the whole process.

Django 6.1 builds a new backend object for every ``mailers[alias]`` access, and Django 5.2
builds one per ``send_mail`` call, so a token kept on the backend would be fetched again for
nearly every message. The cache lives here, at module level, keyed by everything that makes
a token different (authority, tenant, client, credential, scope). Each key has its own lock,
so when many threads need a token at once exactly one of them asks Entra.

Three credentials: a client secret and a certificate (a signed client assertion) are sent to
Entra's token endpoint by this module; a TOKEN_CREDENTIAL (any object with azure-identity's
``get_token(*scopes)``, e.g. ``ManagedIdentityCredential``) gets the token itself, and its
tokens are cached and renewed here like our own.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import requests
from django.utils.module_loading import import_string

from . import shared_state, telemetry
from .conf import MSGraphMailSettings
from .exceptions import AuthenticationError, GraphConnectionError
from .retry import RetryBudget, parse_retry_after
from .values import AccessToken, body_excerpt, credential_key

logger = logging.getLogger("msgraph_mail")

#: The client_assertion_type of a certificate credential (RFC 7523).
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

#: The token request's path in telemetry (the tenant replaced).
TOKEN_TEMPLATE = "/{tenant}/oauth2/v2.0/token"  # noqa: S105 (a path, not a secret)

#: Renew a token this long before it expires (or a tenth of its lifetime, if shorter).
RENEW_AHEAD = 300.0

# Plain words for the Entra errors a user can cause, keyed by AADSTS code.
AADSTS_HINTS = {
    7000215: "the client secret is wrong: use the secret's Value, not its Secret ID",
    7000222: "the client secret has expired: create a new one in the app registration",
    7000218: "no credential was sent: set CLIENT_SECRET, CLIENT_CERTIFICATE or TOKEN_CREDENTIAL",
    700027: "the client assertion's signature was not validated against a certificate of the "
    "app registration: upload CLIENT_CERTIFICATE's certificate (the .cer/.pem, never the key) "
    "under Certificates & secrets, and check that PRIVATE_KEY belongs to it",
    700024: "the client assertion is outside its valid time range: check the server's clock",
    700016: "the application (CLIENT_ID) is not known in this tenant: check CLIENT_ID and "
    "TENANT_ID, and that admin consent was granted there",
    90002: "the tenant was not found: check TENANT_ID and that AUTHORITY_URL is your cloud's "
    "login host",
    50059: "TENANT_ID must name your tenant, not common/organizations/consumers",
    70011: "the scope was refused: GRAPH_URL must be the Graph host of the tenant's cloud",
}


class TokenCache:
    """Process-wide tokens, one per credential; safe to share between threads."""

    def __init__(self) -> None:
        self._tokens: dict[str, AccessToken] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, settings: MSGraphMailSettings, session: requests.Session) -> str:
        """Return a fresh token, asking Entra only when the cached one is due for renewal."""
        key = credential_key(settings)
        token = self._tokens.get(key)
        if token is not None and token.fresh:
            return token.value
        with self._lock_for(key):
            token = self._tokens.get(key)
            if token is None or not token.fresh:
                with telemetry.span("msgraph_mail token") as span:
                    # SHARE_TOKEN: another process's token first; ours shared for the others.
                    token = shared_state.get_token(settings)
                    source = "shared"
                    if token is None:
                        token = fetch_token(settings, session)
                        shared_state.put_token(settings, token)
                        source = "credential" if settings.token_credential else "entra"
                    if span.is_recording():
                        span.set_attribute("msgraph_mail.token.source", source)
                self._tokens[key] = token
            return token.value

    def invalidate(self, settings: MSGraphMailSettings, value: str | None = None) -> None:
        """Forget the cached token (after Graph rejected it), unless it was already replaced."""
        key = credential_key(settings)
        with self._lock_for(key):
            token = self._tokens.get(key)
            if token is not None and (value is None or token.value == value):
                del self._tokens[key]
            if value is not None:
                shared_state.drop_token(settings, value)

    def clear(self) -> None:
        """Forget every token (tests use this to start from a cold process)."""
        with self._guard:
            self._tokens.clear()

    def _lock_for(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())


#: The one cache of the process.
tokens = TokenCache()


_credentials: dict[str, Any] = {}
_credentials_lock = threading.Lock()


def token_credential(settings: MSGraphMailSettings) -> Any:
    """The TOKEN_CREDENTIAL object; a dotted path is imported, and a factory called, once per
    process (azure-identity credentials keep their own caches and connections)."""
    value = settings.token_credential
    if not isinstance(value, str):
        return value
    with _credentials_lock:
        if value not in _credentials:
            target = import_string(value)
            if not callable(getattr(target, "get_token", None)):
                try:
                    target = target()
                except Exception as exc:
                    raise AuthenticationError(
                        f"TOKEN_CREDENTIAL factory {value} failed: {_first_line(exc)}"
                    ) from exc
                if not callable(getattr(target, "get_token", None)):
                    raise AuthenticationError(
                        f"TOKEN_CREDENTIAL factory {value} returned {type(target).__name__}, "
                        "which has no get_token(*scopes) method"
                    )
            _credentials[value] = target
        return _credentials[value]


def _from_credential(settings: MSGraphMailSettings) -> AccessToken:
    """Ask the TOKEN_CREDENTIAL: ``get_token(scope)`` -> ``(token, expires_on)``, where
    expires_on is a Unix timestamp (azure-identity's AccessToken)."""
    credential = token_credential(settings)
    name = type(credential).__name__
    started = time.monotonic()
    try:
        result = credential.get_token(settings.scope)
        value = str(result.token)
        expires_on = float(result.expires_on)
    except AuthenticationError:
        raise
    except Exception as exc:
        raise AuthenticationError(
            f"TOKEN_CREDENTIAL {name} could not get a token for {settings.scope}: "
            f"{_first_line(exc)}",
            code=type(exc).__name__,
        ) from None
    lifetime = max(expires_on - time.time(), 0.0)
    logger.debug(
        "Got an access token valid for %.0f s from %s", lifetime, name, extra=telemetry.log_extra()
    )
    return AccessToken(value=value, renew_at=started + lifetime - min(RENEW_AHEAD, lifetime / 10))


def _first_line(exc: BaseException) -> str:
    """An exception as one short line: credential libraries' messages can run long."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = text if len(text) <= 300 else text[:297] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def fetch_token(settings: MSGraphMailSettings, session: requests.Session) -> AccessToken:
    """Ask Entra's token endpoint for an app-only token (client credentials grant).

    A token request changes nothing, so throttling (429), server errors (5xx), timeouts and
    broken connections are all retried within the MAX_RETRIES / MAX_RETRY_WAIT budget.
    """
    if settings.token_credential is not None:
        return _from_credential(settings)
    budget = RetryBudget(settings.max_retries, settings.max_retry_wait)
    while True:
        started = time.monotonic()
        try:
            response = _post_form(settings, session)
        except GraphConnectionError as exc:
            wait = budget.next_wait(None)
            if wait is None:
                raise
            _pause(wait, str(exc), None)
            continue
        if response.status_code == 429 or response.status_code >= 500:
            wait = budget.next_wait(
                parse_retry_after(response.headers.get("Retry-After")),
                throttled=response.status_code == 429,
            )
            if wait is not None:
                _pause(
                    wait,
                    f"the token endpoint answered HTTP {response.status_code}",
                    response.status_code,
                )
                continue
        if response.status_code != 200:
            raise _token_error(response)
        body = response.json()
        lifetime = float(body.get("expires_in", 3599))
        logger.debug(
            "Fetched an access token valid for %.0f s from %s",
            lifetime,
            settings.token_url,
            extra=telemetry.log_extra(status=str(response.status_code)),
        )
        return AccessToken(
            value=body["access_token"],
            renew_at=started + lifetime - min(RENEW_AHEAD, lifetime / 10),
        )


def _post_form(settings: MSGraphMailSettings, session: requests.Session) -> requests.Response:
    form = {
        "grant_type": "client_credentials",
        "client_id": settings.client_id,
        "scope": settings.scope,
    }
    if settings.client_certificate is not None:
        certificate = settings.client_certificate.load()
        form["client_assertion_type"] = ASSERTION_TYPE
        form["client_assertion"] = certificate.assertion(settings.client_id, settings.token_url)
    else:
        assert settings.client_secret is not None
        form["client_secret"] = settings.client_secret.get_secret_value()
    try:
        with telemetry.http_span(
            "POST", TOKEN_TEMPLATE, urlsplit(settings.token_url).hostname
        ) as span:
            response = session.post(
                settings.token_url,
                data=form,
                timeout=settings.timeout,
            )
            telemetry.answered(span, response.status_code)
            return response
    except requests.RequestException as exc:
        # The prepared request (its body holds the secret) is dropped from the exception.
        exc.request = None
        raise GraphConnectionError(
            f"Cannot reach the token endpoint {settings.token_url} ({type(exc).__name__})"
        ) from exc
    except OSError as exc:  # requests' own: e.g. the CA bundle of REQUESTS_CA_BUNDLE is missing
        raise GraphConnectionError(
            f"Cannot reach the token endpoint {settings.token_url} ({exc})"
        ) from exc


def _pause(wait: float, reason: str, status: int | None) -> None:
    logger.warning(
        "Retrying the token request in %.2f s: %s",
        wait,
        reason,
        extra=telemetry.log_extra(status=str(status) if status else None),
    )
    reason_word = telemetry.retry_reason(status)
    with telemetry.retrying("token", reason_word, status, wait):
        time.sleep(wait)


def _token_error(response: requests.Response) -> AuthenticationError:
    """Explain Entra's error answer; its description is kept to the first sentence.

    An answer that is not Entra's JSON (an HTML page from its front door, a proxy's text) is
    described by its status and a short excerpt of its text instead.
    """
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    codes = body.get("error_codes") or []
    code = int(codes[0]) if codes else None
    error = body.get("error") or f"HTTP {response.status_code} {response.reason or ''}".strip()
    description = str(body.get("error_description", "")).split("\r\n")[0].split("\n")[0]
    if not body.get("error"):
        media_type = (response.headers.get("Content-Type") or "").split(";")[0].lower()
        kind = "an HTML page" if "html" in media_type else "an answer"
        excerpt = body_excerpt(response)
        description = f'{kind} instead of Entra\'s JSON error: "{excerpt}"' if excerpt else ""
    hint = AADSTS_HINTS.get(code or 0)
    message = f"Entra ID refused the token request: {error}"
    if description:
        message += f": {description}"
    if hint:
        message += f". Fix: {hint}"
    return AuthenticationError(
        message,
        code=f"AADSTS{code}" if code else body.get("error"),
        status=response.status_code,
        request_id=body.get("trace_id"),
        client_request_id=body.get("correlation_id"),
    )
