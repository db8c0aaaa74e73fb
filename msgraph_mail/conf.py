"""The backend's settings: one pydantic model and where each value comes from.

Precedence, highest first (each key is looked up separately):

1. keyword arguments given to the backend, lower-case (``get_connection(mailbox=...)``,
   or Django 6.1 ``MAILERS[alias]["OPTIONS"]``);
2. the ``MSGRAPH_MAIL`` dict, upper-case keys;
3. the flat names of django-msgraphbackend (``MSGRAPH_TENANT_ID``, ``MSGRAPH_CLIENT_ID``,
   ``MSGRAPH_CLIENT_SECRET``, ``MSGRAPH_USER_ID``), so its users switch by changing
   ``EMAIL_BACKEND`` alone.

Settings are read when a backend is built, never at import, so ``override_settings`` works
and ``django.setup()`` needs no ``MSGRAPH_MAIL``.
"""

from __future__ import annotations

import base64
import importlib.util
import ipaddress
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePath
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings as django_settings
from django.utils.module_loading import import_string
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from .certificate import Algorithm, CertificateError, ClientCertificate
from .certificate import load as load_certificate
from .exceptions import ConfigurationError

Mode = Literal["permissive", "rbac", "single_mailbox"]
Cloud = Literal["global", "usgov", "usgovdod", "china"]
Priority = Literal["normal", "bulk"]
Queue = Literal["tasks", "celery"]
SentItemsFallback = Literal["mime", "fail"]
TrackingSource = Literal["trace", "bounces"]

#: URL schemes REDIS_URL may use (redis-py's ``Redis.from_url``).
REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})

#: Each cloud's Entra login host and Graph host (GRAPH_NOTES D.5); CLOUD picks one pair.
CLOUDS: dict[str, tuple[str, str]] = {
    "global": ("https://login.microsoftonline.com", "https://graph.microsoft.com"),
    "usgov": ("https://login.microsoftonline.us", "https://graph.microsoft.us"),
    "usgovdod": ("https://login.microsoftonline.us", "https://dod-graph.microsoft.us"),
    "china": ("https://login.chinacloudapi.cn", "https://microsoftgraph.chinacloudapi.cn"),
}
#: Known hosts and the clouds they belong to (login hosts are shared by both US clouds).
CLOUD_HOSTS: dict[str, frozenset[str]] = {
    "login.microsoftonline.com": frozenset({"global"}),
    "login.windows.net": frozenset({"global"}),
    "graph.microsoft.com": frozenset({"global"}),
    "login.microsoftonline.us": frozenset({"usgov", "usgovdod"}),
    "graph.microsoft.us": frozenset({"usgov"}),
    "dod-graph.microsoft.us": frozenset({"usgovdod"}),
    "login.chinacloudapi.cn": frozenset({"china"}),
    "login.partner.microsoftonline.cn": frozenset({"china"}),
    "microsoftgraph.chinacloudapi.cn": frozenset({"china"}),
}

#: The keys that each configure a credential; exactly one of them must be set.
CREDENTIAL_KEYS = ("CLIENT_SECRET", "CLIENT_CERTIFICATE", "TOKEN_CREDENTIAL")

#: The legacy django-msgraphbackend setting names and the key each one stands for.
LEGACY_SETTINGS = {
    "MSGRAPH_TENANT_ID": "TENANT_ID",
    "MSGRAPH_CLIENT_ID": "CLIENT_ID",
    "MSGRAPH_CLIENT_SECRET": "CLIENT_SECRET",
    "MSGRAPH_USER_ID": "MAILBOX",
}

#: Tenants that name no directory; client credentials need a real tenant.
MULTI_TENANT_NAMES = frozenset({"common", "organizations", "consumers"})

_ADDRESS = re.compile(r"^[^@\s<>(),;:\"\[\]]+@[^@\s<>(),;:\"\[\]]+\.[^@\s<>(),;:\"\[\]]+$")
_DOMAIN = re.compile(r"^@[^@\s<>(),;:\"\[\]]+\.[^@\s<>(),;:\"\[\]]+$")


