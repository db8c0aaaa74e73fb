"""The "web process" of tests/test_outbox_tasks_worker.py: queue mail, print how long it took.

Usage: python -m tests.outbox_web SENDER SUBJECT [SUBJECT...]; prints one JSON line with
"queued", "seconds" and "message_ids".
"""

import json
import os
import sys
import time

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.outbox_settings")

import django

django.setup()

from django.core import mail  # noqa: E402


def main(sender: str, subjects: list[str]) -> None:
    messages = [mail.EmailMessage(s, "Body", sender, ["a@example.com"]) for s in subjects]
    started = time.monotonic()
    queued = mail.get_connection().send_messages(messages)
    seconds = time.monotonic() - started
    ids = [m.msgraph_status.message_id for m in messages]
    print(json.dumps({"queued": queued, "seconds": seconds, "message_ids": ids}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
