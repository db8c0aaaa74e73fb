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
import io
import itertools
import re
import secrets
import uuid
from email.generator import BytesGenerator
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
#: The header that overrides SAVE_TO_SENT_ITEMS for one message; it never reaches Graph.
SAVE_HEADER = "X-MSGraph-Save-To-Sent-Items"
#: Our own headers: read by the backend, removed before sending.
OWN_HEADERS = (MAILBOX_HEADER, SAVE_HEADER)

#: Graph refuses requests larger than 4 MB (GRAPH_NOTES A.1).
MAX_REQUEST_BYTES = 4 * 1024 * 1024

#: Headers whose value is a list of addresses; each entry is checked like to=/cc= entries.
ADDRESS_HEADERS = frozenset({"from", "to", "cc", "reply-to"})

_MODERN_EMAIL = django.VERSION >= (6, 0)
# RFC 5322 specials a display name may not hold unquoted ("." is allowed: obs-phrase).
_SPECIALS = frozenset("()<>[]:;@\\,")
_ADDRESS_SPECIALS = _SPECIALS - {"@"}
_BARE_ADDRESS = re.compile(r"^[^@\s<>(),;:\"\[\]\\]+@[^@\s<>(),;:\"\[\]\\]+$")
# RFC 5322: a field name is printable ASCII without the colon.
_FIELD_NAME = re.compile(r"^[!-9;-~]+$")
# Control characters (tab excepted), including the line breaks of header injection.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# RFC 5322 dot-atom local part (quoted local parts are refused: nobody needs them here).
_LOCAL_PART = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
_DOMAIN = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
    r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$"
)


def header(message: EmailMessage, name: str) -> Any:
    """A header from ``extra_headers``, looked up case-insensitively (RFC 5322)."""
    for key, value in message.extra_headers.items():
        if key.lower() == name.lower():
            return value
    return None


def sender_address(message: EmailMessage) -> str:
    """The bare From address Exchange will see (``extra_headers['From']`` wins, as in Django)."""
    raw = str(header(message, "From") or message.from_email or "")
    if _is_bare_address(raw):
        return raw
    if "\n" in raw or "\r" in raw:
        raise InvalidMessage("The From address contains a line break", email_message=message)
    flaw, written = _shape(raw)
    addresses = getaddresses([raw]) if not flaw else []
    if not flaw and (len(addresses) != 1 or addresses[0][1] != written):
        flaw = "the parser reads another address than written"
    if flaw or not _BARE_ADDRESS.match(addresses[0][1]):
        raise InvalidMessage(
            f"The From address {raw[:100]!r} is not one valid address"
            + (f" ({flaw})" if flaw else "")
            + "; set from_email or DEFAULT_FROM_EMAIL to an address of your tenant, written "
            "as 'addr@domain' or 'Name <addr@domain>'",
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


def save_override(message: EmailMessage) -> bool | None:
    """X-MSGraph-Save-To-Sent-Items as a bool: ``true`` or ``false``; None when absent."""
    value = header(message, SAVE_HEADER)
    if value is None:
        return None
    text = str(value).strip().lower()
    if text in ("true", "false"):
        return text == "true"
    raise InvalidMessage(
        f"{SAVE_HEADER} must be 'true' or 'false', not {str(value)[:40]!r}", email_message=message
    )


def build_mime(message: EmailMessage) -> bytes:
    """Serialise a Django message for Graph: CRLF MIME with Bcc, without our own headers."""
    check_message(message)
    try:
        if _MODERN_EMAIL:
            mime: Message = message.message(policy=email.policy.SMTP)
        else:
            mime = message.message()
    except ValueError as exc:  # includes BadHeaderError: header injection, Bcc in headers
        raise InvalidMessage(f"Django refused to build the message: {exc}") from exc
    for name in OWN_HEADERS:
        del mime[name]
    _set_boundaries(mime)
    if message.bcc:
        _set_bcc(mime, [str(address) for address in message.bcc if address])
    # The standard generator, as ``as_bytes`` runs it, with the CRLF line ends MIME wants.
    buffer = io.BytesIO()
    policy = mime.policy.clone(linesep="\r\n")
    BytesGenerator(buffer, mangle_from_=False, policy=policy).flatten(mime)
    return buffer.getvalue()


def message_id_of(raw: bytes) -> str | None:
    """The Message-ID in a MIME message's header block."""
    for line in raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"message-id:"):
            return line.split(b":", 1)[1].decode("ascii", "replace").strip()
    return None


