"""Diagnose a live tenant: token, permissions against the mode, senders, a test message.

Used by ``manage.py msgraph_diagnose``. Each step yields :class:`Finding` objects (ok,
warning or error, with the fix); a step that cannot go on (no token) ends the diagnosis.
Nothing here prints or returns the client secret, the private key, an assertion or the token.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timezone
from typing import Any

import requests
from django.conf import settings as django_settings

from .auth import AADSTS_HINTS, fetch_token, token_credential
from .conf import MSGraphMailSettings, mask_url
from .exceptions import AuthenticationError, MSGraphMailError, SentItemsDenied
from .findings import Finding
from .graph import GraphClient
from .limits import limits_for, redis_client
from .tracking import diagnose as tracking

#: Application permissions that allow looking users up by address.
DIRECTORY_ROLES = frozenset(
    {"User.Read.All", "User.ReadWrite.All", "Directory.Read.All", "Directory.ReadWrite.All"}
)
SEND_ROLE = "Mail.Send"
#: Drafts and upload sessions (LARGE_MESSAGES) need this one too.
READ_WRITE_ROLE = "Mail.ReadWrite"
#: Seconds between the lookups of the test message in Sent Items (bounded polling).
SENT_ITEMS_WAITS = (0.5, 1.0, 2.0, 4.0, 8.0)
#: Warn this many days before the certificate expires.
CERTIFICATE_WARN_DAYS = 30


def diagnose(
    config: MSGraphMailSettings,
    senders: Iterable[str],
    send_test: str | None = None,
    roles: Mapping[str, str] | None = None,
) -> list[Finding]:
    """Run every step against the tenant that ``config`` points at.

    ``roles`` maps a sender address (any case) to the Django setting it comes from, so that
    a sender that cannot send says which setting to change.
    """
    senders = list(senders)
    findings: list[Finding] = []
    findings += describe_credential(config)
    client = GraphClient(config)
    try:
        token = _token(config, client.session, findings)
        if token is None:
            return findings
        granted = token_roles(token)
        findings += list(judge_roles(config, granted))
        found: dict[str, dict[str, Any]] = {}
        findings += list(check_senders(config, client, senders, roles, found))
        findings += list(check_limits(config, found))
        if config.delivery_tracking:
            findings += list(tracking.judge_roles(config, set(granted or ())))
            findings += tracking.probe(config, _tracked_mailboxes(config, found))
        if send_test:
            findings += send_test_message(config, send_test, next(iter(senders), None))
    finally:
        client.close()
    return findings


def _token(
    config: MSGraphMailSettings, session: requests.Session, findings: list[Finding]
) -> str | None:
    try:
        token = fetch_token(config, session)
    except AuthenticationError as exc:
        code = int(exc.code[6:]) if exc.code and exc.code.startswith("AADSTS") else 0
        fix = AADSTS_HINTS.get(code) or _CREDENTIALS_FIX[config.credential_kind]
        findings.append(Finding("error", "token", str(exc), fix))
        return None
    except MSGraphMailError as exc:
        findings.append(Finding("error", "token", str(exc), "Check AUTHORITY_URL and the network."))
        return None
    findings.append(
        Finding("ok", "token", f"acquired for app {config.client_id} in tenant {config.tenant_id}")
    )
    return token.value


_CREDENTIALS_FIX = {
    "secret": "Check TENANT_ID, CLIENT_ID and CLIENT_SECRET against the app registration.",
    "certificate": "Check TENANT_ID and CLIENT_ID against the app registration, and that "
    "CLIENT_CERTIFICATE's certificate is uploaded to it.",
    "token_credential": "Check that the identity exists where this runs (managed identity "
    "enabled on the App Service, VM or container; workload identity federation configured "
    "for the pod) and that azure-identity can reach it; see the credentials documentation.",
}


def describe_credential(config: MSGraphMailSettings, now: datetime | None = None) -> list[Finding]:
    """Which credential is in use; for a certificate its thumbprints and expiry date
    (a warning within CERTIFICATE_WARN_DAYS days, an error once expired)."""
    kind = config.credential_kind
    if kind == "secret":
        return [Finding("info", "credential", "client secret (CLIENT_SECRET)")]
    if kind == "token_credential":
        source = config.token_credential
        try:
            credential = token_credential(config)
        except MSGraphMailError as exc:
            return [Finding("error", "credential", str(exc), _CREDENTIALS_FIX[kind])]
        origin = f" from {source}" if isinstance(source, str) else ""
        return [
            Finding(
                "info",
                "credential",
                f"token credential {type(credential).__name__}{origin} (TOKEN_CREDENTIAL)",
            )
        ]
    assert config.client_certificate is not None
    certificate = config.client_certificate.load()
    now = now or datetime.now(timezone.utc)
    header = "x5t#S256" if certificate.algorithm == "PS256" else "x5t"
    expires = certificate.not_after
    days = (expires - now).total_seconds() / 86400
    described = (
        f"certificate (CLIENT_CERTIFICATE) {certificate.subject}, SHA-256 thumbprint "
        f"{certificate.thumbprint}, SHA-1 thumbprint {certificate.thumbprint_sha1}, expires "
        f"{expires:%Y-%m-%d}; assertions signed {certificate.algorithm} with {header}"
    )
    renew = (
        "Create a new certificate, upload it to the app registration (Certificates & secrets), "
        "switch CLIENT_CERTIFICATE to it, then delete the old one."
    )
    if days < 0:
        return [Finding("error", "credential", f"{described}: it has EXPIRED", renew)]
    if certificate.not_before > now:
        return [
            Finding(
                "error",
                "credential",
                f"{described}: not valid before {certificate.not_before:%Y-%m-%d %H:%M} UTC",
                "Check the server's clock, or use a certificate that is already valid.",
            )
        ]
    if days <= CERTIFICATE_WARN_DAYS:
        return [
            Finding(
                "warning", "credential", f"{described}: expires in {math.ceil(days)} days", renew
            )
        ]
    return [Finding("ok", "credential", described)]


def token_roles(token: str) -> list[str] | None:
    """The application permissions in the token's ``roles`` claim; None when it has none.

    Diagnostics only: Graph tokens are opaque to clients and must never be relied on for
    authorisation decisions (GRAPH_NOTES D.2).
    """
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return None
    roles = claims.get("roles") if isinstance(claims, dict) else None
    return [str(role) for role in roles] if isinstance(roles, list) else None


def judge_roles(config: MSGraphMailSettings, roles: list[str] | None) -> Iterator[Finding]:
    """Compare the token's application permissions with what the mode needs, and no more."""
    granted = set(roles or ())
    reads = granted & DIRECTORY_ROLES
    sends = SEND_ROLE in granted
    yield Finding(
        "info",
        "permissions",
        "the token grants "
        + (", ".join(sorted(granted)) or "no application permission")
        + " (Exchange RBAC grants never show in a token)",
    )
    if config.mode in {"permissive", "rbac"} and not reads:
        yield Finding(
            "error",
            "permissions",
            f"MODE {config.mode} looks senders up in the directory, but User.Read.All is missing",
            "Add the Microsoft Graph application permission User.Read.All and grant admin "
            "consent (API permissions > Add a permission > Application permissions).",
        )
    if config.mode == "permissive" and not sends:
        yield Finding(
            "error",
            "permissions",
            "MODE permissive needs the application permission Mail.Send, which is missing",
            "Add Microsoft Graph > Application permissions > Mail.Send and grant admin consent, "
            "or use MODE rbac with an Exchange RBAC scope.",
        )
    if config.mode == "rbac" and sends:
        yield Finding(
            "warning",
            "permissions",
            "the app holds Entra Mail.Send: Entra and Exchange grants add up, so it can send as "
            "any mailbox and the RBAC scope restricts nothing",
            "Revoke Mail.Send in Entra: Enterprise applications > the app > Permissions > "
            "Admin consent (or Remove-MgServicePrincipalAppRoleAssignment), then remove it from "
            "the app registration's API permissions; keep the Exchange role assignment "
            "'Application Mail.Send'.",
        )
    if config.mode == "single_mailbox":
        if sends:
            yield Finding(
                "warning",
                "permissions",
                "the app holds tenant-wide Mail.Send: any mailbox in the tenant could be used",
                "Scope Mail.Send to MAILBOX with Exchange RBAC for Applications "
                "(New-ManagementRoleAssignment -App ... -Role 'Application Mail.Send' "
                "-CustomResourceScope ...), then remove the Entra grant.",
            )
        if reads:
            yield Finding(
                "warning",
                "permissions",
                f"the app holds {', '.join(sorted(reads))}, which single_mailbox never uses",
                "Remove the directory permission from the app registration.",
            )
    if config.mode in {"rbac", "single_mailbox"} and not sends:
        yield Finding(
            "info",
            "permissions",
            "Mail.Send must come from an Exchange RBAC role assignment, which a token cannot show",
            "Confirm with Test-ServicePrincipalAuthorization -Identity <app> -Resource <mailbox>, "
            "or with --send-test.",
        )
    if config.large_messages:
        yield _judge_read_write(config, READ_WRITE_ROLE in granted)


