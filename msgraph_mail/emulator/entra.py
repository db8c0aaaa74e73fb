"""Entra's client-credentials token endpoint, and the tokens it hands out.

Tokens are JWT-shaped (clients may decode the ``roles`` claim for diagnostics) but carry a
random signature: like real Graph tokens they are opaque, valid only because the emulator
remembers issuing them. Roles are fixed at issue time, as in Entra.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import unquote_plus

from .directory import (
    APP_DISPLAY_NAME,
    CLIENT_ID,
    CLIENT_SECRET,
    SERVICE_PRINCIPAL_ID,
    TENANT_DOMAIN,
    TENANT_ID,
)
from .errors import EntraError

GRAPH_RESOURCE = "https://graph.microsoft.com"
MULTI_TENANT_ALIASES = frozenset({"common", "organizations", "consumers"})
EXT_EXPIRES_EXTRA = 3600


@dataclass
class IssuedToken:
    """What the emulator remembers about one access token."""

    token: str
    roles: tuple[str, ...]
    expires_at: float
    revoked: bool = False

    def valid(self, now: float) -> bool:
        return not self.revoked and now < self.expires_at


class TokenStore:
    """Issues tokens and answers "is this bearer token good?" for the Graph side."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens: dict[str, IssuedToken] = {}

    def issue(self, resource: str, roles: Iterable[str], lifetime: int) -> IssuedToken:
        now = int(time.time())
        role_list = tuple(roles)
        claims: dict[str, object] = {
            "aud": resource,
            "iss": f"https://sts.windows.net/{TENANT_ID}/",
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "app_displayname": APP_DISPLAY_NAME,
            "appid": CLIENT_ID,
            "appidacr": "1",
            "azp": CLIENT_ID,
            "azpacr": "1",
            "idp": f"https://sts.windows.net/{TENANT_ID}/",
            "idtyp": "app",
            "oid": SERVICE_PRINCIPAL_ID,
            "sub": SERVICE_PRINCIPAL_ID,
            "tid": TENANT_ID,
            "uti": secrets.token_urlsafe(16),
            "ver": "1.0",
        }
        if role_list:  # Entra omits the claim when nothing was consented
            claims["roles"] = list(role_list)
        header = {"typ": "JWT", "alg": "RS256", "kid": "emulator"}
        token = ".".join(
            (_b64url(json.dumps(header).encode()), _b64url(json.dumps(claims).encode())),
        )
        token += "." + _b64url(secrets.token_bytes(64))
        issued = IssuedToken(token, role_list, time.time() + lifetime)
        with self._lock:
            self._tokens[token] = issued
        return issued

    def lookup(self, token: str) -> IssuedToken | None:
        with self._lock:
            return self._tokens.get(token)

    def expire_all(self) -> None:
        with self._lock:
            for issued in self._tokens.values():
                issued.revoked = True

    def revoke(self, token: str) -> None:
        """Refuse this one token from now on (unknown tokens are ignored)."""
        with self._lock:
            issued = self._tokens.get(token)
            if issued is not None:
                issued.revoked = True

    def tokens(self) -> list[str]:
        with self._lock:
            return list(self._tokens)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def accepted_scopes(graph_url: str) -> dict[str, str]:
    """``scope`` values Entra would accept for Graph, mapped to the token audience."""
    return {
        f"{graph_url}/.default": graph_url,
        f"{GRAPH_RESOURCE}/.default": GRAPH_RESOURCE,
    }


def check_tenant(tenant: str) -> None:
    """Only this tenant, by id or verified domain; multi-tenant aliases can't do app-only."""
    if tenant.lower() in (TENANT_ID, TENANT_DOMAIN):
        return
    if tenant.lower() in MULTI_TENANT_ALIASES:
        raise EntraError(
            400,
            "invalid_request",
            50059,
            "No tenant-identifying information found in either the request or implied by "
            "any provided credentials.",
        )
    raise EntraError(
        400,
        "invalid_request",
        90002,
        f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and "
        "are signing into the correct cloud. Check with your subscription administrator, "
        "this may happen if there are no active subscriptions for the tenant.",
    )


