"""Fill the outbox of tests/test_admin_browser.py with N rows, as a busy project's would be.

Usage: python -m tests.admin_rows N. Rows are written with bulk_create (what a year of
queued mail leaves behind), in every status, from a few mailboxes; their envelopes are
minimal, as the list never reads them.
"""

import json
import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.admin_settings")

import django

django.setup()

from msgraph_mail.models import OutboxMessage  # noqa: E402

# Finished only: a queued row would be picked up by the worker's sweep for lost tasks.
STATUSES = ("sent", "sent", "sent", "sent", "failed", "unknown")
MAILBOXES = ("noreply@contoso.com", "billing@contoso.com", "support@contoso.com")


def row(n: int) -> OutboxMessage:
    mailbox = MAILBOXES[n % len(MAILBOXES)]
    envelope = {"message_id": f"<bulk-{n}@contoso.com>", "mime": "", "from_address": mailbox}
    return OutboxMessage(
        message_id=f"<bulk-{n}@contoso.com>",
        envelope=json.dumps(envelope),
        status=STATUSES[n % len(STATUSES)],
        attempts=1,
        subject=f"Order confirmation {n}",
        from_address=mailbox,
        mailbox=mailbox,
        recipient_count=1,
        first_recipient=f"customer{n}@example.com",
        recipients=f"customer{n}@example.com",
        route="mime",
    )


def main(count: int) -> None:
    for start in range(0, count, 5000):
        batch = [row(n) for n in range(start, min(count, start + 5000))]
        OutboxMessage.objects.bulk_create(batch)
    print(OutboxMessage.objects.count())


if __name__ == "__main__":
    main(int(sys.argv[1]))