def _judge_read_write(config: MSGraphMailSettings, granted: bool) -> Finding:
    """LARGE_MESSAGES creates drafts: Mail.ReadWrite, from Entra or from Exchange RBAC."""
    if granted and config.mode == "permissive":
        return Finding(
            "ok", "permissions", "LARGE_MESSAGES: the token grants Mail.ReadWrite (drafts)"
        )
    if granted:
        return Finding(
            "warning",
            "permissions",
            f"LARGE_MESSAGES: the app holds tenant-wide Mail.ReadWrite, which MODE {config.mode} "
            "does not restrict: it can read and change every mailbox",
            "Scope it with Exchange RBAC for Applications (New-ManagementRoleAssignment -App ... "
            "-Role 'Application Mail.ReadWrite' -CustomResourceScope ..., the scope of "
            "'Application Mail.Send'), then remove the Entra grant.",
        )
    return Finding(
        "warning" if config.mode == "permissive" else "info",
        "permissions",
        "LARGE_MESSAGES needs Mail.ReadWrite for drafts, which the token does not show; an "
        "Exchange RBAC grant 'Application Mail.ReadWrite' would not show in a token either",
        "Grant the application permission Mail.ReadWrite with admin consent, or assign the "
        "Exchange role 'Application Mail.ReadWrite' in the same scope as 'Application "
        "Mail.Send'; confirm with Test-ServicePrincipalAuthorization -Identity <app> -Resource "
        "<mailbox> (--send-test sends a small message, which does not use drafts).",
    )


