"""Throughput benchmark: msgraph_mail against Graph's physical limit and django-msgraphbackend.

Run with ``nox -s bench`` (Django 5.2 and 6.1; installs django-msgraphbackend from the
package index), or ``python benchmarks/throughput.py --runs 3`` in an environment that has it.

The emulator runs in its own process (its CPU is not ours), with a fixed latency per request
and Graph's limit of 4 concurrent requests per mailbox. Every figure is measured in the same
run, ratios within one run; the table shows the median of the runs. It then splits our CPU
per message between Django's ``message()``, the standard email generator, requests, and our
own pipeline (the rest), and ends with the targets of issue 13: the script exits 1 if one is
missed.
"""

from __future__ import annotations

import argparse
import email.policy
import io
import multiprocessing
import platform
import secrets
import statistics
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from email.generator import BytesGenerator
from multiprocessing.connection import Connection
from typing import Any

MESSAGES = 200
LATENCY = 0.05
MAILBOX_LIMIT = 4
PEER_SPEEDUP = 6.0
SENDER = "noreply@contoso.com"


# The emulator, in its own process, answering "stats", "reset", "latency" and "stop". ------


def _serve(pipe: Connection, latency: float) -> None:
    from msgraph_mail.emulator import GraphEmulator

    emulator = GraphEmulator()
    emulator.start()
    emulator.latency = latency
    pipe.send(emulator.url)
    while True:
        command, argument = pipe.recv()
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
        elif command == "latency":
            emulator.latency = argument
            pipe.send("ok")
        else:
            emulator.stop()
            pipe.send("stopped")
            return


class Emulator:
    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.pipe, child = multiprocessing.Pipe()
        self.process = multiprocessing.Process(target=_serve, args=(child, latency), daemon=True)
        self.process.start()
        self.url: str = self.pipe.recv()

    def ask(self, command: str, argument: Any = None) -> Any:
        self.pipe.send((command, argument))
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
        DEFAULT_FROM_EMAIL=SENDER,
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
            from_email=SENDER,
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


# Where the CPU goes: the libraries' parts, each alone in a tight loop on the same messages. --


def django_message(message: Any) -> Any:
    """Django's ``message()``, called as ``msgraph_mail.mime.build_mime`` calls it."""
    import django

    if django.VERSION >= (6, 0):
        return message.message(policy=email.policy.SMTP)
    return message.message()


def message_cpu(count: int = MESSAGES) -> float:
    """CPU for Django's ``message()`` alone."""
    batch = messages(count, "message()")
    cpu = time.process_time()
    for message in batch:
        django_message(message)
    return time.process_time() - cpu


def generator_cpu(count: int = MESSAGES) -> float:
    """CPU for the standard ``BytesGenerator`` writing each message with CRLF line ends.

    As in ``build_mime``: the multiparts get their boundary first (not timed), then one
    ``flatten`` into a buffer, with the message's policy and ``linesep="\\r\\n"``.
    """
    mimes = [django_message(message) for message in messages(count, "generator")]
    for mime in mimes:
        for part in mime.walk():
            if part.is_multipart() and part.get_boundary() is None:
                part.set_boundary(f"=_{secrets.token_hex(13)}")
    cpu = time.process_time()
    for mime in mimes:
        buffer = io.BytesIO()
        policy = mime.policy.clone(linesep="\r\n")
        BytesGenerator(buffer, mangle_from_=False, policy=policy).flatten(mime)
        buffer.getvalue()
    return time.process_time() - cpu


