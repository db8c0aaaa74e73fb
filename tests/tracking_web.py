"""The "web" process of tests/test_tracking_process.py: send N messages in one batch with
DELIVERY_TRACKING on (every tenth to an address that bounces), then print ``sent N``."""

from __future__ import annotations

import sys

import django


def main(count: int) -> None:
    django.setup()
    from django.core import mail

    messages = [
        (
            f"Message {n}",
            "Body",
            None,
            [f"user{n}@nowhere.invalid" if n % 10 == 0 else f"user{n}@example.com"],
        )
        for n in range(count)
    ]
    print(f"sent {mail.send_mass_mail(messages)}")


if __name__ == "__main__":
    main(int(sys.argv[1]))