def check_senders(
    config: MSGraphMailSettings,
    client: GraphClient,
    senders: Iterable[str],
    roles: Mapping[str, str] | None = None,
    found: dict[str, dict[str, Any]] | None = None,
) -> Iterator[Finding]:
    """Can each sender address be sent from, in this mode? ``found`` collects the users
    the lookups found, by address."""
    by_address = {address.lower(): role for address, role in (roles or {}).items()}
    for finding in _check_senders(config, client, senders, {} if found is None else found):
        role = by_address.get(finding.topic.removeprefix("sender ").lower())
        if role and finding.level == "error" and finding.topic.startswith("sender "):
            fix = f"{finding.fix} " if finding.fix else ""
            finding = Finding(finding.level, finding.topic, finding.message, fix + role)
        yield finding


def _check_senders(
    config: MSGraphMailSettings,
    client: GraphClient,
    senders: Iterable[str],
    found: dict[str, dict[str, Any]],
) -> Iterator[Finding]:
    if config.mode == "rbac" and not config.allowed_senders:
        yield Finding(
            "info",
            "senders",
            "no ALLOWED_SENDERS: every sender is tried, and the Exchange RBAC scope decides "
            "(a sender outside it fails at its sendMail)",
            "Optionally list the scope's addresses or '@domain' entries in ALLOWED_SENDERS to "
            "refuse others before any request; confirm a mailbox with "
            "Test-ServicePrincipalAuthorization -Identity <app> -Resource <mailbox>.",
        )
    for address in senders:
        topic = f"sender {address}"
        if config.mode == "single_mailbox":
            yield _single_mailbox_sender(config, address, topic)
            continue
        if config.mode == "rbac" and config.allowed_senders and not config.allows(address):
            yield Finding(
                "error",
                topic,
                "not allowed by ALLOWED_SENDERS: every mail from it is refused",
                "Add it (or its @domain) to ALLOWED_SENDERS once its mailbox is in the "
                "Exchange RBAC scope.",
            )
            continue
        yield _lookup(client, address, topic, found)


