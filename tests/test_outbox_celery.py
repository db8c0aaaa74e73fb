"""The Celery engine of the outbox: its claim store in Redis, and real workers against the
emulator (``QUEUE = "celery"``)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core import mail
from django.test import override_settings

pytest.importorskip("redis")

from msgraph_mail.emulator import GraphEmulator
from msgraph_mail.outbox.envelope import Envelope
from msgraph_mail.outbox.redis_store import FINISHED_TTL, PREFIX, RedisStore


def envelope(message_id: str, mime: str = "QUJD") -> Envelope:
    return Envelope(
        message_id=message_id,
        mime=mime,
        from_address="noreply@contoso.com",
        mailbox_override=None,
        recipients=1,
        alias=None,
        priority="normal",
        enqueued_at=datetime.now(timezone.utc).isoformat(),
    )


@pytest.fixture
def store(redis: str) -> RedisStore:
    import redis as redis_py

    return RedisStore(redis_py.Redis.from_url(redis))


# The store -----------------------------------------------------------------------------------


def test_a_message_is_claimed_once(store: RedisStore) -> None:
    queued = envelope("<a@x>", "QUJD")
    store.add(queued)
    record = store.get("<a@x>")
    assert record is not None
    assert record.status == "queued"
    assert record.envelope == queued
    assert record.attempts == 0
    assert store.claim("<a@x>")
    assert not store.claim("<a@x>")
    record = store.get("<a@x>")
    assert record is not None
    assert (record.status, record.attempts) == ("sending", 1)
    assert store.claimed_at("<a@x>") is not None


def test_adding_twice_keeps_the_first(store: RedisStore) -> None:
    store.add(envelope("<a@x>", "MQ=="))
    assert store.claim("<a@x>")
    store.add(envelope("<a@x>", "Mg=="))
    record = store.get("<a@x>")
    assert record is not None
    assert (record.status, record.envelope.mime) == ("sending", "MQ==")


def test_claims_race_one_winner(store: RedisStore) -> None:
    for n in range(20):
        store.add(envelope(f"<{n}@x>"))
    wins: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def claimer() -> None:
        start.wait()
        for n in range(20):
            if store.claim(f"<{n}@x>"):
                with lock:
                    wins.append(f"<{n}@x>")

    threads = [threading.Thread(target=claimer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(wins) == sorted(f"<{n}@x>" for n in range(20))


def test_defer_finish_and_the_status_sets(store: RedisStore) -> None:
    store.add(envelope("<a@x>"))
    store.add(envelope("<b@x>"))
    store.add(envelope("<c@x>"))
    store.defer("<missing@x>", time.time())
    assert store.get("<missing@x>") is None
    store.defer("<a@x>", time.time() + 60)  # not claimed: stays as it is
    assert store.get("<a@x>").next_try_at < datetime.now(timezone.utc)  # type: ignore[union-attr]
    for message_id in ("<a@x>", "<b@x>", "<c@x>"):
        assert store.claim(message_id)
    later = time.time() + 60
    store.defer("<a@x>", datetime.fromtimestamp(later, timezone.utc))
    store.note("<a@x>", "429 ApplicationThrottled")
    store.finish("<b@x>", "sent", request_id="req-1")
    store.finish("<c@x>", "failed", error="ErrorInvalidUser")
    assert store.counts() == {"queued": 1, "sending": 0, "sent": 1, "failed": 1, "unknown": 0}
    [deferred] = store.list("queued")
    assert deferred.message_id == "<a@x>"
    assert deferred.next_try_at is not None
    assert abs(deferred.next_try_at.timestamp() - later) < 0.01
    assert deferred.last_error == "429 ApplicationThrottled"
    assert deferred.deferred
    [sent] = store.list("sent")
    assert (sent.request_id, sent.next_try_at) == ("req-1", None)
    assert [r.message_id for r in store.list()] == ["<a@x>", "<b@x>", "<c@x>"]
    # a deferred message is claimed again on its next try, counting a second attempt
    assert store.claim("<a@x>")
    record = store.get("<a@x>")
    assert record is not None
    assert record.attempts == 2
    with pytest.raises(ValueError, match="finish"):
        store.finish("<a@x>", "queued")


def test_finished_messages_expire(store: RedisStore) -> None:
    store.add(envelope("<a@x>"))
    key = store.message_key("<a@x>")
    assert key.startswith("msgraph_mail:outbox:")
    assert PREFIX in key
    assert store.client.ttl(key) == -1  # queued: kept until finished
    store.claim("<a@x>")
    assert store.client.ttl(key) == -1  # sending: kept (a dead worker's claim stays visible)
    store.finish("<a@x>", "unknown", error="no answer")
    assert 0 < int(store.client.ttl(key)) <= FINISHED_TTL
    assert not store.requeue("<a@x>")  # an unknown message is resent only when forced
    assert store.requeue("<a@x>", force=True)
    assert store.client.ttl(key) == -1
    assert not store.requeue("<a@x>")  # only a finished message is resent


def test_finished_sets_are_trimmed(redis: str) -> None:
    import redis as redis_py

    store = RedisStore(redis_py.Redis.from_url(redis), ttl=1)
    store.add(envelope("<old@x>"))
    store.claim("<old@x>")
    store.finish("<old@x>", "sent")
    time.sleep(1.2)
    assert store.get("<old@x>") is None  # the record expired
    store.add(envelope("<new@x>"))
    store.claim("<new@x>")
    store.finish("<new@x>", "sent")  # ... and its id leaves the set with the next finish
    assert [r.message_id for r in store.list("sent")] == ["<new@x>"]
    assert store.counts()["sent"] == 1


def test_stale_claims_are_reaped_as_unknown(store: RedisStore) -> None:
    store.add(envelope("<old@x>"))
    store.add(envelope("<new@x>"))
    store.add(envelope("<queued@x>"))
    store.claim("<old@x>")
    time.sleep(0.3)
    store.claim("<new@x>")
    assert store.reap(0.2) == 1
    old, new = store.get("<old@x>"), store.get("<new@x>")
    assert old is not None
    assert new is not None
    assert (old.status, new.status) == ("unknown", "sending")
    assert old.last_error is not None
    assert "not sent again" in old.last_error
    assert store.claimed_at("<new@x>") is not None
    assert store.claimed_at("<queued@x>") is None


# Real workers --------------------------------------------------------------------------------
#
# One `celery worker` subprocess (prefork, 2 children) for the module, against an emulator of
# the module; the outbox in database 0 of the test Redis, the broker in database 1. The last
# test SIGKILLs that worker's whole process group mid-batch and starts another.

QUEUED = "msgraph_mail.backend.QueuedEmailBackend"
ROOT = Path(__file__).resolve().parent.parent


class Worker:
    """``celery -A tests.celery_app worker`` in its own process group, its output in a file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self.name = f"msgraph-test-{time.monotonic_ns()}@localhost"

    def wait_ready(self, app: Any, timeout: float = 90) -> None:
        """Until the worker answers a ping (its consumer runs); a loaded machine is slow."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise AssertionError(f"the worker exited:\n{self.output()}")
            if app.control.ping(destination=[self.name], timeout=0.5):
                return
        raise AssertionError(f"the worker did not start in {timeout} s:\n{self.output()}")

    def start(self, extra: tuple[str, ...] = ()) -> Worker:
        """Start it; ``extra``: more options (``-B`` runs beat in the worker)."""
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tests.celery_app",
            "worker",
            "--pool=prefork",
            "--concurrency=2",
            "--loglevel=warning",
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
            f"--hostname={self.name}",
            *extra,
        ]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(  # noqa: S603 -- our interpreter, fixed arguments
                command,
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def kill(self) -> None:
        """SIGKILL the worker and its pool children at once (the process group)."""
        process, self.process = self.process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def stop(self) -> None:
        process = self.process
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=15)
        self.kill()

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""


@dataclass
class CeleryRig:
    emulator: GraphEmulator
    options: dict[str, Any]
    store: RedisStore
    worker: Worker
    start_worker: Callable[[], Worker]


def wait_for(check: Callable[[], bool], what: str, rig: CeleryRig, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            counts = rig.store.counts()
            raise AssertionError(
                f"timed out waiting for {what}; outbox {counts}; worker log:\n"
                + rig.worker.output()
            )
        time.sleep(0.05)


@pytest.fixture(scope="module")
def celery_rig(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CeleryRig]:
    pytest.importorskip("celery")
    import redis as redis_py

    from tests import celery_app

    base = redis_url.rsplit("/", 1)[0]
    outbox_url, broker_url = f"{base}/0", f"{base}/1"
    for url in (outbox_url, broker_url):
        client = redis_py.Redis.from_url(url)
        client.flushdb()
        client.close()
    celery_app.app.conf.broker_url = broker_url
    log_dir = tmp_path_factory.mktemp("celery")
    with GraphEmulator() as emulator:
        emulator.roles = ["Mail.Send", "User.Read.All"]
        options = emulator.settings(
            MODE="permissive",
            QUEUE="celery",
            REDIS_URL=outbox_url,
            TIMEOUT=5,
            MAX_RETRIES=1,
            MAX_RETRY_WAIT=1,
        )
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.celery_settings",
            "MSGRAPH_TEST_MSGRAPH_MAIL": json.dumps(options),
            "MSGRAPH_TEST_BROKER_URL": broker_url,
            "MSGRAPH_TEST_SIGNALS_URL": outbox_url,  # tests/celery_app.py records the signals
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        workers: list[Worker] = []

        def start_worker() -> Worker:
            worker = Worker(env, log_dir / f"worker-{len(workers)}.log").start()
            workers.append(worker)
            worker.wait_ready(celery_app.app)
            return worker

        store = RedisStore(redis_py.Redis.from_url(outbox_url))
        rig = CeleryRig(emulator, options, store, start_worker(), start_worker)
        try:
            with override_settings(EMAIL_BACKEND=QUEUED, MSGRAPH_MAIL=options):
                yield rig
        finally:
            for worker in workers:
                worker.stop()
            store.client.close()
            celery_app.app.close()


@pytest.fixture
def rig(celery_rig: CeleryRig) -> Iterator[CeleryRig]:
    """The module's worker, with an emptied outbox and a reset emulator."""
    if celery_rig.worker.process is None or celery_rig.worker.process.poll() is not None:
        celery_rig.worker = celery_rig.start_worker()
    celery_rig.store.client.flushdb()
    celery_rig.emulator.reset()
    celery_rig.emulator.latency = 0.0
    yield celery_rig
    celery_rig.emulator.latency = 0.0


