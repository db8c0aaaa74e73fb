"""Entra's client-credentials token endpoint, and the tokens it hands out.

Tokens are JWT-shaped (clients may decode the ``roles`` claim for diagnostics) but carry a
random signature: like real Graph tokens they are opaque, valid only because the emulator
remembers issuing them. Roles are fixed at issue time, as in Entra.

Client assertions (certificate credentials) are verified as Entra does: the signature against
a certificate registered with ``GraphEmulator.register_certificate``, the issuer, the
audience (this token endpoint) and the lifetime. That needs ``cryptography``, imported only
when an assertion arrives or a certificate is registered, so the emulator itself does not
need it.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, NamedTuple
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
    app_id: str = CLIENT_ID  # the ``appid`` claim: Outlook's limits count per application

    def valid(self, now: float) -> bool:
        return not self.revoked and now < self.expires_at


class TokenStore:
    """Issues tokens and answers "is this bearer token good?" for the Graph side."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens: dict[str, IssuedToken] = {}

    def issue(
        self,
        resource: str,
        roles: Iterable[str],
        lifetime: int,
        client_auth: str = "1",
        app_id: str = CLIENT_ID,
    ) -> IssuedToken:
        """A token for ``resource``; ``client_auth`` "1": a secret, "2": a certificate."""
        now = int(time.time())
        role_list = tuple(roles)
        claims: dict[str, object] = {
            "aud": resource,
            "iss": f"https://sts.windows.net/{TENANT_ID}/",
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "app_displayname": APP_DISPLAY_NAME,
            "appid": app_id,
            "appidacr": client_auth,
            "azp": app_id,
            "azpacr": client_auth,
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
        parts = (json.dumps(header).encode(), json.dumps(claims).encode(), secrets.token_bytes(64))
        token = ".".join(_b64url(part) for part in parts)
        issued = IssuedToken(token, role_list, time.time() + lifetime, app_id=app_id)
        with self._lock:
            self._tokens[token] = issued
        return issued

    def lookup(self, token: str) -> IssuedToken | None:
        with self._lock:
            return self._tokens.get(token)

    def expire_all(self) -> None:
        """Every token issued so far is refused from now on (401 InvalidAuthenticationToken)."""
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


def check_tenant(tenant: str, *, strict: bool = True) -> None:
    """Only this tenant, by id or verified domain (``strict=False``: any tenant, the dev
    inbox's mode); multi-tenant aliases can't do app-only either way."""
    if tenant.lower() in (TENANT_ID, TENANT_DOMAIN):
        return
    if tenant.lower() in MULTI_TENANT_ALIASES:
        raise _invalid_request(
            50059,
            "No tenant-identifying information found in either the request or implied by "
            "any provided credentials.",
        )
    if not strict and tenant.strip():
        return
    raise _invalid_request(
        90002,
        f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and "
        "are signing into the correct cloud. Check with your subscription administrator, "
        "this may happen if there are no active subscriptions for the tenant.",
    )


def _invalid_request(code: int, description: str) -> EntraError:
    return EntraError(400, "invalid_request", code, description)


def _invalid_client(code: int, description: str, status: int = 401) -> EntraError:
    return EntraError(status, "invalid_client", code, description)


def _required(value: str | None, name: str) -> str:
    """``value``, or AADSTS900144 when the form left parameter ``name`` out or empty."""
    if not value:
        raise _invalid_request(
            900144, f"The request body must contain the following parameter: '{name}'."
        )
    return value


def client_credentials(form: Mapping[str, str], authorization: str | None) -> tuple[str, str]:
    """``(client_id, client_secret)`` from the form or HTTP Basic (RFC 6749 2.3.1)."""
    client_id = form.get("client_id", "")
    secret = form.get("client_secret", "")
    if authorization and authorization[:6].lower() == "basic ":
        try:
            decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise _invalid_client(7000218, "Malformed HTTP Basic client authentication.") from None
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
    certificates: Sequence[RegisteredCertificate] = (),
    audiences: Iterable[str] = (),
    applications: Mapping[str, str] | None = None,
    strict: bool = True,
) -> dict[str, object]:
    """Validate a client-credentials request the way Entra does, in Entra's order.

    ``applications`` maps the client ids of further app registrations to their secrets.
    ``strict=False`` (the dev inbox): any client id, with any secret or any well-formed
    signed assertion (no registered certificate needed).
    """
    grant_type = _required(form.get("grant_type"), "grant_type")
    if grant_type != "client_credentials":
        raise EntraError(
            400,
            "unsupported_grant_type",
            70003,
            f"The app requested an unsupported grant type '{grant_type}'.",
        )
    client_id, secret = client_credentials(form, authorization)
    app = _required(client_id, "client_id").lower()
    known = {CLIENT_ID: CLIENT_SECRET, **(applications or {})}
    if app not in known and strict:
        raise EntraError(
            400,
            "unauthorized_client",
            700016,
            f"Application with identifier '{client_id}' was not found in the directory "
            f"'Contoso'. This can happen if the application has not been installed by the "
            "administrator of the tenant or consented to by any user in the tenant. You may "
            "have sent your authentication request to the wrong tenant.",
        )
    client_auth = "1"
    if not secret and form.get("client_assertion"):
        registered = certificates if app == CLIENT_ID else ()
        check_assertion(form, client_id, registered, frozenset(audiences), verify=strict)
        client_auth = "2"
    elif strict or app in known or not secret:  # permissive: any secret, but not none (7000218)
        _check_secret(secret, known.get(app, ""), app, expired=secret_expired)
    scope = _required(form.get("scope"), "scope")
    audiences = accepted_scopes(graph_url)
    if scope not in audiences:
        raise EntraError(
            400,
            "invalid_scope",
            70011,
            f"The provided request must include a 'scope' input parameter. The provided value "
            f"for the input parameter 'scope' is not valid. The scope {scope} is not valid.",
        )
    issued = store.issue(audiences[scope], roles, lifetime, client_auth, app)
    return {
        "token_type": "Bearer",
        "expires_in": lifetime,
        "ext_expires_in": lifetime + EXT_EXPIRES_EXTRA,
        "access_token": issued.token,
    }