def _poster(emulator: Emulator, count: int, tag: str) -> tuple[Callable[..., Any], list[Any]]:
    """A sendMail POST through a fresh ``requests.Session`` and ``count + 1`` messages."""
    import requests
    from django.core.mail import get_connection

    from msgraph_mail.auth import tokens

    session = requests.Session()
    token = tokens.get(get_connection().settings, session)
    url = f"{emulator.url}/v1.0/users/{SENDER}/sendMail"

    def post(body: bytes, client_request_id: str) -> requests.Response:
        headers = {
            "Accept": "application/json",
            "client-request-id": client_request_id,
            "Content-Type": "text/plain",
            "Authorization": f"Bearer {token}",
        }
        response = session.post(url, data=body, headers=headers, timeout=30, allow_redirects=False)
        response.content  # noqa: B018  (read the answer, as the backend does)
        if response.status_code != 202:
            raise SystemExit(f"{tag}: HTTP {response.status_code}")
        return response

    return post, messages(count + 1, tag)


def requests_cpu(emulator: Emulator, count: int = MESSAGES) -> float:
    """CPU for one POST per message through a ``requests.Session``, tight loop.

    The same bodies (base64 MIME) and headers as the backend's sendMail, on a connection
    kept alive from a first request (not timed); the emulator answers at once meanwhile.
    """
    from msgraph_mail.mime import build_mime, encode

    post, batch = _poster(emulator, count, "requests")
    bodies = [encode(build_mime(message)) for message in batch]
    ids = [str(uuid.uuid4()) for _ in bodies]
    emulator.ask("latency", 0.0)
    try:
        post(bodies[0], ids[0])  # opens the connection
        cpu = time.process_time()
        for body, client_request_id in zip(bodies[1:], ids[1:], strict=True):
            post(body, client_request_id)
        cpu = time.process_time() - cpu
    finally:
        emulator.ask("latency", emulator.latency)
    emulator.ask("reset")
    return cpu


def libraries_at_latency_cpu(emulator: Emulator, count: int = MESSAGES) -> float:
    """CPU for the same three parts, one message after another at the emulator's latency.

    Each message's ``message()``, generator and POST now run after a wait for the network,
    as in the backend, instead of back to back: the difference to the tight loops is what
    the libraries cost more when their code and data have gone cold, not our code.
    """
    from msgraph_mail.mime import build_mime, encode

    post, batch = _poster(emulator, count, "libraries at latency")
    bodies = [encode(build_mime(message)) for message in batch]
    ids = [str(uuid.uuid4()) for _ in bodies]
    fresh = messages(count, "libraries at latency")
    post(bodies[0], ids[0])  # opens the connection
    cpu = time.process_time()
    for message, body, client_request_id in zip(fresh, bodies[1:], ids[1:], strict=True):
        mime = django_message(message)
        for part in mime.walk():
            if part.is_multipart() and part.get_boundary() is None:
                part.set_boundary(f"=_{secrets.token_hex(13)}")
        policy = mime.policy.clone(linesep="\r\n")
        BytesGenerator(io.BytesIO(), mangle_from_=False, policy=policy).flatten(mime)
        post(body, client_request_id)
    cpu = time.process_time() - cpu
    emulator.ask("reset")
    return cpu


# The run. ------------------------------------------------------------------------------------


def run_once(emulator: Emulator) -> dict[str, float]:
    concurrent = measure(emulator, ours(max_concurrency=8), "concurrent")
    sequential = measure(emulator, ours(max_concurrency=1), "sequential")
    peer_result = measure(emulator, peer, "django-msgraphbackend")
    parts = {
        "message_cpu_ms": 1000 * message_cpu() / MESSAGES,
        "generator_cpu_ms": 1000 * generator_cpu() / MESSAGES,
        "requests_cpu_ms": 1000 * requests_cpu(emulator) / MESSAGES,
    }
    cold_ms = 1000 * libraries_at_latency_cpu(emulator) / MESSAGES
    cpu_ms = 1000 * concurrent.cpu / MESSAGES
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
        "cpu_ms": cpu_ms,
        "peer_cpu_ms": 1000 * peer_result.cpu / MESSAGES,
        **parts,
        "own_cpu_ms": cpu_ms - sum(parts.values()),
        "cold_cpu_ms": cold_ms - sum(parts.values()),
        "sequential_cpu_ms": 1000 * sequential.cpu / MESSAGES,
        # Ratios within one run: the machine's speed drifts between runs.
        "peer_speedup": concurrent.rate() / peer_result.rate(),
        "sequential_speedup": concurrent.rate() / sequential.rate(),
        "cpu_ratio": concurrent.cpu / peer_result.cpu,
    }


