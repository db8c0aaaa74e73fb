"""``manage.py msgraph_suppressions``: the addresses left out after a hard bounce."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from msgraph_mail import mailers
from msgraph_mail.tracking.store import store_for


class Command(BaseCommand):
    help = (
        "List the suppression list (addresses that hard-bounced: SUPPRESS_BOUNCED leaves them "
        "out of later messages), add an address to it, or remove one once it is fixed."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--add", action="append", default=[], metavar="ADDRESS", help="Suppress it."
        )
        parser.add_argument(
            "--remove",
            action="append",
            default=[],
            metavar="ADDRESS",
            help="Take it off the list: later messages are sent to it again.",
        )
        parser.add_argument("--json", action="store_true", help="Print the list as JSON.")
        parser.add_argument("--using", metavar="ALIAS", help="The MAILERS alias to use.")

    def handle(self, *args: Any, **options: Any) -> None:
        store = store_for(mailers.settings_for_command(self, options["using"]))
        for address in options["add"]:
            if "@" not in address:
                raise CommandError(f"{address!r} is not an email address.")
            added = store.suppress(address, reason="added by hand (msgraph_suppressions --add)")
            self.stdout.write(f"{'Suppressed' if added else 'Already suppressed:'} {address}")
        for address in options["remove"]:
            if not store.unsuppress(address):
                raise CommandError(f"{address} is not on the suppression list.")
            self.stdout.write(f"Removed {address}: later messages are sent to it again.")
        if options["add"] or options["remove"]:
            return
        found = store.suppressions()
        if options["json"]:
            self.stdout.write(json.dumps(found, indent=2))
        elif not found:
            self.stdout.write("The suppression list is empty.")
        for row in [] if options["json"] else found:
            why = " ".join(filter(None, (row["status_code"], row["reason"])))[:200]
            self.stdout.write(f"{row['address']}  since {row['since'][:19]}  {why}")
