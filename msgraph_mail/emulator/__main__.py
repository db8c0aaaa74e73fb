"""``python -m msgraph_mail.emulator``: run the Graph emulator as a local service.

Prints the settings to paste into a development settings file, then serves until Ctrl-C.
"""

from __future__ import annotations

import argparse
import pprint
import sys
import threading

from . import GraphEmulator


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m msgraph_mail.emulator",
        description="Run the bundled Microsoft Graph emulator on 127.0.0.1.",
    )
    parser.add_argument("--port", type=int, default=8625, help="TCP port (0: any free port)")
    args = parser.parse_args(argv)
    emulator = GraphEmulator(port=args.port)
    emulator.start()
    print(f"Graph emulator listening on {emulator.url}\n")
    print("Paste into your development settings:\n")
    print('EMAIL_BACKEND = "msgraph_mail.backend.EmailBackend"')
    print(f"MSGRAPH_MAIL = {pprint.pformat(emulator.settings(), sort_dicts=False)}\n")
    print("Mailboxes: " + ", ".join(u.user_principal_name for u in emulator.users))
    print("Press Ctrl-C to stop.", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