def _set_boundaries(mime: Message) -> None:
    """Give each multipart a unique boundary up front, through the email API.

    Without one, the email generator picks a random boundary and compiles a new regular
    expression per message to prove the body does not contain it. 104 random bits cannot
    collide with the content in practice, and the boundary is short enough for the
    Content-Type header to fit one line.
    """
    for part in mime.walk():
        if part.is_multipart() and part.get_boundary() is None:
            part.set_boundary(f"=_{secrets.token_hex(13)}")


def encode(raw: bytes, message: EmailMessage | None = None) -> bytes:
    """Base64 the MIME for the request body, refusing what Graph would refuse as too large."""
    body = base64.b64encode(raw)
    if len(body) > MAX_REQUEST_BYTES:
        raise MessageTooLarge(
            f"The message is {len(raw):,} bytes of MIME, {len(body):,} bytes once base64-encoded; "
            f"Graph's sendMail accepts at most {MAX_REQUEST_BYTES:,} bytes per request "
            "(about 3 MB of MIME). To send messages up to 150 MB, turn on LARGE_MESSAGES and "
            "grant the application permission Mail.ReadWrite (in MODE rbac: the Exchange role "
            "'Application Mail.ReadWrite' in the same scope as 'Application Mail.Send'); or "
            "send large files as links",
            size=len(body),
            limit=MAX_REQUEST_BYTES,
            email_message=message,
        )
    return body


def check_message(message: EmailMessage) -> None:
    """Refuse what would inject headers, lose recipients, or reach the wrong people.

    Django refuses line breaks in header values, but not in header names, not other control
    characters, and not list entries that hold several addresses ("a@x.com>, <b@y.com"):
    each of those would change the recipients Exchange parses out of the MIME.
    """
    if _CONTROL.search(str(message.from_email or "")):
        raise InvalidMessage(
            "The From address contains a line break or control character", email_message=message
        )
    if _CONTROL.search(str(message.subject)):
        raise InvalidMessage(
            "The subject contains a line break or control character", email_message=message
        )
    for name, value in message.extra_headers.items():
        if not _FIELD_NAME.match(str(name)):
            raise InvalidMessage(f"Invalid header name {str(name)[:60]!r}", email_message=message)
        if _CONTROL.search(str(value)):
            raise InvalidMessage(
                f"Header {name} contains a line break or control character", email_message=message
            )
    if message.from_email:
        _check_address(message, "from_email= (the From address)", str(message.from_email))
    for field in ("to", "cc", "bcc", "reply_to"):
        for entry in getattr(message, field):
            _check_address(message, f"{field}=", str(entry))
    for name, value in message.extra_headers.items():
        if str(name).lower() in ADDRESS_HEADERS:
            for entry in _header_entries(str(value)):
                _check_address(message, f"extra_headers[{name!r}]", entry)
    _check_envelope(message)


def _check_address(message: EmailMessage, field: str, entry: str) -> None:
    """One entry must be exactly one deliverable address (display name allowed).

    ``field`` names where the entry is (``"to="``, ``"extra_headers['Cc']"``).
    """
    if _is_bare_address(entry):
        return  # nothing to parse
    if _CONTROL.search(entry):
        raise InvalidMessage(
            f"An address in {field} contains a line break or control character",
            email_message=message,
        )
    flaw, written = _shape(entry)
    if flaw:
        raise InvalidMessage(
            f"{entry[:100]!r} in {field} is not one valid address ({flaw}); it is refused, not "
            "guessed at. Put each address in its own list entry, written as 'addr@domain' or "
            "'Name <addr@domain>'; quote display names with commas: '\"Doe, Jo\" <jo@x.com>'",
            email_message=message,
        )
    parsed = getaddresses([entry])
    address = parsed[0][1] if len(parsed) == 1 and parsed[0][1] == written else ""
    local, _, domain = address.rpartition("@")
    if not (_LOCAL_PART.match(local) and _valid_domain(domain)):
        local = written.rpartition("@")[0]
        if local and not local.isascii():
            raise InvalidMessage(
                f"{entry!r} in {field} has a non-ASCII local part; Graph's MIME route has no "
                "SMTPUTF8, so the address would be mangled. Use the recipient's ASCII address",
                email_message=message,
            )
        raise InvalidMessage(
            f"{entry[:100]!r} in {field} is not one valid address (put each address in its "
            "own list entry; quote display names with commas: '\"Doe, Jo\" <jo@x.com>')",
            email_message=message,
        )


