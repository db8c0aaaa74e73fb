"""Which mailbox sends a message: one ``SenderResolver`` strategy per mode of operation.

The mode is chosen once, in :func:`resolver_for`, from the validated settings:

- ``permissive``: the From address (or ``X-MSGraph-Mailbox``) is looked up in the directory
  by primary address, alias or UPN; needs ``User.Read.All`` and ``Mail.Send``.
- ``rbac``: the same lookup; Graph's 403 is explained as the mailbox being outside the
  application's Exchange RBAC scope, which is the authority. ``ALLOWED_SENDERS``, when set,
  refuses other addresses before any request (an optional early refusal).
- ``single_mailbox``: every message goes through ``MAILBOX``; no directory request, ever.

Lookups are cached for the whole process (``SENDER_CACHE_TTL``), so in the steady state a
message costs exactly one request: its sendMail.
"""

from __future__ import annotations

import threading
from typing import Any

from cachetools import TTLCache
from django.core.mail import EmailMessage

from . import shared_state, telemetry
from .conf import MSGraphMailSettings
from .exceptions import (
    MailboxNotEnabled,
    MailboxOutOfScope,
    MSGraphMailError,
    SendAsDenied,
    SenderNotAllowed,
    SenderNotFound,
)
from .graph import GraphClient
from .mime import MAILBOX_HEADER, mailbox_override, sender_address
from .values import Mailbox


class SenderResolver:
    """Strategy interface: pick the mailbox that sends a message.

    ``resolve`` raises a :class:`~msgraph_mail.exceptions.SenderError` when no mailbox may send
    it; ``explain`` turns Graph's refusal of a sendMail into the clearest error for the mode.
    """

    def __init__(self, settings: MSGraphMailSettings, client: GraphClient) -> None:
        self.settings = settings
        self.client = client

    def resolve(self, message: EmailMessage) -> Mailbox:
        raise NotImplementedError

    @classmethod
    def refuse_early(
        cls, settings: MSGraphMailSettings, from_address: str, override: str | None
    ) -> None:
        """Raise the refusals this mode makes without any request (none by default), so
        that QueuedEmailBackend refuses such a message in the caller, as EmailBackend does."""

    def resolve_address(self, from_address: str, override: str | None = None) -> Mailbox:
        """The same choice from a bare From address and the X-MSGraph-Mailbox value, for a
        message already built (the queued backend's worker has its MIME, not the message)."""
        raise NotImplementedError

    def explain(self, error: MSGraphMailError, mailbox: Mailbox, sender: str) -> MSGraphMailError:
        """Map Graph's error codes for a sendMail to typed errors that say what to do."""
        context = _context(error, mailbox)
        if error.code == "ErrorSendAsDenied":
            return SendAsDenied(
                f"Mailbox {mailbox.address} may not send as {sender}: set the From address to "
                f"{mailbox.address}, or have an Exchange administrator grant {mailbox.address} "
                f"Send As on {sender}",
                **context,
            )
        if error.code == "MailboxNotEnabledForRESTAPI":
            return MailboxNotEnabled(
                f"{mailbox.address} has no Exchange Online mailbox (a guest, an unlicensed or "
                "on-premises user): send from a licensed or shared mailbox",
                **context,
            )
        if error.code == "ErrorInvalidUser" or (error.status == 404 and error.code != "BadRequest"):
            return SenderNotFound(
                f"Graph does not know the mailbox {mailbox.address}: {error.message}", **context
            )
        if error.code == "ErrorAccessDenied":
            return MailboxOutOfScope(
                f"The application may not send mail as {mailbox.address}: grant it the "
                "application permission Mail.Send with admin consent, or include the mailbox "
                "in its Exchange RBAC scope",
                **context,
            )
        return error


class DirectoryResolver(SenderResolver):
    """permissive: any mailbox of the tenant, found from the From address."""

    def resolve(self, message: EmailMessage) -> Mailbox:
        return self._resolve(mailbox_override(message) or sender_address(message))

    def resolve_address(self, from_address: str, override: str | None = None) -> Mailbox:
        return self._resolve(override or from_address)

    def _resolve(self, wanted: str) -> Mailbox:
        self.check_allowed(wanted)
        mailbox = self.lookup(wanted)
        if "@" not in wanted:  # a user id: only now is its address known
            self.check_allowed(mailbox.address)
        return mailbox

    def check_allowed(self, address: str) -> None:
        """Hook for rbac: refuse an address before any request."""

    def lookup(self, wanted: str) -> Mailbox:
        key = (self.settings.graph_url, self.settings.tenant_id, self.settings.client_id, wanted)
        cached = sender_cache.get(key, self.settings.sender_cache_ttl)
        if cached is not None:
            return cached
        with sender_cache.lock_for(key):  # concurrent senders: one lookup per address
            cached = sender_cache.get(key, self.settings.sender_cache_ttl)
            if cached is not None:
                return cached
            with telemetry.span("msgraph_mail sender lookup") as span:
                # REDIS_URL: another process may have looked it up
                cached = shared_state.get_sender(self.settings, wanted)
                if cached is not None:
                    sender_cache.put(key, cached, self.settings.sender_cache_ttl)
                found = cached or self._fetch(key, wanted)
                if span.is_recording():
                    span.set_attribute(
                        "msgraph_mail.lookup.source", "shared" if cached else "directory"
                    )
                    span.set_attribute(
                        "msgraph_mail.mailbox",
                        telemetry.mailbox_label(self.settings, found.id) or "",
                    )
                return found

    def _fetch(self, key: tuple[str, ...], wanted: str) -> Mailbox:
        user = self.client.find_user(wanted) if "@" in wanted else self.client.get_user(wanted)
        if user is None:
            raise SenderNotFound(
                f"No mailbox of the tenant has the address {wanted}: use an address of an "
                "existing user or shared mailbox (primary address or alias), or add the alias "
                "to a mailbox",
                mailbox=wanted,
            )
        mailbox = Mailbox(id=user["id"], address=user.get("mail") or user["userPrincipalName"])
        sender_cache.put(key, mailbox, self.settings.sender_cache_ttl)
        shared_state.put_sender(self.settings, wanted, mailbox)
        return mailbox