def report(runs: list[dict[str, float]], latency: float) -> bool:
    import django
    import requests

    median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    limit = MAILBOX_LIMIT / latency
    cpu = median["cpu_ms"]

    def share(key: str) -> str:
        return f"{median[key]:.3f} ({median[key] / cpu:.0%})"

    rows = [
        ("messages/s, msgraph_mail (MAX_CONCURRENCY 8)", f"{median['ours_rate']:.1f}"),
        ("messages/s, msgraph_mail sequential", f"{median['sequential_rate']:.1f}"),
        ("messages/s, django-msgraphbackend", f"{median['peer_rate']:.1f}"),
        (f"physical limit (4 / {latency * 1000:.0f} ms)", f"{limit:.1f}"),
        ("share of the physical limit", f"{median['ours_rate'] / limit:.1%}"),
        ("speed-up over sequential", f"{median['sequential_speedup']:.2f}x"),
        ("speed-up over django-msgraphbackend", f"{median['peer_speedup']:.2f}x"),
        ("HTTP requests/message (steady state)", f"{median['requests_per_message']:.2f}"),
        (
            "HTTP requests/message, django-msgraphbackend",
            f"{median['peer_requests_per_message']:.2f}",
        ),
        (f"TCP connections opened for {MESSAGES} messages", f"{median['connections']:.0f}"),
        ("TCP connections, django-msgraphbackend", f"{median['peer_connections']:.0f}"),
        ("max requests in flight per mailbox", f"{median['max_in_flight']:.0f}"),
        ("429 answers (limit exceeded)", f"{median['throttled']:.0f}"),
        ("CPU ms/message, msgraph_mail (MAX_CONCURRENCY 8)", f"{cpu:.3f}"),
        ("CPU ms/message, msgraph_mail sequential", f"{median['sequential_cpu_ms']:.3f}"),
        ("CPU ms/message, django-msgraphbackend", f"{median['peer_cpu_ms']:.3f}"),
        ("CPU ratio to django-msgraphbackend", f"{median['cpu_ratio']:.2f}x"),
        ("where msgraph_mail's CPU goes, ms/message:", ""),
        ("  Django's message()", share("message_cpu_ms")),
        ("  email generator (BytesGenerator, CRLF)", share("generator_cpu_ms")),
        ("  requests (one POST, kept-alive, tight loop)", share("requests_cpu_ms")),
        ("  our own pipeline (the rest)", share("own_cpu_ms")),
        ("    of it: the three above, run cold (at latency)", share("cold_cpu_ms")),
    ]
    targets = [
        (
            f">= 90 % of the physical limit (4 / {latency * 1000:.0f} ms)",
            median["ours_rate"] >= 0.9 * limit,
        ),
        (f">= {PEER_SPEEDUP:g}x django-msgraphbackend", median["peer_speedup"] >= PEER_SPEEDUP),
        ("1.00 requests per message", round(median["requests_per_message"], 2) == 1.0),
        ("CPU per message <= django-msgraphbackend's", median["cpu_ratio"] <= 1.0),
        ("never more than 4 in flight per mailbox", median["max_in_flight"] <= MAILBOX_LIMIT),
    ]
    width = max(len(label) for label, _ in rows)
    print(
        f"\n{MESSAGES} messages, {latency * 1000:.0f} ms per request, median of {len(runs)} runs"
        f" (Python {platform.python_version()}, Django {django.get_version()},"
        f" requests {requests.__version__})\n"
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
