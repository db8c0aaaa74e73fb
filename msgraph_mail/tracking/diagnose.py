"""What ``msgraph_diagnose`` asks the tenant about delivery tracking (``DELIVERY_TRACKING``).

- the permissions: ``ExchangeMessageTrace.Read.All`` for the trace; ``Mail.Read`` for the
  NDRs, best scoped to the sending mailboxes (an Entra grant in the token reaches every
  mailbox; an Exchange RBAC grant never shows in a token, so a read of each mailbox tells);
- the message trace's service principal (first-party app ``8bd644d1-…``): a trace request
  answers whether the tenant has it, and the fix is the exact command that creates it;
- with ``--send-test``: whether the test message shows in the trace, and under our
  Message-ID or another (a tenant that rewrites Message-IDs is tracked by our own header).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING
from urllib.parse import quote

from ..exceptions import MSGraphMailError
from ..findings import Finding
from ..graph import GraphClient, user_path
from .trace import PATH, _iso

if TYPE_CHECKING:
    from ..conf import MSGraphMailSettings
TRACE_ROLE = "ExchangeMessageTrace.Read.All"
READ_ROLES = frozenset({"Mail.Read", "Mail.ReadWrite"})
TRACE_APP_ID = "8bd644d1-64a1-4d4b-ae52-2e0cbf64e373"
CREATE_PRINCIPAL = (
    "Create the message trace's service principal once per tenant (Microsoft Graph "
    f"PowerShell, as a Global or Privileged Role Administrator): New-MgServicePrincipal "
    f"-AppId {TRACE_APP_ID}"
)
#: Seconds between the looks for the test message in the trace (it can take minutes).
TRACE_WAITS = (1.0, 2.0, 4.0, 8.0)


def judge_roles(config: MSGraphMailSettings, granted: set[str]) -> Iterator[Finding]:
    """The token's application permissions against the tracking sources."""
    sources = config.delivery_tracking
    if "trace" in sources and TRACE_ROLE not in granted:
        yield Finding(
            "error",
            "tracking",
            f'DELIVERY_TRACKING "trace" needs the application permission {TRACE_ROLE}, '
            "which the token does not grant",
            f"Add Microsoft Graph > Application permissions > {TRACE_ROLE} and grant admin "
            "consent.",
        )
    if "bounces" not in sources:
        return
    if granted & READ_ROLES:
        yield Finding(
            "warning",
            "tracking",
            f"the app holds tenant-wide {', '.join(sorted(granted & READ_ROLES))}: it can read "
            "every mailbox, not only the sending ones",
            "Scope it to the sending mailboxes: New-ManagementRoleAssignment -App <app> -Role "
            "'Application Mail.Read' -CustomResourceScope <the scope of Application Mail.Send> "
            "(or New-ApplicationAccessPolicy -AccessRight RestrictAccess), then remove the "
            "Entra grant.",
        )
    else:
        yield Finding(
            "info",
            "tracking",
            'DELIVERY_TRACKING "bounces" reads the sending mailboxes\' Inbox: Mail.Read must '
            "come from an Exchange RBAC role assignment, which a token cannot show (checked "
            "below per mailbox)",
        )


def probe(config: MSGraphMailSettings, mailboxes: Iterable[str]) -> list[Finding]:
    """One trace request (permission, service principal) and one Inbox read per mailbox."""
    client = GraphClient(config.model_copy(update={"max_retry_wait": 0.0}))
    try:
        found: list[Finding] = []
        if "trace" in config.delivery_tracking:
            found.append(_trace_access(client))
        if "bounces" in config.delivery_tracking:
            found += [_inbox_access(client, mailbox) for mailbox in mailboxes]
        return found
    finally:
        client.close()


def find_in_trace(
    config: MSGraphMailSettings,
    message_id: str,
    sender: str,
    recipient: str,
    waits: Iterable[float] = TRACE_WAITS,
) -> Finding:
    """Does the test message show in the trace, and under our Message-ID?"""
    topic = "test message in the trace"
    client = GraphClient(config.model_copy(update={"max_retry_wait": 0.0}))
    since = datetime.now(timezone.utc) - timedelta(minutes=5)
    try:
        for wait in (0.0, *waits):
            time.sleep(wait)
            until = datetime.now(timezone.utc)
            window = f"receivedDateTime ge {_iso(since)} and receivedDateTime le {_iso(until)}"
            expression = f"{window} and recipientAddress eq '{recipient}'"
            body = client.request(
                "GET", f"{PATH}?$filter={quote(expression, safe='')}&$top=50"
            ).body
            rows = [r for r in (body or {}).get("value") or [] if isinstance(r, dict)]
            ours = [r for r in rows if str(r.get("senderAddress") or "").lower() == sender]
            if any(r.get("messageId") == message_id for r in ours):
                return Finding(
                    "ok", topic, f"found under our Message-ID {message_id}: Exchange keeps it"
                )
            if ours:
                return Finding(
                    "info",
                    topic,
                    f"found under another Message-ID ({ours[0].get('messageId')}): this tenant "
                    "rewrites Message-IDs, so the tracker matches trace rows by sender, "
                    "recipient and time, and NDRs by our X-MSGraph-Tracking-Id header",
                )
    except MSGraphMailError as exc:
        return Finding("warning", topic, f"the trace could not be read: {exc}")
    finally:
        client.close()
    return Finding(
        "info",
        topic,
        "not in the trace yet (Exchange can take several minutes to show a message)",
        "Run --send-test again later to see whether this tenant keeps our Message-ID.",
    )


def _trace_access(client: GraphClient) -> Finding:
    now = datetime.now(timezone.utc)
    window = (
        f"receivedDateTime ge {_iso(now - timedelta(hours=1))} and receivedDateTime le {_iso(now)}"
    )
    try:
        client.request("GET", f"{PATH}?$filter={quote(window, safe='')}&$top=1")
    except MSGraphMailError as exc:
        if exc.status == 401 or "service principal" in str(exc).lower():
            return Finding("error", "message trace", f"refused: {exc}", CREATE_PRINCIPAL)
        if exc.status == 403:
            return Finding(
                "error",
                "message trace",
                f"refused: {exc}",
                f"Grant the application permission {TRACE_ROLE} with admin consent; if it is "
                f"granted, {CREATE_PRINCIPAL[0].lower()}{CREATE_PRINCIPAL[1:]}",
            )
        return Finding("warning", "message trace", f"could not be read: {exc}")
    return Finding("ok", "message trace", "readable (permission and service principal in place)")


def _inbox_access(client: GraphClient, mailbox: str) -> Finding:
    topic = f"bounces in {mailbox}"
    path = f"{user_path(mailbox)}/mailFolders/inbox/messages/delta?$select=id"
    try:  # what the tracker itself asks, one page of one message
        client.request("GET", path, headers={"Prefer": "odata.maxpagesize=1"})
    except MSGraphMailError as exc:
        if exc.status == 403:
            return Finding(
                "error",
                topic,
                f"its Inbox may not be read: {exc}",
                "Assign the Exchange role 'Application Mail.Read' to the app in the scope of "
                "the sending mailboxes (New-ManagementRoleAssignment -App <app> -Role "
                "'Application Mail.Read' -CustomResourceScope <scope>), or grant Mail.Read and "
                "restrict it with New-ApplicationAccessPolicy (changes can take an hour).",
            )
        return Finding("warning", topic, f"its Inbox could not be read: {exc}")
    return Finding("ok", topic, "its Inbox can be read (NDRs will be found)")
