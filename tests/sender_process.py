"""A sending process for the multi-process tests: ``python -m tests.sender_process``.

Its configuration comes on standard input, never in the command line (where any user of the
machine could read the secret): one line of JSON with ``settings`` (the MSGRAPH_MAIL dict),
``count``, ``tag``, ``from_email``, ``recipients`` (per message), ``priority`` (backend
option), ``batch`` and ``pause`` (seconds between batches). It sends ``count`` messages,
then prints one JSON line: how many were sent, failed, unknown, and the failures' error
class names and budgets.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any


def main(config: dict[str, Any]) -> dict[str, Any]:
    import django
    from django.conf import settings

    settings.configure(
        EMAIL_BACKEND="msgraph_mail.backend.EmailBackend",
        MSGRAPH_MAIL=config["settings"],
        DEFAULT_FROM_EMAIL=config.get("from_email", "noreply@contoso.com"),
        USE_TZ=True,
    )
    django.setup()
    from django.core import mail

    options = {"priority": config["priority"]} if config.get("priority") else {}
    outcome: dict[str, Any] = {"sent": 0, "failed": 0, "unknown": 0, "errors": []}
    per_message = int(config.get("recipients", 1))
    batch = int(config.get("batch", 1))
    with mail.get_connection(fail_silently=True, **options) as connection:
        for first in range(0, int(config["count"]), batch):
            messages = [
                mail.EmailMessage(
                    f"{config['tag']} #{index}",
                    "Body",
                    None,
                    [f"r{index}.{n}@example.com" for n in range(per_message)],
                )
                for index in range(first, min(first + batch, int(config["count"])))
            ]
            connection.send_messages(messages)
            for message in messages:
                status = message.msgraph_status
                outcome[status.status] += 1
                if status.error is not None:
                    outcome["errors"].append(
                        [type(status.error).__name__, getattr(status.error, "budget", None)]
                    )
            time.sleep(float(config.get("pause", 0)))
    return outcome


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.stdin.readline()))), flush=True)
