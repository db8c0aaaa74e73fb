"""Encryption at rest of the outbox (``OUTBOX_ENCRYPTION_KEYS``): what a store writes and reads.

A store keeps each message as the envelope's JSON text. With keys configured, :func:`dump`
seals the message's *content* -- ``mime``, ``json_body`` and ``draft`` (the draft plan, which
carries the attachments) -- into one Fernet token under the envelope's ``"sealed"`` key and
blanks those fields; :func:`load` opens it again. What a listing shows stays readable without
any key: the Message-ID, subject, first recipient, From address, recipients, mailer alias,
priority, times and tracking id.

The keys are ``cryptography``'s :class:`~cryptography.fernet.MultiFernet`: the first key
encrypts, every key decrypts, so a new key is put first, :func:`reencrypt_store`
(``msgraph_outbox --reencrypt``) moves every stored message to it, and the old key is then
dropped. Rows written before keys were configured stay readable as they are.

A message that no configured key decrypts still loads (the listing and ``--resend`` work),
with ``Envelope.sealed`` holding the closed token and no content;
:func:`~msgraph_mail.outbox.envelope.payload_of` refuses it with
:class:`~msgraph_mail.exceptions.OutboxDecryptionError`, so it fails and is never sent empty
or garbled. ``cryptography`` is imported only when keys are configured.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import SecretStr

from ..exceptions import ConfigurationError, OutboxDecryptionError
from .envelope import Envelope, undecryptable

if TYPE_CHECKING:
    from cryptography.fernet import MultiFernet


__all__ = [
    "CONTENT",
    "INSTALL_COMMAND",
    "Keys",
    "Reencrypted",
    "dump",
    "load",
    "opened",
    "reencrypt",
    "reencrypt_store",
]

#: The envelope's fields that hold the message itself, sealed together.
CONTENT = ("mime", "json_body", "draft")
#: What makes OUTBOX_ENCRYPTION_KEYS usable.
INSTALL_COMMAND = 'pip install "django-msgraph-mailer[encryption]"'
#: OUTBOX_ENCRYPTION_KEYS as the settings hold it (plain strings are accepted too).
Keys = Sequence[SecretStr | str]
#: How often --reencrypt tries again a message that changed while it was rewritten.
TRIES = 3

_BLANK: dict[str, Any] = {"mime": "", "json_body": None, "draft": None}
_SEPARATORS = (",", ":")


def dump(envelope: Envelope, keys: Keys) -> str:
    """The JSON text a store writes: the content sealed under the first key when ``keys``
    are configured and there is content; otherwise the envelope as it is.

    An envelope still sealed (no key opened it) is written back with its token unchanged, so
    a resend or a status change never loses a message that a restored key could open.
    """
    data = envelope.to_dict()
    data.pop("sealed")
    if envelope.sealed is not None:
        return json.dumps({**data, **_BLANK, "sealed": envelope.sealed}, separators=_SEPARATORS)
    if keys and _has_content(data):
        token = _fernet(keys).encrypt(_content_json(data)).decode("ascii")
        return json.dumps({**data, **_BLANK, "sealed": token}, separators=_SEPARATORS)
    return json.dumps(data, separators=_SEPARATORS)


def load(text: str | None, keys: Keys) -> Envelope:
    """The envelope a store reads: opened when a key decrypts it, still sealed (its content
    blank, ``sealed`` set) when none does; an unencrypted row as it was written."""
    data: dict[str, Any] = json.loads(text or "{}")
    return opened(Envelope.from_dict(data), keys)


def opened(envelope: Envelope, keys: Keys) -> Envelope:
    """The envelope with its content decrypted, or unchanged when it is not sealed or no key
    of ``keys`` decrypts it (a worker whose store was built before it knew the mailer)."""
    if envelope.sealed is None or not keys:
        return envelope
    content = _open(envelope.sealed, keys)
    if content is None:
        return envelope
    return dataclasses.replace(envelope, sealed=None, **content)


def reencrypt(text: str, keys: Keys) -> str | None:
    """The stored text rewritten under the first key, or None when it already is (or has no
    content to encrypt); OutboxDecryptionError when no key decrypts it."""
    fernet, first = _fernet(keys), _fernet(keys[:1])
    from cryptography.fernet import InvalidToken

    data: dict[str, Any] = json.loads(text or "{}")
    token = data.get("sealed")
    if not token:
        if not _has_content(data):
            return None
        return dump(Envelope.from_dict(data), keys)
    try:
        first.decrypt(token.encode("ascii"))
        return None
    except (InvalidToken, UnicodeEncodeError):
        pass
    try:
        rotated = fernet.rotate(token.encode("ascii")).decode("ascii")
    except (InvalidToken, UnicodeEncodeError):
        raise OutboxDecryptionError(undecryptable(str(data.get("message_id") or ""))) from None
    return json.dumps({**data, "sealed": rotated}, separators=_SEPARATORS)


@dataclass
class Reencrypted:
    """What ``--reencrypt`` did: message ids rewritten, already current, not decryptable
    by any key, and skipped (changed by a worker each time it was rewritten)."""

    rewritten: list[str] = field(default_factory=list)
    current: list[str] = field(default_factory=list)
    undecryptable: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


class Rewritable(Protocol):
    """What ``--reencrypt`` needs of a store: its messages' stored texts, read and replaced
    by compare-and-set (both outbox stores have it)."""

    def envelope_refs(self) -> list[Any]:
        """Every stored message, whatever its status, as a reference for the two below."""
        ...

    def read_envelope(self, ref: Any) -> tuple[str, str] | None:
        """(message id, stored text), or None when the message is gone."""
        ...

    def swap_envelope(self, ref: Any, old: str, new: str) -> bool:
        """Store ``new`` only if the stored text is still ``old``; whether it was."""
        ...


def reencrypt_store(store: Rewritable, keys: Keys) -> Reencrypted:
    """Move every message of ``store`` (whatever its status) to the first key.

    Each rewrite is a compare-and-set: it is written only if the stored text is still what
    was read, so a worker changing the message at the same moment is never overwritten; the
    message is read again and tried up to :data:`TRIES` times, then reported as skipped.
    """
    if not keys:
        raise ConfigurationError("OUTBOX_ENCRYPTION_KEYS is not set: there is no key to use")
    return _reencrypt_each(store, keys)


def _reencrypt_each(records: Rewritable, keys: Keys) -> Reencrypted:
    report = Reencrypted()
    for ref in records.envelope_refs():
        for _ in range(TRIES):
            found = records.read_envelope(ref)
            if found is None:  # deleted meanwhile (purged, expired)
                break
            message_id, text = found
            try:
                new = reencrypt(text, keys)
            except OutboxDecryptionError:
                report.undecryptable.append(message_id)
                break
            if new is None:
                report.current.append(message_id)
                break
            if records.swap_envelope(ref, text, new):
                report.rewritten.append(message_id)
                break
        else:
            report.skipped.append(str(ref if found is None else found[0]))
    return report


def _fernet(keys: Keys) -> MultiFernet:
    try:
        from cryptography.fernet import Fernet, MultiFernet
    except ImportError:
        raise ConfigurationError(
            f"msgraph_mail: OUTBOX_ENCRYPTION_KEYS needs the cryptography package: "
            f"{INSTALL_COMMAND}"
        ) from None
    return MultiFernet([Fernet(_secret(key)) for key in keys])


def _open(token: str, keys: Keys) -> dict[str, Any] | None:
    """The content sealed in ``token``, None when no key decrypts it."""
    fernet = _fernet(keys)
    from cryptography.fernet import InvalidToken

    try:
        plain = fernet.decrypt(token.encode("ascii"))
    except (InvalidToken, UnicodeEncodeError):
        return None
    content: dict[str, Any] = json.loads(plain)
    return {name: content.get(name, _BLANK[name]) for name in CONTENT}


def _has_content(data: dict[str, Any]) -> bool:
    return any(data.get(name) for name in CONTENT)


def _content_json(data: dict[str, Any]) -> bytes:
    content = {name: data.get(name) for name in CONTENT}
    return json.dumps(content, separators=_SEPARATORS).encode("utf-8")


def _secret(key: SecretStr | str) -> bytes:
    value = key.get_secret_value() if isinstance(key, SecretStr) else key
    return value.encode("ascii")
