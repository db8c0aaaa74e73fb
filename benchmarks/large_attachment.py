"""Memory and time of one large attachment through LARGE_MESSAGES (draft + upload sessions).

Run with ``python benchmarks/large_attachment.py`` (``--size-mb 100`` by default).

The emulator runs in its own process, so only the sending process is measured: its peak RSS
growth from just before the attachment's bytes exist until the message was sent (Linux
``VmHWM``, reset through ``/proc/self/clear_refs``; elsewhere ``ru_maxrss``). The growth
includes the attachment itself, which Django holds as bytes; the target of issue 6 is at most
1.5x the attachment's size. The script checks that the delivered attachment's sha256 matches,
prints a table, and exits 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import os
import resource
import sys
import time
from multiprocessing.connection import Connection
from typing import Any

MB = 1024 * 1024
TARGET_RATIO = 1.5


def _serve(pipe: Connection) -> None:
    from msgraph_mail.emulator import GraphEmulator

    emulator = GraphEmulator()
    emulator.start()
    emulator.roles = ["Mail.Send", "User.Read.All", "Mail.ReadWrite"]
    pipe.send(emulator.url)
    while True:
        command = pipe.recv()
        if command == "stats":
            sent = emulator.sent
            pipe.send(
                {
                    "delivered": len(sent),
                    "attachments": [
                        (a.filename, a.size, a.sha256) for m in sent for a in m.attachments
                    ],
                    "chunks": emulator.count("upload_chunk"),
                    "drafts_left": len(emulator.drafts),
                    "requests": emulator.count(),
                }
            )
        elif command == "reset":
            emulator.reset()
            pipe.send("ok")
        else:
            emulator.stop()
            pipe.send("stopped")
            return


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
    except OSError:
        return False
    return True


def _peak_kb() -> int:
    peak = _status_kb("VmHWM")
    if peak is not None:
        return peak
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss // 1024 if sys.platform == "darwin" else maxrss


def _current_kb() -> int:
    current = _status_kb("VmRSS")
    return current if current is not None else _peak_kb()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size-mb", type=int, default=100, help="attachment size in MiB")
    args = parser.parse_args(argv)
    size = args.size_mb * MB

    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    server = context.Process(target=_serve, args=(theirs,), daemon=True)
    server.start()
    url = ours.recv()
    try:
        return _measure(url, size, ours)
    finally:
        ours.send("stop")
        ours.recv()
        server.join(5)


def _measure(url: str, size: int, pipe: Connection) -> int:
    import django
    from django.conf import settings

    from msgraph_mail.emulator import CLIENT_ID, CLIENT_SECRET, TENANT_ID

    settings.configure(
        EMAIL_BACKEND="msgraph_mail.backend.EmailBackend",
        DEFAULT_FROM_EMAIL="noreply@contoso.com",
        MSGRAPH_MAIL={
            "TENANT_ID": TENANT_ID,
            "CLIENT_ID": CLIENT_ID,
            "CLIENT_SECRET": CLIENT_SECRET,
            "GRAPH_URL": url,
            "AUTHORITY_URL": url,
            "LARGE_MESSAGES": True,
        },
    )
    django.setup()
    from django.core.mail import EmailMessage, get_connection

    def message(content: bytes) -> Any:
        email = EmailMessage(
            "Large attachment benchmark",
            "The attachment went through an upload session.",
            "noreply@contoso.com",
            ["alice@contoso.com"],
            bcc=["bob@contoso.com"],
        )
        email.attach("payload.bin", content, "application/octet-stream")
        return email

    connection = get_connection()
    connection.open()
    try:
        # Warm up: imports, token, sender lookup and the draft route itself, with 4 MB.
        warm = message(os.urandom(4 * MB))
        connection.send_messages([warm])
        del warm
        pipe.send("reset")
        pipe.recv()

        exact = _reset_peak()
        baseline = _current_kb()
        content = os.urandom(size)
        digest = hashlib.sha256(content).hexdigest()
        email = message(content)
        started = time.perf_counter()
        sent = connection.send_messages([email])
        elapsed = time.perf_counter() - started
        peak = _peak_kb()
        route = email.msgraph_status.route
    finally:
        connection.close()
    pipe.send("stats")
    stats = pipe.recv()

    growth = (peak - baseline) * 1024
    ratio = growth / size
    intact = stats["attachments"] == [("payload.bin", size, digest)]
    rows = [
        ("attachment", f"{size / MB:,.0f} MiB"),
        ("route", route),
        (
            "sent",
            f"{sent} (delivered {stats['delivered']}, sha256 {'ok' if intact else 'MISMATCH'})",
        ),
        ("chunks", f"{stats['chunks']} PUTs, {stats['requests']} requests in all"),
        ("drafts left", str(stats["drafts_left"])),
        ("time", f"{elapsed:.2f} s ({size / MB / elapsed:,.0f} MiB/s)"),
        ("peak RSS growth", f"{growth / MB:,.1f} MiB (attachment included)"),
        ("beyond the attachment", f"{(growth - size) / MB:,.1f} MiB"),
        ("ratio", f"{ratio:.2f}x the attachment (target <= {TARGET_RATIO}x)"),
        ("measured with", "VmHWM reset by clear_refs" if exact else "ru_maxrss (upper bound)"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    ok = intact and sent == 1 and route == "draft" and ratio <= TARGET_RATIO
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