def outgoing(n: int, sender: str = "noreply@contoso.com", tag: str = "m") -> list[Any]:
    return [
        mail.EmailMessage(f"{tag} {i}", "Body", sender, [f"c{i}@example.com"]) for i in range(n)
    ]


def statuses(rig: CeleryRig, ids: list[str]) -> dict[str, str]:
    found = {}
    for message_id in ids:
        record = rig.store.get(message_id)
        found[message_id] = record.status if record is not None else "missing"
    return found


def delivered(rig: CeleryRig) -> Counter[str]:
    """How many times the emulator accepted each Message-ID."""
    return Counter(str(sent.header("Message-ID")) for sent in rig.emulator.sent)


@pytest.mark.django_db
def test_the_web_call_returns_at_once_and_the_worker_delivers(rig: CeleryRig) -> None:
    rig.emulator.latency = 2.0  # each sendMail takes 2 s: the caller must not wait for one
    messages = outgoing(6)
    started = time.monotonic()
    assert mail.get_connection().send_messages(messages) == 6
    assert time.monotonic() - started < 2.0
    assert {m.msgraph_status.status for m in messages} == {"queued"}
    ids = [m.msgraph_status.message_id for m in messages]
    wait_for(lambda: set(statuses(rig, ids).values()) == {"sent"}, "6 messages sent", rig)
    assert delivered(rig) == Counter(ids)
    for message_id in ids:
        record = rig.store.get(message_id)
        assert record is not None
        assert record.attempts == 1
        assert record.request_id


