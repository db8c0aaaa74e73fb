"""Certificate credentials: load a PEM key and certificate, sign Entra client assertions.

Entra's certificate credential is a short-lived JWT (the *client assertion*) signed with the
private key of a certificate uploaded to the app registration (GRAPH_NOTES D.3). The current
format is PS256 with the certificate's SHA-256 thumbprint in ``x5t#S256``; the older RS256
with the SHA-1 thumbprint in ``x5t`` is still accepted. Claims: ``aud`` = the token endpoint,
``iss`` = ``sub`` = the client id, a unique ``jti``, ``nbf``/``iat`` = now, ``exp`` a few
minutes ahead. An assertion is reused until a minute before it expires, as MSAL does.

``cryptography`` is an optional dependency (``pip install django-msgraph-mailer[certificate]``)
and is imported only here, only when a certificate is configured. Nothing in this module ever
puts the private key, its password or an assertion into a message, a repr or a log.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
    from cryptography.x509 import Certificate

Algorithm = Literal["PS256", "RS256"]

#: The one command that installs what certificate credentials need.
INSTALL_COMMAND = "pip install django-msgraph-mailer[certificate]"

#: How long a client assertion is valid (MSAL: 600 s), and how long before its expiry it is
#: replaced by a new one.
ASSERTION_LIFETIME = 600
ASSERTION_RENEW_AHEAD = 60

_KEY_BLOCK = re.compile(
    r"-----BEGIN ((?:RSA |ENCRYPTED )?PRIVATE KEY)-----.+?-----END \1-----", re.DOTALL
)
_CERT_BLOCK = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


class CertificateError(ValueError):
    """The certificate or its key cannot be used; the message never quotes either."""

    def __init__(self, message: str, kind: str = "certificate") -> None:
        super().__init__(message)
        self.kind = kind


def require_cryptography() -> None:
    """Raise CertificateError naming the install command when ``cryptography`` is missing."""
    try:
        import cryptography  # noqa: F401
    except ImportError:
        raise CertificateError(
            f"needs the cryptography package: {INSTALL_COMMAND}", kind="cryptography_missing"
        ) from None


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class ClientCertificate:
    """A loaded certificate and its private key: signs client assertions for Entra."""

    def __init__(
        self, key: RSAPrivateKey, certificate: Certificate, algorithm: Algorithm = "PS256"
    ) -> None:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.serialization import Encoding

        self._key = key
        self.certificate = certificate
        self.algorithm: Algorithm = algorithm
        der = certificate.public_bytes(Encoding.DER)
        #: SHA-256 and SHA-1 thumbprints, upper-case hex (the portal shows the SHA-1 one).
        self.thumbprint = hashlib.sha256(der).hexdigest().upper()
        self.thumbprint_sha1 = certificate.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303
        self._x5t_s256 = b64url(hashlib.sha256(der).digest())
        self._x5t = b64url(certificate.fingerprint(hashes.SHA1()))  # noqa: S303
        self._assertions: dict[tuple[str, str], tuple[str, float]] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"<ClientCertificate {self.algorithm} thumbprint={self.thumbprint} "
            f"expires={self.not_after:%Y-%m-%d}>"
        )

    @property
    def not_after(self) -> datetime:
        """When the certificate expires (UTC)."""
        return self.certificate.not_valid_after_utc

    @property
    def not_before(self) -> datetime:
        """When the certificate becomes valid (UTC)."""
        return self.certificate.not_valid_before_utc

    @property
    def subject(self) -> str:
        return self.certificate.subject.rfc4514_string()

    def assertion(self, client_id: str, audience: str, now: float | None = None) -> str:
        """A signed client assertion for ``client_id`` at the token endpoint ``audience``.

        The same assertion is returned until ASSERTION_RENEW_AHEAD seconds before it
        expires; then a new one (new ``jti``, new lifetime) is signed.
        """
        now = time.time() if now is None else now
        with self._lock:
            cached = self._assertions.get((client_id, audience))
            if cached is not None and now < cached[1] - ASSERTION_RENEW_AHEAD:
                return cached[0]
            value = self.sign(client_id, audience, now)
            self._assertions[(client_id, audience)] = (value, now + ASSERTION_LIFETIME)
            return value

    def sign(self, client_id: str, audience: str, now: float | None = None) -> str:
        """Sign a new client assertion (the claims Entra requires, GRAPH_NOTES D.3)."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        issued = int(time.time() if now is None else now)
        header: dict[str, str] = {"alg": self.algorithm, "typ": "JWT"}
        if self.algorithm == "PS256":
            header["x5t#S256"] = self._x5t_s256
        else:
            header["x5t"] = self._x5t
        claims = {
            "aud": audience,
            "iss": client_id,
            "sub": client_id,
            "jti": str(uuid.uuid4()),
            "nbf": issued,
            "iat": issued,
            "exp": issued + ASSERTION_LIFETIME,
        }
        signing_input = f"{_json_b64(header)}.{_json_b64(claims)}".encode()
        if self.algorithm == "PS256":
            pss = padding.PSS(
                mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH
            )
            signature = self._key.sign(signing_input, pss, hashes.SHA256())
        else:
            signature = self._key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input.decode()}.{b64url(signature)}"


