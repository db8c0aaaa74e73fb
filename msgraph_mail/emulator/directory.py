"""The emulated tenant: its app registration, its users and what the app may do.

Graph keeps two permission systems that add up: Entra app roles (carried in the token) and
Exchange RBAC for Applications (checked per mailbox). ``Tenant`` holds both, next to the users.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

TENANT_ID = "4b2e9c71-3f6a-4d8e-a1b5-7c0d9e2f6a38"
TENANT_DOMAIN = "contoso.onmicrosoft.com"
CLIENT_ID = "9f3c5a1e-8b27-4e6d-b0c4-2a7e1d5f8c93"
CLIENT_SECRET = "Xk38Q~c7Vn2pLw9RtZ4yHq1mBd6sFj0uGe5aKo.N"
SERVICE_PRINCIPAL_ID = "6a1d7e4c-2b9f-4c3a-8e5d-0f7b3c9a1e26"
APP_DISPLAY_NAME = "Contoso Mailer (emulated)"

NOREPLY_ID = "0d3f6a2b-7c1e-4b8d-9a5f-3e2c1b0a9d81"
ALICE_ID = "1e4a7b3c-8d2f-4c9e-a06b-4f3d2c1b0e92"
BOB_ID = "2f5b8c4d-9e3a-4dab-b17c-5a4e3d2c1fa3"
GUEST_ID = "3a6c9d5e-af4b-4ebc-82d8-6b5f4e3d2ab4"

DEFAULT_ROLES = ("Mail.Send", "User.Read.All")
#: What the permissive dev inbox grants every application: enough for every MODE
#: (single_mailbox, rbac, permissive) and for the draft path of large messages.
PERMISSIVE_ROLES = ("Mail.Send", "User.Read.All", "Mail.ReadWrite")
#: An address the permissive dev inbox turns into a mailbox on first use.
_ADDRESS = re.compile(r"[^@\s'\"<>(),;:\\/]+@[^@\s'\"<>(),;:\\/]+")
DIRECTORY_READ_ROLES = frozenset(
    {"User.Read.All", "User.ReadWrite.All", "Directory.Read.All", "Directory.ReadWrite.All"}
)
#: Application roles that may read a mailbox's messages (their basic properties), and those
#: that may read bodies and MIME too (ReadBasic may not).
READ_ROLES = frozenset({"Mail.ReadBasic.All", "Mail.Read", "Mail.ReadWrite"})
FULL_READ_ROLES = frozenset({"Mail.Read", "Mail.ReadWrite"})

#: Properties Graph returns for a user when no ``$select`` is given.
DEFAULT_PROPERTIES = (
    "businessPhones",
    "displayName",
    "givenName",
    "jobTitle",
    "mail",
    "mobilePhone",
    "officeLocation",
    "preferredLanguage",
    "surname",
    "userPrincipalName",
    "id",
)
#: Every property the emulator can ``$select`` (canonical Graph spelling).
SELECTABLE_PROPERTIES = (
    *DEFAULT_PROPERTIES,
    "proxyAddresses",
    "accountEnabled",
    "userType",
    "otherMails",
)


@dataclass(frozen=True)
class User:
    """A directory user; ``mailbox_enabled=False`` is a guest or unlicensed user."""

    id: str
    user_principal_name: str
    mail: str
    aliases: tuple[str, ...] = ()
    display_name: str | None = None
    mailbox_enabled: bool = True
    send_as: tuple[str, ...] = ()

    def addresses(self) -> list[str]:
        """Every SMTP address of the user, lower-case, primary first, no duplicates."""
        seen: list[str] = []
        for address in (self.mail, self.user_principal_name, *self.aliases):
            if address.lower() not in seen:
                seen.append(address.lower())
        return seen

    def owns(self, address: str) -> bool:
        """Whether ``address`` is one of the user's own addresses (case-insensitive)."""
        return address.lower() in self.addresses()

    def may_send_as(self, address: str) -> bool:
        """Exchange's From check: own addresses plus granted Send As rights."""
        return self.owns(address) or address.lower() in {a.lower() for a in self.send_as}

    @property
    def is_guest(self) -> bool:
        return "#EXT#" in self.user_principal_name.upper()

    @property
    def proxy_addresses(self) -> list[str]:
        """Entra's ``proxyAddresses``: ``SMTP:`` for the primary, ``smtp:`` for aliases."""
        return [f"SMTP:{self.mail}", *(f"smtp:{alias}" for alias in self.aliases)]

    def to_graph(self, select: Iterable[str] | None = None) -> dict[str, Any]:
        """The user resource as Graph returns it; ``id`` always, others per ``$select``."""
        every: dict[str, Any] = {
            **dict.fromkeys(("givenName", "jobTitle", "mobilePhone", "officeLocation")),
            **dict.fromkeys(("preferredLanguage", "surname")),
            "businessPhones": [],
            "displayName": self.display_name,
            "mail": self.mail,
            "userPrincipalName": self.user_principal_name,
            "id": self.id,
            "proxyAddresses": self.proxy_addresses,
            "accountEnabled": True,
            "userType": "Guest" if self.is_guest else "Member",
            "otherMails": [],
        }
        if select is None:
            return {name: every[name] for name in DEFAULT_PROPERTIES}
        names = ["id", *(name for name in select if name != "id")]
        return {name: every[name] for name in names}