@pytest.mark.django_db
def test_a_throttled_message_is_deferred_and_delivered_later(rig: CeleryRig) -> None:
    rig.emulator.fail_next("throttle", retry_after=5)
    [message] = outgoing(1, tag="throttled")
    assert message.send() == 1
    message_id = message.msgraph_status.message_id

    def is_deferred() -> bool:
        record = rig.store.get(message_id)
        return record is not None and record.deferred

    wait_for(is_deferred, "the 429 to defer the message", rig)
    deferred_at = time.monotonic()
    record = rig.store.get(message_id)
    assert record is not None
    assert record.attempts == 1
    assert record.last_error is not None
    assert "429" in record.last_error or "TooManyRequests" in record.last_error
    assert rig.emulator.count("sendMail") == 1
    assert delivered(rig) == Counter()
    wait_for(lambda: statuses(rig, [message_id])[message_id] == "sent", "delivery", rig)
    # Retry-After 5 s was waited out (in countdowns of at most visibility_timeout / 2)
    assert time.monotonic() - deferred_at > 4.0
    record = rig.store.get(message_id)
    assert record is not None
    assert record.attempts == 2
    assert rig.emulator.count("sendMail") == 2
    assert delivered(rig) == Counter([message_id])


@pytest.mark.django_db
def test_a_permanent_failure_is_failed_at_once_not_retried(rig: CeleryRig) -> None:
    [message] = outgoing(1, sender="ghost@contoso.com", tag="ghost")
    assert message.send() == 1
    message_id = message.msgraph_status.message_id
    wait_for(lambda: statuses(rig, [message_id])[message_id] == "failed", "the failure", rig)
    requests = rig.emulator.count()
    time.sleep(1.5)  # nothing more happens: no retry
    assert rig.emulator.count() == requests
    record = rig.store.get(message_id)
    assert record is not None
    assert record.attempts == 1
    assert record.last_error is not None
    assert "ghost@contoso.com" in record.last_error
    assert delivered(rig) == Counter()
    assert rig.store.counts()["failed"] == 1