def _shape(entry: str) -> tuple[str, str]:
    """What keeps ``entry`` from being one address written plainly or as ``Name <address>``
    (``""`` if nothing), and the address as written.

    The standard library's parser (``getaddresses``) forgives broken entries and how much
    depends on the Python release: before the CVE-2023-27043 fix, and even after it,
    ``'Victim <victim@example.com'`` parses as ``victim@example.com``. Here the entry must be
    what one parsed address re-formats to: balanced quotes, at most one ``<...>`` with
    nothing after it, a display name without unquoted specials (groups, a second address;
    comments ``(...)`` are allowed there only). This looks at the entry alone, so every
    release gives the same answer; the caller then requires the parser to read exactly the
    address as written.
    """
    text = entry.strip()
    flaw, bare, _commas = _scan(text)
    if flaw:
        return flaw, ""
    if "<" not in bare and ">" not in bare:
        if bare != text or any(char.isspace() or char in _ADDRESS_SPECIALS for char in text):
            return "text around the address: a name, comment or second address?", ""
        return "", text
    if bare.count("<") != 1 or bare.count(">") != 1 or bare.index("<") > bare.index(">"):
        return "unbalanced angle brackets", ""
    if not bare.endswith(">"):
        return "text after the closing '>'", ""
    written = text.rpartition("<")[2][:-1].strip()
    if not written or any(char.isspace() or char in _ADDRESS_SPECIALS for char in written):
        return "more than one address between '<' and '>'", ""
    if any(char in _SPECIALS for char in bare.partition("<")[0].replace("()", "")):
        return "an unquoted special character in the display name (quote it)", ""
    return "", written


def _header_entries(value: str) -> list[str]:
    """An address header's value, split at the commas outside quoted strings and comments."""
    bounds = [-1, *_scan(value)[2], len(value)]
    return [value[start + 1 : end] for start, end in itertools.pairwise(bounds)]


def _scan(text: str) -> tuple[str, str, list[int]]:
    """One walk over address text, for both checks above: the first flaw that keeps it from
    being read plainly (``""`` if none), the text with quoted strings and comments emptied
    (their delimiters kept), and the positions of the commas outside them.

    The walk goes on after a flaw, so the commas of a damaged header are still found (each
    entry is then refused on its own).
    """
    flaw = ""
    outside: list[str] = []
    commas: list[int] = []
    in_quotes = escaped = False
    depth = 0  # of nested comments
    for index, char in enumerate(text):
        if escaped:
            escaped = False
        elif (in_quotes or depth) and char == "\\":
            escaped = True
        elif in_quotes:
            in_quotes = char != '"'
            if not in_quotes:
                outside.append(char)
        elif char == "," and depth:
            # Python's strict parser (3.13, patched releases) refuses it; older ones take it
            flaw = flaw or "a comma inside a comment (put the name in double quotes instead)"
        elif char == "(":
            depth += 1
            if depth == 1:
                outside.append(char)
        elif char == ")":
            if depth == 0:
                flaw = flaw or "an unbalanced parenthesis"
                continue
            depth -= 1
            if depth == 0:
                outside.append(char)
        elif depth == 0:
            in_quotes = char == '"'
            if char == "," and not in_quotes:
                commas.append(index)
            outside.append(char)
    if in_quotes:
        flaw = flaw or "an unbalanced double quote"
    if depth:
        flaw = flaw or "an unbalanced parenthesis"
    return flaw, "".join(outside), commas


def _is_bare_address(text: str) -> bool:
    """An ASCII addr-spec alone ("jo@contoso.com"): parsing it would give it back unchanged."""
    local, at, domain = text.rpartition("@")
    return bool(at and _LOCAL_PART.fullmatch(local) and _DOMAIN.fullmatch(domain))


def _valid_domain(domain: str) -> bool:
    try:
        ascii_domain = punycode(domain) if domain else ""
    except UnicodeError:
        return False
    return bool(_DOMAIN.match(ascii_domain))


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