def _single_mailbox_sender(config: MSGraphMailSettings, address: str, topic: str) -> Finding:
    mailbox = str(config.mailbox)
    if address.lower() == mailbox.lower():
        return Finding("ok", topic, "is MAILBOX itself")
    return Finding(
        "warning",
        topic,
        f"is not MAILBOX ({mailbox}); Exchange accepts it only if it is an alias of that mailbox "
        "or the mailbox has Send As on it (ErrorSendAsDenied otherwise)",
        "Use MAILBOX's own address, or grant Send As; confirm with --send-test.",
    )


def _lookup(
    client: GraphClient, address: str, topic: str, found: dict[str, dict[str, Any]]
) -> Finding:
    try:
        user = client.find_user(address, select="id,mail,userPrincipalName,userType")
    except MSGraphMailError as exc:
        if exc.code == "Authorization_RequestDenied":
            return Finding(
                "error",
                topic,
                "the directory lookup was refused (403)",
                "Grant the application permission User.Read.All with admin consent.",
            )
        return Finding("error", topic, f"lookup failed: {exc}")
    if user is None:
        return Finding(
            "error",
            topic,
            "no mailbox of the tenant has this address (primary, alias or UPN)",
            "Send from an existing user or shared mailbox, or add the address as an alias.",
        )
    if user.get("userType") == "Guest":
        return Finding(
            "error",
            topic,
            f"belongs to the guest {user.get('userPrincipalName')}, which has no Exchange "
            "Online mailbox (MailboxNotEnabledForRESTAPI)",
            "Send from a licensed user or a shared mailbox of the tenant.",
        )
    found[address] = user
    return Finding(
        "ok", topic, f"resolves to mailbox {user.get('userPrincipalName')} ({user['id']})"
    )


def check_limits(
    config: MSGraphMailSettings, found: Mapping[str, dict[str, Any]]
) -> Iterator[Finding]:
    """Where Graph's per-mailbox limits are counted, and each sending mailbox's use of them
    (``found``: the senders' users, by address, as the lookups found them)."""
    if not config.redis_url:
        yield Finding(
            "info",
            "limits",
            "counted in each process (no REDIS_URL): with several processes or hosts sending "
            "through one mailbox, Graph answers 429 and a mailbox's daily budget is not shared",
            "For several workers, set REDIS_URL (see Running many workers in the documentation).",
        )
    else:
        url = mask_url(str(config.redis_url))
        try:
            redis_client(config).ping()
        except Exception as exc:  # any failure of the store is the finding
            yield Finding(
                "error",
                "limits",
                f"Redis at {url} does not answer ({type(exc).__name__}): nothing can be sent",
                "Start Redis, or correct REDIS_URL (host, port, password, rediss:// for TLS).",
            )
            return
        yield Finding("ok", "limits", f"shared through Redis at {url}")
    limits = limits_for(config)
    for address, mailbox in _mailboxes(config, found):
        try:
            use = limits.usage(mailbox)
        except MSGraphMailError as exc:
            yield Finding("error", f"budget {address}", str(exc))
            continue
        fullest = max(use.values(), key=lambda u: u["used"] / u["limit"] if u["limit"] else 0)
        high = fullest["limit"] and fullest["used"] >= 0.9 * fullest["limit"]
        yield Finding(
            "warning" if high else "info",
            f"budget {address}",
            ", ".join(
                f"{_BUDGET_NAMES[key]} {_amount(u['used'])}/{_amount(u['limit'])}"
                for key, u in use.items()
            ),
            "A spent budget frees as its window slides; mail waits for it within "
            "MAX_RETRY_WAIT, or fails with MailboxBudgetExhausted."
            if high
            else "",
        )


_BUDGET_NAMES = {
    "CONCURRENT_REQUESTS": "in flight",
    "REQUESTS_PER_10_MINUTES": "requests per 10 min",
    "UPLOAD_MB_PER_5_MINUTES": "upload MB per 5 min",
    "RECIPIENTS_PER_24_HOURS": "recipients per 24 h",
}


def _amount(value: float) -> str:
    return f"{value:g}" if value == int(value) else f"{value:.1f}"


def _mailboxes(
    config: MSGraphMailSettings, found: Mapping[str, dict[str, Any]]
) -> Iterator[tuple[str, str]]:
    """(address, the key the limits count it by): the id in the mailbox's Graph paths."""
    if config.mode == "single_mailbox":
        yield str(config.mailbox), str(config.mailbox).lower()
        return
    seen = set()
    for address, user in found.items():
        if user["id"] not in seen:
            seen.add(user["id"])
            yield str(user.get("mail") or address), str(user["id"]).lower()


