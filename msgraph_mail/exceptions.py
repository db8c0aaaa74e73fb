"""Exceptions raised by msgraph_mail.

Delivery errors form one tree, so ``except MSGraphMailError`` catches every failure of a
message, and ``fail_silently=True`` swallows exactly that tree. Configuration errors stay
outside it (they derive from Django's ``ImproperlyConfigured``), so no ``fail_silently``
ever hides a misconfigured backend::

    ImproperlyConfigured
    └── ConfigurationError               settings are missing or invalid
        └── OutboxNotMigrated            the outbox's table is missing: run migrate

    MSGraphMailError                     a message could not be sent (carries Graph's context)
    ├── InvalidMessage (ValueError)      the message itself cannot be sent as it is
    │   ├── InvalidMailboxHeader         X-MSGraph-Mailbox is malformed
    │   ├── RecipientsSuppressed         every recipient hard-bounced before (SUPPRESS_BOUNCED)
    │   └── MessageTooLarge              the request would exceed Graph's 4 MB limit
    ├── SenderError                      no mailbox may send this message
    │   ├── SenderNotFound               the address is not a mailbox of the tenant
    │   ├── SenderNotAllowed             refused locally (ALLOWED_SENDERS, single_mailbox)
    │   ├── MailboxOutOfScope            Graph refused: outside the Exchange RBAC scope
    │   ├── MailboxNotEnabled            the user has no Exchange Online mailbox
    │   └── SendAsDenied                 the mailbox may not send as the From address
    ├── AuthenticationError              Entra refused to issue a token
    ├── GraphAPIError                    any other error answer from Graph
    │   └── SentItemsDenied              Sent Items may not be read (Mail.ReadBasic.All)
    ├── GraphConnectionError             no answer from Graph (network, timeout before sending)
    │   └── DeliveryUnknown              the request left but no answer came back: maybe sent
    ├── MailboxBudgetExhausted           a MAILBOX_LIMITS budget is used up: nothing was sent,
    │                                    send again after ``retry_at``
    ├── LimitsUnavailable                REDIS_URL cannot be reached: nothing was sent
    ├── OutboxDecryptionError            no OUTBOX_ENCRYPTION_KEYS key opens a queued message
    └── BatchSendError                   several messages of one call failed (``.failures``)

Every delivery error carries, where known, ``code`` (Graph's ``error.code`` or the AADSTS
code), ``status`` (HTTP status), ``request_id`` (quote it to Microsoft support),
``client_request_id``, ``mailbox`` and ``email_message``. None of them ever holds the client
secret or an access token.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from django.core.exceptions import ImproperlyConfigured

__all__ = [
    "AuthenticationError",
    "BatchSendError",
    "ConfigurationError",
    "DeliveryUnknown",
    "GraphAPIError",
    "GraphConnectionError",
    "InvalidMailboxHeader",
    "InvalidMessage",
    "LimitsUnavailable",
    "MSGraphMailError",
    "MailboxBudgetExhausted",
    "MailboxNotEnabled",
    "MailboxOutOfScope",
    "MessageTooLarge",
    "OutboxDecryptionError",
    "OutboxNotMigrated",
    "RecipientsSuppressed",
    "SendAsDenied",
    "SenderError",
    "SenderNotAllowed",
    "SenderNotFound",
    "SentItemsDenied",
]


class ConfigurationError(ImproperlyConfigured):
    """The backend's settings are missing or invalid; never swallowed by fail_silently."""


class OutboxNotMigrated(ConfigurationError):
    """QueuedEmailBackend's outbox table is missing or behind its migrations: nothing was
    queued. Run ``manage.py migrate`` (``manage.py check --database default`` tells first)."""


