"""``manage.py msgraph_diagnose``: check the tenant, the app registration and the settings."""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from msgraph_mail import mailers
from msgraph_mail.checks import sends_admin_mail
from msgraph_mail.conf import validate
from msgraph_mail.diagnose import diagnose
from msgraph_mail.findings import Finding
from msgraph_mail.mime import sender_address

MARKS = {"ok": "ok", "info": "info", "warning": "WARNING", "error": "ERROR"}


class Command(BaseCommand):
    help = (
        "Diagnose the Microsoft Graph mail setup: acquire a token, judge the application's "
        "permissions against MODE, resolve the sender addresses, and optionally send a test "
        "message. Exits non-zero when an error is found."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--from",
            dest="senders",
            action="append",
            default=[],
            metavar="ADDRESS",
            help="Also check this sender address (repeatable); DEFAULT_FROM_EMAIL is always "
            "checked, SERVER_EMAIL when ADMINS or MANAGERS is set.",
        )
        parser.add_argument(
            "--send-test", metavar="TO", help="Send one real test message to this address."
        )
        parser.add_argument(
            "--using",
            metavar="ALIAS",
            help="The MAILERS alias to diagnose (default: 'default', or the only mailer of ours).",
        )
        parser.add_argument("--json", action="store_true", help="Print the findings as JSON.")

    def handle(self, *args: Any, **options: Any) -> None:
        backend_options = self._backend_options(options["using"])
        config, problems = validate(backend_options)
        if config is None:
            findings = [Finding("error", "settings", str(p)) for p in problems]
        else:
            findings, senders, roles = [], [settings.DEFAULT_FROM_EMAIL], {}
            if sends_admin_mail():
                senders.append(settings.SERVER_EMAIL)
                roles[_address(settings.SERVER_EMAIL)] = SERVER_EMAIL_FIX
            else:
                findings.append(Finding("info", "SERVER_EMAIL", SERVER_EMAIL_UNUSED))
            senders = _unique([*senders, *options["senders"]])
            findings = diagnose(config, senders, options["send_test"], roles) + findings
        self._report(findings, as_json=options["json"])
        errors = sum(finding.level == "error" for finding in findings)
        if errors:
            raise CommandError(f"{errors} error{'s' if errors > 1 else ''} found.")

    def _backend_options(self, alias: str | None) -> dict[str, Any]:
        return mailers.for_command(self, alias).options

    def _report(self, findings: list[Finding], *, as_json: bool) -> None:
        if as_json:
            self.stdout.write(json.dumps([f.as_dict() for f in findings], indent=2))
            return
        styles = {
            "ok": self.style.SUCCESS,
            "warning": self.style.WARNING,
            "error": self.style.ERROR,
        }
        for finding in findings:
            mark = styles.get(finding.level, str)(f"[{MARKS[finding.level]}]")
            self.stdout.write(f"{mark} {finding.topic}: {finding.message}")
            if finding.fix:
                self.stdout.write(f"    fix: {finding.fix}")


#: The fix added to a SERVER_EMAIL that cannot send (checked only when ADMINS/MANAGERS is set).
SERVER_EMAIL_FIX = (
    "SERVER_EMAIL is the From of mail_admins(), mail_managers() and the error reports Django "
    "mails to ADMINS: set SERVER_EMAIL to an address that can send (or empty ADMINS and "
    "MANAGERS if nobody should get them)."
)
SERVER_EMAIL_UNUSED = (
    "not checked: ADMINS and MANAGERS are empty, so Django sends nothing from it "
    "(mail_admins(), mail_managers() and error reports need one of them)"
)


def _unique(addresses: list[str]) -> list[str]:
    seen: list[str] = []
    for entry in addresses:
        address = _address(entry)
        if address.lower() not in {s.lower() for s in seen}:
            seen.append(address)
    return seen


def _address(entry: str) -> str:
    try:
        return sender_address_of(entry)
    except ValueError:
        return entry


def sender_address_of(entry: str) -> str:
    from django.core.mail import EmailMessage

    return sender_address(EmailMessage(from_email=entry))