def send_test_message(config: MSGraphMailSettings, to: str, sender: str | None) -> list[Finding]:
    """Send one real message through the backend and report Graph's request-id; then look it
    up by its Message-ID in Sent Items (:func:`check_message_id`)."""
    from django.core.mail import EmailMessage

    from .backend import EmailBackend

    message = EmailMessage(
        subject="msgraph_diagnose test message",
        body="This message was sent by manage.py msgraph_diagnose --send-test.",
        from_email=sender or django_settings.DEFAULT_FROM_EMAIL,
        to=[to],
    )
    backend = EmailBackend(**_options(config))
    try:
        backend.send_messages([message])
    except MSGraphMailError as exc:
        return [Finding("error", f"test message to {to}", str(exc))]
    status: Any = message.msgraph_status
    sent = Finding(
        "ok",
        f"test message to {to}",
        f"accepted by Graph through {status.mailbox} (request-id {status.request_id})",
    )
    if not status.mailbox or not status.message_id:
        return [sent]
    found = [sent, check_message_id(config, status.mailbox, status.message_id)]
    if "trace" in config.delivery_tracking:
        from .mime import sender_address

        found.append(
            tracking.find_in_trace(config, status.message_id, sender_address(message), to.lower())
        )
    return found


def check_message_id(
    config: MSGraphMailSettings,
    mailbox: str,
    message_id: str,
    waits: Iterable[float] | None = None,
) -> Finding:
    """Does the tenant keep our Message-ID? Look the test message up in the mailbox's Sent
    Items by it, polling a few times (the copy appears once transport took the message).
    RESOLVE_UNKNOWN relies on it; Microsoft does not document it (UNCONFIRMED)."""
    import time

    topic = "Message-ID kept in Sent Items"
    client = GraphClient(config)
    looked = 0.0
    try:
        for wait in (0.0, *(SENT_ITEMS_WAITS if waits is None else waits)):
            time.sleep(wait)
            looked += wait
            try:
                found = client.find_sent(mailbox, message_id)
            except SentItemsDenied as exc:
                return Finding(
                    "info",
                    topic,
                    f"could not look the test message up in the Sent Items of {mailbox}: {exc}",
                    'Grant Mail.ReadBasic.All (or the RBAC role "Application Mail.ReadBasic") '
                    "to check this and to use RESOLVE_UNKNOWN; without it, unknown outcomes "
                    "of queued messages stay unknown",
                )
            except MSGraphMailError as exc:
                return Finding(
                    "warning", topic, f"looking the test message up in Sent Items failed: {exc}"
                )
            if found is not None:
                kept = found.get("internetMessageId") == message_id
                if kept:
                    return Finding(
                        "ok",
                        topic,
                        f"the test message is in the Sent Items of {mailbox} with our "
                        f"Message-ID {message_id}: unknown outcomes can be resolved "
                        "(RESOLVE_UNKNOWN)",
                    )
    finally:
        client.close()
    return Finding(
        "warning",
        topic,
        f"no message with our Message-ID {message_id} appeared in the Sent Items of {mailbox} "
        f"within {looked:g} s: this tenant may rewrite Message-IDs (or keep no copy, or be "
        "slow), so RESOLVE_UNKNOWN cannot resolve unknown outcomes here; they stay unknown",
        "Run --send-test again later; if it still warns, leave RESOLVE_UNKNOWN off and check "
        "unknown messages by hand (manage.py msgraph_outbox)",
    )


def _tracked_mailboxes(config: MSGraphMailSettings, found: dict[str, dict[str, Any]]) -> list[str]:
    """The mailboxes whose Inbox the tracker reads: MAILBOX, or the senders' mailboxes."""
    if config.mode == "single_mailbox" and config.mailbox:
        return [config.mailbox]
    mailboxes = {
        str(user.get("userPrincipalName") or user.get("mail") or "") for user in found.values()
    }
    return sorted(m for m in mailboxes if m)


def _options(config: MSGraphMailSettings) -> dict[str, Any]:
    """The validated settings as backend keyword arguments (the secret stays a SecretStr)."""
    return {name: getattr(config, name) for name in type(config).model_fields}
