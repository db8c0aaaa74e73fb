"""Many processes, one mailbox: throughput and 429s with and without REDIS_URL.

Run with ``python benchmarks/many_processes.py`` (needs Debian's ``redis-server`` and the
``redis`` extra). 1, 2, 4 and 8 sending processes share one mailbox of the emulator, which
runs in its own process with a fixed latency per request and Graph's limit of 4 requests in
flight per application and mailbox. Each process sends its share of the messages in batches
(``send_messages`` with the default MAX_CONCURRENCY, as a worker draining a queue would).

Printed per process count, with and without Redis: messages per second against the limit
4 / latency, the 429s Graph answered, HTTP requests per message, CPU per message, and the CPU
that the Redis calls add (with minus without). Targets with Redis: at least 85 % of the limit
and zero 429s at every process count; the script exits 1 if one is missed. A benchmark, not a
timed test: the figures go to docs/performance.md and the closing notes.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]

from throughput import Emulator  # noqa: E402 -- the emulator-in-a-process of the other benchmark

from tests.redis_server import RedisServer  # noqa: E402

MESSAGES = 240
LATENCY = 0.05
MAILBOX_LIMIT = 4
COUNTS = (1, 2, 4, 8)
#: Messages per send_messages() call: a worker draining its queue.
BATCH = 24


def _sender(
    url: str, redis_url: str | None, count: int, threads: int, start: Any, pipe: Connection
) -> None:
    """One sending process: warm up (token), wait for the others, send, report."""
    import logging

    import django
    from django.conf import settings

    logging.getLogger("msgraph_mail").setLevel(logging.ERROR)  # the 429 retries, counted below

    from msgraph_mail.emulator import CLIENT_ID, CLIENT_SECRET, TENANT_ID

    config: dict[str, Any] = {
        "TENANT_ID": TENANT_ID,
        "CLIENT_ID": CLIENT_ID,
        "CLIENT_SECRET": CLIENT_SECRET,
        "GRAPH_URL": url,
        "AUTHORITY_URL": url,
        "MODE": "single_mailbox",
        "MAILBOX": "noreply@contoso.com",
        "MAX_RETRY_WAIT": 300,
        "MAX_RETRIES": 20,
        "MAX_CONCURRENCY": threads,
    }
    if redis_url:
        config["REDIS_URL"] = redis_url
    settings.configure(
        MSGRAPH_MAIL=config,
        EMAIL_BACKEND="msgraph_mail.backend.EmailBackend",
        DEFAULT_FROM_EMAIL="noreply@contoso.com",
    )
    django.setup()
    from django.core.mail import EmailMessage, get_connection

    def batch(size: int, tag: str) -> list[Any]:
        return [
            EmailMessage(f"{tag} #{i}", "Your order has shipped.", None, [f"c{i}@example.com"])
            for i in range(size)
        ]

    connection = get_connection()
    connection.send_messages(batch(1, "warm-up"))  # the token, the Redis connection
    pipe.send("ready")
    start.wait()
    cpu, began = time.process_time(), time.perf_counter()
    sent = 0
    for first in range(0, count, BATCH):
        sent += connection.send_messages(batch(min(BATCH, count - first), f"{first}"))
    pipe.send(
        {
            "sent": sent,
            "began": began,
            "ended": time.perf_counter(),
            "cpu": time.process_time() - cpu,
        }
    )


@dataclass
class Run:
    processes: int
    redis: bool
    rate: float
    throttled: int
    requests_per_message: float
    cpu_ms: float
    max_in_flight: int


def run(emulator: Emulator, processes: int, redis_url: str | None, threads: int) -> Run:
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    share, rest = divmod(MESSAGES, processes)
    pipes, workers = [], []
    for n in range(processes):
        parent, child = context.Pipe()
        count = share + (1 if n < rest else 0)
        worker = context.Process(
            target=_sender, args=(emulator.url, redis_url, count, threads, start, child)
        )
        worker.start()
        pipes.append(parent)
        workers.append(worker)
    for pipe in pipes:
        if pipe.recv() != "ready":
            raise SystemExit("a sender did not start")
    emulator.ask("reset")
    start.set()
    reports = [pipe.recv() for pipe in pipes]
    for worker in workers:
        worker.join(30)
    stats = emulator.ask("stats")
    sent = sum(r["sent"] for r in reports)
    if sent != MESSAGES or stats["delivered"] != MESSAGES:
        raise SystemExit(f"sent {sent}, delivered {stats['delivered']} of {MESSAGES}")
    seconds = max(r["ended"] for r in reports) - min(r["began"] for r in reports)
    return Run(
        processes=processes,
        redis=redis_url is not None,
        rate=MESSAGES / seconds,
        throttled=stats["throttled"],
        requests_per_message=stats["requests"] / MESSAGES,
        cpu_ms=1000 * sum(r["cpu"] for r in reports) / MESSAGES,
        max_in_flight=stats["max_in_flight"],
    )


def report(runs: list[list[Run]], latency: float) -> bool:
    limit = MAILBOX_LIMIT / latency
    print(
        f"\n{MESSAGES} messages through one mailbox, {latency * 1000:.0f} ms per request, "
        f"limit 4 / latency = {limit:.0f} messages/s, median of {len(runs)} runs\n"
    )
    header = (
        "processes  Redis  messages/s  of limit  429s  requests/msg  in flight  "
        "CPU ms/msg  Redis CPU ms/msg"
    )
    print(header)
    ok = True
    for index in range(len(runs[0])):
        same = [run[index] for run in runs]
        first = same[0]
        rate = statistics.median(r.rate for r in same)
        throttled = statistics.median(r.throttled for r in same)
        per_message = statistics.median(r.requests_per_message for r in same)
        cpu = statistics.median(r.cpu_ms for r in same)
        in_flight = max(r.max_in_flight for r in same)
        added = ""
        if first.redis:
            without = [
                run[i]
                for run in runs
                for i, r in enumerate(run)
                if not r.redis and r.processes == first.processes
            ]
            added = f"{cpu - statistics.median(r.cpu_ms for r in without):+.3f}"
            ok &= rate >= 0.85 * limit and throttled == 0
        print(
            f"{first.processes:>9}  {'yes' if first.redis else 'no':>5}  {rate:>10.1f}  "
            f"{rate / limit:>8.1%}  {throttled:>4.0f}  {per_message:>12.2f}  {in_flight:>9}  "
            f"{cpu:>10.3f}  {added:>16}"
        )
    print(f"\n  [{'met' if ok else 'MISSED'}] with Redis: >= 85 % of the limit and no 429")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1, help="runs; the table shows medians")
    parser.add_argument("--latency", type=float, default=LATENCY, help="seconds per request")
    parser.add_argument(
        "--processes", type=int, nargs="*", default=list(COUNTS), help="process counts to run"
    )
    parser.add_argument(
        "--threads", type=int, default=8, help="MAX_CONCURRENCY of each process (default 8)"
    )
    args = parser.parse_args(argv)
    emulator = Emulator(args.latency)
    runs = []
    try:
        with RedisServer() as redis:
            for _ in range(args.runs):
                one = []
                for processes in args.processes:
                    one.append(run(emulator, processes, None, args.threads))
                    one.append(run(emulator, processes, redis.url, args.threads))
                runs.append(one)
    finally:
        emulator.stop()
    return 0 if report(runs, args.latency) else 1


if __name__ == "__main__":
    sys.exit(main())
