"""The tracking store's promises, run against both stores: the database and Redis.

What only Redis shows (events left announcing by a killed tracker, the key layout, the
password of REDIS_URL, the webhook view's calls in one round trip each, the cap on the
notices kept) is tested against the Redis store alone, on a redis-server of our own (the
``redis`` fixture).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any, cast

import pytest
from django.db import IntegrityError

redis_py = pytest.importorskip("redis")

from redis.crc import key_slot  # noqa: E402

from msgraph_mail.conf import MSGraphMailSettings  # noqa: E402
from msgraph_mail.tracking import redis_store  # noqa: E402
from msgraph_mail.tracking.events import DeliveryEvent, EventType  # noqa: E402
from msgraph_mail.tracking.redis_store import PREFIX, RedisStore  # noqa: E402
from msgraph_mail.tracking.store import (  # noqa: E402
    DatabaseStore,
    Tracked,
    TrackingStore,
    Watch,
    store_for,
)
from tests.redis_server import free_port  # noqa: E402

PASSWORD = "s3cret-PaSsWoRd-never-shown"
NOW = datetime.now(timezone.utc).replace(microsecond=123457)

Factory = Callable[[], TrackingStore]


def make_settings(**values: Any) -> MSGraphMailSettings:
    values = {
        "tenant_id": "11111111-2222-3333-4444-555555555555",
        "client_id": "66666666-7777-8888-9999-000000000000",
        "client_secret": "not-a-secret",
        **values,
    }
    return MSGraphMailSettings(**values)


def tracked(
    tracking_id: str = "t1",
    *recipients: str,
    message_id: str | None = None,
    mailbox: str | None = "noreply@contoso.com",
    sent_at: datetime | None = None,
    outbox_id: str | None = None,
) -> Tracked:
    return Tracked(
        tracking_id=tracking_id,
        message_id=message_id if message_id is not None else f"<{tracking_id}@contoso.com>",
        sender="noreply@contoso.com",
        mailbox=mailbox,
        recipients=recipients or ("bob@example.com",),
        sent_at=sent_at or NOW,
        outbox_id=outbox_id,
    )


def event(event_type: EventType, recipient: str = "bob@example.com") -> DeliveryEvent:
    return DeliveryEvent(
        event_type=event_type,
        recipient=recipient,
        timestamp=NOW + timedelta(minutes=1),
        source="trace",
        status_code="5.1.1" if event_type == "bounced" else None,
    )


def nothing() -> None:
    """An announce that does nothing."""


@pytest.fixture(
    params=[
        pytest.param("database", marks=pytest.mark.django_db(transaction=True)),
        "redis",
    ]
)
def make_store(request: pytest.FixtureRequest) -> Factory:
    """New store objects of one kind over the same, emptied, state."""
    if request.param == "database":
        return DatabaseStore
    url = request.getfixturevalue("redis")
    return lambda: RedisStore(redis_py.Redis.from_url(url))


@pytest.fixture
def store(make_store: Factory) -> TrackingStore:
    return make_store()


@pytest.fixture
def rstore(redis: str) -> RedisStore:
    return RedisStore(redis_py.Redis.from_url(redis))


# -- tracked messages --------------------------------------------------------------------


def test_find_by_tracking_id_and_by_message_id(store: TrackingStore) -> None:
    sent = tracked("t1", "bob@example.com", "carol@example.com", outbox_id="<o1@x>")
    store.track(sent)
    store.track(tracked("t2", message_id=""))
    assert store.find(tracking_id="t1") == sent  # to the microsecond
    assert store.find(message_id="<t1@contoso.com>") == sent
    assert store.find(tracking_id="nope", message_id="<t1@contoso.com>") == sent
    assert store.find(tracking_id="nope") is None
    assert store.find(message_id="<nope@x>") is None
    assert store.find() is None
    found = store.find(tracking_id="t2")
    assert found is not None
    assert (found.message_id, found.outbox_id) == (None, None)


def test_addresses_are_kept_lower_case(store: TrackingStore) -> None:
    store.track(
        Tracked("t1", "<m@x>", "NoReply@Contoso.com", "NoReply@Contoso.com", ("Bob@X.com",), NOW)
    )
    assert store.find(tracking_id="t1") == Tracked(
        "t1", "<m@x>", "noreply@contoso.com", "noreply@contoso.com", ("bob@x.com",), NOW
    )


def test_the_first_record_wins(store: TrackingStore) -> None:
    first = tracked("t1", "bob@example.com")
    store.track(first)
    store.track(tracked("t1", "carol@example.com", sent_at=NOW + timedelta(seconds=5)))
    assert store.find(tracking_id="t1") == first


def test_a_message_id_finds_the_latest_message_tracked_with_it(store: TrackingStore) -> None:
    store.track(tracked("t1", message_id="<same@x>"))
    store.track(tracked("t2", message_id="<same@x>", sent_at=NOW + timedelta(seconds=1)))
    store.track(tracked("t1", message_id="<same@x>"))  # a resend of the first changes nothing
    found = store.find(message_id="<same@x>")
    assert found is not None
    assert found.tracking_id == "t2"


def test_near_finds_the_latest_message_to_the_recipient_within_the_slack(
    store: TrackingStore,
) -> None:
    store.track(tracked("old", "bob@example.com", sent_at=NOW - timedelta(seconds=100)))
    store.track(tracked("mid", "bob@example.com", sent_at=NOW - timedelta(seconds=50)))
    store.track(tracked("carol", "carol@example.com", sent_at=NOW - timedelta(seconds=10)))
    store.track(tracked("later", "bob@example.com", sent_at=NOW + timedelta(seconds=10)))

    def near(recipient: str, when: datetime, slack: float) -> str | None:
        found = store.near(recipient, when, slack)
        return found.tracking_id if found is not None else None

    assert near("bob@example.com", NOW, 60) == "mid"
    assert near("BOB@Example.com", NOW, 60) == "mid"
    assert near("bob@example.com", NOW, 30) is None  # mid is outside the slack
    assert near("bob@example.com", NOW - timedelta(seconds=60), 60) == "old"
    assert near("carol@example.com", NOW, 60) == "carol"
    assert near("carol@example.com", NOW - timedelta(seconds=20), 60) is None  # sent after
    assert near("dave@example.com", NOW, 3600) is None


def test_unsettled_until_every_recipient_has_a_final_event(store: TrackingStore) -> None:
    two = tracked("two", "bob@example.com", "carol@example.com")
    waiting = tracked("waiting", "bob@example.com")
    store.track(two)
    store.track(waiting)
    store.track(tracked("before", sent_at=NOW - timedelta(hours=2)))

    def unsettled() -> list[str]:
        return [t.tracking_id for t in store.unsettled(NOW - timedelta(hours=1))]

    assert sorted(unsettled()) == ["two", "waiting"]
    assert store.report(two, event("delivered", "bob@example.com"), nothing)
    assert store.report(two, event("deferred", "carol@example.com"), nothing)
    assert store.report(waiting, event("deferred"), nothing)
    assert sorted(unsettled()) == ["two", "waiting"]  # carol and bob are only deferred
    assert store.report(two, event("bounced", "Carol@Example.com"), nothing)
    assert unsettled() == ["waiting"]


def test_mailboxes_of_the_messages_sent_since(store: TrackingStore) -> None:
    store.track(tracked("t1", mailbox="NoReply@Contoso.com", sent_at=NOW - timedelta(hours=1)))
    store.track(tracked("t2", mailbox="alice@contoso.com", sent_at=NOW - timedelta(hours=3)))
    store.track(tracked("t3", mailbox="alice@contoso.com", sent_at=NOW - timedelta(hours=5)))
    store.track(tracked("t4", mailbox=None))
    assert store.mailboxes(NOW - timedelta(hours=2)) == ["noreply@contoso.com"]
    assert store.mailboxes(NOW - timedelta(hours=4)) == ["alice@contoso.com", "noreply@contoso.com"]
    assert store.mailboxes(NOW + timedelta(hours=1)) == []


# -- events ------------------------------------------------------------------------------


def test_an_event_is_reported_and_announced_once(store: TrackingStore) -> None:
    sent = tracked()
    store.track(sent)
    announced: list[str] = []
    deferred, bounced = event("deferred"), event("bounced")
    assert store.report(sent, deferred, lambda: announced.append("deferred"))
    assert not store.report(sent, deferred, lambda: announced.append("again"))
    assert store.report(sent, bounced, lambda: announced.append("bounced"))
    assert not store.report(sent, bounced, lambda: announced.append("again"))
    assert announced == ["deferred", "bounced"]
    assert store.events("t1") == [deferred.as_dict(), bounced.as_dict()]
    assert store.events("other") == []


def test_nothing_is_reported_after_a_final_event_for_that_recipient(
    store: TrackingStore,
) -> None:
    sent = tracked("t1", "bob@example.com", "carol@example.com")
    store.track(sent)
    announced: list[str] = []
    assert store.report(sent, event("deferred"), lambda: announced.append("deferred"))
    assert store.report(sent, event("delivered"), lambda: announced.append("delivered"))
    for later in ("pending", "deferred", "bounced"):
        assert not store.report(sent, event(later), lambda: announced.append("late"))
    assert store.report(sent, event("pending", "carol@example.com"), nothing)  # not her
    assert announced == ["deferred", "delivered"]
    assert [e["event_type"] for e in store.events("t1")] == ["deferred", "delivered", "pending"]


def test_two_threads_reporting_the_same_event_report_it_once(store: TrackingStore) -> None:
    for round_ in range(20):
        # deferred: only the event's key stops the second; delivered: its finality too
        same = event("deferred" if round_ % 2 else "delivered")
        sent = tracked(f"t{round_}")
        store.track(sent)
        results: list[bool] = []
        announced: list[int] = []
        barrier = threading.Barrier(2)

        def reporter(
            sent: Tracked = sent,
            same: DeliveryEvent = same,
            barrier: threading.Barrier = barrier,
            results: list[bool] = results,
            announced: list[int] = announced,
        ) -> None:
            try:
                barrier.wait()
                results.append(
                    report_until_unlocked(store, sent, same, lambda: announced.append(1))
                )
            finally:
                close_thread_connection()

        threads = [threading.Thread(target=reporter) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(results) == [False, True], round_
        assert announced == [1]
        assert len(store.events(sent.tracking_id)) == 1


def report_until_unlocked(
    store: TrackingStore, sent: Tracked, same: DeliveryEvent, announce: Callable[[], None]
) -> bool:
    """``report``, again after SQLite's "database table is locked": the test database (an
    in-memory SQLite with a shared cache) refuses a concurrent writer instead of waiting; the
    tracker's next pass would try again, and must then be told it was reported."""
    from django.db import OperationalError

    for _ in range(200):
        try:
            return store.report(sent, same, announce)
        except OperationalError as exc:
            if "locked" not in str(exc):
                raise
            time.sleep(0.005)
    raise AssertionError("the database stayed locked")