class RbacResolver(DirectoryResolver):
    """rbac: like permissive, limited by the Exchange RBAC scope (the authority) and, when it
    is set, by ALLOWED_SENDERS before any request."""

    def check_allowed(self, address: str) -> None:
        _refuse_unlisted(self.settings, address)

    @classmethod
    def refuse_early(
        cls, settings: MSGraphMailSettings, from_address: str, override: str | None
    ) -> None:
        _refuse_unlisted(settings, override or from_address)

    def explain(self, error: MSGraphMailError, mailbox: Mailbox, sender: str) -> MSGraphMailError:
        if error.code == "ErrorAccessDenied":
            return MailboxOutOfScope(
                f"Mailbox {mailbox.address} is outside the application's Exchange RBAC scope: "
                "check with Test-ServicePrincipalAuthorization -Identity <app> -Resource "
                f"{mailbox.address}, and add the mailbox to the management scope (changes take "
                "30 minutes to 2 hours to apply)",
                **_context(error, mailbox),
            )
        return super().explain(error, mailbox, sender)


class SingleMailboxResolver(SenderResolver):
    """single_mailbox: everything goes through MAILBOX, with no directory request at all."""

    def resolve(self, message: EmailMessage) -> Mailbox:
        mailbox = self._check_override(mailbox_override(message))
        sender_address(message)  # a From Exchange cannot parse fails here, before any request
        return mailbox

    def resolve_address(self, from_address: str, override: str | None = None) -> Mailbox:
        return self._check_override(override)

    def _check_override(self, override: str | None) -> Mailbox:
        return _the_mailbox(self.settings, override)

    @classmethod
    def refuse_early(
        cls, settings: MSGraphMailSettings, from_address: str, override: str | None
    ) -> None:
        _the_mailbox(settings, override)


def _refuse_unlisted(settings: MSGraphMailSettings, address: str) -> None:
    """rbac: an address outside ALLOWED_SENDERS (when it is set) is refused before any request."""
    if not settings.allowed_senders:
        return  # no allow-list: every sender is tried, Exchange's scope decides
    if "@" in address and not settings.allows(address):
        raise SenderNotAllowed(
            f"{address} is not in ALLOWED_SENDERS ({', '.join(settings.allowed_senders)})"
            ": send from an allowed address, or add it to ALLOWED_SENDERS once the mailbox "
            "is in the application's Exchange RBAC scope",
            mailbox=address,
        )


def _the_mailbox(settings: MSGraphMailSettings, override: str | None) -> Mailbox:
    """single_mailbox: MAILBOX, unless X-MSGraph-Mailbox names another one (refused)."""
    configured = str(settings.mailbox)
    if override is not None and override.lower() != configured.lower():
        raise SenderNotAllowed(
            f"{MAILBOX_HEADER} names {override}, but MODE single_mailbox only sends through "
            f"{configured}: remove the header, or use MODE permissive or rbac",
            mailbox=override,
        )
    return Mailbox(id=configured, address=configured)


RESOLVERS: dict[str, type[SenderResolver]] = {
    "permissive": DirectoryResolver,
    "rbac": RbacResolver,
    "single_mailbox": SingleMailboxResolver,
}


def refuse_early(settings: MSGraphMailSettings, from_address: str, override: str | None) -> None:
    """The mode's refusals that need no request (see SenderResolver.refuse_early)."""
    RESOLVERS[settings.mode].refuse_early(settings, from_address, override)


def resolver_for(settings: MSGraphMailSettings, client: GraphClient) -> SenderResolver:
    """The one place where the mode of operation picks its strategy."""
    return RESOLVERS[settings.mode](settings, client)


class SenderCache:
    """Process-wide address -> mailbox cache (cachetools' TTLCache is not thread-safe)."""

    def __init__(self, maxsize: int = 4096) -> None:
        self._maxsize = maxsize
        self._caches: dict[float, TTLCache[Any, Mailbox]] = {}
        self._locks: dict[Any, threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, key: Any, ttl: float) -> Mailbox | None:
        if ttl <= 0:
            return None
        with self._lock:
            cache = self._caches.get(ttl)
            return cache.get(_normal(key)) if cache is not None else None

    def put(self, key: Any, mailbox: Mailbox, ttl: float) -> None:
        if ttl <= 0:
            return
        with self._lock:
            cache = self._caches.setdefault(ttl, TTLCache(maxsize=self._maxsize, ttl=ttl))
            cache[_normal(key)] = mailbox

    def lock_for(self, key: Any) -> threading.Lock:
        with self._lock:
            return self._locks.setdefault(_normal(key), threading.Lock())

    def clear(self) -> None:
        with self._lock:
            self._caches.clear()


#: The one sender cache of the process.
sender_cache = SenderCache()


def _normal(key: Any) -> Any:
    return tuple(part.lower() if isinstance(part, str) else part for part in key)


def _context(error: MSGraphMailError, mailbox: Mailbox) -> dict[str, Any]:
    return {
        "code": error.code,
        "status": error.status,
        "request_id": error.request_id,
        "client_request_id": error.client_request_id,
        "mailbox": mailbox.address,
    }
