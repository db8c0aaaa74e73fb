"""Throughput benchmark: msgraph_mail against Graph's physical limit and django-msgraphbackend.

Run with ``nox -s bench`` (installs django-msgraphbackend from the package index), or
``python benchmarks/throughput.py --runs 3`` in an environment that has it.

The emulator runs in its own process (its CPU is not ours), with a fixed latency per request
and Graph's limit of 4 concurrent requests per mailbox. Every figure is measured in the same
run; the table ends with the targets of issue 5, and the script exits 1 if one is missed.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

MESSAGES = 200
LATENCY = 0.05
MAILBOX_LIMIT = 4


# The emulator, in its own process, answering "stats", "reset" and "stop" over a pipe. ------


def _serve(pipe: Connection, latency: float) -> None:
    from msgraph_mail.emulator import GraphEmulator

    emulator = GraphEmulator()
    emulator.start()
    emulator.latency = latency
    pipe.send(emulator.url)
    while True:
        command = pipe.recv()
        if command == "stats":
            kinds = ("token", "user_list", "user_get", "sendMail")
            pipe.send(
                {
                    **{kind: emulator.count(kind) for kind in kinds},
                    "requests": emulator.count(),
                    "connections": emulator.connections,
                    "delivered": len(emulator.sent),
                    "max_in_flight": emulator.max_in_flight(),
                    "throttled": sum(r.status == 429 for r in emulator.requests),
                }
            )
        elif command == "reset":
            emulator.reset()
            pipe.send("ok")
        else:
            emulator.stop()
            pipe.send("stopped")
            return


class Emulator:
    def __init__(self, latency: float) -> None:
        self.pipe, child = multiprocessing.Pipe()
        self.process = multiprocessing.Process(target=_serve, args=(child, latency), daemon=True)
        self.process.start()
        self.url: str = self.pipe.recv()

    def ask(self, command: str) -> Any:
        self.pipe.send(command)
        return self.pipe.recv()

    def stop(self) -> None:
        self.ask("stop")
        self.process.join(5)


# The workloads. ------------------------------------------------------------------------------


def configure_django(url: str) -> None:
    import django
    from django.conf import settings

    from msgraph_mail.emulator import CLIENT_ID, CLIENT_SECRET, TENANT_ID

    settings.configure(
        DEFAULT_FROM_EMAIL="noreply@contoso.com",
        MSGRAPH_MAIL={
            "TENANT_ID": TENANT_ID,
            "CLIENT_ID": CLIENT_ID,
            "CLIENT_SECRET": CLIENT_SECRET,
            "GRAPH_URL": url,
            "AUTHORITY_URL": url,
            "MODE": "permissive",
        },
        # django-msgraphbackend's flat settings (ours reads them too, but MSGRAPH_MAIL wins).
        MSGRAPH_TENANT_ID=TENANT_ID,
        MSGRAPH_CLIENT_ID=CLIENT_ID,
        MSGRAPH_CLIENT_SECRET=CLIENT_SECRET,
        EMAIL_BACKEND="msgraph_mail.backend.EmailBackend",
        USE_TZ=True,
    )
    django.setup()


def messages(count: int, tag: str) -> list[Any]:
    from django.core.mail import EmailMultiAlternatives

    batch = []
    for i in range(count):
        message = EmailMultiAlternatives(
            subject=f"Your order #{i} ({tag})",
            body=f"Hello,\n\nyour order #{i} has shipped.\n",
            # A bare address: django-msgraphbackend cannot look up one with a display name.
            from_email="noreply@contoso.com",
            to=[f"customer{i}@example.com"],
        )
        message.attach_alternative(f"<p>Hello,</p><p>order <b>#{i}</b> shipped.</p>", "text/html")
        batch.append(message)
    return batch


def redirect_urllib(url: str) -> None:
    """django-msgraphbackend hard-codes Microsoft's hosts: send them to the emulator."""
    real = urllib.request.urlopen

    def urlopen(request: Any, *args: Any, **kwargs: Any) -> Any:
        for host in ("https://login.microsoftonline.com", "https://graph.microsoft.com"):
            request.full_url = request.full_url.replace(host, url)
        return real(request, *args, **kwargs)

    urllib.request.urlopen = urlopen  # type: ignore[assignment]


