"""Many processes, one mailbox: Graph's limits shared through a real Redis.

Each sender is its own OS process (``tests/sender_process.py``), configured as a deployment
would be, sending through one mailbox of the emulator, which enforces Graph's limits and
answers 429 as Graph does. With REDIS_URL the processes share the 4 slots and the budgets:
zero 429s. Without it, the same run collects 429s: the reason to configure it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from django.core import mail
from django.test import override_settings

from msgraph_mail import limits
from msgraph_mail.emulator import GraphEmulator
from msgraph_mail.exceptions import LimitsUnavailable, MailboxBudgetExhausted

from .redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
MAILBOX = "noreply@contoso.com"
#: 24 hours in 3 seconds (and so 10 minutes in about 21 ms), in the emulator and the senders.
FAST = 3 / 86400


@pytest.fixture
def graph(emulator: GraphEmulator) -> GraphEmulator:
    emulator.latency = 0.05
    emulator.roles = ["Mail.Send"]
    return emulator


def settings_for(emulator: GraphEmulator, **extra: Any) -> dict[str, Any]:
    return emulator.settings(MODE="single_mailbox", MAILBOX=MAILBOX, **extra)


def start(config: dict[str, Any], time_scale: float | None = None) -> subprocess.Popen[str]:
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    environment.pop("DJANGO_SETTINGS_MODULE", None)
    if time_scale is not None:
        environment[limits.TIME_SCALE_ENV] = repr(time_scale)
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.sender_process"],
        cwd=ROOT,
        env=environment,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    give(process, config)
    return process


def give(process: subprocess.Popen[str], settings: dict[str, Any]) -> None:
    """The configuration on standard input: a secret never stands in a command line."""
    assert process.stdin is not None
    process.stdin.write(json.dumps(settings) + "\n")
    process.stdin.close()
    process.stdin = None  # all said: communicate() has nothing more to send


def finish(process: subprocess.Popen[str], timeout: float = 120) -> dict[str, Any]:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err
    return dict(json.loads(out.strip().splitlines()[-1]))


def run(configs: list[dict[str, Any]], time_scale: float | None = None) -> list[dict[str, Any]]:
    processes = [start(config, time_scale) for config in configs]
    return [finish(process) for process in processes]


def senders(settings: dict[str, Any], processes: int, count: int, **extra: Any) -> list[Any]:
    return [
        {"settings": settings, "count": count, "tag": f"p{n}", "batch": 4, **extra}
        for n in range(processes)
    ]


def delivered(emulator: GraphEmulator) -> Counter[str]:
    return Counter(message.subject for message in emulator.sent)


def test_shared_slots_never_more_than_four_in_flight_and_no_429(
    graph: GraphEmulator, redis: str
) -> None:
    settings = settings_for(graph, REDIS_URL=redis, MAX_CONCURRENCY=4)
    outcomes = run(senders(settings, processes=4, count=16))
    assert [o["sent"] for o in outcomes] == [16] * 4
    counts = delivered(graph)
    assert len(counts) == 64
    assert set(counts.values()) == {1}  # every message exactly once
    assert graph.max_in_flight(MAILBOX) <= 4
    assert graph.throttled(MAILBOX)["concurrency"] == 0
    assert sum(r.status == 429 for r in graph.requests) == 0
    # One lookup-free request per message: single_mailbox, token cached per process.
    assert graph.count("sendMail") == 64


def test_without_redis_the_same_run_collects_429s(graph: GraphEmulator) -> None:
    settings = settings_for(graph, MAX_CONCURRENCY=4)
    outcomes = run(senders(settings, processes=4, count=16))
    assert [o["sent"] for o in outcomes] == [16] * 4  # retried through, but not without 429s
    assert len(delivered(graph)) == 64
    assert graph.throttled(MAILBOX)["concurrency"] > 0


HOLDER = textwrap.dedent(
    """
    import json, sys, time
    import django
    from django.conf import settings
    settings.configure(MSGRAPH_MAIL=json.loads(sys.stdin.readline()))
    django.setup()
    from contextlib import ExitStack
    from msgraph_mail.conf import load_settings
    from msgraph_mail.limits import limits_for
    limits = limits_for(load_settings())
    with ExitStack() as stack:
        for _ in range(4):
            stack.enter_context(limits.hold(sys.argv[1]))
        print("held", flush=True)
        time.sleep(600)
    """
)


def test_a_killed_process_frees_its_slots_when_its_leases_expire(
    graph: GraphEmulator, redis: str
) -> None:
    # TIMEOUT 1 s: a lease lasts TIMEOUT plus a margin, so it expires within seconds.
    settings = settings_for(graph, REDIS_URL=redis, TIMEOUT=1, MAX_RETRY_WAIT=30)
    holder = subprocess.Popen(  # noqa: S603
        [sys.executable, "-c", HOLDER, MAILBOX],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    give(holder, settings)
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "held"
    holder.send_signal(signal.SIGKILL)  # no release, no goodbye: the leases stay in Redis
    holder.wait(10)
    holder.stdout.close()
    killed_at = time.monotonic()
    outcomes = run(senders(settings, processes=2, count=4))
    waited = time.monotonic() - killed_at
    assert [o["sent"] for o in outcomes] == [4, 4]
    assert len(delivered(graph)) == 8
    assert graph.throttled(MAILBOX)["concurrency"] == 0
    # The others waited for the leases (TIMEOUT + margin), and not much beyond them.
    lease = 1 + limits.LEASE_MARGIN
    assert waited >= lease - 1
    assert waited < lease + 60  # generous: a loaded 2-core machine starts Python slowly


def test_budgets_pace_the_run_instead_of_failing_it(graph: GraphEmulator, redis: str) -> None:
    # 20 recipients per "24 hours" (3 s here) for 3 processes sending 30 recipients in all.
    budget = {"RECIPIENTS_PER_24_HOURS": 20}
    graph.set_limits(budget)
    graph.time_scale = FAST
    settings = settings_for(graph, REDIS_URL=redis, MAILBOX_LIMITS=budget, MAX_RETRY_WAIT=30)
    started = time.monotonic()
    outcomes = run(senders(settings, processes=3, count=10, batch=1), time_scale=FAST)
    took = time.monotonic() - started
    assert [o["sent"] for o in outcomes] == [10, 10, 10]
    assert len(delivered(graph)) == 30
    assert graph.throttled(MAILBOX)["recipients"] == 0  # paced, never refused
    assert took >= 3 * 0.9  # the 21st recipient had to wait for the first window to slide


def test_a_wait_beyond_max_retry_wait_fails_before_sending(
    graph: GraphEmulator, redis: str
) -> None:
    budget = {"RECIPIENTS_PER_24_HOURS": 5}
    settings = settings_for(graph, REDIS_URL=redis, MAILBOX_LIMITS=budget, MAX_RETRY_WAIT=1)
    [outcome] = run([{"settings": settings, "count": 8, "tag": "n", "recipients": 1}])
    assert (outcome["sent"], outcome["failed"]) == (5, 3)
    assert outcome["errors"] == [["MailboxBudgetExhausted", "RECIPIENTS_PER_24_HOURS"]] * 3
    assert len(graph.sent) == 5  # nothing of the refused ones reached Graph
    with override_settings(MSGRAPH_MAIL=settings):  # this process shares the same budget
        message = mail.EmailMessage("Late", "x", None, ["a@example.com"])
        with pytest.raises(MailboxBudgetExhausted) as refused:
            message.send()
    error = refused.value
    assert error.mailbox == MAILBOX
    assert error.budget == "RECIPIENTS_PER_24_HOURS"
    assert error.retry_at is not None
    assert error.retry_at.tzinfo is not None
    assert "safe to send this message again" in str(error)
    assert message.msgraph_status.status == "failed"


def test_the_bulk_reserve_holds_across_processes(graph: GraphEmulator, redis: str) -> None:
    budget = {"RECIPIENTS_PER_24_HOURS": 100}
    settings = settings_for(graph, REDIS_URL=redis, MAILBOX_LIMITS=budget, MAX_RETRY_WAIT=0)
    newsletter = {"settings": settings, "count": 12, "tag": "news", "recipients": 10}
    [bulk] = run([{**newsletter, "priority": "bulk"}])
    assert (bulk["sent"], bulk["failed"]) == (9, 3)  # 90 of 100: the last 10 % are reserved
    reset = {"settings": settings, "count": 5, "tag": "password reset", "recipients": 1}
    [normal] = run([reset])
    assert normal["sent"] == 5  # the password resets still go out
    assert len(graph.sent) == 14


def test_the_bulk_reserve_holds_in_one_process_without_redis(graph: GraphEmulator) -> None:
    budget = {"RECIPIENTS_PER_24_HOURS": 10}
    settings = settings_for(graph, MAILBOX_LIMITS=budget, MAX_RETRY_WAIT=0)
    limits.clear()
    with override_settings(MSGRAPH_MAIL=settings):
        bulk = mail.get_connection(priority="bulk", fail_silently=True)
        news = [mail.EmailMessage(f"n{i}", "x", None, ["a@example.com"]) for i in range(12)]
        assert bulk.send_messages(news) == 9
        assert mail.send_mail("Password reset", "x", None, ["b@example.com"]) == 1
    assert {m.msgraph_status.error.budget for m in news if m.msgraph_status.error} == {
        "RECIPIENTS_PER_24_HOURS"
    }


def test_redis_unreachable_is_a_clear_error_not_a_hang(graph: GraphEmulator) -> None:
    limits.clear()
    closed = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    with override_settings(MSGRAPH_MAIL=settings_for(graph, REDIS_URL=closed)):
        started = time.monotonic()
        with pytest.raises(LimitsUnavailable) as raised:
            mail.send_mail("Hi", "x", None, ["a@example.com"])
    assert time.monotonic() - started < 20
    assert "REDIS_URL" in str(raised.value)
    assert "hunter2" not in str(raised.value)
    assert graph.sent == []  # never an unbounded burst: nothing sent without the limits


def test_redis_going_away_mid_run_stops_sending_cleanly(graph: GraphEmulator) -> None:
    limits.clear()
    with RedisServer() as server:
        settings = settings_for(graph, REDIS_URL=server.url)
        with override_settings(MSGRAPH_MAIL=settings):
            assert mail.send_mail("Before", "x", None, ["a@example.com"]) == 1
            server.stop()
            started = time.monotonic()
            with pytest.raises(LimitsUnavailable):
                mail.send_mail("After", "x", None, ["a@example.com"])
            assert time.monotonic() - started < 20
    assert [m.subject for m in graph.sent] == ["Before"]