def close_thread_connection() -> None:
    """Close this thread's own database connection. Django ignores ``close()`` on an
    in-memory SQLite database (it would destroy it); the main thread's connection keeps the
    database alive, so this one is closed for real."""
    from django.db import connection
    from django.db.backends.base.base import BaseDatabaseWrapper

    BaseDatabaseWrapper.close(connection)


# -- cursors and the lease ---------------------------------------------------------------


def test_cursors_round_trip_and_outlive_the_store_object(make_store: Factory) -> None:
    store = make_store()
    assert store.cursor("bounces:noreply@contoso.com") is None
    store.set_cursor("bounces:noreply@contoso.com", "https://graph/delta?token=1")
    store.set_cursor("bounces:noreply@contoso.com", "https://graph/delta?token=2")
    store.set_cursor("trace:not-before", "12.5")
    again = make_store()
    assert again.cursor("bounces:noreply@contoso.com") == "https://graph/delta?token=2"
    assert again.cursor("trace:not-before") == "12.5"


def test_a_lease_is_exclusive_renewable_released_and_expires(store: TrackingStore) -> None:
    assert store.acquire("tracker", "a", 5)
    assert not store.acquire("tracker", "b", 5)
    assert store.acquire("tracker", "a", 5)  # renewed by its holder
    store.release("tracker", "b")  # not b's to release
    assert not store.acquire("tracker", "b", 5)
    store.release("tracker", "a")
    assert store.acquire("tracker", "b", 5)

    start = time.monotonic()
    assert store.acquire("short", "a", 0.3)
    time.sleep(0.2)
    assert store.acquire("short", "a", 0.3)  # renewed: now expires 0.5 s after the start
    time.sleep(max(0.0, 0.35 - (time.monotonic() - start)))
    assert not store.acquire("short", "b", 0.3)  # the first 0.3 s are over, the renewal holds
    time.sleep(max(0.0, 0.6 - (time.monotonic() - start)))
    assert store.acquire("short", "b", 0.3)  # expired


