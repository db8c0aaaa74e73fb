"""``python -m msgraph_mail.emulator``: the Graph emulator as a local dev inbox.

Prints the settings to paste into a development settings file and the inbox URL, then
serves until Ctrl-C. Messages are kept in memory, or with ``--store DIR`` also as ``.eml``
files that are loaded again on the next start.
"""

from __future__ import annotations

import argparse
import sys
import threading

from . import GraphEmulator
from .inbox import settings_snippet


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    emulator = GraphEmulator(port=args.port, store=args.store)
    try:
        emulator.start()
    except OSError as error:
        print(f"cannot listen on 127.0.0.1:{args.port}: {error.strerror}", file=sys.stderr)
        return 1
    _banner(emulator, args.store)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        emulator.stop()
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m msgraph_mail.emulator",
        description="Run the bundled Microsoft Graph emulator on 127.0.0.1, with a web inbox.",
    )
    parser.add_argument("--port", type=int, default=8625, help="TCP port (0: any free port)")
    parser.add_argument(
        "--store",
        metavar="DIR",
        help="also keep messages as .eml files in DIR, loaded again on the next start",
    )
    return parser


def _banner(emulator: GraphEmulator, store: str | None) -> None:
    print(f"Graph emulator listening on {emulator.url}\n")
    print("Paste into your development settings:\n")
    print(settings_snippet(emulator) + "\n")
    print("Mailboxes: " + ", ".join(u.user_principal_name for u in emulator.users))
    print(f"Inbox: {emulator.url}/  (JSON: {emulator.url}/api/messages)")
    if store is not None:
        print(f"Store: {store} ({len(emulator.sent)} messages loaded)")
    print("Press Ctrl-C to stop.", flush=True)


if __name__ == "__main__":
    sys.exit(main())