class CertificateSettings(BaseModel):
    """CLIENT_CERTIFICATE: a certificate uploaded to the app registration, and its key.

    PRIVATE_KEY and CERTIFICATE are each PEM text or a file path; CERTIFICATE may be left
    out when the key's PEM also holds the certificate. ALGORITHM: PS256 with ``x5t#S256``
    (Entra's current format) or RS256 with ``x5t`` (the older one).
    """

    model_config = ConfigDict(
        extra="forbid", frozen=True, hide_input_in_errors=True, populate_by_name=True
    )

    private_key: SecretStr = Field(alias="PRIVATE_KEY")
    certificate: str | None = Field(default=None, alias="CERTIFICATE")
    password: SecretStr | None = Field(default=None, alias="PASSWORD")
    algorithm: Algorithm = Field(default="PS256", alias="ALGORITHM")

    @field_validator("private_key", "certificate", mode="before")
    @classmethod
    def _path_or_text(cls, value: Any) -> Any:
        if isinstance(value, PurePath):
            return str(value)
        if isinstance(value, bytes):
            return value.decode("ascii", "replace")
        return value

    @model_validator(mode="after")
    def _loads(self) -> CertificateSettings:
        try:
            self.load()
        except CertificateError as exc:
            raise PydanticCustomError(exc.kind, str(exc)) from None
        return self

    def load(self) -> ClientCertificate:
        """The loaded certificate (cached for the process by content)."""
        return load_certificate(
            self.private_key.get_secret_value(),
            self.certificate,
            self.password.get_secret_value() if self.password is not None else None,
            self.algorithm,
        )