# -- the suppression list ----------------------------------------------------------------


def test_the_suppression_list(store: TrackingStore) -> None:
    assert store.suppressions() == []
    assert store.suppress(
        " Bob@Example.COM ", status_code="5.1.1", reason="no such user", message_id="<m@x>"
    )
    assert not store.suppress("bob@example.com", status_code="5.0.0")
    assert store.suppress("Alice@Example.com")
    assert store.suppressed(["BOB@example.com ", "carol@example.com", "alice@example.COM"]) == {
        "bob@example.com",
        "alice@example.com",
    }
    assert store.suppressed([]) == set()
    rows = store.suppressions()
    assert [row["address"] for row in rows] == ["alice@example.com", "bob@example.com"]
    bob = rows[1]
    since = datetime.fromisoformat(bob.pop("since"))
    assert abs(since - datetime.now(timezone.utc)) < timedelta(minutes=1)
    assert bob == {
        "address": "bob@example.com",
        "status_code": "5.1.1",
        "reason": "no such user",
        "message_id": "<m@x>",
    }
    assert store.unsuppress("BOB@EXAMPLE.COM")
    assert not store.unsuppress("bob@example.com")
    assert store.suppressed(["bob@example.com", "alice@example.com"]) == {"alice@example.com"}


# -- change notifications ----------------------------------------------------------------

