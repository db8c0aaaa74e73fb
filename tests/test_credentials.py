"""Enterprise credentials and national clouds: certificates, token credentials, CLOUD.

Certificates are generated here, at test time (no key file is committed).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from io import StringIO
from pathlib import Path
from typing import Any

import django
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from django.core import mail
from django.core.checks import run_checks
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from msgraph_mail import auth, certificate
from msgraph_mail.auth import tokens
from msgraph_mail.conf import CLOUDS, load_settings
from msgraph_mail.emulator import CLIENT_ID, CLIENT_SECRET, TENANT_ID, GraphEmulator
from msgraph_mail.exceptions import AuthenticationError, ConfigurationError

from .helpers import Pair, make_pair

TENANT = "11111111-2222-3333-4444-555555555555"
CLIENT = "66666666-7777-8888-9999-000000000000"
SECRET = "Zq8~credential-secret-that-must-never-leak"
PASSWORD = "pfx-Password-that-must-never-leak"
BASE = {"TENANT_ID": TENANT, "CLIENT_ID": CLIENT}
INSTALL = "pip install django-msgraph-mailer[certificate]"
BACKEND = "msgraph_mail.backend.EmailBackend"
CONTOSO = {"DEFAULT_FROM_EMAIL": "noreply@contoso.com", "SERVER_EMAIL": "noreply@contoso.com"}


# certificates made at test time -------------------------------------------------------------


@pytest.fixture(scope="module")
def pair() -> Pair:
    return make_pair()


@pytest.fixture(autouse=True)
def _no_resolved_credentials() -> Iterator[None]:
    auth._credentials.clear()
    yield
    auth._credentials.clear()


def b64decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def decode(assertion: str) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    head, body, signature = assertion.split(".")
    return json.loads(b64decode(head)), json.loads(b64decode(body)), b64decode(signature)


def cert_settings(emulator: GraphEmulator, pair: Pair, **cert: Any) -> dict[str, Any]:
    settings = emulator.settings(
        CLIENT_CERTIFICATE={"PRIVATE_KEY": pair.key, "CERTIFICATE": pair.cert, **cert}
    )
    del settings["CLIENT_SECRET"]
    return settings


def credential_settings(emulator: GraphEmulator, credential: Any) -> dict[str, Any]:
    settings = emulator.settings(TOKEN_CREDENTIAL=credential)
    del settings["CLIENT_SECRET"]
    return settings


def send() -> int:
    return mail.send_mail("t", "b", "noreply@contoso.com", ["a@x.com"])


def claims_of(token: str) -> dict[str, Any]:
    return decode(token)[1]


def check_ids(**overrides: Any) -> tuple[list[str], str]:
    values = {"EMAIL_BACKEND": BACKEND, **CONTOSO, **overrides}
    if django.VERSION >= (6, 1):
        values["MAILERS"] = {"default": {"BACKEND": values.pop("EMAIL_BACKEND")}}
    with override_settings(**values):
        found = run_checks(tags=["mail"])
    output = " ".join(f"{m} {m.hint}" for m in found)
    return [m.id for m in found if m.id and m.id.startswith("msgraph_mail.")], output


# settings ---------------------------------------------------------------------------------


def test_certificate_from_pem_text_and_from_files(pair: Pair, tmp_path: Path) -> None:
    key_file, cert_file = tmp_path / "key.pem", tmp_path / "cert.pem"
    key_file.write_text(pair.key)
    cert_file.write_text(pair.cert)
    thumbprint = hashlib.sha256(pair.der).hexdigest().upper()
    for private_key, cert in ((pair.key, pair.cert), (str(key_file), cert_file)):
        config = {"PRIVATE_KEY": private_key, "CERTIFICATE": cert}
        with override_settings(MSGRAPH_MAIL={**BASE, "CLIENT_CERTIFICATE": config}):
            settings = load_settings()
        assert settings.credential_kind == "certificate"
        assert settings.client_secret is None
        assert settings.client_certificate is not None
        assert settings.client_certificate.load().thumbprint == thumbprint


def test_combined_pem_file_needs_no_certificate_key(pair: Pair, tmp_path: Path) -> None:
    combined = tmp_path / "combined.pem"
    combined.write_text(pair.key + pair.cert)
    with override_settings(
        MSGRAPH_MAIL={**BASE, "CLIENT_CERTIFICATE": {"PRIVATE_KEY": str(combined)}}
    ):
        settings = load_settings()
    assert settings.client_certificate is not None
    assert (
        settings.client_certificate.load().thumbprint
        == hashlib.sha256(pair.der).hexdigest().upper()
    )


def test_encrypted_key_with_password() -> None:
    locked = make_pair(password=PASSWORD)
    config = {"PRIVATE_KEY": locked.key, "CERTIFICATE": locked.cert, "PASSWORD": PASSWORD}
    with override_settings(MSGRAPH_MAIL={**BASE, "CLIENT_CERTIFICATE": config}):
        settings = load_settings()
    assert PASSWORD not in repr(settings)
    assert PASSWORD not in str(settings.model_dump())
    assert locked.body not in repr(settings)
    assert locked.body not in str(settings.model_dump())


def certificate_error(config: dict[str, Any], *secrets: str) -> str:
    with (
        override_settings(MSGRAPH_MAIL={**BASE, "CLIENT_CERTIFICATE": config}),
        pytest.raises(ConfigurationError) as info,
    ):
        load_settings()
    for secret in secrets:
        assert secret not in str(info.value)
    return str(info.value)


def test_certificate_problems_are_explained_without_quoting_the_key(
    pair: Pair, tmp_path: Path
) -> None:
    locked = make_pair(password=PASSWORD)
    other = make_pair()
    ec_key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    cases: list[tuple[dict[str, Any], str]] = [
        ({"PRIVATE_KEY": locked.key, "CERTIFICATE": locked.cert}, "encrypted: set PASSWORD"),
        (
            {"PRIVATE_KEY": locked.key, "CERTIFICATE": locked.cert, "PASSWORD": "wrong"},
            "PASSWORD is wrong",
        ),
        (
            {"PRIVATE_KEY": pair.key, "CERTIFICATE": other.cert},
            "does not belong to the certificate",
        ),
        ({"PRIVATE_KEY": pair.key}, "CERTIFICATE holds no PEM certificate"),
        (
            {"PRIVATE_KEY": str(tmp_path / "missing.pem"), "CERTIFICATE": pair.cert},
            "PRIVATE_KEY cannot be read from its file",
        ),
        (
            {"PRIVATE_KEY": pair.body, "CERTIFICATE": pair.cert},
            "neither PEM text (-----BEGIN ...) nor a file path",
        ),
        (
            {"PRIVATE_KEY": ec_key.decode(), "CERTIFICATE": pair.cert},
            "RSA keys only",
        ),
        (
            {"PRIVATE_KEY": pair.key, "CERTIFICATE": pair.cert, "ALGORITHM": "ES256"},
            "MSGRAPH_MAIL['CLIENT_CERTIFICATE']['ALGORITHM']",
        ),
        ({"CERTIFICATE": pair.cert}, "MSGRAPH_MAIL['CLIENT_CERTIFICATE']['PRIVATE_KEY'] is req"),
        (
            {"PRIVATE_KEY": pair.key, "CERTIFICATE": pair.cert, "THUMBPRINT": "x"},
            "['THUMBPRINT']",
        ),
    ]
    for config, phrase in cases:
        message = certificate_error(config, pair.body, locked.body, PASSWORD)
        assert phrase in message, (phrase, message)
        assert "CLIENT_CERTIFICATE" in message


def test_without_cryptography_the_error_names_the_install_command(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "cryptography", None)
    message = certificate_error({"PRIVATE_KEY": pair.key, "CERTIFICATE": pair.cert}, pair.body)
    assert INSTALL in message
    found, output = check_ids(
        MSGRAPH_MAIL={**BASE, "CLIENT_CERTIFICATE": {"PRIVATE_KEY": pair.key}}
    )
    assert found == ["msgraph_mail.E014"]
    assert INSTALL in output
    assert pair.body not in output


def test_the_package_and_the_emulator_import_without_cryptography() -> None:
    code = (
        "import sys; sys.modules['cryptography'] = None\n"
        "import msgraph_mail.emulator, msgraph_mail.certificate, msgraph_mail.auth\n"
        "from msgraph_mail.emulator import GraphEmulator\n"
        "try:\n"
        "    GraphEmulator().register_certificate('x')\n"
        "except RuntimeError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run(  # noqa: S603 - this interpreter, fixed code
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "", "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert INSTALL in result.stdout


def test_exactly_one_credential(pair: Pair) -> None:
    certificate_config = {"PRIVATE_KEY": pair.key, "CERTIFICATE": pair.cert}
    with (
        override_settings(
            MSGRAPH_MAIL={**BASE, "CLIENT_SECRET": SECRET, "CLIENT_CERTIFICATE": certificate_config}
        ),
        pytest.raises(ConfigurationError) as info,
    ):
        load_settings()
    message = str(info.value)
    assert (
        "MSGRAPH_MAIL['CLIENT_SECRET'] and MSGRAPH_MAIL['CLIENT_CERTIFICATE'] both set" in message
    )
    assert SECRET not in message
    assert pair.body not in message
    with (
        override_settings(MSGRAPH_MAIL=BASE, MSGRAPH_CLIENT_SECRET=SECRET),
        pytest.raises(ConfigurationError, match=r"MSGRAPH_CLIENT_SECRET and backend option"),
    ):
        load_settings({"token_credential": "tests.test_credentials.FACTORY"})


@pytest.mark.parametrize(
    ("settings", "expected", "named"),
    [
        ({**BASE}, "msgraph_mail.E005", "TOKEN_CREDENTIAL"),
        (
            {**BASE, "CLIENT_SECRET": SECRET, "TOKEN_CREDENTIAL": "tests.test_credentials.FACTORY"},
            "msgraph_mail.E012",
            "CLIENT_SECRET and TOKEN_CREDENTIAL",
        ),
        ({**BASE, "TOKEN_CREDENTIAL": "nowhere.credential"}, "msgraph_mail.E009", "cannot import"),
        ({**BASE, "TOKEN_CREDENTIAL": object()}, "msgraph_mail.E009", "get_token"),
    ],
)
def test_credential_checks(settings: dict[str, Any], expected: str, named: str) -> None:
    found, output = check_ids(MSGRAPH_MAIL=settings)
    assert found == [expected]
    assert named in output
    assert SECRET not in output


def test_three_credentials_are_all_named(pair: Pair) -> None:
    settings = {
        **BASE,
        "CLIENT_SECRET": SECRET,
        "CLIENT_CERTIFICATE": {"PRIVATE_KEY": pair.key, "CERTIFICATE": pair.cert},
        "TOKEN_CREDENTIAL": "tests.test_credentials.FACTORY",
    }
    found, output = check_ids(MSGRAPH_MAIL=settings)
    assert found == ["msgraph_mail.E012"]
    assert "CLIENT_SECRET and CLIENT_CERTIFICATE and TOKEN_CREDENTIAL" in output
    assert SECRET not in output
    assert pair.body not in output


# clouds -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cloud", "login", "graph"),
    [
        ("global", "https://login.microsoftonline.com", "https://graph.microsoft.com"),
        ("usgov", "https://login.microsoftonline.us", "https://graph.microsoft.us"),
        ("usgovdod", "https://login.microsoftonline.us", "https://dod-graph.microsoft.us"),
        ("china", "https://login.chinacloudapi.cn", "https://microsoftgraph.chinacloudapi.cn"),
    ],
)
def test_cloud_sets_every_host(cloud: str, login: str, graph: str) -> None:
    with override_settings(MSGRAPH_MAIL={**BASE, "CLIENT_SECRET": SECRET, "CLOUD": cloud}):
        settings = load_settings()
    assert (settings.authority_url, settings.graph_url) == (login, graph) == CLOUDS[cloud]
    assert settings.token_url == f"{login}/{TENANT}/oauth2/v2.0/token"
    assert settings.scope == f"{graph}/.default"
    assert check_ids(MSGRAPH_MAIL={**BASE, "CLIENT_SECRET": SECRET, "CLOUD": cloud})[0] == []


def test_explicit_urls_override_the_cloud() -> None:
    config = {**BASE, "CLIENT_SECRET": SECRET, "CLOUD": "usgov"}
    with override_settings(MSGRAPH_MAIL={**config, "GRAPH_URL": "https://graph.contoso.test"}):
        settings = load_settings()
    assert settings.graph_url == "https://graph.contoso.test"
    assert settings.authority_url == "https://login.microsoftonline.us"
    assert settings.scope == "https://graph.contoso.test/.default"


@pytest.mark.parametrize(
    ("overrides", "mixed"),
    [
        ({"CLOUD": "china", "GRAPH_URL": "https://graph.microsoft.com"}, True),
        (
            {
                "GRAPH_URL": "https://graph.microsoft.us",
                "AUTHORITY_URL": "https://login.microsoftonline.com",
            },
            True,
        ),
        ({"CLOUD": "usgovdod", "GRAPH_URL": "https://graph.microsoft.us"}, True),
        ({"AUTHORITY_URL": "https://login.partner.microsoftonline.cn"}, True),
        (
            {
                "GRAPH_URL": "https://dod-graph.microsoft.us",
                "AUTHORITY_URL": "https://login.microsoftonline.us",
            },
            False,
        ),
        ({"CLOUD": "china", "AUTHORITY_URL": "https://login.partner.microsoftonline.cn"}, False),
        ({"CLOUD": "usgov", "GRAPH_URL": "http://127.0.0.1:8625"}, False),
        ({"GRAPH_URL": "https://graph-proxy.contoso.test"}, False),
    ],
)
def test_hosts_of_different_clouds_are_flagged(overrides: dict[str, str], mixed: bool) -> None:
    found, output = check_ids(MSGRAPH_MAIL={**BASE, "CLIENT_SECRET": SECRET, **overrides})
    assert found == (["msgraph_mail.E013"] if mixed else [])
    if mixed:
        assert "different clouds" in output


def test_unknown_cloud_is_invalid() -> None:
    found, output = check_ids(MSGRAPH_MAIL={**BASE, "CLIENT_SECRET": SECRET, "CLOUD": "gcc"})
    assert found == ["msgraph_mail.E009"]
    assert "CLOUD is invalid" in output


# client assertions ------------------------------------------------------------------------


def test_assertion_has_the_claims_entra_requires(pair: Pair) -> None:
    loaded = certificate.load(pair.key, pair.cert)
    audience = f"https://login.microsoftonline.com/{TENANT}/oauth2/v2.0/token"
    before = int(time.time())
    header, claims, signature = decode(loaded.assertion(CLIENT, audience))
    assert header == {
        "alg": "PS256",
        "typ": "JWT",
        "x5t#S256": base64.urlsafe_b64encode(hashlib.sha256(pair.der).digest())
        .rstrip(b"=")
        .decode(),
    }
    assert claims["aud"] == audience
    assert claims["iss"] == claims["sub"] == CLIENT
    assert uuid.UUID(claims["jti"])
    assert before <= claims["nbf"] == claims["iat"] <= time.time()
    assert claims["exp"] - claims["nbf"] == certificate.ASSERTION_LIFETIME <= 600
    head, body, _ = loaded.assertion(CLIENT, audience).split(".")
    public = x509.load_pem_x509_certificate(pair.cert.encode()).public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    public.verify(
        signature,
        f"{head}.{body}".encode(),
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
        hashes.SHA256(),
    )


def test_rs256_with_x5t_is_available(pair: Pair) -> None:
    loaded = certificate.load(pair.key, pair.cert, algorithm="RS256")
    header, _, signature = decode(loaded.sign(CLIENT, "https://login/token"))
    sha1 = hashlib.sha1(pair.der, usedforsecurity=False).digest()
    assert header == {
        "alg": "RS256",
        "typ": "JWT",
        "x5t": base64.urlsafe_b64encode(sha1).rstrip(b"=").decode(),
    }
    assert len(signature) == 256


def test_assertion_is_reused_then_regenerated_before_it_expires(pair: Pair) -> None:
    loaded = certificate.load(pair.key, pair.cert)
    start = time.time() + 10_000  # a window of its own, not shared with other tests
    first = loaded.assertion(CLIENT, "https://aud/a", now=start)
    assert loaded.assertion(CLIENT, "https://aud/a", now=start + 500) == first
    renewed = loaded.assertion(CLIENT, "https://aud/a", now=start + 541)
    assert renewed != first
    assert decode(renewed)[1]["exp"] == int(start + 541) + 600
    assert loaded.assertion(CLIENT, "https://aud/b", now=start) != first  # per audience


def test_repr_shows_thumbprint_never_the_key(pair: Pair) -> None:
    loaded = certificate.load(pair.key, pair.cert)
    assert loaded.thumbprint in repr(loaded)
    assert pair.body not in repr(loaded)


# against the emulator ---------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["PS256", "RS256"])
def test_certificate_credential_sends_mail(
    emulator: GraphEmulator, pair: Pair, algorithm: str
) -> None:
    emulator.register_certificate(pair.cert)
    with override_settings(MSGRAPH_MAIL=cert_settings(emulator, pair, ALGORITHM=algorithm)):
        assert send() == 1
        assert send() == 1
    assert emulator.count("token") == 1  # cached, keyed by the certificate's thumbprint
    [token] = emulator.issued_tokens
    assert claims_of(token)["appidacr"] == "2"


def test_unregistered_certificate_is_refused_with_aadsts700027(
    emulator: GraphEmulator, pair: Pair
) -> None:
    emulator.register_certificate(make_pair().cert)  # another one
    with (
        override_settings(MSGRAPH_MAIL=cert_settings(emulator, pair)),
        pytest.raises(AuthenticationError, match="upload CLIENT_CERTIFICATE") as info,
    ):
        send()
    assert info.value.code == "AADSTS700027"
    assert "not registered on application" in str(info.value)


def test_expired_registered_certificate_is_refused(emulator: GraphEmulator) -> None:
    old = make_pair(days=1, start=datetime.now(timezone.utc) - timedelta(days=30))
    emulator.register_certificate(old.cert)
    with (
        override_settings(MSGRAPH_MAIL=cert_settings(emulator, old)),
        pytest.raises(AuthenticationError, match="The key used is expired") as info,
    ):
        send()
    assert info.value.code == "AADSTS700027"


def post_assertion(emulator: GraphEmulator, assertion: str, **form: str) -> requests.Response:
    data = {
        "grant_type": "client_credentials",
        "client_id": CLIENT_ID,
        "scope": f"{emulator.url}/.default",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion,
        **form,
    }
    return requests.post(f"{emulator.url}/{TENANT_ID}/oauth2/v2.0/token", data=data, timeout=5)


def test_emulator_verifies_every_part_of_the_assertion(emulator: GraphEmulator, pair: Pair) -> None:
    emulator.register_certificate(pair.cert)
    loaded = certificate.load(pair.key, pair.cert)
    token_url = f"{emulator.url}/{TENANT_ID}/oauth2/v2.0/token"
    good = loaded.sign(CLIENT_ID, token_url)
    assert post_assertion(emulator, good).status_code == 200
    head, _, signature = good.split(".")
    tampered_claims = decode(good)[1] | {"exp": int(time.time()) + 86400}
    tampered = ".".join(
        (head, base64.urlsafe_b64encode(json.dumps(tampered_claims).encode()).decode(), signature)
    )
    cases = [
        (tampered, 700027, "did not match the expected signature"),
        (
            loaded.sign(CLIENT_ID, "https://login.microsoftonline.com/x/oauth2/v2.0/token"),
            700027,
            "audience",
        ),
        (loaded.sign(CLIENT_ID, token_url, now=time.time() - 3600), 700024, "valid time range"),
        (loaded.sign(CLIENT_ID, token_url, now=time.time() + 3600), 700024, "valid time range"),
        (loaded.sign(CLIENT, token_url), 700021, "doesn't match 'client_id'"),
        ("not-a-jwt", 50027, "malformed"),
    ]
    for assertion, code, phrase in cases:
        response = post_assertion(emulator, assertion)
        body_json = response.json()
        assert response.status_code in (400, 401)
        assert body_json["error_codes"] == [code], (phrase, body_json)
        assert phrase in body_json["error_description"]
    wrong_type = post_assertion(emulator, good, client_assertion_type="jwt")
    assert wrong_type.status_code == 400
    emulator.remove_certificates()
    assert post_assertion(emulator, good).json()["error_codes"] == [700027]


def test_emulator_without_cryptography_answers_a_clear_error(
    emulator: GraphEmulator, pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator.register_certificate(pair.cert)
    assertion = certificate.load(pair.key, pair.cert).sign(
        CLIENT_ID, f"{emulator.url}/{TENANT_ID}/oauth2/v2.0/token"
    )
    monkeypatch.setitem(sys.modules, "cryptography.exceptions", None)
    response = post_assertion(emulator, assertion)
    assert response.status_code == 500
    assert INSTALL in response.json()["error_description"]


def test_certificate_secrets_never_reach_logs_errors_or_reprs(
    emulator: GraphEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    locked = make_pair(password=PASSWORD)
    emulator.register_certificate(locked.cert)
    settings = cert_settings(emulator, locked, PASSWORD=PASSWORD)
    with caplog.at_level(logging.DEBUG), override_settings(MSGRAPH_MAIL=settings):
        send()
        emulator.remove_certificates()
        emulator.expire_tokens()
        with pytest.raises(AuthenticationError) as info:
            send()
        backend = mail.get_connection()
    loaded = certificate.load(locked.key, locked.cert, PASSWORD)
    assertion = loaded.assertion(CLIENT_ID, f"{emulator.url}/{TENANT_ID}/oauth2/v2.0/token")
    for secret in [locked.body, PASSWORD, assertion, *emulator.issued_tokens]:
        assert secret not in caplog.text
        assert secret not in str(info.value)
        assert secret not in repr(tokens._tokens)
        assert secret not in repr(backend)
        assert secret not in repr(backend.settings)
        assert secret not in str(backend.settings.model_dump())


# token credentials ------------------------------------------------------------------------

FACTORY_FOR: list[Any] = []


def FACTORY() -> Any:
    """A TOKEN_CREDENTIAL factory, as a project would write ``myproject.mail.credential``."""
    FACTORY_FOR.append(1)
    return CURRENT[0]


CURRENT: list[Any] = []


def test_token_credential_object_is_used_and_cached(emulator: GraphEmulator) -> None:
    credential = emulator.token_credential()
    with override_settings(MSGRAPH_MAIL=credential_settings(emulator, credential)):
        assert send() == 1
        assert send() == 1
    assert credential.calls == 1
    assert emulator.count("token") == 0  # the credential got the token, not our form post
    assert len(emulator.sent) == 2


def test_token_credential_tokens_are_renewed_ahead_of_expiry(emulator: GraphEmulator) -> None:
    emulator.token_lifetime = 2
    credential = emulator.token_credential()
    with override_settings(MSGRAPH_MAIL=credential_settings(emulator, credential)):
        send()
        send()
        assert credential.calls == 1
        time.sleep(1.9)
        send()
    assert credential.calls == 2


def test_rejected_credential_token_is_replaced_once(emulator: GraphEmulator) -> None:
    credential = emulator.token_credential()
    with override_settings(MSGRAPH_MAIL=credential_settings(emulator, credential)):
        send()
        emulator.expire_tokens()
        send()
    assert credential.calls == 2


def test_token_credential_from_a_dotted_factory_path(emulator: GraphEmulator) -> None:
    CURRENT[:] = [emulator.token_credential()]
    FACTORY_FOR.clear()
    path = "tests.test_credentials.FACTORY"
    with override_settings(MSGRAPH_MAIL=credential_settings(emulator, path)):
        assert send() == 1
        assert send() == 1
        settings = load_settings()
    assert FACTORY_FOR == [1]  # the factory runs once per process
    assert CURRENT[0].calls == 1
    assert settings.token_credential == path
    assert settings.credential_kind == "token_credential"


def test_token_credential_errors_are_authentication_errors(emulator: GraphEmulator) -> None:
    credential = emulator.token_credential()
    credential.fail = "ManagedIdentityCredential authentication unavailable.\nNo identity."
    with override_settings(MSGRAPH_MAIL=credential_settings(emulator, credential)):
        with pytest.raises(AuthenticationError) as info:
            send()
        assert mail.send_mail("t", "b", "noreply@contoso.com", ["a@x"], fail_silently=True) == 0
    message = str(info.value)
    assert message.startswith("TOKEN_CREDENTIAL EmulatorCredential could not get a token")
    assert "authentication unavailable" in message
    assert "No identity" not in message  # first line only
    assert info.value.code == "EmulatorCredentialError"
    assert emulator.sent == []


class AzureLikeCredential:
    """azure-identity's shape: get_token(*scopes, **kwargs) -> (token, expires_on)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> tuple[str, int]:
        self.scopes.append(scopes)
        result = self.inner.get_token(*scopes)
        return type(result)(result.token, result.expires_on)