class RedisURL(str):
    """REDIS_URL: a plain ``str`` whose ``repr`` hides the password (settings reprs, logs)."""

    __slots__ = ()

    @property
    def masked(self) -> str:
        """The URL with its password replaced by ``***``."""
        return mask_url(self)

    def __repr__(self) -> str:
        return f"RedisURL({self.masked!r})"


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (also a ``?password=`` query option)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, host = netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        netloc = f"{user}:***@{host}"
    query = re.sub(r"(?i)(^|&)(password=)[^&]*", r"\1\2***", parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


class MailboxLimitsSettings(BaseModel):
    """MAILBOX_LIMITS: what Graph and Exchange allow one application per mailbox.

    Defaults are Microsoft's published figures (GRAPH_NOTES B.1, B.2); a partial dict
    overrides only its keys. ``UPLOAD_MB_PER_5_MINUTES`` counts MB of 2**20 bytes.
    """

    model_config = ConfigDict(
        extra="forbid", frozen=True, hide_input_in_errors=True, populate_by_name=True
    )

    concurrent_requests: int = Field(default=4, gt=0, alias="CONCURRENT_REQUESTS")
    requests_per_10_minutes: int = Field(default=10_000, gt=0, alias="REQUESTS_PER_10_MINUTES")
    upload_mb_per_5_minutes: float = Field(default=150, gt=0, alias="UPLOAD_MB_PER_5_MINUTES")
    recipients_per_24_hours: int = Field(default=10_000, gt=0, alias="RECIPIENTS_PER_24_HOURS")

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            names = {field.alias: name for name, field in cls.model_fields.items()}
            for key in data:
                if str(key) not in names and str(key) not in names.values():
                    raise PydanticCustomError(
                        "unknown_key",
                        "'{key}' is not a MAILBOX_LIMITS key (known: {known})",
                        {"key": str(key)[:40], "known": ", ".join(sorted(map(str, names)))},
                    )
        return data

    @field_validator(
        "concurrent_requests", "requests_per_10_minutes", "recipients_per_24_hours", mode="before"
    )
    @classmethod
    def _no_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise PydanticCustomError("int_type", "must be a positive whole number")
        return value

    def as_keys(self) -> dict[str, float]:
        """The limits under their MAILBOX_LIMITS keys."""
        return {
            str(field.alias): getattr(self, name) for name, field in type(self).model_fields.items()
        }


def _fernet_key(value: Any) -> Any:
    """One OUTBOX_ENCRYPTION_KEYS entry: 32 bytes, url-safe base64 (what Fernet checks),
    tested without cryptography so a missing package and a bad key are told apart. The
    error never quotes the key."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if not isinstance(value, str):
        raise PydanticCustomError("fernet_key", "is not a Fernet key (must be a string)")
    try:
        raw = base64.urlsafe_b64decode(value.strip().encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raw = b""
    if len(raw) != 32:
        raise PydanticCustomError(
            "fernet_key", "is not a Fernet key (32 url-safe base64-encoded bytes)"
        )
    return SecretStr(value.strip())


#: An OUTBOX_ENCRYPTION_KEYS entry, kept as a secret (never in a repr or an error).
FernetKey = Annotated[SecretStr, BeforeValidator(_fernet_key)]


class MSGraphMailSettings(BaseModel):
    """The validated configuration of one backend. Field names are the keys, lower-cased."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    tenant_id: str = Field(min_length=1)
    client_id: str
    client_secret: SecretStr | None = None
    client_certificate: CertificateSettings | None = None
    token_credential: Any = None
    mode: Mode = "permissive"
    mailbox: str | None = Field(default=None, validate_default=True)
    allowed_senders: tuple[str, ...] = Field(default=(), validate_default=True)
    cloud: Cloud = "global"
    graph_url: str = "https://graph.microsoft.com"
    authority_url: str = "https://login.microsoftonline.com"
    timeout: float = Field(default=30.0, gt=0)
    sender_cache_ttl: float = Field(default=3600.0, ge=0)
    max_retries: int = Field(default=4, ge=0, le=20)
    max_retry_wait: float = Field(default=60.0, ge=0)
    retry_ambiguous: bool = False
    large_messages: bool = False
    max_concurrency: int = Field(default=8, ge=1, le=64)
    redis_url: str | None = None
    share_token: bool = False
    mailbox_limits: MailboxLimitsSettings = Field(default_factory=MailboxLimitsSettings)
    priority: Priority = "normal"
    bulk_reserve: float = Field(default=0.1, ge=0, lt=1)
    queue: Queue = "tasks"
    queue_max_age: float = Field(default=86400.0, gt=0)
    resolve_unknown: float | None = Field(default=None, ge=0, le=300)
    outbox_retention: float = Field(default=30 * 86400.0, gt=0)
    outbox_keep_content: bool = False
    outbox_encryption_keys: tuple[FernetKey, ...] = ()
    save_to_sent_items: bool = True
    sent_items_fallback: SentItemsFallback = "mime"
    delivery_tracking: tuple[TrackingSource, ...] = ()
    suppress_bounced: bool | None = Field(default=None, validate_default=True)
    notification_url: str | None = None
    telemetry_addresses: bool = False

    @model_validator(mode="before")
    @classmethod
    def _default_mode(cls, data: Any) -> Any:
        """MODE defaults to single_mailbox when a MAILBOX is given, else to permissive."""
        if isinstance(data, dict) and data.get("mode") is None:
            data = {**data, "mode": "single_mailbox" if data.get("mailbox") else "permissive"}
        return data

    @model_validator(mode="before")
    @classmethod
    def _cloud_hosts(cls, data: Any) -> Any:
        """GRAPH_URL and AUTHORITY_URL default to the hosts of CLOUD; explicit ones win."""
        if isinstance(data, dict):
            hosts = CLOUDS.get(str(data.get("cloud") or "global"))
            if hosts is not None:
                data = {
                    **data,
                    "authority_url": data.get("authority_url") or hosts[0],
                    "graph_url": data.get("graph_url") or hosts[1],
                }
        return data

    @field_validator("tenant_id")
    @classmethod
    def _real_tenant(cls, value: str) -> str:
        value = value.strip()
        if value.lower() in MULTI_TENANT_NAMES:
            raise PydanticCustomError(
                "multi_tenant",
                "'{tenant}' names no tenant; client credentials need your tenant's id "
                "or its domain (e.g. contoso.onmicrosoft.com)",
                {"tenant": value},
            )
        if not re.fullmatch(r"[A-Za-z0-9.-]+", value):
            raise PydanticCustomError("tenant", "must be the tenant id (a GUID) or a domain name")
        return value

    @field_validator("client_id")
    @classmethod
    def _guid(cls, value: str) -> str:
        try:
            return str(uuid.UUID(value.strip()))
        except ValueError:
            raise PydanticCustomError(
                "guid",
                "must be the application (client) id, a GUID such as "
                "00000000-0000-0000-0000-000000000000, from the app registration's overview",
            ) from None

    @field_validator("client_secret")
    @classmethod
    def _non_empty_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise PydanticCustomError("empty_secret", "must not be empty")
        return value

    @field_validator("token_credential")
    @classmethod
    def _credential(cls, value: Any) -> Any:
        """An object with azure-identity's get_token(), or the dotted path of one or of a
        factory returning one (imported here, called on first use)."""
        if value is None:
            return None
        target = value
        if isinstance(value, str):
            try:
                target = import_string(value.strip())
            except ImportError as exc:
                raise PydanticCustomError(
                    "credential_import",
                    "cannot import '{path}' ({reason})",
                    {"path": value.strip(), "reason": type(exc).__name__},
                ) from None
            if not callable(getattr(target, "get_token", None)) and not callable(target):
                raise PydanticCustomError(
                    "credential_type",
                    "'{path}' is neither a credential with get_token() nor a factory of one",
                    {"path": value.strip()},
                )
            return value.strip()
        if not callable(getattr(target, "get_token", None)):
            raise PydanticCustomError(
                "credential_type",
                "must have azure-identity's get_token(*scopes) method (ManagedIdentityCredential,"
                " WorkloadIdentityCredential, DefaultAzureCredential...), or be the dotted path "
                "of a factory returning such a credential",
            )
        return value

    @field_validator("mailbox")
    @classmethod
    def _mailbox(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if not (_ADDRESS.match(value) or _is_guid(value)):
            raise ValueError("must be a user principal name (user@domain) or a user object id")
        return value

    @field_validator("allowed_senders", mode="before")
    @classmethod
    def _senders(cls, value: Any) -> Any:
        value = _list_of(value, "of addresses or '@domain' entries")
        entries = tuple(str(entry).strip().lower() for entry in value)
        for entry in entries:
            if not (_ADDRESS.match(entry) or _DOMAIN.match(entry)):
                raise ValueError(f"'{entry}' is neither an address nor an '@domain' entry")
        return entries

    @field_validator("delivery_tracking", mode="before")
    @classmethod
    def _sources(cls, value: Any) -> Any:
        value = _list_of(value, 'such as ["trace", "bounces"]')
        return tuple(dict.fromkeys(value))  # each source once, in the order given

    @field_validator("outbox_encryption_keys", mode="before")
    @classmethod
    def _key_list(cls, value: Any) -> Any:
        if isinstance(value, (str, bytes)):
            raise PydanticCustomError(
                "fernet_keys_type", "must be a list of Fernet keys, not one string"
            )
        return value

    @field_validator("outbox_encryption_keys", mode="after")
    @classmethod
    def _fernet_installed(cls, value: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        if value and not _installed("cryptography"):
            raise PydanticCustomError(
                "cryptography_missing",
                'needs the cryptography package: pip install "django-msgraph-mailer[encryption]"',
            )
        return value

    @field_validator("suppress_bounced", mode="after")
    @classmethod
    def _suppress_by_default(cls, value: bool | None, info: ValidationInfo) -> bool:
        """SUPPRESS_BOUNCED defaults to True once delivery tracking can see bounces."""
        return bool(info.data.get("delivery_tracking")) if value is None else value

    @field_validator("notification_url")
    @classmethod
    def _notification_url(cls, value: str | None) -> str | None:
        """Where ``include("msgraph_mail.urls")`` is served publicly; Graph posts there."""
        if value is None:
            return None
        parts = urlsplit(value.strip())
        if not parts.hostname or parts.scheme not in {"https", "http"}:
            raise PydanticCustomError(
                "url", "must be the public https:// URL where msgraph_mail.urls is included"
            )
        if parts.scheme == "http" and not is_loopback(parts.hostname):
            raise PydanticCustomError(
                "insecure_url",
                "Graph posts change notifications to https:// URLs only (http:// is accepted "
                "for a loopback host, the bundled emulator)",
            )
        if parts.query or parts.fragment:
            raise PydanticCustomError("url", "must not have a query or fragment")
        return value.strip().rstrip("/") + "/"

    @property
    def notification_endpoints(self) -> tuple[str, str] | None:
        """(notificationUrl, lifecycleNotificationUrl) of our views, or None when off."""
        if self.notification_url is None:
            return None
        return f"{self.notification_url}notifications/", f"{self.notification_url}lifecycle/"

    @field_validator("graph_url", "authority_url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme not in {"https", "http"} or not parts.hostname:
            raise PydanticCustomError("url", "must be an https:// URL")
        if parts.scheme == "http" and not is_loopback(parts.hostname):
            raise PydanticCustomError(
                "insecure_url",
                "http:// is only accepted for a loopback host (the bundled emulator); use https://",
            )
        if parts.query or parts.fragment:
            raise PydanticCustomError("url", "must not have a query or fragment")
        return value.strip().rstrip("/")

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        """A URL redis-py's ``from_url`` takes; the value is never quoted in an error."""
        if value is None:
            return None
        value = value.strip()
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 -- raises ValueError for a port that is not a number
        except ValueError:
            raise PydanticCustomError(
                "redis_url", "is not a URL (e.g. redis://localhost:6379/0)"
            ) from None
        if parts.scheme not in REDIS_SCHEMES:
            raise PydanticCustomError(
                "redis_url",
                "must be a redis://, rediss:// (TLS) or unix:// URL, e.g. redis://localhost:6379/0",
            )
        if parts.scheme == "unix":
            if not parts.path:
                raise PydanticCustomError(
                    "redis_url", "unix:// needs the socket's path, e.g. unix:///run/redis.sock"
                )
        elif not parts.hostname:
            raise PydanticCustomError("redis_url", "needs a host, e.g. redis://localhost:6379/0")
        elif parts.path not in {"", "/"} and not re.fullmatch(r"/\d+", parts.path):
            raise PydanticCustomError(
                "redis_url", "the path must be a database number, e.g. redis://localhost:6379/0"
            )
        if not _installed("redis"):
            raise PydanticCustomError(
                "redis_missing",
                'needs redis-py: pip install "django-msgraph-mailer[redis]"',
            )
        return RedisURL(value)

    @field_validator("mailbox", mode="after")
    @classmethod
    def _mailbox_for_mode(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("mode") == "single_mailbox" and not value:
            raise PydanticCustomError(
                "mailbox_required",
                "MODE single_mailbox needs MAILBOX: the mailbox that sends every mail",
            )
        return value

    @model_validator(mode="after")
    def _one_credential(self) -> MSGraphMailSettings:
        """Exactly one credential (``validate`` reports the same with where each was set)."""
        found = [key for key in CREDENTIAL_KEYS if getattr(self, key.lower()) is not None]
        if not found:
            raise PydanticCustomError("no_credential", "no credential is set")
        if len(found) > 1:
            raise PydanticCustomError(
                "credential_conflict",
                "more than one credential is set: {keys}",
                {"keys": " and ".join(found)},
            )
        return self

    @property
    def credential_kind(self) -> Literal["secret", "certificate", "token_credential"]:
        """Which credential gets the tokens."""
        if self.client_certificate is not None:
            return "certificate"
        if self.token_credential is not None:
            return "token_credential"
        return "secret"

    @property
    def token_url(self) -> str:
        """Entra's token endpoint for this tenant."""
        return f"{self.authority_url}/{self.tenant_id}/oauth2/v2.0/token"

    @property
    def scope(self) -> str:
        """The client-credentials scope: every consented application permission of Graph."""
        return f"{self.graph_url}/.default"

    def allows(self, address: str) -> bool:
        """Whether ALLOWED_SENDERS admits this address (exact address or its @domain).

        In rbac mode the list is optional: without it nothing is refused up front, and the
        Exchange management scope alone decides; callers test ``allowed_senders`` first.
        """
        address = address.lower()
        domain = "@" + address.rpartition("@")[2]
        return address in self.allowed_senders or domain in self.allowed_senders


def cloud_mixture(settings: MSGraphMailSettings) -> str | None:
    """Describe hosts of different clouds configured together (loopback hosts never count).

    CLOUD takes part only when it was set explicitly; unknown hosts (proxies) are ignored.
    """
    named: list[tuple[str, frozenset[str]]] = []
    if "cloud" in settings.model_fields_set:
        named.append((f"CLOUD {settings.cloud}", frozenset({settings.cloud})))
    for key, url in (("AUTHORITY_URL", settings.authority_url), ("GRAPH_URL", settings.graph_url)):
        host = (urlsplit(url).hostname or "").lower()
        if host in CLOUD_HOSTS:
            named.append((f"{key} {host}", CLOUD_HOSTS[host]))
    common = frozenset(CLOUDS)
    for _, clouds in named:
        common &= clouds
    if common:
        return None
    return " and ".join(f"{name} ({'/'.join(sorted(clouds))})" for name, clouds in named)


def _list_of(value: Any, what: str) -> Any:
    """A list setting given as one string would be read letter by letter: refused."""
    if isinstance(value, str):
        raise ValueError(f"must be a list {what}, not a string")
    return value


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # in sys.modules without a spec: blocked, as tests do
        return False


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses, where plain http:// is harmless."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_guid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


#: Keyword arguments the backend takes; each is the lower-case name of a settings key.
OPTION_NAMES = frozenset(MSGraphMailSettings.model_fields)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the settings, as the system checks and errors report it."""

    key: str  # the settings key, upper-case ("TENANT_ID"), or the unknown key as written
    kind: str  # pydantic's error type ("missing", "multi_tenant", ...) or "unknown_key"
    message: str  # one sentence that never quotes a value
    source: str  # where it was set: "MSGRAPH_MAIL['TENANT_ID']", "backend option 'mode'"

    def __str__(self) -> str:
        return f"{self.source} {self.message}"


def collect(
    options: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, str], list[Problem]]:
    """Merge the three sources into lower-case keys; say where each came from, and what is
    not a key at all."""
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    problems: list[Problem] = []
    for legacy, key in LEGACY_SETTINGS.items():
        if getattr(django_settings, legacy, None) is not None:
            values[key.lower()] = getattr(django_settings, legacy)
            origin[key.lower()] = legacy
    configured = getattr(django_settings, "MSGRAPH_MAIL", None) or {}
    if not isinstance(configured, Mapping):
        problems.append(Problem("MSGRAPH_MAIL", "dict_type", "must be a dict", "MSGRAPH_MAIL"))
        configured = {}
    known = ", ".join(sorted(name.upper() for name in OPTION_NAMES))
    for key, value in configured.items():
        name = str(key).lower()
        source = f"MSGRAPH_MAIL[{str(key)!r}]"
        if str(key) != name.upper() or name not in OPTION_NAMES:
            problems.append(
                Problem(str(key), "unknown_key", f"is not a setting (known: {known})", source)
            )
            continue
        values[name] = value
        origin[name] = source
    for name, value in (options or {}).items():
        if value is not None:
            values[name] = value
            origin[name] = f"backend option {name!r}"
    return values, origin, problems


def validate(
    options: Mapping[str, Any] | None = None,
) -> tuple[MSGraphMailSettings | None, list[Problem]]:
    """Validate every source; return the settings (None if invalid) and every problem found."""
    values, origin, problems = collect(options)
    problems += _credential_problems(values, origin)
    try:
        settings = MSGraphMailSettings(**values)
    except ValidationError as exc:
        return None, problems + _problems(exc, origin)
    return (None if problems else settings), problems


def load_settings(options: Mapping[str, Any] | None = None) -> MSGraphMailSettings:
    """Build the validated settings, or raise ConfigurationError naming each key at fault."""
    settings, problems = validate(options)
    if settings is None:
        details = "; ".join(str(problem) for problem in problems)
        raise ConfigurationError(f"msgraph_mail: invalid settings: {details}.")
    return settings


def _credential_problems(values: dict[str, Any], origin: dict[str, str]) -> list[Problem]:
    """None or several of CLIENT_SECRET / CLIENT_CERTIFICATE / TOKEN_CREDENTIAL, and where
    each was set (the model checks the same, but cannot say where)."""
    found = [key for key in CREDENTIAL_KEYS if values.get(key.lower()) is not None]
    if not found:
        return [
            Problem(
                "CLIENT_SECRET",
                "missing",
                "is required but not set (or set CLIENT_CERTIFICATE or TOKEN_CREDENTIAL "
                "instead: exactly one credential)",
                "MSGRAPH_MAIL['CLIENT_SECRET']",
            )
        ]
    if len(found) == 1:
        return []
    sources = [origin.get(key.lower(), f"MSGRAPH_MAIL[{key!r}]") for key in found]
    return [
        Problem(
            ", ".join(found),
            "credential_conflict",
            f"{'both' if len(found) == 2 else 'all'} set a credential; keep exactly one of "
            "CLIENT_SECRET, CLIENT_CERTIFICATE or TOKEN_CREDENTIAL",
            " and ".join(sources),
        )
    ]


def _problems(exc: ValidationError, origin: dict[str, str]) -> list[Problem]:
    """Turn pydantic's errors into one Problem per key; input values are never quoted."""
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        if error["type"] in {"no_credential", "credential_conflict"}:
            continue  # reported by _credential_problems, with where each credential was set
        field = str(error["loc"][0]) if error["loc"] else ""
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "missing":
            message = "is required but not set"
        source = origin.get(field) or f"MSGRAPH_MAIL[{field.upper()!r}]"
        source += "".join(f"[{part!r}]" for part in error["loc"][1:])  # a list index as [1]
        problems.append(Problem(field.upper(), str(error["type"]), message, source))
    return problems
