"""Exceptions raised by msgraph_mail.

Delivery errors form one tree, so ``except MSGraphMailError`` catches every failure of a
message, and ``fail_silently=True`` swallows exactly that tree. Configuration errors stay
outside it (they derive from Django's ``ImproperlyConfigured``), so no ``fail_silently``
ever hides a misconfigured backend::

    ImproperlyConfigured
    └── ConfigurationError               settings are missing or invalid

    MSGraphMailError                     a message could not be sent (carries Graph's context)
    ├── InvalidMessage (ValueError)      the message itself cannot be sent as it is
    │   ├── InvalidMailboxHeader         X-MSGraph-Mailbox is malformed
    │   └── MessageTooLarge              the request would exceed Graph's 4 MB limit
    ├── SenderError                      no mailbox may send this message
    │   ├── SenderNotFound               the address is not a mailbox of the tenant
    │   ├── SenderNotAllowed             refused locally (ALLOWED_SENDERS, single_mailbox)
    │   ├── MailboxOutOfScope            Graph refused: outside the Exchange RBAC scope
    │   ├── MailboxNotEnabled            the user has no Exchange Online mailbox
    │   └── SendAsDenied                 the mailbox may not send as the From address
    ├── AuthenticationError              Entra refused to issue a token
    ├── GraphAPIError                    any other error answer from Graph
    ├── GraphConnectionError             no answer from Graph (network, timeout before sending)
    │   └── DeliveryUnknown              the request left but no answer came back: maybe sent
    └── BatchSendError                   several messages of one call failed (``.failures``)

Every delivery error carries, where known, ``code`` (Graph's ``error.code`` or the AADSTS
code), ``status`` (HTTP status), ``request_id`` (quote it to Microsoft support),
``client_request_id``, ``mailbox`` and ``email_message``. None of them ever holds the client
secret or an access token.
"""

from __future__ import annotations

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
    "MSGraphMailError",
    "MailboxNotEnabled",
    "MailboxOutOfScope",
    "MessageTooLarge",
    "SendAsDenied",
    "SenderError",
    "SenderNotAllowed",
    "SenderNotFound",
]


class ConfigurationError(ImproperlyConfigured):
    """The backend's settings are missing or invalid; never swallowed by fail_silently."""


class MSGraphMailError(Exception):
    """A message could not be sent. Base of every delivery error."""

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


class GraphConnectionError(MSGraphMailError):
    """Graph could not be reached; the request was not delivered."""


class DeliveryUnknown(GraphConnectionError):
    """The request was sent but no answer came back: the message may have been sent."""


class BatchSendError(MSGraphMailError):
    """Several messages of one send_messages() call failed.

    ``failures`` lists ``(email_message, exception)`` pairs; ``sent`` counts the messages
    that Graph accepted in the same call.
    """

    def __init__(self, failures: list[tuple[Any, MSGraphMailError]], sent: int) -> None:
        lines = [f"{len(failures)} messages could not be sent ({sent} sent):"]
        lines += [f"  - {describe(message)}: {error}" for message, error in failures]
        super().__init__("\n".join(lines))
        self.failures = failures
        self.sent = sent


def describe(email_message: Any) -> str:
    """Name a message in an error without quoting its body."""
    subject = getattr(email_message, "subject", "")
    recipients = getattr(email_message, "to", None) or getattr(email_message, "bcc", None) or []
    return f"{subject!r} to {', '.join(map(str, recipients[:3])) or 'nobody'}"
