"""The Celery engine of the outbox: its claim store in Redis, and real workers against the
emulator (``QUEUE = "celery"``)."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone

import pytest

pytest.importorskip("redis")

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