class MSGraphMailError(Exception):
    """A message could not be sent. Base of every delivery error."""

    #: Graph's ``Retry-After`` in seconds, on the error of a 429 or 503 that gave one.
    retry_after: float | None = None

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        request_id: str | None = None,
        client_request_id: str | None = None,
        mailbox: str | None = None,
        email_message: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.request_id = request_id
        self.client_request_id = client_request_id
        self.mailbox = mailbox
        self.email_message = email_message

    def context(self, **changes: Any) -> dict[str, Any]:
        """What an error raised in this one's place keeps of it (``changes`` replacing some):
        Graph's code, the HTTP status, both request ids (what Microsoft support asks for) and
        the mailbox."""
        kept = {
            "code": self.code,
            "status": self.status,
            "request_id": self.request_id,
            "client_request_id": self.client_request_id,
            "mailbox": self.mailbox,
        }
        return {**kept, **changes}

    def __str__(self) -> str:
        details = [
            f"{label} {value}"
            for label, value in (
                ("HTTP", self.status),
                ("code", self.code),
                ("request-id", self.request_id),
            )
            if value
        ]
        return f"{self.message} ({', '.join(details)})" if details else self.message


class InvalidMessage(MSGraphMailError, ValueError):
    """The message cannot be sent as it is (a problem in the message, not in Graph)."""


class InvalidMailboxHeader(InvalidMessage):
    """The X-MSGraph-Mailbox header does not hold one address or user id."""


class RecipientsSuppressed(InvalidMessage):
    """Every recipient of the message is on the suppression list (an earlier hard bounce):
    nothing was sent. ``suppressed`` lists them; ``manage.py msgraph_suppressions --remove``
    takes an address off the list once it is fixed."""

    def __init__(self, message: str, *, suppressed: list[str], **context: Any) -> None:
        super().__init__(message, **context)
        self.suppressed = suppressed


class MessageTooLarge(InvalidMessage):
    """The request would exceed Graph's 4 MB limit (or the message Exchange's 150 MB).

    ``size`` is the message's size in bytes as measured against ``limit``.
    """

    def __init__(
        self, message: str, *, size: int | None = None, limit: int | None = None, **kwargs: Any
    ) -> None:
        super().__init__(message, **kwargs)
        self.size = size
        self.limit = limit


class SenderError(MSGraphMailError):
    """No mailbox may send this message."""


class SenderNotFound(SenderError):
    """The From address (or override) is not a mailbox of the tenant."""


class SenderNotAllowed(SenderError):
    """The sender was refused before any request (ALLOWED_SENDERS, single_mailbox)."""


class MailboxOutOfScope(SenderError):
    """Graph refused the mailbox: it is outside the application's permission scope."""


class MailboxNotEnabled(SenderError):
    """The user exists but has no usable Exchange Online mailbox (guest, unlicensed)."""


class SendAsDenied(SenderError):
    """The mailbox has no Send As right on the message's From address."""


class AuthenticationError(MSGraphMailError):
    """Entra ID refused to issue an access token (wrong secret, unknown app or tenant)."""


class GraphAPIError(MSGraphMailError):
    """Graph answered with an error not covered by a more specific exception."""


class SentItemsDenied(GraphAPIError):
    """Graph refused to list a mailbox's Sent Items (403): resolving unknown outcomes
    (RESOLVE_UNKNOWN) and ``msgraph_diagnose --send-test`` need the application permission
    ``Mail.ReadBasic.All`` (or ``Mail.Read``), or the Exchange RBAC role "Application
    Mail.ReadBasic" scoped to the mailbox."""


class GraphConnectionError(MSGraphMailError):
    """Graph could not be reached; the request was not delivered."""


class DeliveryUnknown(GraphConnectionError):
    """The request was sent but no answer came back: the message may have been sent."""


