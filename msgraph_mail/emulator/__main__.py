"""``python -m msgraph_mail.emulator``: the Graph emulator as a local dev inbox.

Prints the settings to paste into a development settings file and the inbox URL, then
serves until Ctrl-C. By default it takes the developer's own settings (any tenant, client
id, secret or certificate; any mailbox, created on first use), so only GRAPH_URL and
AUTHORITY_URL change; ``--strict`` accepts the emulator's contoso tenant only. Messages are
kept in memory, or with ``--store DIR`` also as ``.eml`` files that are loaded again on the
next start. ``--limit KEY=VALUE`` changes one of Graph's per-mailbox limits (``none`` lifts
it) and ``--time-scale`` shrinks their windows. ``--fault 429:3`` arms a fault on the next
sendMail requests, as the inbox's faults panel and ``POST /api/faults`` do.
"""

from __future__ import annotations

import argparse
import sys
import threading

from . import GraphEmulator, workbench
from .inbox import settings_snippet
from .limits import DEFAULT_LIMITS, checked_limits, checked_time_scale


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        limits = checked_limits(dict(args.limit))
        time_scale = checked_time_scale(args.time_scale)
    except ValueError as error:
        parser.error(str(error))
    emulator = GraphEmulator(
        port=args.port,
        store=args.store,
        limits=limits,
        time_scale=time_scale,
        strict=args.strict,
    )
    emulator.parse_on_delivery = True  # the page lists thousands without parsing them first
    for arming in args.fault:
        arming.apply(emulator)
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
    parser.add_argument(
        "--strict",
        action="store_true",
        help="accept only the emulator's own tenant, application, secret and mailboxes (as "
        "the test fixture does); by default any tenant, client id, secret or certificate and "
        "any mailbox address are accepted",
    )
    parser.add_argument(
        "--limit",
        metavar="KEY=VALUE",
        action="append",
        type=_limit,
        default=[],
        help=f"change a per-mailbox limit ({', '.join(DEFAULT_LIMITS)}); 'none' lifts it; "
        "repeatable",
    )
    parser.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        metavar="FACTOR",
        help="shrink the limits' windows and Retry-After (0.001: 10 minutes last 0.6 s)",
    )
    parser.add_argument(
        "--fault",
        metavar="FAULT[:COUNT[:SECONDS]]",
        action="append",
        type=_fault,
        default=[],
        help="arm a fault on the next COUNT sendMail requests: 429 (SECONDS: Retry-After, "
        "default 1), 503, 504 (after the message went out), drop (connection dropped before), "
        "drop-after; or latency:SECONDS on every answer. Repeatable; switched off in the "
        "inbox or with DELETE /api/faults",
    )
    return parser


def _fault(text: str) -> workbench.Arming:
    try:
        return workbench.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _limit(text: str) -> tuple[str, float | None]:
    key, equals, value = text.partition("=")
    key = key.strip().upper()
    if not equals or key not in DEFAULT_LIMITS:
        raise argparse.ArgumentTypeError(
            f"expected KEY=VALUE, KEY one of {', '.join(DEFAULT_LIMITS)}"
        )
    if value.strip().lower() == "none":
        return key, None
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{key}: {value!r} is not a number") from None
    return key, int(number) if number.is_integer() else number


def _banner(emulator: GraphEmulator, store: str | None) -> None:
    print(f"Graph emulator listening on {emulator.url}\n")
    if emulator.strict:
        print("Strict: only the emulator's contoso tenant, application and mailboxes.")
        print("Paste into your development settings:\n")
        print(settings_snippet(emulator) + "\n")
        print("Mailboxes: " + ", ".join(u.user_principal_name for u in emulator.users))
    else:
        print("Permissive (--strict: only the emulator's own contoso tenant):")
        print("  any tenant (id or domain), any client id with any secret or certificate,")
        print("  any From or MAILBOX address: its mailbox is created on first use.")
        print(f"  Tokens carry the roles {', '.join(emulator.roles)}, so every MODE works")
        print("  (permissive, rbac, single_mailbox), large messages included.\n")
        print("Keep your settings; point GRAPH_URL and AUTHORITY_URL here:\n")
        print(settings_snippet(emulator) + "\n")
        known = ", ".join(u.user_principal_name for u in emulator.users if u.mailbox_enabled)
        print(f"Mailboxes: any address; already there: {known}")
    print(f"Inbox: {emulator.url}/  (JSON: {emulator.url}/api/messages)")
    if emulator.limits != DEFAULT_LIMITS or emulator.time_scale != 1.0:
        limits = ", ".join(f"{key}={value}" for key, value in emulator.limits.items())
        print(f"Limits: {limits}; time scale {emulator.time_scale:g}")
    if store is not None:
        print(f"Store: {store} ({len(emulator.sent)} messages loaded)")
    for entry in workbench.armed(emulator):
        print(f"Armed: {entry['fault']} x{entry['count'] or '∞'}: {entry['description']}")
    print(f"Requests: {emulator.url}/requests  (faults: {emulator.url}/api/faults)")
    print("Press Ctrl-C to stop.", flush=True)


if __name__ == "__main__":
    sys.exit(main())
