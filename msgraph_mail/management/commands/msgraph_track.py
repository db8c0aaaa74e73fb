"""``manage.py msgraph_track``: delivery tracking's worker (``DELIVERY_TRACKING``)."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from msgraph_mail import mailers
from msgraph_mail.conf import MSGraphMailSettings
from msgraph_mail.exceptions import ConfigurationError, MSGraphMailError
from msgraph_mail.tracking.tracker import Pass, Tracker

#: The shortest lease (seconds): a killed tracker's lease frees within this long, or within
#: three intervals, whichever is longer; a live tracker renews it as it works.
LEASE_MIN = 5.0
#: Seconds between two looks at the notifications the webhook view recorded.
NOTICE_POLL = 0.25


class Command(BaseCommand):
    help = (
        "Track what became of sent mail: read the message trace and the NDRs in the sending "
        "mailboxes (DELIVERY_TRACKING), report each delivery event once (the delivery_event "
        "signal), and keep the suppression list. Runs until stopped; --once makes one pass."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--once", action="store_true", help="One pass, then exit.")
        parser.add_argument(
            "--interval",
            type=float,
            default=60.0,
            metavar="SECONDS",
            help="Seconds between passes (default 60). The message trace's budget (50 of the "
            "tenant's 100 requests per 5 minutes) holds whatever the interval.",
        )
        parser.add_argument(
            "--using", metavar="ALIAS", help="The MAILERS alias whose mail to track."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        settings = self._settings(options["using"])
        if options["interval"] <= 0:
            raise CommandError("--interval must be a positive number of seconds.")
        tracker = Tracker(settings)
        stop = threading.Event()
        if not options["once"]:
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, lambda *_: stop.set())
        lease_ttl = max(3 * options["interval"], LEASE_MIN)
        try:
            while True:
                self._pass(tracker, once=options["once"], lease_ttl=lease_ttl)
                if options["once"] or self._wait(tracker, stop, options["interval"], lease_ttl):
                    return
        finally:
            tracker.close()

    def _wait(
        self, tracker: Tracker, stop: threading.Event, interval: float, lease_ttl: float
    ) -> bool:
        """Until the next pass; meanwhile act on webhook notifications as they come
        (NOTIFICATION_URL). True when stopped."""
        deadline = time.monotonic() + interval
        while time.monotonic() < deadline:
            if stop.wait(min(NOTICE_POLL, max(0.0, deadline - time.monotonic()))):
                return True
            if tracker.settings.notification_url is None:
                continue
            try:
                done = tracker.react(lease_ttl=lease_ttl)
            except MSGraphMailError as exc:
                self.stderr.write(f"Acting on notifications failed: {exc}")
                continue
            if done is not None:
                self.stdout.write("Notified: " + _summary(done))
        return False

    def _settings(self, alias: str | None) -> MSGraphMailSettings:
        settings = mailers.settings_for_command(self, alias)
        if not settings.delivery_tracking:
            raise CommandError(
                'DELIVERY_TRACKING is empty: set it to ["trace"], ["bounces"] or both (see the '
                "delivery tracking page of the documentation)."
            )
        return settings

    def _pass(self, tracker: Tracker, *, once: bool, lease_ttl: float) -> None:
        try:
            done = tracker.run_once(lease_ttl=lease_ttl)
        except (MSGraphMailError, ConfigurationError) as exc:
            if once:
                raise CommandError(str(exc)) from exc
            self.stderr.write(f"Tracking pass failed, trying again next pass: {exc}")
            return
        self.stdout.write(_summary(done))


def _summary(done: Pass) -> str:
    if not done.ran:
        return "Another tracker holds the lease: nothing done."
    events = ", ".join(f"{count} {kind}" for kind, count in sorted(done.reported.items()))
    return (
        f"Reported {events or 'nothing new'}; read {done.reports} report(s), "
        f"{done.rows} trace row(s), skipped {done.skipped} malformed."
    )