def default_users() -> list[User]:
    """The contoso directory every new emulator starts with (fixed ids for tests)."""
    return [
        User(
            id=NOREPLY_ID,
            user_principal_name="noreply@contoso.com",
            mail="noreply@contoso.com",
            aliases=("shop@contoso.com", "no-reply@contoso.com"),
            display_name="Contoso Notifications",
        ),
        User(
            id=ALICE_ID,
            user_principal_name="alice@contoso.com",
            mail="alice@contoso.com",
            aliases=("a.example@contoso.com",),
            display_name="Alice Example",
        ),
        User(
            id=BOB_ID,
            user_principal_name="bob@contoso.com",
            mail="bob@contoso.com",
            display_name="Bob Example",
        ),
        User(
            id=GUEST_ID,
            user_principal_name="guest_fabrikam.com#EXT#@contoso.onmicrosoft.com",
            mail="guest@fabrikam.com",
            display_name="Fabrikam Guest",
            mailbox_enabled=False,
        ),
    ]


class Tenant:
    """Users plus the app's grants; all access goes through one lock (handler threads)."""

    def __init__(self, *, permissive: bool = False) -> None:
        self.lock = threading.RLock()
        self._users: list[User] = default_users()
        self._roles: list[str] = list(PERMISSIVE_ROLES if permissive else DEFAULT_ROLES)
        #: Exchange RBAC for Applications: the mailboxes (ids or addresses, matched
        #: case-insensitively; the live sets) each "Application Mail.*" role is assigned on;
        #: None: no assignment.
        self.rbac: dict[str, set[str] | None] = dict.fromkeys(
            ("Mail.Send", "Mail.ReadBasic", "Mail.ReadWrite")
        )
        #: The dev inbox's mode: any address becomes a mailbox on first use, and a mailbox
        #: may send as any address (the developer's tenant's Send As grants are unknown here).
        self.permissive = permissive

    @property
    def roles(self) -> list[str]:
        """The live list: ``emu.roles.append(...)`` works as well as assignment."""
        return self._roles

    @roles.setter
    def roles(self, roles: Iterable[str]) -> None:
        with self.lock:
            self._roles = list(roles)

    def set_rbac(self, role: str, scope: Iterable[str] | None) -> None:
        with self.lock:
            self.rbac[role] = None if scope is None else set(scope)

    @property
    def users(self) -> list[User]:
        with self.lock:
            return list(self._users)

    def add_user(
        self,
        upn: str,
        *,
        mail: str | None = None,
        aliases: Iterable[str] = (),
        id: str | None = None,
        display_name: str | None = None,
        mailbox_enabled: bool = True,
        send_as: Iterable[str] = (),
    ) -> User:
        """Add a user (and mailbox unless ``mailbox_enabled=False``) to the directory;
        refuses an id or address another user already has."""
        user = User(
            id=id or str(uuid.uuid4()),
            user_principal_name=upn,
            mail=mail or upn,
            aliases=tuple(aliases),
            display_name=display_name,
            mailbox_enabled=mailbox_enabled,
            send_as=tuple(send_as),
        )
        with self.lock:
            for other in self._users:
                taken = set(other.addresses()) & set(user.addresses())
                if other.id == user.id or taken:
                    raise ValueError(f"{other.user_principal_name} already has {taken or user.id}")
            self._users.append(user)
        return user

    def user(self, address_or_id: str) -> User | None:
        """Find by id or any SMTP address (a convenience; Graph URLs are stricter)."""
        return self._first(lambda u: u.id == address_or_id or u.owns(address_or_id))

    def by_id_or_upn(self, key: str) -> User | None:
        """What ``/users/{key}`` resolves: exact object id or UPN (case-insensitive)."""
        return self._first(lambda u: u.id == key or u.user_principal_name.lower() == key.lower())

    def _first(self, wanted: Callable[[User], bool]) -> User | None:
        with self.lock:
            return next((user for user in self._users if wanted(user)), None)

    def adopt(self, address: str) -> User | None:
        """Permissive mode: the mailbox for ``address``, created on first use.

        None in strict mode, for what is not an address (an object id), and for an address
        another user already has (an alias is not a UPN: Graph's ``/users/{alias}`` is 404).
        """
        if not self.permissive or not _ADDRESS.fullmatch(address):
            return None
        with self.lock:
            if self.user(address) is not None:
                return None
            return self.add_user(address.lower())

    def may_send_as(self, mailbox: User, address: str) -> bool:
        """Exchange's From check; permissive mode lets any mailbox send as any address."""
        return self.permissive or mailbox.may_send_as(address)

    def may_read_directory(self, roles: Iterable[str]) -> bool:
        return bool(DIRECTORY_READ_ROLES & set(roles))

    def in_rbac(self, role: str, user: User) -> bool:
        """Whether the app's "Application ``role``" RBAC assignment covers the mailbox."""
        with self.lock:
            scope = self.rbac[role]
            lowered = None if scope is None else {s.lower() for s in scope}
        return lowered is not None and (
            user.id.lower() in lowered or bool(lowered & set(user.addresses()))
        )

    def may_send_from(self, user: User, roles: Iterable[str]) -> bool:
        """Entra ``Mail.Send`` or an Exchange RBAC grant covering this mailbox."""
        return "Mail.Send" in roles or self.in_rbac("Mail.Send", user)

    def may_read_write(self, user: User, roles: Iterable[str]) -> bool:
        """Entra ``Mail.ReadWrite`` or Exchange "Application Mail.ReadWrite" on the mailbox."""
        return "Mail.ReadWrite" in roles or self.in_rbac("Mail.ReadWrite", user)

    def may_read(self, user: User, roles: Iterable[str]) -> bool:
        """Entra ``Mail.ReadBasic.All``/``Mail.Read``/``Mail.ReadWrite``, or an Exchange RBAC
        grant on the mailbox ("Application Mail.ReadBasic", or Mail.ReadWrite's)."""
        roles = set(roles)
        return (
            bool(READ_ROLES & roles)
            or self.in_rbac("Mail.ReadBasic", user)
            or (self.may_read_write(user, roles))
        )

    def may_read_full(self, user: User, roles: Iterable[str]) -> bool:
        """Bodies and MIME: Entra ``Mail.Read``/``Mail.ReadWrite`` or RBAC Mail.ReadWrite."""
        roles = set(roles)
        return bool(FULL_READ_ROLES & roles) or self.may_read_write(user, roles)
