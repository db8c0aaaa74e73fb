"""The tracker as users run it: ``manage.py msgraph_track`` processes, mail sent by another
process (``manage.py sendtestemail`` and tests/tracking_web.py), one file-backed SQLite
database shared by them (tests/tracking_settings.py), the emulator as Graph, and a project's
receiver writing each ``delivery_event`` into that database (tests/tracking_receiver.py).

Proven here: a bounce is reported once, with its code, within a second; the tracker killed
with SIGKILL and restarted loses nothing and reports nothing twice; two trackers at once
report each event once; 1,000 tracked messages cost a handful of message-trace requests.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from msgraph_mail.emulator import GraphEmulator
from msgraph_mail.management.commands.msgraph_track import LEASE_MIN

ROOT = Path(__file__).resolve().parent.parent
ROLES = ["Mail.Send", "Mail.Read", "ExchangeMessageTrace.Read.All"]
WAIT = 30.0


@pytest.fixture
def graph() -> Iterator[GraphEmulator]:
    with GraphEmulator() as emulator:
        emulator.roles = ROLES
        emulator.delivery_delay = 0.2
        yield emulator


@pytest.fixture
def env(graph: GraphEmulator, tmp_path: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.tracking_settings",
        "TRACKING_DB": str(tmp_path / "tracking.sqlite3"),
        "TRACKING_GRAPH_URL": graph.url,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    django(env, "migrate", "-v", "0")
    return env


def django(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - this interpreter, fixed arguments
        [sys.executable, "-m", "django", *args],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )


class Tracker:
    """One ``msgraph_track`` process."""

    def __init__(self, env: dict[str, str], log: Path, interval: float = 0.1) -> None:
        self.env, self.log, self.interval = env, log, interval
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Tracker:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(  # noqa: S603
                [sys.executable, "-m", "django", "msgraph_track", "--interval", str(self.interval)],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def kill(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            assert self.process.wait(10) == 0, self.log.read_text()
            self.process = None


def seen(env: dict[str, str]) -> list[tuple[str, str, str, str | None, int, float]]:
    """The receiver's rows: (message id, recipient, event type, status code, pid, time)."""
    with closing(sqlite3.connect(env["TRACKING_DB"], timeout=30)) as db:
        try:
            return list(db.execute("SELECT * FROM seen"))
        except sqlite3.OperationalError:  # no event yet: the receiver makes the table
            return []


def wait_for(env: dict[str, str], count: int, timeout: float = WAIT) -> list[tuple]:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = seen(env)
        if len(rows) >= count:
            return rows
        time.sleep(0.05)
    raise AssertionError(f"{len(seen(env))} events after {timeout} s, wanted {count}")


def repeated(rows: list[tuple]) -> list[tuple[str, str, str]]:  # type: ignore[type-arg]
    counts = Counter((row[0], row[1], row[2]) for row in rows)
    return [key for key, n in counts.items() if n > 1]


def test_a_bounce_is_reported_once_with_its_code_within_a_second(
    env: dict[str, str], tmp_path: Path
) -> None:
    tracker = Tracker(env, tmp_path / "tracker.log").start()
    try:
        started = time.time()
        django(env, "sendtestemail", "ghost@nowhere.invalid", "ok@example.com")
        rows = wait_for(env, 2)
        time.sleep(1.0)  # more passes: nothing new may come
        rows = seen(env)
    finally:
        tracker.stop()
    bounced = [row for row in rows if row[2] == "bounced"]
    assert [(row[1], row[3]) for row in bounced] == [("ghost@nowhere.invalid", "5.1.1")]
    assert {(row[1], row[2]) for row in rows} == {
        ("ghost@nowhere.invalid", "bounced"),
        ("ok@example.com", "delivered"),
    }
    assert repeated(rows) == []
    latency = bounced[0][5] - started
    print(f"bounce to signal: {latency:.2f} s (delivery_delay 0.2 s, interval 0.1 s)")
    assert latency < 5.0


def test_killed_and_restarted_it_loses_nothing_and_reports_nothing_twice(
    env: dict[str, str], tmp_path: Path
) -> None:
    log = tmp_path / "tracker.log"
    tracker = Tracker(env, log, interval=0.05)
    for round_ in range(3):
        # new addresses each round: a bounced one is suppressed from then on
        to = [f"user{round_}-{n}@nowhere.invalid" for n in range(5)] + ["ok@example.com"]
        django(env, "sendtestemail", *to)
        tracker.start()
        time.sleep(0.3 + 0.15 * round_)
        tracker.kill()  # mid-pass or between passes: its lease stays taken
        time.sleep(LEASE_MIN + 0.2)  # until the dead tracker's lease expires
    tracker.start()
    try:
        rows = wait_for(env, 18)
        time.sleep(1.0)
        rows = seen(env)
    finally:
        tracker.stop()
    assert repeated(rows) == []
    assert Counter(row[2] for row in rows) == {"bounced": 15, "delivered": 3}


def test_two_trackers_at_once_report_each_event_once(env: dict[str, str], tmp_path: Path) -> None:
    first = Tracker(env, tmp_path / "first.log").start()
    second = Tracker(env, tmp_path / "second.log").start()
    try:
        for n in range(3):
            django(env, "sendtestemail", f"a{n}@nowhere.invalid", "b@example.com")
        rows = wait_for(env, 6)
        time.sleep(1.0)
        rows = seen(env)
    finally:
        first.stop()
        second.stop()
    assert len(rows) == 6
    assert repeated(rows) == []
    assert len({row[4] for row in rows}) == 1  # one holds the lease; the other waits


def test_a_thousand_messages_cost_a_handful_of_trace_requests(
    graph: GraphEmulator, env: dict[str, str], tmp_path: Path
) -> None:
    graph.delivery_delay = 0.0
    env = {**env, "TRACKING_SOURCES": "trace"}
    done = subprocess.run(
        [sys.executable, "tests/tracking_web.py", "1000"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.stdout.strip() == "sent 1000"
    before = graph.count("message_trace") + graph.count("message_trace_detail")
    passes = 0
    while len(seen(env)) < 1000 and passes < 5:
        django(env, "msgraph_track", "--once")
        passes += 1
    rows = seen(env)
    trace_requests = graph.count("message_trace") + graph.count("message_trace_detail") - before
    print(f"1,000 messages: {trace_requests} trace requests in {passes} passes")
    assert Counter(row[2] for row in rows) == {"delivered": 900, "bounced": 100}
    assert repeated(rows) == []
    assert trace_requests <= passes * 1 + 50  # one window query a pass; details within budget
    assert trace_requests <= 50  # never more than the tracker's share of the 100 per 5 minutes
