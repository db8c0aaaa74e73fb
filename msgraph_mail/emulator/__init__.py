"""A Microsoft Graph + Entra emulator on 127.0.0.1, for tests, demos and local development.

It implements what a mail backend touches (client-credentials tokens, user lookup, sendMail
with MIME or JSON) with Graph's status codes, error codes and permission rules, so behaviour
seen here is behaviour to expect from the real services. It also fails the way they do, on
demand: throttling, outages, gateway timeouts that hide a delivery, dropped connections. And
it enforces Graph's per-application-and-mailbox limits (4 requests in flight, 10,000 requests
per 10 minutes, 150 MB of upload per 5 minutes) and Exchange's 10,000 recipients per mailbox
per 24 hours, with a time scale that runs those windows in seconds. After the 202 it decides
each recipient's fate by rule, puts Exchange-shaped NDRs into the sender's Inbox (read by
delta, get and ``$value``) and answers message trace with its permission, paging and
100-requests-per-5-minutes limit. Standard library only, but for Django's template engine
(used standalone, no settings) behind the dev inbox's pages.

Who may import what: it imports nothing of the product (it must stand for Graph, not mirror
our code); the product imports it only in ``testing`` (the pytest fixture) and ``demo``.
"""

from .delivery import OUTCOMES
from .directory import (
    ALICE_ID,
    BOB_ID,
    CLIENT_ID,
    CLIENT_SECRET,
    GUEST_ID,
    NOREPLY_ID,
    SERVICE_PRINCIPAL_ID,
    TENANT_DOMAIN,
    TENANT_ID,
    User,
)
from .faults import ALL_FAULTS, FAULTS, PAGE_FAULT_NAMES, InjectedFault
from .inbox_folder import InboxMessage
from .limits import DEFAULT_LIMITS
from .mail import Attachment, SentMessage
from .request_log import RecordedRequest
from .routes import MAX_REQUEST_BYTES
from .server import GraphEmulator

__all__ = [
    "ALICE_ID",
    "ALL_FAULTS",
    "BOB_ID",
    "CLIENT_ID",
    "CLIENT_SECRET",
    "DEFAULT_LIMITS",
    "FAULTS",
    "GUEST_ID",
    "MAX_REQUEST_BYTES",
    "NOREPLY_ID",
    "OUTCOMES",
    "PAGE_FAULT_NAMES",
    "SERVICE_PRINCIPAL_ID",
    "TENANT_DOMAIN",
    "TENANT_ID",
    "Attachment",
    "GraphEmulator",
    "InboxMessage",
    "InjectedFault",
    "RecordedRequest",
    "SentMessage",
    "User",
]
