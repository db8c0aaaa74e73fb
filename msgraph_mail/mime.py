"""Django message -> the MIME bytes Graph's sendMail takes.

Graph has no SMTP envelope: Exchange parses the recipients out of the MIME headers
(GRAPH_NOTES A.1). Django's ``message()`` never writes a Bcc header, so a backend that posts
it unchanged silently drops every Bcc recipient. Here the Bcc header is added, the
per-message ``X-MSGraph-Mailbox`` override is removed, and To/Cc headers that would send the
mail to other people than ``to``/``cc`` are refused.
"""

from __future__ import annotations

import base64
import email.policy
import re
import uuid
from email.headerregistry import Address
from email.message import Message
from email.utils import getaddresses, parseaddr
from typing import Any, cast

import django
from django.core.mail import EmailMessage
from django.utils.encoding import punycode

from .exceptions import InvalidMailboxHeader, InvalidMessage, MessageTooLarge

#: The header that picks the sending mailbox for one message; it never reaches Graph.
MAILBOX_HEADER = "X-MSGraph-Mailbox"

#: Graph refuses requests larger than 4 MB (GRAPH_NOTES A.1).
MAX_REQUEST_BYTES = 4 * 1024 * 1024

_MODERN_EMAIL = django.VERSION >= (6, 0)
_BARE_ADDRESS = re.compile(r"^[^@\s<>(),;:\"\[\]\\]+@[^@\s<>(),;:\"\[\]\\]+$")


def header(message: EmailMessage, name: str) -> Any:
    """A header from ``extra_headers``, looked up case-insensitively (RFC 5322)."""
    for key, value in message.extra_headers.items():
        if key.lower() == name.lower():
            return value
    return None


def sender_address(message: EmailMessage) -> str:
    """The bare From address Exchange will see (``extra_headers['From']`` wins, as in Django)."""
    raw = str(header(message, "From") or message.from_email or "")
    if "\n" in raw or "\r" in raw:
        raise InvalidMessage("The From address contains a line break", email_message=message)
    addresses = getaddresses([raw])
    if len(addresses) != 1 or not _BARE_ADDRESS.match(addresses[0][1]):
        raise InvalidMessage(
            f"The From address {raw!r} is not one valid address; set from_email or "
            "DEFAULT_FROM_EMAIL to an address of your tenant",
            email_message=message,
        )
    return addresses[0][1]


def mailbox_override(message: EmailMessage) -> str | None:
    """The mailbox named by X-MSGraph-Mailbox (an address or a user object id), if any."""
    value = header(message, MAILBOX_HEADER)
    if value is None:
        return None
    text = str(value).strip()
    if "\n" in text or "\r" in text:
        raise InvalidMailboxHeader(f"{MAILBOX_HEADER} contains a line break", email_message=message)
    _name, address = parseaddr(text)
    if _is_guid(text):
        return text
    if address and _BARE_ADDRESS.match(address) and (address == text or f"<{address}>" in text):
        return address
    raise InvalidMailboxHeader(
        f"{MAILBOX_HEADER} must hold one mailbox address or user object id, not {text[:100]!r}",
        email_message=message,
    )


def build_mime(message: EmailMessage) -> bytes:
    """Serialise a Django message for Graph: CRLF MIME with Bcc, without the override header."""
    _check_envelope(message)
    try:
        if _MODERN_EMAIL:
            mime: Message = message.message(policy=email.policy.SMTP)
        else:
            mime = message.message()
    except ValueError as exc:  # includes BadHeaderError: header injection, Bcc in headers
        raise InvalidMessage(f"Django refused to build the message: {exc}") from exc
    del mime[MAILBOX_HEADER]
    if message.bcc:
        _set_bcc(mime, [str(address) for address in message.bcc if address])
    if _MODERN_EMAIL:
        return mime.as_bytes()
    return bytes(cast(Any, mime).as_bytes(linesep="\r\n"))  # Django 5.2's SafeMIME* API


def encode(raw: bytes, message: EmailMessage | None = None) -> bytes:
    """Base64 the MIME for the request body, refusing what Graph would refuse as too large."""
    body = base64.b64encode(raw)
    if len(body) > MAX_REQUEST_BYTES:
        raise MessageTooLarge(
            f"The message is {len(raw):,} bytes of MIME, {len(body):,} bytes once base64-encoded; "
            f"Graph's sendMail accepts at most {MAX_REQUEST_BYTES:,} bytes per request "
            "(about 3 MB of MIME). Send large files as links, or split the attachments",
            email_message=message,
        )
    return body


def _check_envelope(message: EmailMessage) -> None:
    """Refuse headers that would make Graph deliver to other people than the lists say."""
    if header(message, "Bcc") is not None:
        raise InvalidMessage(
            'Bcc is not a valid email header; use the "bcc" argument', email_message=message
        )
    for name, listed in (("To", message.to), ("Cc", message.cc)):
        value = header(message, name)
        if value is None:
            continue
        in_header = {address.lower() for _, address in getaddresses([str(value)])}
        in_list = {address.lower() for _, address in getaddresses([str(a) for a in listed])}
        if in_header != in_list:
            raise InvalidMessage(
                f"extra_headers[{name!r}] names other addresses than {name.lower()}=; Graph "
                "delivers to the header's addresses, so set the same addresses in both",
                email_message=message,
            )


def _set_bcc(mime: Message, addresses: list[str]) -> None:
    if not _MODERN_EMAIL:
        mime["Bcc"] = ", ".join(addresses)  # Django's SafeMIME* encodes address headers
        return
    parsed = []
    for name, addr_spec in getaddresses(addresses):
        username, _, domain = addr_spec.rpartition("@")
        parsed.append(Address(display_name=name, username=username, domain=punycode(domain)))
    cast(Any, mime)["Bcc"] = parsed  # the header registry takes Address objects


def _is_guid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return "-" in value
