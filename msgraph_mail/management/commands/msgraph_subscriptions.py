"""``manage.py msgraph_subscriptions``: the change-notification subscriptions of the tracker."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from msgraph_mail import mailers
from msgraph_mail.conf import MSGraphMailSettings
from msgraph_mail.exceptions import MSGraphMailError
from msgraph_mail.tracking import subscriptions
from msgraph_mail.tracking.tracker import Tracker


class Command(BaseCommand):
    help = (
        "List the Graph change-notification subscriptions on the sending mailboxes "
        "(NOTIFICATION_URL), create the missing ones, renew them, or delete them. The "
        "tracker (msgraph_track) keeps them alive by itself; this is for set-up and repair."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        action = parser.add_mutually_exclusive_group()
        action.add_argument(
            "--create",
            action="store_true",
            help="Subscribe every sending mailbox that has no subscription yet (Graph first "
            "validates NOTIFICATION_URL: the site must be reachable).",
        )
        action.add_argument("--renew", action="store_true", help="Renew every subscription now.")
        action.add_argument(
            "--delete",
            metavar="ID",
            nargs="?",
            const="all",
            help="Delete one subscription, or all of them without an ID.",
        )
        parser.add_argument("--json", action="store_true", help="Print the list as JSON.")
        parser.add_argument("--using", metavar="ALIAS", help="The MAILERS alias to use.")

    def handle(self, *args: Any, **options: Any) -> None:
        settings = self._settings(options["using"])
        tracker = Tracker(settings)
        try:
            self._act(tracker, options)
        except MSGraphMailError as exc:
            raise CommandError(str(exc)) from exc
        finally:
            tracker.client.close()

    def _act(self, tracker: Tracker, options: dict[str, Any]) -> None:
        client, store, settings = tracker.client, tracker.store, tracker.settings
        if options["create"]:
            mailboxes = tracker.mailboxes()
            if not mailboxes:
                self.stdout.write("No sending mailbox yet: nothing to subscribe.")
            for line in subscriptions.ensure(client, store, settings, mailboxes):
                self.stdout.write(line.capitalize() + ".")
        elif options["renew"]:
            for watch in store.watches():
                renewed = subscriptions.renew(client, store, settings, watch)
                self.stdout.write(f"Renewed {renewed.subscription_id} until {_when(renewed)}.")
        elif options["delete"]:
            found = [w for w in store.watches() if options["delete"] in ("all", w.subscription_id)]
            if not found and options["delete"] != "all":
                raise CommandError(f"No subscription {options['delete']}.")
            for watch in found:
                subscriptions.delete(client, store, watch)
                self.stdout.write(f"Deleted {watch.subscription_id} ({watch.mailbox}).")
        self._list(tracker, as_json=options["json"])

    def _list(self, tracker: Tracker, *, as_json: bool) -> None:
        rows = [
            {"id": w.subscription_id, "mailbox": w.mailbox, "expires": _when(w)}
            for w in tracker.store.watches()
        ]
        if as_json:
            self.stdout.write(json.dumps(rows, indent=2))
            return
        if not rows:
            self.stdout.write("No subscriptions.")
        for row in rows:
            self.stdout.write(f"{row['id']}  {row['mailbox']}  until {row['expires']}")

    def _settings(self, alias: str | None) -> MSGraphMailSettings:
        settings = mailers.settings_for_command(self, alias)
        if settings.notification_url is None or "bounces" not in settings.delivery_tracking:
            raise CommandError(
                'Change notifications need NOTIFICATION_URL and DELIVERY_TRACKING ["bounces"] '
                "(see the delivery tracking page of the documentation)."
            )
        return settings


def _when(watch: Any) -> str:
    left = watch.expires_at - datetime.now(timezone.utc)
    return f"{watch.expires_at.isoformat(timespec='seconds')} ({left.days} d)"
