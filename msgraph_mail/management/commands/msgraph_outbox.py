"""``manage.py msgraph_outbox``: what QueuedEmailBackend's outbox holds, and a manual resend."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from msgraph_mail import mailers
from msgraph_mail.conf import MSGraphMailSettings
from msgraph_mail.exceptions import ConfigurationError
from msgraph_mail.outbox.deliver import settings_for
from msgraph_mail.outbox.engines import store_for
from msgraph_mail.outbox.resend import ResendRefused, resend
from msgraph_mail.outbox.store import StoredMessage
from msgraph_mail.tracking.store import store_for as tracking_store

#: What the listing shows by default: everything not sent.
OPEN = ("queued", "deferred", "sending", "failed", "unknown")
STATUSES = (*OPEN, "sent")


class Command(BaseCommand):
    help = (
        "List the messages of QueuedEmailBackend's outbox that are queued, deferred (with "
        "their next try), being sent, failed or unknown; --resend ID sends a failed one again; "
        "--reencrypt moves every stored message to the first OUTBOX_ENCRYPTION_KEYS key."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--status",
            action="append",
            choices=STATUSES,
            help="Only messages of this status (repeatable); default: all but sent.",
        )
        parser.add_argument(
            "--resend",
            metavar="ID",
            help="Queue this failed message again (its Message-ID, as listed).",
        )
        parser.add_argument(
            "--force",
            action="store_true",
            help="With --resend: also resend an unknown message, which may have been "
            "delivered already.",
        )
        parser.add_argument(
            "--using",
            metavar="ALIAS",
            help="The MAILERS alias whose outbox to read (default: 'default', or the only "
            "QueuedEmailBackend mailer).",
        )
        parser.add_argument(
            "--purge",
            action="store_true",
            help="Delete the finished messages (sent, failed, unknown) older than "
            "OUTBOX_RETENTION (the worker also does it, hourly).",
        )
        parser.add_argument(
            "--reencrypt",
            action="store_true",
            help="Rewrite every stored message (all statuses) under the first key of "
            "OUTBOX_ENCRYPTION_KEYS, after a new key was put first; encrypts the messages "
            "stored before keys were configured too.",
        )
        parser.add_argument("--json", action="store_true", help="Print the list as JSON.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            self._handle(options)
        except ConfigurationError as exc:  # invalid settings, or the outbox not migrated
            raise CommandError(str(exc)) from exc

    def _handle(self, options: dict[str, Any]) -> None:
        settings = settings_for(mailers.for_command(self, options["using"], queued=True).alias)
        if options["resend"]:
            self._resend(settings, options["resend"], force=options["force"])
            return
        if options["reencrypt"]:
            self._reencrypt(settings)
            return
        if options["purge"]:
            removed = store_for(settings).purge(settings.outbox_retention)
            days = settings.outbox_retention / 86400
            self.stdout.write(f"Deleted {removed} finished message(s) older than {days:g} days.")
            return
        wanted = options["status"] or list(OPEN)
        found = [m for m in store_for(settings).list() if _status(m) in wanted]
        found.sort(key=lambda m: (STATUSES.index(_status(m)), _when(m)))
        events = _delivery(settings)
        if options["json"]:
            self.stdout.write(json.dumps([_row(m, events) for m in found], indent=2))
            return
        if not found:
            self.stdout.write(f"No {' or '.join(wanted)} messages.")
            return
        for message in found:
            row = _row(message, events)
            line = f"{row['status']:<8}  {row['message_id']}  attempts {row['attempts']}"
            line += f"\n          {_who(row)}"
            if row["next_try_at"] and row["status"] == "deferred":
                line += f"  next try {row['next_try_at']}"
            if row["delivery"]:
                line += "\n          delivery: " + "; ".join(map(_event, row["delivery"]))
            if row["last_error"]:
                line += f"\n          {row['last_error'][:300]}"
            self.stdout.write(line)

    def _resend(self, settings: MSGraphMailSettings, message_id: str, *, force: bool) -> None:
        try:
            status = resend(settings, store_for(settings), message_id, force=force, by="command")
        except ResendRefused as exc:
            more = "; resend with --force only if it is not there." if exc.unknown else ""
            raise CommandError(f"{exc}{more}") from exc
        self.stdout.write(f"Queued {message_id} again (it was {status}).")

    def _reencrypt(self, settings: MSGraphMailSettings) -> None:
        """Every message under the first key; the counts, and the ids that need attention."""
        from msgraph_mail.outbox.sealing import reencrypt_store

        keys = settings.outbox_encryption_keys
        if not keys:
            raise CommandError(
                "OUTBOX_ENCRYPTION_KEYS is not set for this mailer: there is no key to "
                "re-encrypt with. Add a key first (see the outbox documentation)."
            )
        store = store_for(settings)
        done = reencrypt_store(store, keys)
        self.stdout.write(
            f"Re-encrypted {len(done.rewritten)} message(s) under the first key; "
            f"{len(done.current)} already current; {len(done.undecryptable)} not decryptable "
            "by any key."
        )
        if done.undecryptable:
            self.stdout.write(
                "Not decryptable (add the key they were encrypted with back to "
                "OUTBOX_ENCRYPTION_KEYS, then run --reencrypt again): "
                + ", ".join(done.undecryptable)
            )
        if done.skipped:
            self.stdout.write(
                f"Skipped {len(done.skipped)} message(s) changed by a worker each time they "
                "were rewritten (run --reencrypt again before dropping an old key): "
                + ", ".join(done.skipped)
            )


def _status(message: StoredMessage) -> str:
    return "deferred" if message.deferred else message.status


def _when(message: StoredMessage) -> float:
    when = message.next_try_at or message.updated_at or message.created_at
    return when.timestamp() if when is not None else 0.0


def _who(row: dict[str, Any]) -> str:
    """``"Subject" to first@example.com and 2 more``."""
    others = row["recipients"] - 1
    more = f" and {others} more" if others > 0 else ""
    return f"{json.dumps(row['subject'], ensure_ascii=False)} to {row['first_recipient']}{more}"


def _delivery(settings: MSGraphMailSettings) -> Callable[[str | None], list[dict[str, Any]]]:
    """The delivery events of a message, by its tracking id (DELIVERY_TRACKING)."""
    if not settings.delivery_tracking:
        return lambda _: []
    store = tracking_store(settings)
    return lambda tracking_id: store.events(tracking_id) if tracking_id else []


def _event(event: dict[str, Any]) -> str:
    code = f" {event['status_code']}" if event.get("status_code") else ""
    return f"{event['event_type']} {event['recipient']}{code}"


def _row(
    message: StoredMessage, events: Callable[[str | None], list[dict[str, Any]]]
) -> dict[str, Any]:
    subject, first_recipient = message.envelope.described()
    return {
        "message_id": message.message_id,
        "subject": subject,
        "recipients": message.envelope.recipients,
        "first_recipient": first_recipient,
        "status": _status(message),
        "attempts": message.attempts,
        "next_try_at": message.next_try_at.isoformat() if message.next_try_at else None,
        "last_error": message.last_error,
        "request_id": message.request_id,
        "from": message.envelope.from_address,
        "queued_at": message.envelope.enqueued_at,
        "delivery": events(message.envelope.tracking_id),
    }