STATE = "secret-state-" + "x" * 50


def test_a_watch_is_saved_found_listed_renewed_and_dropped(store: TrackingStore) -> None:
    later = NOW + timedelta(days=6)
    assert store.watches() == []
    store.save_watch(Watch("sub-1", "NoReply@Contoso.com", STATE, later))
    store.save_watch(Watch("sub-2", "alice@contoso.com", "other", later))
    store.save_watch(Watch("sub-3", "noreply@contoso.com", "third", later - timedelta(days=1)))
    # the mailbox lower-cased, the expiry to the microsecond, the secret kept
    assert store.watch("sub-1") == Watch("sub-1", "noreply@contoso.com", STATE, later)
    assert store.watch("nope") is None
    # by mailbox, then expiry
    assert [w.subscription_id for w in store.watches()] == ["sub-2", "sub-3", "sub-1"]

    renewed = later + timedelta(days=1, microseconds=1)
    store.save_watch(Watch("sub-3", "noreply@contoso.com", "third", renewed))
    assert store.watch("sub-3") == Watch("sub-3", "noreply@contoso.com", "third", renewed)
    assert [w.subscription_id for w in store.watches()] == ["sub-2", "sub-1", "sub-3"]

    store.drop_watch("sub-1")
    store.drop_watch("nope")  # nothing to drop: no error
    assert store.watch("sub-1") is None
    assert [w.subscription_id for w in store.watches()] == ["sub-2", "sub-3"]


def test_the_client_state_never_shows(store: TrackingStore) -> None:
    watch = Watch("sub-1", "noreply@contoso.com", STATE, NOW)
    store.save_watch(watch)
    found = store.watch("sub-1")
    assert found is not None
    assert found.client_state == STATE  # kept, but not shown:
    for shown in (repr(watch), str(found), repr(store.watches()), repr(store)):
        assert "secret-state" not in shown
        assert "sub-1" in shown or "Store" in shown