def _missing(name: str) -> EntraError:
    return EntraError(
        400,
        "invalid_request",
        900144,
        f"The request body must contain the following parameter: '{name}'.",
    )


def client_credentials(form: Mapping[str, str], authorization: str | None) -> tuple[str, str]:
    """``(client_id, client_secret)`` from the form or HTTP Basic (RFC 6749 2.3.1)."""
    client_id = form.get("client_id", "")
    secret = form.get("client_secret", "")
    if authorization and authorization[:6].lower() == "basic ":
        try:
            decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise EntraError(
                401, "invalid_client", 7000218, "Malformed HTTP Basic client authentication."
            ) from None
        basic_id, _, basic_secret = decoded.partition(":")
        client_id = client_id or unquote_plus(basic_id)
        secret = secret or unquote_plus(basic_secret)
    return client_id, secret


def grant_token(
    form: Mapping[str, str],
    authorization: str | None,
    *,
    graph_url: str,
    roles: list[str],
    lifetime: int,
    store: TokenStore,
    secret_expired: bool = False,
) -> dict[str, object]:
    """Validate a client-credentials request the way Entra does, in Entra's order."""
    grant_type = form.get("grant_type")
    if not grant_type:
        raise _missing("grant_type")
    if grant_type != "client_credentials":
        raise EntraError(
            400,
            "unsupported_grant_type",
            70003,
            f"The app requested an unsupported grant type '{grant_type}'.",
        )
    client_id, secret = client_credentials(form, authorization)
    if not client_id:
        raise _missing("client_id")
    if client_id.lower() != CLIENT_ID:
        raise EntraError(
            400,
            "unauthorized_client",
            700016,
            f"Application with identifier '{client_id}' was not found in the directory "
            f"'Contoso'. This can happen if the application has not been installed by the "
            "administrator of the tenant or consented to by any user in the tenant. You may "
            "have sent your authentication request to the wrong tenant.",
        )
    _check_secret(form, secret, expired=secret_expired)
    scope = form.get("scope")
    if not scope:
        raise _missing("scope")
    audiences = accepted_scopes(graph_url)
    if scope not in audiences:
        raise EntraError(
            400,
            "invalid_scope",
            70011,
            f"The provided request must include a 'scope' input parameter. The provided value "
            f"for the input parameter 'scope' is not valid. The scope {scope} is not valid.",
        )
    issued = store.issue(audiences[scope], roles, lifetime)
    return {
        "token_type": "Bearer",
        "expires_in": lifetime,
        "ext_expires_in": lifetime + EXT_EXPIRES_EXTRA,
        "access_token": issued.token,
    }


def _check_secret(form: Mapping[str, str], secret: str, *, expired: bool) -> None:
    """Only a client secret is registered: assertions fail, wrong or expired secrets fail.

    Entra matches the secret against the app's keys first, so a wrong secret stays 7000215
    even when every key has expired; only the right one learns it expired (7000222).
    """
    if not secret and form.get("client_assertion"):
        raise EntraError(
            401,
            "invalid_client",
            700027,
            "Client assertion contains an invalid signature. [Reason - The key was not found.]",
        )
    if not secret:
        raise EntraError(
            401,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or "
            "'client_secret'.",
        )
    if not secrets.compare_digest(secret.encode(), CLIENT_SECRET.encode()):
        raise EntraError(
            401,
            "invalid_client",
            7000215,
            "Invalid client secret provided. Ensure the secret being sent in the request is "
            "the client secret value, not the client secret ID, for a secret added to app "
            f"'{CLIENT_ID}'.",
        )
    if expired:
        raise EntraError(
            401,
            "invalid_client",
            7000222,
            f"The provided client secret keys for app '{CLIENT_ID}' are expired. Visit the "
            "Azure portal to create new keys for your app: https://aka.ms/NewClientSecret, or "
            "consider using certificate credentials for added security: "
            "https://aka.ms/certCreds.",
        )


def new_trace_id() -> str:
    return str(uuid.uuid4())