OUTAGE = 30.0  # seconds Graph stays down in the outage tests
ONE_ENTRY = pytest.mark.skipif(
    sys.version_info[:2] != (3, 11),
    reason="the 30-s outage runs in one CI matrix entry only: Django 5.2 on Python 3.11",
)


def worker_signals(rig: CeleryRig) -> list[dict[str, Any]]:
    """The outcome signals the worker processes sent (tests/celery_app.py records them)."""
    from tests.celery_app import SIGNALS_KEY

    return [json.loads(raw) for raw in rig.store.client.lrange(SIGNALS_KEY, 0, -1)]


@pytest.mark.django_db
def test_the_worker_process_sends_the_signals(rig: CeleryRig) -> None:
    [good] = outgoing(1, tag="signalled")
    [bad] = outgoing(1, sender="ghost@contoso.com", tag="ghost")
    assert mail.get_connection().send_messages([good, bad]) == 2
    good_id, bad_id = good.msgraph_status.message_id, bad.msgraph_status.message_id
    wait_for(
        lambda: statuses(rig, [good_id, bad_id]) == {good_id: "sent", bad_id: "failed"},
        "one sent, one failed",
        rig,
    )
    wait_for(lambda: len(worker_signals(rig)) >= 2, "the two signals", rig, timeout=10)
    time.sleep(0.5)  # nothing more comes
    recorded = {s["message_id"]: s for s in worker_signals(rig)}
    assert len(worker_signals(rig)) == 2
    sent, failed = recorded[good_id], recorded[bad_id]
    assert (sent["signal"], sent["status"]) == ("sent", "sent")
    assert sent["mailbox"] == "noreply@contoso.com"
    assert sent["request_id"]
    assert (failed["signal"], failed["status"]) == ("failed", "failed")
    assert "ghost@contoso.com" in failed["error"]
    # sent by the worker's pool children, not by this (the web) process
    assert os.getpid() not in {sent["pid"], failed["pid"]}
    assert rig.worker.process is not None
    assert rig.worker.process.pid not in {sent["pid"], failed["pid"]}


@pytest.mark.django_db
def test_resend_of_a_failed_message_is_delivered_once_by_the_worker(rig: CeleryRig) -> None:
    from django.core.management import call_command

    [message] = outgoing(1, sender="late@contoso.com", tag="late")
    assert message.send() == 1
    message_id = message.msgraph_status.message_id
    wait_for(lambda: statuses(rig, [message_id])[message_id] == "failed", "the failure", rig)
    assert delivered(rig) == Counter()
    rig.emulator.add_user("late@contoso.com")  # the mailbox now exists
    out = StringIO()
    call_command("msgraph_outbox", "--resend", message_id, stdout=out)
    assert "Queued" in out.getvalue()
    wait_for(lambda: statuses(rig, [message_id])[message_id] == "sent", "the resend", rig)
    time.sleep(1.0)  # and nothing more
    assert delivered(rig) == Counter([message_id])
    record = rig.store.get(message_id)
    assert record is not None
    assert record.request_id
    outcomes = [(s["message_id"], s["signal"]) for s in worker_signals(rig)]
    assert outcomes == [(message_id, "failed"), (message_id, "sent")]


@pytest.mark.django_db
def test_resend_refuses_an_unknown_message_without_force(rig: CeleryRig) -> None:
    from django.core.management import CommandError, call_command

    rig.store.add(envelope("<unknown@x>"))
    assert rig.store.claim("<unknown@x>")
    rig.store.finish("<unknown@x>", "unknown", error="no answer")
    with pytest.raises(CommandError, match="--force"):
        call_command("msgraph_outbox", "--resend", "<unknown@x>")
    record = rig.store.get("<unknown@x>")
    assert record is not None
    assert record.status == "unknown"
    assert rig.emulator.count("sendMail") == 0


