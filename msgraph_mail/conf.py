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

import ipaddress
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from django.conf import settings as django_settings
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from .exceptions import ConfigurationError

Mode = Literal["permissive", "rbac", "single_mailbox"]

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


class MSGraphMailSettings(BaseModel):
    """The validated configuration of one backend. Field names are the keys, lower-cased."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    tenant_id: str = Field(min_length=1)
    client_id: str
    client_secret: SecretStr
    mode: Mode = "permissive"
    mailbox: str | None = Field(default=None, validate_default=True)
    allowed_senders: tuple[str, ...] = Field(default=(), validate_default=True)
    graph_url: str = "https://graph.microsoft.com"
    authority_url: str = "https://login.microsoftonline.com"
    timeout: float = Field(default=30.0, gt=0)
    sender_cache_ttl: float = Field(default=3600.0, ge=0)
    max_retries: int = Field(default=4, ge=0, le=20)
    max_retry_wait: float = Field(default=60.0, ge=0)
    retry_ambiguous: bool = False

    @model_validator(mode="before")
    @classmethod
    def _default_mode(cls, data: Any) -> Any:
        """MODE defaults to single_mailbox when a MAILBOX is given, else to permissive."""
        if isinstance(data, dict) and data.get("mode") is None:
            data = {**data, "mode": "single_mailbox" if data.get("mailbox") else "permissive"}
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
    def _non_empty_secret(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise PydanticCustomError("empty_secret", "must not be empty")
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
        if isinstance(value, str):
            raise ValueError("must be a list of addresses or '@domain' entries, not a string")
        entries = tuple(str(entry).strip().lower() for entry in value)
        for entry in entries:
            if not (_ADDRESS.match(entry) or _DOMAIN.match(entry)):
                raise ValueError(f"'{entry}' is neither an address nor an '@domain' entry")
        return entries

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

    @field_validator("mailbox", mode="after")
    @classmethod
    def _mailbox_for_mode(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("mode") == "single_mailbox" and not value:
            raise PydanticCustomError(
                "mailbox_required",
                "MODE single_mailbox needs MAILBOX: the mailbox that sends every mail",
            )
        return value

    @field_validator("allowed_senders", mode="after")
    @classmethod
    def _senders_for_mode(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        if info.data.get("mode") == "rbac" and not value:
            raise PydanticCustomError(
                "senders_required",
                "MODE rbac needs ALLOWED_SENDERS: the addresses or '@domain' entries of the "
                "mailboxes in the application's Exchange RBAC scope",
            )
        return value

    @property
    def token_url(self) -> str:
        """Entra's token endpoint for this tenant."""
        return f"{self.authority_url}/{self.tenant_id}/oauth2/v2.0/token"

    @property
    def scope(self) -> str:
        """The client-credentials scope: every consented application permission of Graph."""
        return f"{self.graph_url}/.default"

    def allows(self, address: str) -> bool:
        """Whether ALLOWED_SENDERS admits this address (exact address or its @domain)."""
        address = address.lower()
        domain = "@" + address.rpartition("@")[2]
        return address in self.allowed_senders or domain in self.allowed_senders


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


def _problems(exc: ValidationError, origin: dict[str, str]) -> list[Problem]:
    """Turn pydantic's errors into one Problem per key; input values are never quoted."""
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        field = str(error["loc"][0]) if error["loc"] else ""
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "missing":
            message = "is required but not set"
        source = origin.get(field) or f"MSGRAPH_MAIL[{field.upper()!r}]"
        problems.append(Problem(field.upper(), str(error["type"]), message, source))
    return problems