class MailboxBudgetExhausted(MSGraphMailError):
    """A mailbox's budget (MAILBOX_LIMITS) has no room for this request; nothing was sent.

    Raised before the request, when the budget does not free within the message's remaining
    MAX_RETRY_WAIT (shorter waits are simply waited out). ``mailbox`` is the mailbox,
    ``budget`` the MAILBOX_LIMITS key that is short (``"RECIPIENTS_PER_24_HOURS"``...),
    ``retry_at`` the aware UTC time when enough of it frees. When the request alone exceeds
    the whole budget it can never fit: ``retry_at`` is None, and ``needed`` and ``limit`` say
    by how much, in the budget's unit (requests, recipients, MB for uploads).
    """

    def __init__(
        self,
        message: str | None = None,
        *,
        mailbox: str,
        budget: str,
        retry_at: datetime | None,
        needed: float | None = None,
        limit: float | None = None,
        **kwargs: Any,
    ) -> None:
        if message is None:
            message = _budget_message(mailbox, budget, retry_at, needed, limit)
        super().__init__(message, mailbox=mailbox, **kwargs)
        self.budget = budget
        self.retry_at = retry_at
        self.needed = needed
        self.limit = limit

    def naming(self, mailbox: str) -> MailboxBudgetExhausted:
        """The same error, naming the mailbox by ``mailbox`` (its address, not its id)."""
        if mailbox.lower() == str(self.mailbox).lower():
            return self
        return MailboxBudgetExhausted(
            mailbox=mailbox,
            budget=self.budget,
            retry_at=self.retry_at,
            needed=self.needed,
            limit=self.limit,
            email_message=self.email_message,
        )


def _budget_message(
    mailbox: str,
    budget: str,
    retry_at: datetime | None,
    needed: float | None,
    limit: float | None,
) -> str:
    if retry_at is None:
        return (
            f"Mailbox {mailbox}: this request alone needs {needed:g} of the {budget} budget of "
            f"{limit:g}, so it can never be sent as it is; nothing was sent: split the message "
            "(fewer recipients, smaller attachments) or raise MAILBOX_LIMITS"
        )
    seconds = max(0.0, (retry_at - datetime.now(timezone.utc)).total_seconds())
    return (
        f"Mailbox {mailbox} has used its {budget} budget; enough of it frees at "
        f"{retry_at.isoformat(timespec='seconds')} (in {seconds:.0f} s). Nothing was sent: "
        "it is safe to send this message again after that time"
    )


class LimitsUnavailable(MSGraphMailError):
    """The store of the shared limits (REDIS_URL) cannot be reached; nothing was sent.

    The message names REDIS_URL with its password hidden. Sending does not fall back to
    per-process limits, which would let every process burst at once.
    """


class OutboxDecryptionError(MSGraphMailError):
    """A queued message's stored content is encrypted with no key of OUTBOX_ENCRYPTION_KEYS.

    Nothing was sent (never an empty or garbled message): the worker marks it failed. Put
    the key it was encrypted with back into the list, then resend it
    (``msgraph_outbox --resend``). The message never quotes a key.
    """


class BatchSendError(MSGraphMailError):
    """Several messages of one send_messages() call failed.

    ``failures`` lists ``(email_message, exception)`` pairs; ``sent`` counts the messages
    that Graph accepted in the same call; ``suppressed`` lists ``(email_message, addresses)``
    for the messages sent without some recipients on the suppression list.
    """

    def __init__(
        self,
        failures: list[tuple[Any, MSGraphMailError]],
        sent: int,
        suppressed: list[tuple[Any, list[str]]] | None = None,
    ) -> None:
        lines = [f"{len(failures)} messages could not be sent ({sent} sent):"]
        lines += [f"  - {describe(message)}: {error}" for message, error in failures]
        lines += [
            f"  - {describe(message)}: sent without {', '.join(addresses)} (suppressed: an "
            "earlier hard bounce)"
            for message, addresses in suppressed or []
        ]
        super().__init__("\n".join(lines))
        self.failures = failures
        self.sent = sent
        self.suppressed = suppressed or []


def describe(email_message: Any) -> str:
    """Name a message in an error without quoting its body."""
    subject = getattr(email_message, "subject", "")
    recipients = getattr(email_message, "to", None) or getattr(email_message, "bcc", None) or []
    return f"{subject!r} to {', '.join(map(str, recipients[:3])) or 'nobody'}"
