"""``python -m msgraph_mail demo``: run the demo against the bundled Graph emulator."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m msgraph_mail", description="msgraph_mail command line tools."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "demo", help="send a realistic message through the backend into the bundled emulator"
    )
    commands.add_parser("emulator", help="run the Graph emulator (python -m msgraph_mail.emulator)")
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        from .demo import run

        return run()
    from .emulator.__main__ import main as emulator_main

    return emulator_main(rest)


if __name__ == "__main__":
    sys.exit(main())