def test_scope_follows_the_cloud(emulator: GraphEmulator) -> None:
    credential = AzureLikeCredential(emulator.token_credential())
    with override_settings(MSGRAPH_MAIL=credential_settings(emulator, credential)):
        send()
    assert credential.scopes == [(f"{emulator.url}/.default",)]


# msgraph_diagnose -------------------------------------------------------------------------


def diagnose_json(*, expect_error: bool = False) -> list[dict[str, str]]:
    out = StringIO()
    if expect_error:
        with pytest.raises(CommandError):
            call_command("msgraph_diagnose", "--json", stdout=out)
    else:
        call_command("msgraph_diagnose", "--json", stdout=out)
    found: list[dict[str, str]] = json.loads(out.getvalue())
    return found


def credential_finding(found: list[dict[str, str]]) -> dict[str, str]:
    [finding] = [f for f in found if f["topic"] == "credential"]
    return finding


def test_diagnose_reports_the_certificate(emulator: GraphEmulator, pair: Pair) -> None:
    emulator.register_certificate(pair.cert)
    with override_settings(MSGRAPH_MAIL=cert_settings(emulator, pair)):
        found = diagnose_json()
    finding = credential_finding(found)
    assert finding["level"] == "ok"
    assert hashlib.sha256(pair.der).hexdigest().upper() in finding["message"]
    expires = x509.load_pem_x509_certificate(pair.cert.encode()).not_valid_after_utc
    assert f"expires {expires:%Y-%m-%d}" in finding["message"]
    assert "PS256 with x5t#S256" in finding["message"]
    assert pair.body not in json.dumps(found)
    with override_settings(MSGRAPH_MAIL=cert_settings(emulator, pair)):
        call_command("msgraph_diagnose", "--send-test", "alice@contoso.com", stdout=StringIO())
    [sent] = emulator.sent
    assert sent.to == ["alice@contoso.com"]


