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
from typing import Any, Literal
from urllib.parse import urlsplit

from django.conf import settings as django_settings
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

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
    mailbox: str | None = None
    allowed_senders: tuple[str, ...] = ()
    graph_url: str = "https://graph.microsoft.com"
    authority_url: str = "https://login.microsoftonline.com"
    timeout: float = Field(default=30.0, gt=0)
    sender_cache_ttl: float = Field(default=3600.0, ge=0)

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
            raise ValueError(
                f"'{value}' names no tenant; client credentials need your tenant's id "
                "or its domain (e.g. contoso.onmicrosoft.com)"
            )
        if not re.fullmatch(r"[A-Za-z0-9.-]+", value):
            raise ValueError("must be the tenant id (a GUID) or a domain name")
        return value

    @field_validator("client_id")
    @classmethod
    def _guid(cls, value: str) -> str:
        try:
            return str(uuid.UUID(value.strip()))
        except ValueError:
            raise ValueError(
                "must be the application (client) id, a GUID such as "
                "00000000-0000-0000-0000-000000000000, from the app registration's overview"
            ) from None

    @field_validator("client_secret")
    @classmethod
    def _non_empty_secret(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("must not be empty")
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
            raise ValueError("must be an https:// URL")
        if parts.scheme == "http" and not is_loopback(parts.hostname):
            raise ValueError(
                "http:// is only accepted for a loopback host (the bundled emulator); use https://"
            )
        if parts.query or parts.fragment:
            raise ValueError("must not have a query or fragment")
        return value.strip().rstrip("/")

    @model_validator(mode="after")
    def _mode_needs(self) -> MSGraphMailSettings:
        if self.mode == "single_mailbox" and not self.mailbox:
            raise ValueError("MODE single_mailbox needs MAILBOX: the mailbox that sends every mail")
        if self.mode == "rbac" and not self.allowed_senders:
            raise ValueError(
                "MODE rbac needs ALLOWED_SENDERS: the addresses or '@domain' entries of the "
                "mailboxes in the application's Exchange RBAC scope"
            )
        return self

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


def collect(options: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """Merge the three sources into lower-case keys; also say where each key came from."""
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for legacy, key in LEGACY_SETTINGS.items():
        if getattr(django_settings, legacy, None) is not None:
            values[key.lower()] = getattr(django_settings, legacy)
            origin[key.lower()] = legacy
    configured = getattr(django_settings, "MSGRAPH_MAIL", None) or {}
    if not isinstance(configured, Mapping):
        raise ConfigurationError("msgraph_mail: the MSGRAPH_MAIL setting must be a dict.")
    for key, value in configured.items():
        name = str(key).lower()
        if str(key) != name.upper() or name not in OPTION_NAMES:
            raise ConfigurationError(
                f"msgraph_mail: unknown key MSGRAPH_MAIL[{key!r}]. "
                f"Known keys: {', '.join(sorted(n.upper() for n in OPTION_NAMES))}."
            )
        values[name] = value
        origin[name] = f"MSGRAPH_MAIL[{str(key)!r}]"
    for name, value in (options or {}).items():
        if value is not None:
            values[name] = value
            origin[name] = f"backend option {name!r}"
    return values, origin


def load_settings(options: Mapping[str, Any] | None = None) -> MSGraphMailSettings:
    """Build the validated settings, or raise ConfigurationError naming the key at fault."""
    values, origin = collect(options)
    try:
        return MSGraphMailSettings(**values)
    except ValidationError as exc:
        raise ConfigurationError(_explain(exc, origin)) from None


def _explain(exc: ValidationError, origin: dict[str, str]) -> str:
    """Turn pydantic's errors into one sentence per key; input values are never quoted."""
    lines = []
    for error in exc.errors(include_input=False, include_url=False):
        field = str(error["loc"][0]) if error["loc"] else ""
        where = origin.get(field) or (f"MSGRAPH_MAIL[{field.upper()!r}]" if field else "")
        reason = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "missing":
            reason = "is required but not set"
        lines.append(f"{where} {reason}".strip() if where else reason)
    return "msgraph_mail: invalid settings: " + "; ".join(lines) + "."