_loaded: dict[str, ClientCertificate] = {}
_loaded_lock = threading.Lock()


def load(
    private_key: str,
    certificate: str | None,
    password: str | None = None,
    algorithm: Algorithm = "PS256",
) -> ClientCertificate:
    """Load the key and certificate, each PEM text or a file path; cached by content.

    ``certificate`` None: the certificate is read from the private key's PEM (a combined
    key + certificate file). With a chain, the certificate matching the key is used.
    """
    require_cryptography()
    key_pem = _read(private_key, "PRIVATE_KEY")
    cert_pem = key_pem if certificate is None else _read(certificate, "CERTIFICATE")
    digest = hashlib.sha256(
        b"\0".join((key_pem, cert_pem, (password or "").encode(), algorithm.encode()))
    ).hexdigest()
    with _loaded_lock:
        found = _loaded.get(digest)
    if found is not None:
        return found
    key = _private_key(key_pem, password)
    loaded = ClientCertificate(key, _matching_certificate(cert_pem, key), algorithm)
    with _loaded_lock:
        return _loaded.setdefault(digest, loaded)


def _read(value: str, name: str) -> bytes:
    if "-----BEGIN" in value:
        return value.encode()
    if "\n" in value or len(value) > 1024:
        raise CertificateError(f"{name} is neither PEM text (-----BEGIN ...) nor a file path")
    path = Path(value).expanduser()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CertificateError(
            f"{name} cannot be read from its file ({type(exc).__name__}: {exc.strerror})"
        ) from None
    if b"-----BEGIN" not in data:
        raise CertificateError(
            f"{name}'s file is not PEM (convert a .pfx with: openssl pkcs12 -in cert.pfx "
            "-out cert.pem -nodes)"
        )
    return data


def _private_key(pem: bytes, password: str | None) -> RSAPrivateKey:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    block = _KEY_BLOCK.search(pem.decode("ascii", "replace"))
    if block is None:
        raise CertificateError("PRIVATE_KEY holds no PEM private key block")
    try:
        key = load_pem_private_key(
            block.group(0).encode(), password.encode() if password is not None else None
        )
    except TypeError:
        if password is None:
            raise CertificateError("the private key is encrypted: set PASSWORD") from None
        raise CertificateError("PASSWORD is set but the private key is not encrypted") from None
    except ValueError:
        if password is not None:
            raise CertificateError(
                "the private key cannot be decrypted: PASSWORD is wrong, or the key is corrupt"
            ) from None
        raise CertificateError("PRIVATE_KEY is not a valid PEM private key") from None
    if not isinstance(key, RSAPrivateKey):
        raise CertificateError(
            f"the private key is {type(key).__name__.lstrip('_')}, but Entra signs client "
            "assertions with RSA keys only"
        )
    return key


def _matching_certificate(pem: bytes, key: RSAPrivateKey) -> Certificate:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
    from cryptography.x509 import load_pem_x509_certificate

    blocks = _CERT_BLOCK.findall(pem.decode("ascii", "replace"))
    if not blocks:
        raise CertificateError("CERTIFICATE holds no PEM certificate block")
    public = key.public_key().public_numbers()
    for block in blocks:
        try:
            certificate = load_pem_x509_certificate(block.encode())
        except ValueError:
            raise CertificateError("CERTIFICATE is not a valid PEM certificate") from None
        candidate = certificate.public_key()
        if isinstance(candidate, RSAPublicKey) and candidate.public_numbers() == public:
            return certificate
    raise CertificateError("the private key does not belong to the certificate")


def _json_b64(value: object) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())