def test_diagnose_warns_before_the_certificate_expires(emulator: GraphEmulator) -> None:
    soon = make_pair(days=10)
    emulator.register_certificate(soon.cert)
    with override_settings(MSGRAPH_MAIL=cert_settings(emulator, soon)):
        found = diagnose_json()
    finding = credential_finding(found)
    assert finding["level"] == "warning"
    assert "expires in 10 days" in finding["message"]
    assert "upload it to the app registration" in finding["fix"]
    assert [f["level"] for f in found if f["topic"] == "token"] == ["ok"]


def test_diagnose_reports_an_expired_certificate(emulator: GraphEmulator) -> None:
    old = make_pair(days=1, start=datetime.now(timezone.utc) - timedelta(days=30))
    emulator.register_certificate(old.cert)
    with override_settings(MSGRAPH_MAIL=cert_settings(emulator, old)):
        found = diagnose_json(expect_error=True)
    assert credential_finding(found)["level"] == "error"
    assert "EXPIRED" in credential_finding(found)["message"]
    [token] = [f for f in found if f["topic"] == "token"]
    assert "AADSTS700027" in token["message"]


def test_diagnose_reports_the_other_credential_kinds(emulator: GraphEmulator) -> None:
    finding = credential_finding(diagnose_json())
    assert finding == {
        "level": "info",
        "topic": "credential",
        "message": "client secret (CLIENT_SECRET)",
        "fix": "",
    }
    CURRENT[:] = [emulator.token_credential()]
    path = "tests.test_credentials.FACTORY"
    with override_settings(MSGRAPH_MAIL=credential_settings(emulator, path)):
        found = diagnose_json()
    assert credential_finding(found)["message"] == (
        f"token credential EmulatorCredential from {path} (TOKEN_CREDENTIAL)"
    )
    assert CLIENT_SECRET not in json.dumps(found)