def _check_secret(secret: str, expected: str, client_id: str, *, expired: bool) -> None:
    """Wrong or expired secrets fail.

    Entra matches the secret against the app's keys first, so a wrong secret stays 7000215
    even when every key has expired; only the right one learns it expired (7000222).
    """
    if not secret:
        raise _invalid_client(
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or "
            "'client_secret'.",
        )
    if not secrets.compare_digest(secret.encode(), expected.encode()):
        raise _invalid_client(
            7000215,
            "Invalid client secret provided. Ensure the secret being sent in the request is "
            "the client secret value, not the client secret ID, for a secret added to app "
            f"'{client_id}'.",
        )
    if expired:
        raise _invalid_client(
            7000222,
            f"The provided client secret keys for app '{client_id}' are expired. Visit the "
            "Azure portal to create new keys for your app: https://aka.ms/NewClientSecret, or "
            "consider using certificate credentials for added security: "
            "https://aka.ms/certCreds.",
        )


# certificate credentials ------------------------------------------------------------------

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: Clock skew tolerated on an assertion's nbf/exp (assumed: Entra does not document it).
ASSERTION_SKEW = 300
CRYPTOGRAPHY_MISSING = (
    "The Graph emulator verifies client assertions with the cryptography package, which is "
    "not installed: pip install django-msgraph-mailer[certificate]"
)


@dataclass(frozen=True)
class RegisteredCertificate:
    """A certificate uploaded to the emulated app registration (its public part only)."""

    x5t_s256: str  # base64url SHA-256 thumbprint, as in an assertion's x5t#S256
    x5t: str  # base64url SHA-1 thumbprint, as in an assertion's x5t
    thumbprint: str  # SHA-1, upper-case hex: what Entra's errors and the portal show
    not_after: float
    public_key: Any = field(repr=False)