def test_notices_in_order_with_distinct_ids_until_handled(store: TrackingStore) -> None:
    assert store.notices() == []
    store.notify([("sub-1", "created", "r1"), ("sub-1", "missed", ""), ("sub-2", "created", "r3")])
    store.notify([("sub-2", "created", "r4")])
    found = store.notices()
    assert [(n.subscription_id, n.kind, n.resource) for n in found] == [
        ("sub-1", "created", "r1"),
        ("sub-1", "missed", ""),
        ("sub-2", "created", "r3"),
        ("sub-2", "created", "r4"),
    ]
    assert all(isinstance(n.id, str) for n in found)
    assert len({n.id for n in found}) == 4

    store.handled([found[0].id, found[2].id])
    assert store.notices() == [found[1], found[3]]  # exactly those two gone
    store.handled([])
    store.handled([found[0].id])  # handled before: nothing changes
    assert store.notices() == [found[1], found[3]]

    store.notify([("sub-3", "created", "r5")])
    after = store.notices()
    assert [n.resource for n in after] == ["", "r4", "r5"]  # the newest last
    assert after[2].id not in {n.id for n in found}  # never the id of one handled
    store.handled([n.id for n in after])
    assert store.notices() == []


def test_notices_honour_the_limit(store: TrackingStore) -> None:
    store.notify([("sub-1", "created", f"r{i}") for i in range(5)])
    assert [n.resource for n in store.notices(limit=2)] == ["r0", "r1"]
    assert [n.resource for n in store.notices(limit=1)] == ["r0"]
    assert [n.resource for n in store.notices(limit=10)] == [f"r{i}" for i in range(5)]
    assert store.notices(limit=0) == []
    store.notify([])  # nothing to record
    assert len(store.notices()) == 5


def test_a_notify_records_all_or_none(store: TrackingStore) -> None:
    broken = [
        ("sub-1", "created", "r1"),
        ("sub-1", "created", "r2"),
        ("sub-1", "created", cast(str, None)),  # the third cannot be stored
    ]
    with pytest.raises((IntegrityError, redis_py.DataError)):
        store.notify(broken)
    assert store.notices() == []  # not even the first two
    store.notify(broken[:2])
    assert [n.resource for n in store.notices()] == ["r1", "r2"]


# -- Redis only --------------------------------------------------------------------------


class Killed(BaseException):
    """The tracker's process dying in the middle of ``announce``."""


def test_an_event_left_announcing_is_handed_over_once(rstore: RedisStore) -> None:
    sent = tracked()
    rstore.track(sent)
    delivered = event("delivered")

    def killed() -> None:
        raise Killed

    with pytest.raises(Killed):
        rstore.report(sent, delivered, killed)
    assert rstore.events("t1") == [delivered.as_dict()]  # recorded before the announce
    assert not rstore.report(sent, delivered, nothing)  # and so never reported again
    assert rstore.unannounced(60) == []  # not yet: it may still be being announced
    assert rstore.unannounced(0) == [(sent, delivered)]
    assert rstore.unannounced(0) == []  # handed over once

    assert rstore.report(sent, event("delivered", "carol@example.com"), nothing)
    assert rstore.unannounced(0) == []  # announced and marked