@dataclass
class Result:
    seconds: float
    cpu: float
    stats: dict[str, int]

    def rate(self, count: int = MESSAGES) -> float:
        return count / self.seconds


def measure(emulator: Emulator, send: Callable[[list[Any]], int], tag: str) -> Result:
    """Warm up with one message (token, lookup), then time MESSAGES in one call."""
    send(messages(1, f"{tag} warm-up"))
    emulator.ask("reset")
    batch = messages(MESSAGES, tag)
    cpu, started = time.process_time(), time.perf_counter()
    sent = send(batch)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    stats = emulator.ask("stats")
    if sent != MESSAGES or stats["delivered"] != MESSAGES:
        raise SystemExit(f"{tag}: sent {sent}, delivered {stats['delivered']} of {MESSAGES}")
    return Result(seconds, cpu, stats)


def ours(max_concurrency: int) -> Callable[[list[Any]], int]:
    from django.core.mail import get_connection

    def send(batch: list[Any]) -> int:
        return int(get_connection(max_concurrency=max_concurrency).send_messages(batch))

    return send


def peer(batch: list[Any]) -> int:
    from django.core.mail import get_connection

    return int(get_connection("msgraphbackend.MSGraphBackend").send_messages(batch))


def locmem_cpu(count: int = MESSAGES) -> float:
    """CPU to build the same messages with Django's locmem backend: the floor."""
    from django.core.mail import get_connection

    batch = messages(count, "locmem")
    backend = get_connection("django.core.mail.backends.locmem.EmailBackend")
    cpu = time.process_time()
    backend.send_messages(batch)
    return time.process_time() - cpu


def payload_cpu(count: int = MESSAGES) -> float:
    """CPU for msgraph_mail's part of building: checks, MIME with Bcc, base64 (no HTTP)."""
    from msgraph_mail.mime import build_mime, encode

    batch = messages(count, "payload")
    cpu = time.process_time()
    for message in batch:
        encode(build_mime(message), message)
    return time.process_time() - cpu


def bare_post_cpu(emulator: Emulator, count: int = MESSAGES) -> float:
    """CPU for one bare ``http.client`` POST of each message's body, in a tight loop.

    Not a target of issue 5: the cost of the HTTP exchange alone (kept-alive connection, no
    retries, no checks), to show how far above "build + one request" the backend is.
    """
    import http.client
    from urllib.parse import urlsplit

    import requests
    from django.core.mail import get_connection

    from msgraph_mail.auth import tokens
    from msgraph_mail.mime import build_mime, encode

    backend = get_connection()
    token = tokens.get(backend.settings, requests.Session())
    bodies = [encode(build_mime(message)) for message in messages(count, "bare")]
    url = urlsplit(emulator.url)
    connection = http.client.HTTPConnection(url.hostname or "", url.port)
    path = "/v1.0/users/noreply@contoso.com/sendMail"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "text/plain"}
    cpu = time.process_time()
    for body in bodies:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        response.read()
    cpu = time.process_time() - cpu
    connection.close()
    if response.status != 202:
        raise SystemExit(f"bare POST: HTTP {response.status}")
    return cpu


# The run. ------------------------------------------------------------------------------------


def run_once(emulator: Emulator) -> dict[str, float]:
    concurrent = measure(emulator, ours(max_concurrency=8), "concurrent")
    sequential = measure(emulator, ours(max_concurrency=1), "sequential")
    peer_result = measure(emulator, peer, "django-msgraphbackend")
    floor = locmem_cpu()
    payload = payload_cpu()
    bare_post = bare_post_cpu(emulator)
    stats = concurrent.stats
    return {
        "ours_rate": concurrent.rate(),
        "sequential_rate": sequential.rate(),
        "peer_rate": peer_result.rate(),
        "requests_per_message": stats["requests"] / MESSAGES,
        "peer_requests_per_message": peer_result.stats["requests"] / MESSAGES,
        "connections": stats["connections"],
        "peer_connections": peer_result.stats["connections"],
        "max_in_flight": stats["max_in_flight"],
        "throttled": stats["throttled"],
        "cpu_ms": 1000 * concurrent.cpu / MESSAGES,
        "locmem_cpu_ms": 1000 * floor / MESSAGES,
        "payload_cpu_ms": 1000 * payload / MESSAGES,
        "peer_cpu_ms": 1000 * peer_result.cpu / MESSAGES,
        "bare_post_cpu_ms": 1000 * bare_post / MESSAGES,
        # Ratios within one run: the machine's speed drifts between runs.
        "peer_speedup": concurrent.rate() / peer_result.rate(),
        "cpu_ratio": concurrent.cpu / floor,
        "payload_ratio": payload / floor,
    }