def register(cert_pem: str | bytes) -> RegisteredCertificate:
    """Parse a PEM certificate (what you would upload to the app registration)."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
    except ImportError:
        raise RuntimeError(CRYPTOGRAPHY_MISSING) from None
    data = cert_pem.encode() if isinstance(cert_pem, str) else cert_pem
    certificate = x509.load_pem_x509_certificate(data)
    sha1 = certificate.fingerprint(hashes.SHA1())  # noqa: S303
    return RegisteredCertificate(
        x5t_s256=_b64url(certificate.fingerprint(hashes.SHA256())),
        x5t=_b64url(sha1),
        thumbprint=sha1.hex().upper(),
        not_after=certificate.not_valid_after_utc.timestamp(),
        public_key=certificate.public_key(),
    )


def _segment(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def check_assertion(
    form: Mapping[str, str],
    client_id: str,
    certificates: Sequence[RegisteredCertificate],
    audiences: frozenset[str],
    *,
    verify: bool = True,
) -> None:
    """Verify a client assertion the way Entra does, raising Entra's error for each fault.

    ``verify=False`` (the dev inbox): a well-formed, signed assertion for this client id,
    within its time range, is enough; no certificate, signature or audience is checked.

    Codes: 50027 malformed JWT, 700021 issuer/subject is not the client id, 700027 unknown
    certificate, bad signature, expired certificate or wrong audience (the audience's code is
    UNCONFIRMED), 700024 outside the assertion's time range (GRAPH_NOTES C.3).
    """
    assertion_type = _required(form.get("client_assertion_type"), "client_assertion_type")
    if assertion_type != ASSERTION_TYPE:
        raise _invalid_request(
            50027,
            f"Invalid client_assertion_type '{assertion_type}'; expected '{ASSERTION_TYPE}'.",
        )
    try:
        head, body, signature_text = form["client_assertion"].split(".")
        header = json.loads(_segment(head))
        claims = json.loads(_segment(body))
        signature = _segment(signature_text)
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise ValueError("not a JSON object")
        if not verify and (not signature or header.get("alg") in (None, "", "none")):
            raise ValueError("not signed")
    except (ValueError, binascii.Error):
        raise _invalid_client(50027, "JWT token is invalid or malformed.", 400) from None
    claimed = {str(claims.get(name, "")).lower() for name in ("iss", "sub")}
    if claimed != {client_id.lower()}:
        raise _invalid_client(
            700021,
            "Client assertion application identifier doesn't match 'client_id' parameter. "
            "Review the documentation at https://aka.ms/certCreds.",
            400,
        )
    if not verify:
        _check_time_range(claims)
        return
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding
    except ImportError:
        raise EntraError(500, "server_error", 50000, CRYPTOGRAPHY_MISSING) from None
    x5t, x5t_s256 = header.get("x5t"), header.get("x5t#S256")
    used = next((c for c in certificates if x5t_s256 == c.x5t_s256 or x5t == c.x5t), None)
    if used is None:
        raise _key_refused(
            "The certificate with identifier used to sign the client assertion is not "
            "registered on application.",
            "The key was not found.",
            _thumbprint_hex(header),
        )
    algorithms: dict[str, Any] = {
        "PS256": padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
        "RS256": padding.PKCS1v15(),
    }
    if header.get("alg") not in algorithms:
        reason = f"The algorithm '{header.get('alg')}' is not supported."
        raise _key_refused(_BAD_SIGNATURE, reason, used.thumbprint)
    try:
        used.public_key.verify(
            signature,
            f"{head}.{body}".encode(),
            algorithms[str(header["alg"])],
            hashes.SHA256(),
        )
    except InvalidSignature:
        reason = "The provided signature value did not match the expected signature value."
        raise _key_refused(_BAD_SIGNATURE, reason, used.thumbprint) from None
    if time.time() > used.not_after:
        raise _key_refused(_BAD_SIGNATURE, "The key used is expired.", used.thumbprint)
    _check_time_range(claims)
    if str(claims.get("aud", "")).rstrip("/") not in audiences:
        raise _invalid_client(
            700027,
            "Client assertion audience claim does not match Realm issuer. The audience must "
            "be the token endpoint the assertion is sent to.",
        )


def _check_time_range(claims: Mapping[str, Any]) -> None:
    """AADSTS700024 outside the assertion's nbf/exp (with ``ASSERTION_SKEW``)."""
    now = time.time()
    try:
        not_before = float(claims.get("nbf", 0))
        expires = float(claims["exp"])
    except (KeyError, TypeError, ValueError):
        raise _invalid_client(50027, "JWT token is invalid or malformed.", 400) from None
    if now > expires + ASSERTION_SKEW or now < not_before - ASSERTION_SKEW:
        raise _invalid_client(
            700024,
            f"Client assertion is not within its valid time range. Current time: "
            f"{_stamp(now)}, assertion valid from {_stamp(not_before)}, expiry time of "
            f"assertion {_stamp(expires)}. Review the documentation at "
            "https://aka.ms/certCreds.",
            400,
        )


_BAD_SIGNATURE = "Client assertion contains an invalid signature."


def _key_refused(problem: str, reason: str, thumbprint: str) -> EntraError:
    """AADSTS700027 about the key that signed the assertion, in Entra's words."""
    return _invalid_client(
        700027, f"{problem} [Reason - {reason}, Thumbprint of key used by client: '{thumbprint}']"
    )


def _thumbprint_hex(header: Mapping[str, Any]) -> str:
    value = header.get("x5t") or header.get("x5t#S256") or ""
    try:
        return _segment(str(value)).hex().upper()
    except (ValueError, binascii.Error):
        return ""


def _stamp(moment: float) -> str:
    return datetime.fromtimestamp(moment, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.0000000Z")


class EmulatedAccessToken(NamedTuple):
    """azure-identity's ``AccessToken``: the token and its expiry as a Unix timestamp."""

    token: str
    expires_on: int


class EmulatorCredentialError(Exception):
    """What the emulated credential raises (azure-identity raises ClientAuthenticationError)."""


class EmulatorCredential:
    """A stand-in for azure-identity's ``ManagedIdentityCredential``: ``get_token(*scopes)``
    answers with tokens of the emulated tenant, so TOKEN_CREDENTIAL can be tested offline.
    ``calls`` counts the tokens asked for; ``fail`` makes the next calls raise."""

    def __init__(self, store: TokenStore, graph_url: str, roles: Any, lifetime: Any) -> None:
        self._store = store
        self._graph_url = graph_url
        self._roles = roles
        self._lifetime = lifetime
        self.calls = 0
        self.fail: str | None = None

    def __repr__(self) -> str:
        return f"<EmulatorCredential calls={self.calls}>"

    def get_token(self, *scopes: str, **kwargs: Any) -> EmulatedAccessToken:
        self.calls += 1
        if self.fail:
            raise EmulatorCredentialError(self.fail)
        audiences = accepted_scopes(self._graph_url)
        if len(scopes) != 1 or scopes[0] not in audiences:
            raise EmulatorCredentialError(
                f"AADSTS70011: The provided value for scope {' '.join(scopes)} is not valid."
            )
        lifetime = int(self._lifetime())
        issued = self._store.issue(audiences[scopes[0]], self._roles(), lifetime)
        return EmulatedAccessToken(issued.token, int(time.time()) + lifetime)
