"""Captured messages as ``.eml`` files: the download format and the optional on-disk store.

A message sent as MIME is kept byte for byte; one sent as JSON is turned into the MIME that
Exchange would have made of it, so every message can be opened in a mail client. The store
(``python -m msgraph_mail.emulator --store DIR``) writes one file per message, so the dev
inbox survives a restart; what only the emulator knows (id, capture time, mailbox, route,
whether it was saved to Sent Items) goes into ``X-Emulator-*`` lines at the top of the stored
file and nowhere else.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import sys
import threading
from collections.abc import Callable
from datetime import datetime
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any

from .directory import User
from .errors import GraphError
from .mail import Attachment, SentMessage, from_mime

_PREFIX = "X-Emulator-"
_SUMMARY_HEADERS = frozenset({"from", "sender", "to", "cc", "reply-to", "subject"})
_FILENAME = re.compile(r"^\d{8}T\d{12}-[0-9a-f]{32}\.eml$")


def as_eml(message: SentMessage) -> bytes:
    """The message as an RFC 5322 file: the MIME Graph received, or what Exchange makes of a
    JSON ``sendMail`` (headers, alternatives, attachments)."""
    if message.format == "mime":
        return message.raw
    mime = EmailMessage(policy=policy.SMTP)
    for name, value in message.headers:
        if name.lower() in _SUMMARY_HEADERS or name.lower().startswith("x-"):
            mime[name] = value
    if message.bcc:
        mime["Bcc"] = ", ".join(message.bcc)
    mime["Date"] = format_datetime(message.received_at)
    if message.importance != "normal":
        mime["Importance"] = message.importance
    if message.text is not None or message.html is None:
        mime.set_content(message.text or "")
    if message.html is not None:
        if message.text is None:
            mime.set_content(message.html, subtype="html")
        else:
            mime.add_alternative(message.html, subtype="html")
    for attachment in message.attachments:
        mime.add_attachment(attachment.content, **part_headers(attachment))
    return mime.as_bytes(policy=policy.SMTP)


def part_headers(attachment: Attachment) -> dict[str, Any]:
    """What the email package needs to write the headers of ``attachment``'s part."""
    maintype, _, subtype = attachment.content_type.partition("/")
    return {
        "maintype": maintype or "application",
        "subtype": subtype or "octet-stream",
        "filename": attachment.filename,
        "disposition": "inline" if attachment.inline else "attachment",
        "cid": f"<{attachment.content_id}>" if attachment.content_id else None,
    }


class EmlStore:
    """A directory of ``.eml`` files mirroring the captured messages.

    Only files this store wrote (or loaded) are ever deleted, so pointing ``--store`` at a
    directory that holds other mail is harmless.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._files: dict[str, Path] = {}
        self._lock = threading.Lock()

    def save(self, message: SentMessage) -> None:
        stamp = message.received_at.strftime("%Y%m%dT%H%M%S%f")
        path = self.directory / f"{stamp}-{message.id}.eml"
        eml = as_eml(message)
        path.write_bytes(_stored_headers(message, eml) + eml)
        with self._lock:
            self._files[message.id] = path

    def load(self, mailbox: Callable[[str], User | None]) -> list[SentMessage]:
        """Every message in our files, oldest first; ``mailbox`` finds a user by id or address."""
        messages: list[SentMessage] = []
        for path in sorted(p for p in self.directory.glob("*.eml") if _FILENAME.match(p.name)):
            message = self._load(path, mailbox)
            if message is not None:
                messages.append(message)
                with self._lock:
                    self._files[message.id] = path
        return sorted(messages, key=lambda m: m.received_at)

    def clear(self) -> None:
        with self._lock:
            paths, self._files = list(self._files.values()), {}
        for path in paths:
            path.unlink(missing_ok=True)

    def _load(self, path: Path, mailbox: Callable[[str], User | None]) -> SentMessage | None:
        """Parse one of our files back into a record; one that fails is skipped, with a note."""
        try:
            fields, raw = _split_stored(path.read_bytes())
            user = mailbox(fields["Mailbox"])
            if user is None:
                raise ValueError(f"unknown mailbox {fields['Mailbox']}")
            message = from_mime(raw, user, fields.get("Request-Id", ""))
            received = datetime.fromisoformat(fields["Received"])
        except (GraphError, KeyError, ValueError, OSError) as error:
            print(f"inbox store: skipping {path.name}: {error!r}", file=sys.stderr)
            return None
        return dataclasses.replace(
            message,
            id=fields["Id"],
            received_at=received,
            format=fields.get("Route", "mime"),
            save_to_sent_items=fields.get("Saved", "true") != "false",
        )


def _stored_headers(message: SentMessage, eml: bytes) -> bytes:
    """The ``X-Emulator-*`` lines, with the line ending the message itself uses."""
    newline = b"\r\n" if b"\r\n" in eml[:2000] else b"\n"
    fields = {
        "Id": message.id,
        "Mailbox": message.mailbox.id,
        "Received": message.received_at.isoformat(),
        "Request-Id": message.request_id,
        "Route": message.format,
        "Saved": "true" if message.save_to_sent_items else "false",
    }
    return b"".join(
        f"{_PREFIX}{name}: {value}".encode() + newline for name, value in fields.items()
    )


def _split_stored(data: bytes) -> tuple[dict[str, str], bytes]:
    """The ``X-Emulator-*`` fields at the top of a stored file, and the message after them."""
    lines = data.splitlines(keepends=True)
    head = list(itertools.takewhile(lambda line: line.startswith(_PREFIX.encode()), lines))
    pairs = (line.decode("ascii", "replace").partition(":") for line in head)
    fields = {name[len(_PREFIX) :]: value.strip() for name, _, value in pairs}
    return fields, b"".join(lines[len(head) :])