def report(runs: list[dict[str, float]], latency: float) -> bool:
    median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    limit = MAILBOX_LIMIT / latency
    rows = [
        ("messages/s, msgraph_mail (8 threads)", f"{median['ours_rate']:.1f}"),
        ("messages/s, msgraph_mail sequential", f"{median['sequential_rate']:.1f}"),
        ("messages/s, django-msgraphbackend", f"{median['peer_rate']:.1f}"),
        (f"physical limit (4 / {latency * 1000:.0f} ms)", f"{limit:.1f}"),
        ("share of the physical limit", f"{median['ours_rate'] / limit:.1%}"),
        ("speed-up over sequential", f"{median['ours_rate'] / median['sequential_rate']:.2f}x"),
        (
            "speed-up over django-msgraphbackend",
            f"{median['peer_speedup']:.2f}x",
        ),
        ("HTTP requests/message (steady state)", f"{median['requests_per_message']:.2f}"),
        (
            "HTTP requests/message, django-msgraphbackend",
            f"{median['peer_requests_per_message']:.2f}",
        ),
        ("TCP connections opened for 200 messages", f"{median['connections']:.0f}"),
        ("TCP connections, django-msgraphbackend", f"{median['peer_connections']:.0f}"),
        ("max requests in flight per mailbox", f"{median['max_in_flight']:.0f}"),
        ("429 answers (limit exceeded)", f"{median['throttled']:.0f}"),
        ("CPU ms/message, msgraph_mail", f"{median['cpu_ms']:.3f}"),
        ("CPU ms/message, locmem (builds the MIME only)", f"{median['locmem_cpu_ms']:.3f}"),
        ("CPU ratio to locmem", f"{median['cpu_ratio']:.2f}x"),
        (
            "  of it: MIME + base64, same loop as locmem",
            f"{median['payload_cpu_ms']:.3f} ({median['payload_ratio']:.2f}x)",
        ),
        ("bare http.client POST, tight loop (no target)", f"{median['bare_post_cpu_ms']:.3f}"),
        ("CPU ms/message, django-msgraphbackend", f"{median['peer_cpu_ms']:.3f}"),
    ]
    targets = [
        (">= 90 % of the physical limit", median["ours_rate"] >= 0.9 * limit),
        (">= 3.5x django-msgraphbackend", median["peer_speedup"] >= 3.5),
        ("1.00 requests per message", round(median["requests_per_message"], 2) == 1.0),
        ("CPU per message <= 1.5x locmem", median["cpu_ratio"] <= 1.5),
        ("never more than 4 in flight per mailbox", median["max_in_flight"] <= MAILBOX_LIMIT),
    ]
    width = max(len(label) for label, _ in rows)
    print(
        f"\n{MESSAGES} messages, {latency * 1000:.0f} ms per request, median of {len(runs)} runs\n"
    )
    for label, value in rows:
        print(f"  {label:<{width}}  {value:>14}")
    print()
    for label, ok in targets:
        print(f"  [{'met' if ok else 'MISSED'}] {label}")
    return all(ok for _, ok in targets)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs; the table shows medians")
    parser.add_argument("--latency", type=float, default=LATENCY, help="seconds per request")
    args = parser.parse_args(argv)
    emulator = Emulator(args.latency)
    try:
        configure_django(emulator.url)
        redirect_urllib(emulator.url)
        runs = [run_once(emulator) for _ in range(args.runs)]
    finally:
        emulator.stop()
    return 0 if report(runs, args.latency) else 1


if __name__ == "__main__":
    sys.exit(main())