def test_the_webhook_view_s_calls_take_one_round_trip_each(
    rstore: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``watch`` and ``notify`` run on every request of the webhook view: each is one write
    to Redis (then its replies), and ``notify`` is one MULTI/EXEC, so all or none."""
    rstore.save_watch(Watch("sub-1", "noreply@contoso.com", STATE, NOW))  # connects, too
    sent: list[bytes] = []
    original = redis_py.connection.AbstractConnection.send_packed_command

    def counting(connection: Any, command: Any, *args: Any, **kwargs: Any) -> None:
        sent.append(command if isinstance(command, bytes) else b"".join(command))
        original(connection, command, *args, **kwargs)

    monkeypatch.setattr(redis_py.connection.AbstractConnection, "send_packed_command", counting)
    assert rstore.watch("sub-1") is not None
    assert len(sent) == 1
    sent.clear()
    rstore.notify([("sub-1", "created", f"r{i}") for i in range(3)])
    assert len(sent) == 1
    assert sent[0].startswith(b"*1\r\n$5\r\nMULTI\r\n")
    assert sent[0].endswith(b"*1\r\n$4\r\nEXEC\r\n")
    assert sent[0].count(b"XADD") == 3
    kept = str(redis_store.NOTICES_KEPT)
    assert sent[0].count(f"MAXLEN\r\n$1\r\n~\r\n${len(kept)}\r\n{kept}\r\n".encode()) == 3
    sent.clear()
    rstore.notify([])
    assert sent == []  # nothing to send
    assert [n.resource for n in rstore.notices()] == ["r0", "r1", "r2"]


def test_the_notices_kept_are_capped(redis: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tracker that stops handling notices cannot make Redis grow without bound: the
    oldest go first (about: XADD MAXLEN ~ trims whole stream nodes, 100 entries each)."""
    monkeypatch.setattr(redis_store, "NOTICES_KEPT", 10)
    client = redis_client(redis)
    store = RedisStore(client)
    for batch in range(5):
        store.notify([("sub-1", "created", f"r{batch * 100 + i}") for i in range(100)])
    kept = client.xlen(PREFIX + "notices")
    assert 10 <= kept <= 10 + 100
    resources = [n.resource for n in store.notices()]
    assert resources == [f"r{i}" for i in range(500 - kept, 500)]  # the newest, in order


def test_keys_share_the_hash_tag_and_expire_with_the_message(redis: str) -> None:
    client = redis_client(redis)
    store = RedisStore(client, ttl=600)
    store.track(tracked("old", sent_at=datetime.now(timezone.utc) - timedelta(seconds=700)))
    store.track(tracked("t1"))
    store.report(tracked("t1"), event("bounced"), nothing)
    store.suppress("bob@example.com")
    store.set_cursor("trace", "1")
    store.acquire("tracker", "a", 30)
    store.save_watch(Watch("sub-1", "noreply@contoso.com", STATE, NOW))
    store.notify([("sub-1", "created", "r1")])
    keys = [key.decode() for key in client.keys("*")]
    assert all(key.startswith(PREFIX) for key in keys), keys
    assert {key_slot(key.encode()) for key in keys} == {key_slot(b"{tracking}")}
    for name in ("message:t1", "message-id:<t1@contoso.com>", "events:t1", "reported:t1"):
        assert 0 < client.ttl(PREFIX + name) <= 600, name
    for name in ("suppressions", "cursor:trace", "watches", "notices"):
        assert client.ttl(PREFIX + name) == -1, name  # never expire
    assert client.type(PREFIX + "watches") == b"hash"
    assert client.hkeys(PREFIX + "watches") == [b"sub-1"]
    assert client.type(PREFIX + "notices") == b"stream"
    # the message sent before the retention was trimmed from the sorted sets
    assert [t.tracking_id for t in store.unsettled(NOW - timedelta(days=1))] == []
    assert client.zrange(PREFIX + "sent", 0, -1) == [b"t1"]


def test_the_password_never_shows(redis: str, monkeypatch: pytest.MonkeyPatch) -> None:
    port = redis_client(redis).connection_pool.connection_kwargs["port"]
    url = f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
    store = store_for(make_settings(redis_url=url))
    assert isinstance(store, RedisStore)
    assert PASSWORD not in repr(store)
    assert f"127.0.0.1:{port}/0" in repr(store)
    assert store.find(tracking_id="t1") is None  # it works (the server takes any password)
    # nothing listens there: redis-py's own error, without the password
    closed = store_for(make_settings(redis_url=f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"))
    with pytest.raises(redis_py.ConnectionError) as info:
        closed.cursor("x")
    assert PASSWORD not in str(info.value)
    assert PASSWORD not in repr(info.value)

    def leaky(*args: Any, **kwargs: Any) -> Any:
        try:
            raise OSError(f"while using {PASSWORD}")
        except OSError as exc:
            raise redis_py.ConnectionError(f"cannot connect with {PASSWORD}") from exc

    monkeypatch.setattr(store.client, "get", leaky)
    with pytest.raises(redis_py.ConnectionError) as leaked:
        store.cursor("x")
    assert PASSWORD not in repr(leaked.value)
    assert PASSWORD not in repr(leaked.value.__cause__)
    assert "***" in str(leaked.value)


def redis_client(url: str) -> Any:
    return redis_py.Redis.from_url(url)