@ONE_ENTRY
@pytest.mark.django_db
def test_graph_down_30_s_then_back_delivers_everything_once(rig: CeleryRig) -> None:
    rig.emulator.stop()
    try:
        messages = outgoing(6, tag="outage")
        started = time.monotonic()
        assert mail.get_connection().send_messages(messages) == 6
        ids = [m.msgraph_status.message_id for m in messages]
        time.sleep(max(0.0, OUTAGE - (time.monotonic() - started)))
        during = {m: rig.store.get(m) for m in ids}
        assert all(r is not None and r.status in {"queued", "sending"} for r in during.values())
        assert all(r.attempts >= 2 for r in during.values() if r is not None)
    finally:
        rig.emulator.start()  # the same port: the worker's GRAPH_URL is still right
    assert rig.emulator.url == rig.options["GRAPH_URL"]
    wait_for(
        lambda: set(statuses(rig, ids).values()) == {"sent"}, "delivery after", rig, timeout=90
    )
    back_after = time.monotonic() - started - OUTAGE
    time.sleep(1.0)
    assert delivered(rig) == Counter(ids)  # every one once
    attempts = {m: rig.store.get(m).attempts for m in ids}  # type: ignore[union-attr]
    assert min(attempts.values()) > 1
    assert rig.store.counts()["failed"] == 0
    print(f"celery outage: delivered {back_after:.1f} s after Graph came back; {attempts=}")


@pytest.mark.django_db
def test_a_killed_worker_sends_nothing_twice(rig: CeleryRig) -> None:
    rig.emulator.latency = 1.0  # requests are in flight when the worker dies
    messages = outgoing(12, tag="batch")
    assert mail.get_connection().send_messages(messages) == 12
    ids = [m.msgraph_status.message_id for m in messages]
    wait_for(lambda: len(rig.emulator.sent) >= 2, "the batch to start", rig)
    rig.worker.kill()
    killed_with = Counter(statuses(rig, ids).values())
    assert killed_with["sending"] >= 1  # the kill caught messages in flight
    rig.worker = rig.start_worker()

    def all_finished() -> bool:
        return set(statuses(rig, ids).values()) <= {"sent", "unknown", "failed"}

    wait_for(all_finished, "every message to finish after the restart", rig, timeout=45)
    final = statuses(rig, ids)
    counts = delivered(rig)
    assert "failed" not in final.values()
    for message_id, status in final.items():
        assert counts[message_id] <= 1, f"{message_id} was delivered {counts[message_id]} times"
        if status == "sent":
            assert counts[message_id] == 1
    unknown = [m for m, status in final.items() if status == "unknown"]
    assert 1 <= len(unknown) <= killed_with["sending"]
    for message_id in unknown:
        record = rig.store.get(message_id)
        assert record is not None
        assert record.last_error is not None
        assert "not sent again" in record.last_error


# manage.py check ------------------------------------------------------------------------------


def test_check_requires_redis_url_for_celery(msgraph_emulator: GraphEmulator) -> None:
    from msgraph_mail import checks

    options = msgraph_emulator.settings(QUEUE="celery")
    with override_settings(EMAIL_BACKEND=QUEUED, MSGRAPH_MAIL=options):
        assert "msgraph_mail.E020" in [m.id for m in checks.check_queue()]
    options["REDIS_URL"] = "redis://127.0.0.1:6379/0"
    with override_settings(EMAIL_BACKEND=QUEUED, MSGRAPH_MAIL=options):
        assert "msgraph_mail.E020" not in [m.id for m in checks.check_queue()]


def test_purge_and_content_dropped_once_sent(redis: str) -> None:
    import redis as redis_py

    client = redis_py.Redis.from_url(redis)
    store = RedisStore(client, keep_content=False)
    for message_id in ("<old@x>", "<new@x>"):
        store.add(envelope(message_id))
        assert store.claim(message_id)
        store.finish(message_id, "sent")
    kept = store.get("<new@x>")
    assert kept is not None
    assert kept.envelope.mime == ""  # OUTBOX_KEEP_CONTENT off: only the listing is kept
    client.zadd(store.status_key("sent"), {"<old@x>": time.time() - 40 * 86400})
    assert store.purge(30 * 86400) == 1
    assert store.get("<old@x>") is None
    assert store.get("<new@x>") is not None
    client.close()
